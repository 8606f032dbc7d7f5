"""The recipe schema for editors and other JSON Schema clients (``wsrun schema``).

``schemas/recipe.schema.json`` describes a recipe's structure; this module adds
what ``wsrun validate`` knows beyond it, wherever JSON Schema can say it, so an
editor (yaml-language-server), check-jsonschema or ajv flags the same mistakes:

- ``uses:`` must name a step type (built in or a plugin's), a packaged recipe,
  or a recipe file (``./x.yaml``);
- ``with:`` gets the parameters of that step type (or the inputs of that
  packaged recipe) through ``if``/``then`` on ``uses``, unknown keys refused;
- a value the recipe renders may be a ``{{ expression }}`` wherever the step
  wants a number, boolean, list, enum or pattern, since ``wsrun`` checks the
  value the expression yields at run time. A parameter that cannot be a string
  takes only a whole ``{{ expression }}`` (which keeps its type); one that may
  be a string takes any template text;
- union types become ``anyOf`` so the schema compiles in ajv's strict mode.
"""

from __future__ import annotations

import copy
import json
from typing import Any

from wsrun.core.resources import packaged_files, schemas_dir
from wsrun.core.step import load_step, params_schema, step_names

SCHEMA_ID = "https://wsrun.example/schemas/wsrun.schema.json"

#: A value with template text: it renders to a string.
TEMPLATE: dict[str, Any] = {
    "type": "string",
    "pattern": r"\{\{|\{%",
    "description": "A template, rendered when the step runs.",
}
#: A value that is one whole expression: it keeps the type of what it yields.
EXPRESSION: dict[str, Any] = {
    "type": "string",
    "pattern": r"^\s*\{\{[\s\S]*\}\}\s*$",
    "description": "An expression, evaluated when the step runs; its value is checked then.",
}
#: ``uses:`` naming a recipe file rather than a step type (see ``recipe.is_recipe_ref``).
RECIPE_PATH: dict[str, Any] = {
    "type": "string",
    "pattern": r"^(\.{1,2}/|/)|\.ya?ml$",
    "description": "A recipe file: ./x.yaml, ../dir/x.yaml or an absolute path.",
}

#: A bus selector pattern (see ``wsrun.core.selectors``).
SELECTOR = r"^(\*|#|[^.*#]+)(\.(\*|#|[^.*#]+))*$"

_ANNOTATIONS = ("title", "description", "default", "examples", "deprecated")
#: Keywords that apply to one JSON type only (ajv's strictTypes wants the type beside them).
_TYPE_KEYWORDS: dict[str, tuple[str, ...]] = {
    "string": ("minLength", "maxLength", "pattern", "format"),
    "number": ("minimum", "maximum", "exclusiveMinimum", "exclusiveMaximum", "multipleOf"),
    "array": ("items", "prefixItems", "minItems", "maxItems", "uniqueItems", "contains"),
    "object": (
        "properties",
        "required",
        "additionalProperties",
        "patternProperties",
        "propertyNames",
        "minProperties",
        "maxProperties",
        "dependentRequired",
    ),
}
_TYPE_KEYWORDS["integer"] = _TYPE_KEYWORDS["number"]
#: Keywords whose value is a map of names to schemas, and keywords whose value is data.
_MAPS = ("properties", "patternProperties", "$defs", "dependentSchemas")
_VALUES = ("enum", "const", "default", "examples", "required")
_STRING_LIMITS = ("pattern", "format", "maxLength", "const", "enum")
#: Input types of a recipe and the JSON values their defaults take.
_INPUT_JSON_TYPES: dict[str, Any] = {
    "path": {"type": "string"},
    "string": {"type": "string"},
    "int": {"type": "integer"},
    "float": {"type": "number"},
    "bool": {"type": "boolean"},
    "list": {"type": "array"},
}


