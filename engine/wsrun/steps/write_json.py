"""The ``write-json`` step type: write a JSON document, digests filled in."""

from __future__ import annotations

import hashlib
import json
import os
from typing import Any

from wsrun.core.step import Plan, Result, StepContext, StepError
from wsrun.steps.checksum import apply_write, plan_write, sums_line

NAME = "write-json"
DOC = """Write a JSON document (a delivery's or a run's description) to a file.

``value`` is the document, usually an earlier step's output or built in the
recipe. Digests that another step computes while it writes the files (``copy``
and ``tar`` with ``checksum``) are filled in from ``digests``: wherever the
document holds ``{"$digest": KEY}`` it gets ``digests[KEY]``, and wherever it
holds ``{"$sha256sums": {NAME: KEY, ...}}`` it gets the SHA-256 of the list
``sha256sum`` prints for those files (``<digest>  NAME`` lines sorted by name),
i.e. one checksum for a whole directory that recipients can reproduce with
``find . -type f -printf '%P\\n' | LC_ALL=C sort | xargs -d '\\n' sha256sum |
sha256sum``. A reference to a key not in ``digests`` fails the step. The file
is written (whole, through a temporary name) only when its content changes,
each item of the top-level lists and of the lists in them on a line of its
own. In a dry run a digest known only after the real run is null in
``digests``: the planned content is then unknown, its size still exact.
"""

SCHEMA: dict[str, Any] = {
    "type": "object",
    "additionalProperties": False,
    "required": ["to", "value"],
    "properties": {
        "to": {
            "type": "string",
            "minLength": 1,
            "description": "File to write; its directory must exist.",
            "examples": ["{{ vars.destination }}/delivery.json"],
        },
        "value": {
            "description": "The document: any JSON value, with `$digest` and `$sha256sums` "
            "references to fill in from `digests`.",
            "examples": [
                "{{ steps.products.outputs.delivery }}",
                {"files": [{"path": "a.fits", "sha256": {"$digest": "out/a.fits"}}]},
            ],
        },
        # Each digest (a string or null) is checked when it is used: a schema
        # on every value would validate a map of 100,000 digests through jsonschema.
        "digests": {
            "oneOf": [{"type": "object"}, {"type": "array", "items": {"type": "object"}}],
            "default": {},
            "description": "Key -> hex digest (or a list of such maps, merged), e.g. the "
            "`checksums` output of copy or tar; null for a digest known only after the real run.",
            "examples": ["{{ steps.copy.outputs.checksums }}"],
        },
        "mode": {
            "oneOf": [
                {"type": "integer", "minimum": 0, "maximum": 4095},
                {"type": "string", "pattern": "^(0o)?[0-7]{3,4}$"},
            ],
            "description": "Permissions of the written file. Default: the existing file's, "
            "else 0644.",
            "examples": ["0644"],
        },
    },
}

EXAMPLES = [
    """- id: describe
  uses: write-json
  with:
    to: "{{ vars.destination }}/delivery.json"
    value: "{{ steps.products.outputs.delivery }}"
    digests: "{{ steps.content.outputs.checksums }}"
""",
    """- id: note
  uses: write-json
  with:
    to: out/run.json
    value: {run: "{{ run.id }}", files: "{{ steps.copy.outputs.files }}"}
""",
]

OUTPUTS = {
    "file": "absolute path of the document",
    "bytes": "its size",
}

#: Stands for a digest only known after the real run (a dry run): as long as
#: a SHA-256 one, so the planned size is exact.
_UNKNOWN = "0" * 64


def destinations(params: dict[str, Any], ctx: StepContext) -> list[str]:
    """The paths this step writes, locked (wsrun.core.locks) before it plans."""
    return [ctx.path(params["to"])]


def plan(params: dict[str, Any], ctx: StepContext) -> Plan:
    to = ctx.path(params["to"])
    given = params.get("digests") or {}
    digests: dict[str, str | None] = {}
    for part in given if isinstance(given, list) else [given]:
        digests.update(part)
    filler = _Filler(digests)
    text = render(filler.fill(params["value"])).encode("utf-8")
    content = None if filler.unknown else text
    mode = params.get("mode")
    if isinstance(mode, str):
        mode = int(mode.removeprefix("0o"), 8)
    effects, write_mode = plan_write(ctx, to, content, len(text), mode)
    return Plan(
        effects=effects,
        outputs={"file": to, "bytes": len(text)},
        data=(to, content, write_mode),
    )


def apply(plan: Plan, ctx: StepContext) -> Result:
    return apply_write(plan)


class _Filler:
    """Replaces the references in a document by the digests they name."""

    def __init__(self, digests: dict[str, str | None]) -> None:
        self.digests = digests
        #: A digest was null (a dry run): the content is not known yet.
        self.unknown = False

    def digest(self, key: Any) -> str:
        if not isinstance(key, str) or key not in self.digests:
            raise StepError(f"value: no digest of {key!r} in `digests`")
        found = self.digests[key]
        if found is None:
            self.unknown = True
            return _UNKNOWN
        if not isinstance(found, str):
            raise StepError(f"digests: the digest of {key!r} is {found!r}, not a string or null")
        return found

    def fill(self, value: Any) -> Any:
        if isinstance(value, dict):
            if len(value) == 1:
                if "$digest" in value:
                    return self.digest(value["$digest"])
                if "$sha256sums" in value:
                    return self.sums(value["$sha256sums"])
            return {k: self.fill(v) for k, v in value.items()}
        if isinstance(value, list):
            return [self.fill(v) for v in value]
        return value

    def sums(self, files: Any) -> str:
        if not isinstance(files, dict):
            raise StepError("value: `$sha256sums` takes {name: key}")
        h = hashlib.sha256()
        for name in sorted(files, key=os.fsencode):
            h.update(sums_line(name, self.digest(files[name])))
        return h.hexdigest()


def render(value: Any) -> str:
    """``value`` as JSON text: each top-level key, and each item of the lists
    in the first four levels, on a line of its own (a delivery's product per
    line, each of its files per line).

    Not ``json.dumps(indent=...)``: indenting falls back to the pure-Python
    encoder, some 20 times slower on a document of 100,000 files."""
    return _render(value, 0) + "\n"


def _render(value: Any, depth: int) -> str:
    pad = "  " * depth
    if isinstance(value, dict) and value and depth == 0:
        items = [f"  {json.dumps(k)}: {_render(v, 1)}" for k, v in value.items()]
        return "{\n" + ",\n".join(items) + "\n}"
    if isinstance(value, dict) and value and depth < 4:
        items = [f"{json.dumps(k)}: {_render(v, depth + 1)}" for k, v in value.items()]
        return "{" + ", ".join(items) + "}"
    if isinstance(value, list) and value and depth < 4:
        inner = pad + "  "
        items = [inner + _render(v, depth + 1) for v in value]
        return "[\n" + ",\n".join(items) + "\n" + pad + "]"
    return json.dumps(value)
