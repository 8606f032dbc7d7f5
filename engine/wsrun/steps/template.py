"""The ``template`` step type: render a file from a Jinja template."""

from __future__ import annotations

import os
from typing import Any

from jinja2 import FunctionLoader, StrictUndefined, TemplateNotFound, TemplateSyntaxError
from jinja2.loaders import split_template_path

from wsrun.core.fs import ContentUnknown
from wsrun.core.sandbox import bounded_sandbox
from wsrun.core.step import Plan, Result, StepContext, StepError
from wsrun.steps.checksum import apply_write, plan_write

NAME = "template"
DOC = """Render a text file (README, delivery note, config) from a Jinja template.

The template comes from a file (``src``) or inline (``content``); ``vars`` are its
top-level names. Rendering is sandboxed and strict: a name the template uses but
``vars`` does not define fails the step, naming the template and line, instead
of silently writing an empty string. Output is exactly the rendered text (a
trailing newline is kept), not HTML-escaped, written as UTF-8 and only when it
changes. ``{% include %}`` and ``{% import %}`` find files relative to the
template's directory (the workdir for inline content). Besides Jinja's own
filters (``filesizeformat``, ``join``, ...) templates have ``basename``,
``dirname``, ``joinpath``, ``relpath``, ``to_json`` and ``from_json``. Inline
``content`` is passed to the step as written (the recipe does not evaluate it),
so it sees only ``vars``; pass recipe values in through ``vars``. In a dry
run a template an earlier step would write is read from its planned content;
when that is only known after the real run, the output's content and size are
unknown (null in the plan).
"""
SCHEMA: dict[str, Any] = {
    "type": "object",
    "additionalProperties": False,
    "required": ["to"],
    "oneOf": [{"required": ["src"]}, {"required": ["content"]}],
    "properties": {
        "src": {
            "type": "string",
            "description": "Template file (UTF-8); relative paths are taken from the workdir. "
            "Give this or `content`.",
            "examples": ["templates/README.txt.j2"],
        },
        "content": {
            "type": "string",
            "description": "The template text itself. Give this or `src`.",
            "examples": ["Delivered {{ count }} files.\n"],
        },
        "to": {
            "type": "string",
            "description": "File to write; its directory must exist.",
            "examples": ["delivery/README.txt"],
        },
        "vars": {
            "type": "object",
            "default": {},
            "description": "Values the template sees as top-level names.",
            "examples": [{"project": "VLASS", "files": "{{ steps.images.outputs.files }}"}],
        },
        "mode": {
            "oneOf": [
                {"type": "integer", "minimum": 0, "maximum": 4095},
                {"type": "string", "pattern": "^(0o)?[0-7]{3,4}$"},
            ],
            "description": "Permissions of the written file, as an octal string ('0644') "
            "or a YAML octal number (0644). Default: the existing file's, else 0644.",
            "examples": ["0644", "0600"],
        },
    },
}
EXAMPLES = [
    """- id: readme
  uses: template
  with:
    src: templates/README.txt.j2
    to: delivery/README.txt
    vars:
      project: "{{ inputs.project }}"
      files: "{{ steps.images.outputs.files }}"
""",
    """- id: note
  uses: template
  with:
    content: |
      {% for f in files %}{{ f | basename }}
      {% endfor %}
    to: delivery/FILES.txt
    vars: {files: "{{ steps.images.outputs.files }}"}
    mode: "0640"
""",
]
OUTPUTS = {"file": "absolute path of the rendered file"}
UNRENDERED = ("content",)


def destinations(params: dict[str, Any], ctx: StepContext) -> list[str]:
    """The paths this step writes, locked (wsrun.core.locks) before it plans."""
    return [ctx.path(params["to"])]


def plan(params: dict[str, Any], ctx: StepContext) -> Plan:
    to = ctx.path(params["to"])
    if ("src" in params) == ("content" in params):
        raise StepError("give exactly one of `src` and `content`")
    mode = parse_mode(params.get("mode"))
    if "src" in params:
        name = ctx.path(params["src"])
        info = ctx.fs.stat(name)
        if info is None:
            raise StepError("no such template file", path=name)
        if not info.is_file:
            raise StepError("template is not a regular file", path=name)
        base = os.path.dirname(name)
        source = _read_text(ctx, name)
    else:
        name = f"inline template for {to}"
        base = ctx.workdir
        source = params["content"]
    content = None
    if source is not None:
        text = render(source, name, base, params.get("vars", {}), ctx)
        content = None if text is None else text.encode("utf-8")
    effects, write_mode = plan_write(
        ctx, to, content, None if content is None else len(content), mode
    )
    return Plan(effects=effects, outputs={"file": to}, data=(to, content, write_mode))


def apply(plan: Plan, ctx: StepContext) -> Result:
    return apply_write(plan)


def parse_mode(value: int | str | None) -> int | None:
    """A file mode given as a number or an octal string."""
    if value is None or isinstance(value, int):
        return value
    try:
        return int(value, 8)
    except ValueError:
        raise StepError(f"mode {value!r} is not an octal number like '0644'") from None


def render(
    source: str, name: str, base: str, variables: dict[str, Any], ctx: StepContext
) -> str | None:
    """The rendered text, or None when an included template's content is unknown
    in a dry run. Template mistakes become a StepError naming the file and line."""
    templates = {name}

    def load(include: str) -> tuple[str, str, Any] | None:
        path = os.path.join(base, *split_template_path(include))
        if not ctx.fs.is_file(path):
            return None
        text = _read_text(ctx, path)
        if text is None:
            raise ContentUnknown(path)
        templates.add(path)
        return text, path, lambda: True

    env = bounded_sandbox(
        undefined=StrictUndefined,
        keep_trailing_newline=True,
        autoescape=False,
        loader=FunctionLoader(load),
    )
    try:
        code = env.compile(source, name=name, filename=name)
        return env.template_class.from_code(env, code, env.make_globals(None)).render(variables)
    except TemplateSyntaxError as e:
        raise StepError(f"line {e.lineno}: {e.message}", path=e.filename or name) from None
    except ContentUnknown:
        return None
    except Exception as e:
        if isinstance(e, OSError) and not isinstance(e, TemplateNotFound):
            raise  # reading an included file failed: the runner reports it
        detail = f"template {e} not found" if isinstance(e, TemplateNotFound) else str(e)
        where, line = _template_frame(e, templates)
        raise StepError(f"line {line}: {detail}" if line else detail, path=where or name) from None


def _template_frame(error: BaseException, templates: set[str]) -> tuple[str | None, int | None]:
    """The innermost template file and line the error was raised at."""
    found: tuple[str | None, int | None] = (None, None)
    tb = error.__traceback__
    while tb is not None:
        filename = tb.tb_frame.f_code.co_filename
        if filename in templates:
            found = (filename, tb.tb_lineno)
        tb = tb.tb_next
    return found


def _read_text(ctx: StepContext, path: str) -> str | None:
    """A template file's text, or None when a dry run cannot know it yet."""
    try:
        with ctx.fs.open(path) as f:
            data = f.read()
    except ContentUnknown:
        return None
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as e:
        raise StepError(f"not UTF-8 text (byte {e.start})", path=path) from None
