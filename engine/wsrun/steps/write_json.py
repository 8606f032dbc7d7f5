"""The ``write-json`` step type: write a JSON document, digests filled in."""

from __future__ import annotations

import hashlib
import json
import os
import tempfile
from collections.abc import Iterable, Iterator, Mapping
from typing import IO, Any

from wsrun.core.spool import SortedSpool, is_lazy, lazy_mapping
from wsrun.core.step import Plan, Result, StepContext, StepError
from wsrun.steps.checksum import (
    StreamedWrite,
    apply_write,
    plan_write,
    plan_write_stream,
    sums_line,
)

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
sha256sum``. ``{"$sha256sums": LIST}`` takes the files from the list named
``LIST`` beside it, in the same object, each named by its ``path`` below the
object's ``path`` and with its ``sha256`` (a reference or a digest): in
``{"path": "d", "files": [{"path": "d/a", "sha256": {"$digest": KEY}}],
"checksum": {"$sha256sums": "files"}}`` the file is ``a``. A document then
lists a directory's files once, not twice (a delivery of a million files). A
reference to a key not in ``digests``, or to a list not beside it, fails the
step. The file is written (whole, through a temporary name) only when its
content changes, each item of the top-level lists and of the lists in them on
a line of its own. In a dry run a digest known only after the real run is
null in ``digests``: the planned content is then unknown, its size still
exact. A document whose lists are spooled (a million-file delivery's, from
``find-products``) and spooled ``digests`` (copy's or tar's ``checksums``) are
read a piece at a time: the document is never held whole.
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


#: Documents longer than this are planned and written as a stream (a
#: million-file delivery's delivery.json), not held as one string...
HELD_MAX = 8 << 20
#: ...and read back this much at a time.
PIECE = 1 << 20


def plan(params: dict[str, Any], ctx: StepContext) -> Plan:
    to = ctx.path(params["to"])
    given = params.get("digests") or {}
    filler = _Filler(given if isinstance(given, list) else [given])
    # Rendered once, into a temporary file that stays in memory while small.
    rendered = tempfile.SpooledTemporaryFile(max_size=HELD_MAX)  # noqa: SIM115
    size = 0
    for part in render_parts(filler, params["value"]):
        size += rendered.write(part.encode("utf-8"))
    mode = params.get("mode")
    if isinstance(mode, str):
        mode = int(mode.removeprefix("0o"), 8)
    outputs = {"file": to, "bytes": size}
    if size <= HELD_MAX:
        rendered.seek(0)
        text = rendered.read()
        rendered.close()
        content = None if filler.unknown else text
        effects, write_mode = plan_write(ctx, to, content, size, mode)
        return Plan(effects=effects, outputs=outputs, data=(to, content, write_mode))
    spooled = _Rendered(rendered)
    pieces = None if filler.unknown else spooled.pieces
    effects, write_mode = plan_write_stream(ctx, to, pieces, size, mode)
    if not effects:
        spooled.close()
        return Plan(outputs=outputs)
    return Plan(
        effects=effects, outputs=outputs, data=StreamedWrite(to, write_mode, pieces, [spooled])
    )


def apply(plan: Plan, ctx: StepContext) -> Result:
    return apply_write(plan)


class _Rendered:
    """A rendered document too big to hold, in its temporary file: read back
    in pieces (to compare with the file there, and to write it)."""

    def __init__(self, f: IO[bytes]) -> None:
        self.f = f

    def pieces(self) -> Iterator[bytes]:
        self.f.seek(0)
        while piece := self.f.read(PIECE):
            yield piece

    def close(self) -> None:
        self.f.close()