def full_schema() -> dict[str, Any]:
    """The recipe schema with every step type's parameters, for editors."""
    with open(schemas_dir() / "recipe.schema.json", encoding="utf-8") as f:
        schema = json.load(f)
    schema["$id"] = SCHEMA_ID
    defs = schema["$defs"]
    step = defs["step"]
    conditions = []
    names = step_names()
    for name in names:
        module = load_step(name)
        sub = params_schema(module)
        for key in ("$schema", "$id"):
            sub.pop(key, None)
        defs[f"with_{name}"] = with_schema(sub, getattr(module, "UNRENDERED", ()))
        conditions.append(_when_uses(name, f"with_{name}", bool(sub.get("required"))))
    recipes = packaged_recipes()
    for name, inputs in recipes.items():
        key = "recipe_" + name.replace("/", "_")
        defs[key] = _recipe_inputs_schema(name, inputs)
        conditions.append(_when_uses(name, key, bool(defs[key].get("required"))))
    uses = step["properties"]["uses"]
    step["properties"]["uses"] = {
        "description": uses["description"],
        "anyOf": [
            {"enum": names, "description": "A step type (wsrun steps)."},
            {"enum": list(recipes), "description": "A packaged recipe (wsrun recipes)."},
            RECIPE_PATH,
        ],
        "examples": names,
    }
    step["allOf"] = conditions
    defs["input"]["allOf"] = _input_rules()
    _trigger_rules(schema)
    return strict_types(schema)


def with_schema(schema: dict[str, Any], unrendered: tuple[str, ...] = ()) -> dict[str, Any]:
    """A step's parameter schema as it applies to a recipe's ``with:``: each
    rendered value may also be an expression (parameters in ``unrendered``
    are passed to the step as written, so they are left as they are)."""
    schema = strict_types(schema)
    props = schema.get("properties", {})
    out = templated(schema, wrap=False)
    for name in unrendered:
        if name in props:
            out["properties"][name] = props[name]
    return out


def _when_uses(name: str, ref: str, needs_with: bool) -> dict[str, Any]:
    then: dict[str, Any] = {"properties": {"with": {"$ref": f"#/$defs/{ref}"}}}
    if needs_with:
        then["required"] = ["with"]
    return {
        "if": {"properties": {"uses": {"const": name}}, "required": ["uses"]},
        "then": then,
    }


def packaged_recipes() -> dict[str, dict[str, Any]]:
    """The packaged recipes by name (``nrao/deliver``) with their declared inputs."""
    from wsrun.core.recipe import is_lifecycle_document, load_recipe

    out: dict[str, dict[str, Any]] = {}
    for name, path in packaged_files():
        data = load_recipe(str(path)).doc.data
        if not isinstance(data, dict) or is_lifecycle_document(data):
            continue
        inputs = data.get("inputs")
        out[name] = inputs if isinstance(inputs, dict) else {}
    return out


def _recipe_inputs_schema(name: str, inputs: dict[str, Any]) -> dict[str, Any]:
    """``with:`` of a step that calls a packaged recipe: its inputs, by name
    (their values are checked when the called recipe runs)."""
    schema: dict[str, Any] = {
        "type": "object",
        "description": f"The inputs of the packaged recipe {name}.",
        "additionalProperties": False,
        "properties": {
            key: {"description": str(spec.get("help", "")) if isinstance(spec, dict) else ""}
            for key, spec in inputs.items()
        },
    }
    required = [
        key
        for key, spec in inputs.items()
        if isinstance(spec, dict) and spec.get("required") and "default" not in spec
    ]
    if required:
        schema["required"] = required
    return schema


def _trigger_rules(schema: dict[str, Any]) -> None:
    """What ``wsrun validate`` checks of ``on:``: a message selector is dotted
    words with ``*`` and ``#`` as whole words (or a template), and a file
    trigger's recipe declares the input ``path`` it is given."""
    message = schema["properties"]["on"]["properties"]["message"]
    selector = dict(message, pattern=SELECTOR)
    description = selector.pop("description")
    schema["properties"]["on"]["properties"]["message"] = {
        "description": description,
        "anyOf": [selector, TEMPLATE],
    }
    schema["allOf"] = [
        {
            "if": {
                "properties": {"on": {"type": "object", "required": ["file"]}},
                "required": ["on"],
            },
            "then": {
                "required": ["inputs"],
                "properties": {"inputs": {"type": "object", "required": ["path"]}},
            },
        }
    ]


def _input_rules() -> list[dict[str, Any]]:
    """What ``wsrun validate`` checks of an input declaration beyond its keys:
    a choice lists its choices, a positional input has no flags, and a default
    (unless an expression) has the input's type."""
    rules: list[dict[str, Any]] = [
        {
            "if": {"properties": {"type": {"const": "choice"}}, "required": ["type"]},
            "then": {"required": ["choices"]},
        },
        {
            "if": {"properties": {"positional": {"const": True}}, "required": ["positional"]},
            "then": {"properties": {"flags": False}},
        },
    ]
    for kind, json_type in _INPUT_JSON_TYPES.items():
        condition: dict[str, Any] = {"properties": {"type": {"const": kind}}}
        condition["required"] = ["type"]
        default = {"anyOf": [{"type": "null"}, json_type, TEMPLATE]}
        rules.append({"if": condition, "then": {"properties": {"default": default}}})
    # Without a type an input is a string.
    rules.append(
        {
            "if": {"properties": {"type": False}},
            "then": {"properties": {"default": {"type": ["string", "null"]}}},
        }
    )
    return rules