class _Filler:
    """Replaces the references in a document by the digests they name."""

    def __init__(self, digests: list[Mapping[str, str | None]]) -> None:
        #: Looked up last first: a later map overrides an earlier one.
        self.digests = digests[::-1]
        #: A digest was null (a dry run): the content is not known yet.
        self.unknown = False

    def digest(self, key: Any) -> str:
        if not isinstance(key, str):
            raise StepError(f"value: no digest of {key!r} in `digests`")
        for digests in self.digests:
            try:
                found = digests[key]
                break
            except KeyError:
                continue
        else:
            raise StepError(f"value: no digest of {key!r} in `digests`")
        if found is None:
            self.unknown = True
            return _UNKNOWN
        if not isinstance(found, str):
            raise StepError(f"digests: the digest of {key!r} is {found!r}, not a string or null")
        return found

    def reference(self, value: Any, within: Mapping[str, Any] | None = None) -> tuple[bool, Any]:
        """(True, the digest) if ``value`` is a reference, else (False, value);
        ``within`` is the object holding ``value`` (a ``$sha256sums`` may name
        a list beside it)."""
        if isinstance(value, dict) and len(value) == 1:
            if "$digest" in value:
                return True, self.digest(value["$digest"])
            if "$sha256sums" in value:
                return True, self.sums(value["$sha256sums"], within)
        return False, value

    def fill(self, value: Any, within: Mapping[str, Any] | None = None) -> Any:
        found, value = self.reference(value, within)
        if found:
            return value
        if isinstance(value, dict) or lazy_mapping(value):
            return {k: self.fill(v, value) for k, v in value.items()}
        if isinstance(value, list) or is_lazy(value):
            return [self.fill(v) for v in value]
        return value

    def sums(self, files: Any, within: Mapping[str, Any] | None) -> str:
        """The SHA-256 of the ``sha256sum`` list of ``files``: {name: key}, or
        the key of a list of files beside the reference in ``within``."""
        if isinstance(files, str):
            listed, lazy = self._listed(files, within)
        elif isinstance(files, Mapping):
            listed = ((name, self.digest(key)) for name, key in files.items())
            lazy = is_lazy(files)
        else:
            raise StepError("value: `$sha256sums` takes {name: key} or the key of a list beside it")
        # Digests looked up in the document's order (the order copy's spooled
        # `checksums` are read fastest in), then the lines sorted by name.
        lines = ((os.fsencode(name), name, digest) for name, digest in listed)
        # A directory of a million files is sorted on disk.
        ordered: Iterable[tuple[bytes, str, str]] = SortedSpool(lines) if lazy else sorted(lines)
        h = hashlib.sha256()
        for _, name, digest in ordered:
            h.update(sums_line(name, digest))
        if isinstance(ordered, SortedSpool):
            ordered.close()
        return h.hexdigest()

    def _listed(
        self, key: str, within: Mapping[str, Any] | None
    ) -> tuple[Iterator[tuple[str, str]], bool]:
        """(name, digest) of each file in the list ``within[key]``, named by
        its ``path`` below ``within["path"]``; and whether the list is lazy."""
        files = within.get(key) if within is not None else None
        base = within.get("path") if within is not None else None
        if not (isinstance(files, list) or is_lazy(files)) or not isinstance(base, str):
            raise StepError(
                f"value: `$sha256sums` names {key!r}, not a list of files beside it "
                "in an object with a `path`"
            )
        under = base + "/"

        def named() -> Iterator[tuple[str, str]]:
            for entry in files:
                path = entry.get("path") if isinstance(entry, Mapping) else None
                if not isinstance(path, str) or not path.startswith(under):
                    raise StepError(
                        f"value: `$sha256sums` of {key!r}: {path!r} is not a path under {base!r}"
                    )
                digest = self.fill(entry.get("sha256"))
                if not isinstance(digest, str):
                    raise StepError(f"value: `$sha256sums` of {key!r}: no `sha256` of {path!r}")
                yield path[len(under) :], digest

        return named(), is_lazy(files)


def render(value: Any) -> str:
    """``value`` as JSON text: each top-level key, and each item of the lists
    in the first four levels, on a line of its own (a delivery's product per
    line, each of its files per line).

    Not ``json.dumps(indent=...)``: indenting falls back to the pure-Python
    encoder, some 20 times slower on a document of 100,000 files."""
    return "".join(render_parts(_Filler([]), value))


def render_parts(filler: _Filler, value: Any) -> Iterator[str]:
    """``render`` of ``value`` with its references filled in, in parts: a
    document whose lists are spooled (wsrun.core.spool) is never held."""
    yield from _render(filler, value, 0)
    yield "\n"


def _render(
    filler: _Filler, value: Any, depth: int, within: Mapping[str, Any] | None = None
) -> Iterator[str]:
    found, value = filler.reference(value, within)
    if found or depth >= 4 or not value or isinstance(value, str):
        yield json.dumps(filler.fill(value))
    elif isinstance(value, dict) or lazy_mapping(value):
        opening, between, closing = ("{\n  ", ",\n  ", "\n}") if depth == 0 else ("{", ", ", "}")
        for n, (k, v) in enumerate(value.items()):
            yield (between if n else opening) + json.dumps(k) + ": "
            yield from _render(filler, v, depth + 1, value)
        yield closing
    elif isinstance(value, list) or is_lazy(value):
        inner = "  " * depth + "  "
        for n, v in enumerate(value):
            yield (",\n" if n else "[\n") + inner
            yield from _render(filler, v, depth + 1)
        yield "\n" + "  " * depth + "]"
    else:
        yield json.dumps(value)