def strict_types(schema: Any) -> Any:
    """``schema`` with every union type (other than "T or null") split into
    ``anyOf`` branches, each with the keywords that apply to its type, which
    is how ajv's strict mode wants it written."""
    if isinstance(schema, list):
        return [strict_types(s) for s in schema]
    if not isinstance(schema, dict):
        return schema
    out = {k: v if k in _VALUES else strict_types(v) for k, v in schema.items()}
    for key in _MAPS:
        if isinstance(schema.get(key), dict):
            out[key] = {k: strict_types(v) for k, v in schema[key].items()}
    required = out.get("required")
    if isinstance(required, list) and not {"additionalProperties", "patternProperties"} & set(out):
        # ajv's strictRequired wants each required name among the properties.
        props = out.setdefault("properties", {})
        for name in required:
            props.setdefault(name, True)
    types = out.get("type")
    if not isinstance(types, list) or len([t for t in types if t != "null"]) < 2:
        return out
    branches = []
    for t in types:
        branch = {"type": t}
        for key in _TYPE_KEYWORDS.get(t, ()):
            if key in out:
                branch[key] = out[key]
        branches.append(branch)
    moved = {k for t in types for k in _TYPE_KEYWORDS.get(t, ())}
    rest = {k: v for k, v in out.items() if k != "type" and k not in moved}
    if "anyOf" in rest:
        rest.setdefault("allOf", []).append({"anyOf": rest.pop("anyOf")})
    rest["anyOf"] = branches
    return rest


def templated(schema: Any, wrap: bool = True) -> Any:
    """``schema`` where every value the recipe renders may be an expression."""
    if not isinstance(schema, dict):
        return schema
    out = dict(schema)
    for key in ("properties", "patternProperties"):
        if isinstance(out.get(key), dict):
            out[key] = {k: templated(v) for k, v in out[key].items()}
    for key in ("additionalProperties", "items"):
        if isinstance(out.get(key), dict):
            out[key] = templated(out[key])
    if isinstance(out.get("prefixItems"), list):
        out["prefixItems"] = [templated(v) for v in out["prefixItems"]]
    for key in ("anyOf", "oneOf", "allOf"):
        if isinstance(out.get(key), list):
            out[key] = [templated(v, wrap=False) for v in out[key]]
    for key in ("then", "else"):
        if isinstance(out.get(key), dict):
            out[key] = templated(out[key], wrap=False)
    if not wrap or _takes_any_template(schema):
        return out
    outer = {k: out.pop(k) for k in _ANNOTATIONS if k in out}
    alternative = TEMPLATE if _may_be_string(schema) else EXPRESSION
    outer["anyOf"] = [out, copy.deepcopy(alternative)]
    return outer


def _types(schema: dict[str, Any]) -> list[str] | None:
    t = schema.get("type")
    if t is None:
        return None
    return t if isinstance(t, list) else [t]


def _takes_any_template(schema: Any) -> bool:
    """Whether every template string already satisfies ``schema``."""
    if not isinstance(schema, dict):
        return schema is not False
    if "const" in schema or "enum" in schema or "if" in schema or "not" in schema:
        return False
    types = _types(schema)
    if types is not None and ("string" not in types or any(k in schema for k in _STRING_LIMITS)):
        return False
    if "allOf" in schema and not all(_takes_any_template(s) for s in schema["allOf"]):
        return False
    for key in ("anyOf", "oneOf"):
        if key in schema and not any(_takes_any_template(s) for s in schema[key]):
            return False
    return True


def _may_be_string(schema: Any) -> bool:
    """Whether some string satisfies ``schema`` (then template text may render to it)."""
    if not isinstance(schema, dict):
        return schema is not False
    if "const" in schema or "enum" in schema:
        values = [schema["const"]] if "const" in schema else schema["enum"]
        return any(isinstance(v, str) for v in values)
    types = _types(schema)
    if types is not None and "string" not in types:
        return False
    for key in ("anyOf", "oneOf"):
        if key in schema and not any(_may_be_string(s) for s in schema[key]):
            return False
    if "allOf" in schema and not all(_may_be_string(s) for s in schema["allOf"]):
        return False
    if "else" in schema and "if" in schema:
        return _may_be_string(schema["else"])
    return True
