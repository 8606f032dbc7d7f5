"""The ``assemble-delivery`` step type: lay identified products out in a delivery directory.

One piece: a delivery's layout (loose files or one tar), its survey of what a kept
staging area already holds, and delivery.json are one format, deliver's own.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import shutil
import stat as statmod
import threading
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any

from wsrun.core.effects import Effect, create_dir, create_file, remove
from wsrun.core.filecopy import BUFFER_SIZE, copy_file, current_umask, hash_file
from wsrun.core.fileio import (
    TMP_SUFFIX,
    create_temp,
    is_temp_name,
    remove_leftover,
    temp_path,
    write_bytes_atomic,
)
from wsrun.core.fs import ContentUnknown, FileInfo, WorldView, norm
from wsrun.core.step import Plan, Result, StepContext, StepError
from wsrun.formats import tarball
from wsrun.formats.tarball import Member
from wsrun.steps.copy import run_parallel

NAME = "assemble-delivery"
DOC = """Lay the products find-products identified out in a delivery directory, with delivery.json.

The content step of a delivery (see the ``nrao/deliver`` recipe and
docs/deliver.md), meant to run inside an atomic group (``group:``) that stages
the directory and renames it into place, followed by a ``checksum`` step that
writes SHA256SUMS from this step's ``checksums``. It lays the products out by
type (images/, calibration/, weblog/, scripts/, logs/, execution blocks and
measurement sets whole, by name), as loose files or packed into one tar
archive, following symbolic links (a delivery holds content, never links).
Every file is hashed while it is copied (one read), and ``delivery.json``
(schemas/delivery.schema.json) lists every product with its files, sizes,
mtimes and checksums.

What is already in ``to`` is kept when it is this delivery's (same path, size
and mtime), with its digest from the group's record of the staging area or
from the delivery.json already there, so a run that continues a killed one
writes only what is missing, and a delivery that is already complete plans
nothing. Anything else in ``to`` (a product since removed, a half-written
file's temporary name) is removed, except SHA256SUMS, which the checksum step
after it owns.
"""

#: Where each product type goes inside the delivery ("" = at the top, by name).
DEFAULT_LAYOUT: dict[str, str] = {
    "execution_block": "",
    "measurement_set": "",
    "calibration_tables": "calibration",
    "flag_versions": "calibration",
    "apply_commands": "calibration",
    "calibration_auxiliary": "calibration",
    "image": "images",
    "thumbnail": "images",
    "weblog": "weblog",
    "qa_report": "reports",
    "ppr": "scripts",
    "script": "scripts",
    "log": "logs",
    "pipeline_manifest": "",
    "other": "",
}
SUMS = "SHA256SUMS"
DOCUMENT = "delivery.json"
#: Stands for a digest until apply computes it; as long as a real one, so
#: file sizes are known at plan time.
PENDING = "0" * 64
MAX_LINK_DEPTH = 20

_NULLABLE_STRING = {"type": ["string", "null"]}

SCHEMA: dict[str, Any] = {
    "type": "object",
    "additionalProperties": False,
    "required": ["products", "source", "to"],
    "properties": {
        "products": {
            "type": "array",
            "description": "The products to deliver (the `products` output of find-products).",
            "items": {
                "type": "object",
                "required": ["type", "path"],
                "properties": {
                    "type": {"type": "string", "description": "product type"},
                    "path": {"type": "string", "description": "file or directory to deliver"},
                    "name": {"type": "string", "description": "name in the delivery"},
                    "kind": {"enum": ["file", "dir"], "description": "file or directory"},
                    "attributes": {
                        "type": "object",
                        "additionalProperties": {"type": "string"},
                        "description": "recorded with the product in delivery.json",
                    },
                },
            },
            "examples": ["{{ steps.products.outputs.products }}"],
        },
        "source": {
            "type": "string",
            "minLength": 1,
            "description": "The processing directory the products come from: recorded in "
            "delivery.json, and names the tar archive when there is no prefix.",
        },
        "to": {
            "type": "string",
            "minLength": 1,
            "description": "The delivery directory (created if missing); inside an atomic group, "
            "the group's destination.",
            "examples": ["{{ vars.destination }}"],
        },
        "url": {
            **_NULLABLE_STRING,
            "description": "The delivery's download URL, recorded in delivery.json.",
            "examples": ["https://dl-nrao.aoc.nrao.edu/f4cb5c3494e46595052d29556ef2f8d5"],
        },
        "prefix": {
            **_NULLABLE_STRING,
            "description": "A sub-directory of the destination for this delivery (a request id); "
            "also names the tar archive.",
            "examples": ["request-1234"],
        },
        "tar": {
            "type": "boolean",
            "default": False,
            "description": "Pack the delivered items into one tar archive instead of loose files.",
        },
        "layout": {
            "type": "object",
            "additionalProperties": {"type": "string"},
            "description": "Sub-directory per product type, over the defaults "
            "(images, calibration, weblog, scripts, logs, reports; execution blocks, "
            "measurement sets and others at the top). Unknown types go where `other` goes.",
            "examples": [{"image": "images", "weblog": "weblog"}],
        },
        "method": {
            **_NULLABLE_STRING,
            "description": "How the products were identified (recorded in delivery.json).",
        },
        "metadata": {
            "description": "The processing directory's metadata, any JSON value (recorded in "
            "delivery.json).",
        },
        "workers": {
            "type": "integer",
            "minimum": 1,
            "description": "Files copied and hashed in parallel (default: the number of CPUs).",
        },
    },
}

EXAMPLES = [
    """- id: deliver
  uses: assemble-delivery
  with:
    products: "{{ steps.products.outputs.products }}"
    source: "{{ inputs.source_directory }}"
    local_destination: /home/user/deliveries
    prefix: request-1234
""",
    """- id: deliver
  uses: assemble-delivery
  with:
    products: "{{ steps.products.outputs.products }}"
    source: "{{ inputs.source_directory }}"
    download_directory: "{{ settings.download_directory }}"
    download_url: "{{ settings.download_url }}"
    tar: true
""",
]

EXAMPLES = [
    """- id: delivery
  group: {destination: "{{ vars.destination }}", marker: delivery.json}
  steps:
    - id: content
      uses: assemble-delivery
      with:
        products: "{{ steps.products.outputs.products }}"
        source: "{{ inputs.source_directory }}"
        to: "{{ vars.destination }}"
        prefix: request-1234
    - uses: checksum
      with:
        paths: "{{ vars.destination }}"
        to: "{{ vars.destination }}/SHA256SUMS"
        digests: "{{ steps.content.outputs.checksums }}"
""",
]

OUTPUTS = {
    "destination": "the delivery directory",
    "url": "its download URL (the `url` given, or null)",
    "archive": "path of the tar archive, or null",
    "products": "number of products delivered",
    "files": "number of product files delivered",
    "bytes": "total size of the product files",
    "checksums": "{path: sha256} of every product file delivered loose, or of the archive "
    "(null in a dry run: known once the files are written)",
}


@dataclass(slots=True)
class Entry:
    """One directory or file of the delivery, relative to its root."""

    rel: str
    kind: str  # "dir" or "file"
    #: Where the content comes from (symlinks resolved); None for directories
    #: made only to hold products (images/, ...).
    source: str | None
    size: int = 0
    mode: int = 0o755
    mtime_ns: int = 0
    #: Index of the product it belongs to (-1: a directory holding products).
    product: int = -1


@dataclass
class Job:
    """What apply does, decided by plan."""

    #: The directory written (inside a group: the staged one).
    destination: str
    entries: list[Entry]
    document: dict[str, Any]
    archive: str | None = None
    members: list[Member] = field(default_factory=list)
    workers: int = 1
    make_root: bool = False
    #: Directories to create, files (or the archive: one entry) to write.
    make: list[Entry] = field(default_factory=list)
    write: list[Entry] = field(default_factory=list)
    #: Files already there: known digests (by path relative to the delivery),
    #: and those whose digest must be read.
    known: dict[str, str] = field(default_factory=dict)
    to_hash: list[Entry] = field(default_factory=list)
    #: Paths to remove first: what is not this delivery's (reported), and a
    #: killed run's temporary files (not reported).
    extras: list[str] = field(default_factory=list)
    strays: list[str] = field(default_factory=list)
    write_document: bool = True


# ---- plan -------------------------------------------------------------------------


def destinations(params: dict[str, Any], ctx: StepContext) -> list[str]:
    """The paths this step writes, locked (wsrun.core.locks) before it plans (inside
    an atomic group, the group's lock covers them)."""
    return [ctx.path(params["to"])]


def plan(params: dict[str, Any], ctx: StepContext) -> Plan:
    fs = ctx.fs
    source = ctx.path(params["source"])
    prefix = params.get("prefix") or None
    if prefix is not None and (
        "/" in prefix or prefix in (".", "..") or prefix.startswith(".") or "\0" in prefix
    ):
        raise StepError(f"prefix {prefix!r} must be a plain directory name")
    destination = ctx.path(params["to"])
    final = ctx.final_path(destination)
    tar_name = f"{prefix or os.path.basename(source.rstrip(os.sep)) or 'delivery'}.tar"
    archive_name = tar_name if params.get("tar") else None
    layout = {**DEFAULT_LAYOUT, **(params.get("layout") or {})}
    products = params["products"]
    entries = _entries(fs, products, layout, ctx, reserved={SUMS, DOCUMENT, tar_name})
    for product in products:
        path = ctx.path(product["path"])
        for d in {destination, final}:
            if _inside(d, path) or _inside(path, d):
                raise StepError(f"the destination {final} and the product overlap", path=path)
    document = _document(
        source, final, params.get("url"), prefix, params, products, entries, archive_name
    )
    job = Job(
        destination=destination,
        entries=entries,
        document=document,
        archive=archive_name,
        workers=params.get("workers") or os.cpu_count() or 1,
    )
    if job.archive:
        job.members = _members(source, entries, tar_name[: -len(".tar")])
        document["archive"]["bytes"] = tarball.archive_size(job.members)
    effects = _survey(fs, job, ctx.digests)
    known = {os.path.join(destination, rel): d for rel, d in job.known.items()}
    if job.archive:
        path = os.path.join(destination, job.archive)
        checksums = {path: known.get(path)}
    else:
        checksums = {
            os.path.join(destination, e.rel): known.get(os.path.join(destination, e.rel))
            for e in entries
            if e.kind == "file"
        }
    outputs = {
        "destination": final,
        "url": params.get("url"),
        "archive": os.path.join(final, job.archive) if job.archive else None,
        "products": len(products),
        "files": sum(1 for e in entries if e.kind == "file"),
        "bytes": sum(e.size for e in entries if e.kind == "file"),
        "checksums": checksums,
    }
    return Plan(effects=effects, outputs=outputs, data=job)


def _survey(fs: WorldView, job: Job, cache: Any) -> list[Effect]:
    """Compare the destination with the delivery: what to remove, create and
    write (filled into ``job``), as effects. Files already there with the right
    size and mtime are kept, with their digest from the delivery.json there or
    the group's record of its staging area."""
    d = job.destination
    info = fs.stat(d)
    existing: dict[str, FileInfo] = {}
    removals: list[Effect] = []
    effects: list[Effect] = []
    if info is None:
        job.make_root = True
        effects.append(create_dir(d))
    elif not info.is_dir:
        raise StepError("the destination exists and is not a directory", path=d)
    else:
        existing = dict(fs.walk(d))
    old = _old_document(fs, d) if DOCUMENT in existing else None
    recorded = _recorded_digests(old)
    if job.archive:
        expected = {job.archive: Entry(job.archive, "file", None, job.document["archive"]["bytes"])}
    else:
        expected = {e.rel: e for e in job.entries}
    gone: list[str] = []
    for rel, have in existing.items():
        if rel in expected or rel in (DOCUMENT, SUMS) or any(_inside(rel, g) for g in gone):
            continue
        if have.is_file and is_temp_name(os.path.basename(rel)):
            job.strays.append(os.path.join(d, rel))
            continue
        gone.append(rel)
        removals.append(remove(os.path.join(d, rel)))
    for rel, e in expected.items():
        path = os.path.join(d, rel)
        have = existing.get(rel)
        if e.kind == "dir":
            if have is None or not have.is_dir:
                if have is not None:
                    removals.append(remove(path))
                effects.append(create_dir(path))
                job.make.append(e)
            continue
        if have is not None and have.is_file and have.size == e.size:
            if job.archive:
                members = _archive_digests(old, job, recorded)
                if members is not None:
                    job.known.update(members)
                    continue
            elif have.mtime_ns == e.mtime_ns:
                digest = recorded.get((rel, e.size, e.mtime_ns))
                if digest is None and cache is not None:
                    digest = cache.get(path, e.size, e.mtime_ns, "sha256")
                if digest is None:
                    job.to_hash.append(e)
                else:
                    job.known[rel] = digest
                continue
        if have is not None and not have.is_file:
            removals.append(remove(path))
        effects.append(
            create_file(path, e.size, source=e.source) if e.source else create_file(path, e.size)
        )
        job.write.append(e)
    rendered = _render(job.document)
    same = (
        old is not None
        and not job.write
        and not job.to_hash
        and not removals
        and _pending(old) == _pending(job.document)
    )
    if same:
        job.write_document = False
    else:
        effects.append(create_file(os.path.join(d, DOCUMENT), len(rendered)))
    return removals + effects


def _old_document(fs: WorldView, directory: str) -> dict[str, Any] | None:
    """The delivery.json already in ``directory``, or None if unreadable."""
    try:
        with fs.open(os.path.join(directory, DOCUMENT)) as f:
            old = json.loads(f.read())
    except (OSError, ValueError, UnicodeDecodeError, ContentUnknown):
        return None
    return old if isinstance(old, dict) else None


def _recorded_digests(old: dict[str, Any] | None) -> dict[tuple[str, int, int], str]:
    """(path, bytes, mtime_ns) -> sha256 of every file an earlier delivery.json lists."""
    if old is None:
        return {}
    try:
        return {
            (f["path"], f["bytes"], f["mtime_ns"]): f["sha256"]
            for p in old["products"]
            for f in p["files"]
            if isinstance(f["sha256"], str) and len(f["sha256"]) == 64 and f["sha256"] != PENDING
        }
    except (KeyError, TypeError):
        return {}


def _archive_digests(
    old: dict[str, Any] | None, job: Job, recorded: dict[tuple[str, int, int], str]
) -> dict[str, str] | None:
    """The digests of an archive already there and of its members, when the
    delivery.json beside it describes this very archive; else None."""
    if old is None or _pending(old) != _pending(job.document):
        return None
    try:
        digests = {job.archive or "": old["archive"]["sha256"]}
    except (KeyError, TypeError):
        return None
    for e in job.entries:
        if e.kind == "file":
            digest = recorded.get((e.rel, e.size, e.mtime_ns))
            if digest is None:
                return None
            digests[e.rel] = digest
    return digests


def _inside(path: str, directory: str) -> bool:
    return path == directory or path.startswith(directory.rstrip(os.sep) + os.sep)


def _entries(
    fs: WorldView,
    products: list[dict[str, Any]],
    layout: dict[str, str],
    ctx: StepContext,
    reserved: set[str],
) -> list[Entry]:
    """Every directory and file of the delivery, parents before children."""
    entries: list[Entry] = []
    claimed: dict[str, str] = {name: "wsrun" for name in reserved}
    dirs: set[str] = set()
    for index, product in enumerate(products):
        path = ctx.path(product["path"])
        name = product.get("name") or os.path.basename(path)
        sub = layout.get(product["type"], layout.get("other", ""))
        if os.path.isabs(sub) or ".." in sub.split("/") or "/" in name or name in ("", ".", ".."):
            raise StepError(f"cannot place product {name!r} in {sub!r}", path=path)
        sub = os.path.normpath(sub) if sub else ""
        rel = os.path.join(sub, name) if sub else name
        parts = sub.split(os.sep) if sub else []
        for i in range(1, len(parts) + 1):
            d = os.path.join(*parts[:i])
            if d not in dirs:
                if d in claimed:
                    raise StepError(f"{claimed[d]} is in the way of the directory {d}", path=path)
                dirs.add(d)
                claimed[d] = f"the directory {d}"
                entries.append(Entry(d, "dir", None))
        if rel in claimed:
            raise StepError(
                f"{claimed[rel]} and {path} would both be delivered as {rel}", path=path
            )
        claimed[rel] = path
        info = fs.stat(path)
        if info is None:
            raise StepError("product does not exist", path=path)
        real = _resolve(fs, path)
        if info.is_file:
            entries.append(Entry(rel, "file", real, info.size, info.mode, info.mtime_ns, index))
        elif info.is_dir:
            entries.append(Entry(rel, "dir", real, 0, info.mode, info.mtime_ns, index))
            for inner, sub_info, sub_real in _tree(fs, path, 0):
                kind = "dir" if sub_info.is_dir else "file"
                entries.append(
                    Entry(
                        rel + os.sep + inner,
                        kind,
                        sub_real,
                        sub_info.size if kind == "file" else 0,
                        sub_info.mode,
                        sub_info.mtime_ns,
                        index,
                    )
                )
        else:
            raise StepError("cannot deliver a special file (device, fifo or socket)", path=path)
    for e in entries:
        if e.kind == "file" and ("\n" in e.rel or "\r" in e.rel):
            raise StepError("cannot deliver a file whose name holds a line break", path=e.source)
    return entries


def _tree(fs: WorldView, root: str, depth: int) -> list[tuple[str, FileInfo, str]]:
    """Everything below ``root`` as (relative path, info, real path), parents
    first; symlinks are followed (a delivery holds content, not links)."""
    out = []
    prefix = root + os.sep
    for rel, info in fs.walk(root):
        path = prefix + rel
        if info.is_symlink:
            target = fs.stat(path)
            if target is None:
                raise StepError("dangling symbolic link", path=path)
            if target.is_dir:
                if depth >= MAX_LINK_DEPTH:
                    raise StepError("too many nested symbolic links to directories", path=path)
                out.append((rel, target, _resolve(fs, path)))
                out += [(rel + os.sep + r, i, p) for r, i, p in _tree(fs, path, depth + 1)]
                continue
            info, path = target, _resolve(fs, path)
        if not (info.is_file or info.is_dir):
            raise StepError("cannot deliver a special file (device, fifo or socket)", path=path)
        if info.is_file and rel.endswith(TMP_SUFFIX) and is_temp_name(os.path.basename(rel)):
            continue  # a copy a killed wsrun run left
        out.append((rel, info, path))
    return out


def _resolve(fs: WorldView, path: str) -> str:
    """``path`` with its last component's symlinks followed."""
    for _ in range(40):
        info = fs.lstat(path)
        if info is None or not info.is_symlink:
            return path
        assert info.target is not None
        path = norm(os.path.join(os.path.dirname(path), info.target))
    raise OSError(40, "Too many levels of symbolic links", path)


def _members(source: str, entries: list[Entry], root: str) -> list[tarball.Member]:
    """The archive's members: everything below one directory named ``root``.
    Directories made only to hold products take the source directory's mode
    and mtime, so the same products always give the same archive."""
    members = [tarball.Member(root + "/", "dir", source)]
    for e in entries:
        name = f"{root}/{e.rel}"
        if e.kind == "dir":
            members.append(
                tarball.Member(
                    name + "/", "dir", e.source or source, 0, e.mode, e.mtime_ns // 10**9
                )
            )
        else:
            assert e.source is not None
            members.append(
                tarball.Member(name, "file", e.source, e.size, e.mode, e.mtime_ns // 10**9)
            )
    return members


# ---- delivery.json -------------------------------------------------------


def _document(
    source: str,
    destination: str,
    url: str | None,
    prefix: str | None,
    params: dict[str, Any],
    products: list[dict[str, Any]],
    entries: list[Entry],
    tar_name: str | None,
) -> dict[str, Any]:
    """delivery.json with every digest PENDING (filled in by apply)."""
    by_product: dict[int, list[Entry]] = {}
    for e in entries:
        by_product.setdefault(e.product, []).append(e)
    items: list[dict[str, Any]] = []
    for index, product in enumerate(products):
        top = by_product[index][0]
        files = [e for e in by_product[index] if e.kind == "file"]
        item: dict[str, Any] = {
            "type": product["type"],
            "name": os.path.basename(top.rel),
            "kind": top.kind,
            "path": top.rel,
        }
        if product.get("attributes"):
            item["attributes"] = dict(product["attributes"])
        item["bytes"] = sum(e.size for e in files)
        item["checksum"] = PENDING
        item["files"] = [
            {"path": e.rel, "bytes": e.size, "mtime_ns": e.mtime_ns, "sha256": PENDING}
            for e in files
        ]
        items.append(item)
    return {
        "version": 1,
        "source": source,
        "destination": destination,
        "url": url,
        "prefix": prefix,
        "identified_by": params.get("method"),
        "archive": {
            "name": tar_name,
            "root": tar_name[: -len(".tar")],
            "bytes": 0,
            "sha256": PENDING,
        }
        if tar_name
        else None,
        "products": items,
        "files": sum(len(i["files"]) for i in items),
        "bytes": sum(i["bytes"] for i in items),
        "metadata": params.get("metadata"),
    }


def _render(document: dict[str, Any]) -> bytes:
    """delivery.json as text: one top-level key, product and file per line.

    Not ``json.dumps(indent=...)``: indenting falls back to the pure-Python
    encoder, some 20 times slower on a delivery of 100,000 files."""
    dumps = json.dumps
    lines = ["{"]
    last = len(document) - 1
    for i, (key, value) in enumerate(document.items()):
        comma = "," if i < last else ""
        if key != "products":
            lines.append(f"  {dumps(key)}: {dumps(value)}{comma}")
            continue
        lines.append('  "products": [')
        for j, product in enumerate(value):
            head = dumps({k: v for k, v in product.items() if k != "files"})[:-1]
            files = ",\n".join("      " + dumps(f) for f in product["files"])
            body = f"\n{files}\n    ]" if files else "]"
            lines.append(f'    {head}, "files": [{body}}}' + ("," if j < len(value) - 1 else ""))
        lines.append("  ]" + comma)
    lines.append("}\n")
    return "\n".join(lines).encode("ascii")


def sums_line(digest: str, path: str) -> bytes:
    """One line as ``sha256sum`` prints it (a backslash in the name is escaped,
    and the line then starts with one)."""
    name = os.fsencode(path)
    if b"\\" in name:
        return b"\\" + digest.encode() + b"  " + name.replace(b"\\", b"\\\\") + b"\n"
    return digest.encode() + b"  " + name + b"\n"


def tree_checksum(lines: list[tuple[str, str]]) -> str:
    """The checksum of a directory product: sha256 over its files' sha256sum
    lines (path relative to the product directory), ordered by path bytes."""
    h = hashlib.sha256()
    for path, digest in sorted(lines, key=lambda item: os.fsencode(item[0])):
        h.update(sums_line(digest, path))
    return h.hexdigest()


def _fill(job: Job, digests: dict[str, str]) -> dict[str, Any]:
    """delivery.json with the digests (by path relative to the delivery) filled in."""
    document = {**job.document, "products": [dict(p) for p in job.document["products"]]}
    for product in document["products"]:
        product["files"] = [{**f, "sha256": digests[f["path"]]} for f in product["files"]]
        if product["kind"] == "file":
            product["checksum"] = product["files"][0]["sha256"]
        else:
            root = product["path"] + "/"
            product["checksum"] = tree_checksum(
                [(f["path"][len(root) :], f["sha256"]) for f in product["files"]]
            )
    if job.archive:
        document["archive"] = {**document["archive"], "sha256": digests[job.archive]}
    return document


def _pending(document: Any) -> Any:
    """``document`` with every digest replaced by PENDING, to compare deliveries
    without reading their files."""
    if isinstance(document, dict):
        return {
            k: PENDING if k in ("sha256", "checksum") else _pending(v) for k, v in document.items()
        }
    if isinstance(document, list):
        return [_pending(v) for v in document]
    return document


# ---- apply --------------------------------------------------------------------------


def apply(plan: Plan, ctx: StepContext) -> Result:
    job: Job = plan.data
    d = job.destination
    for path in job.strays:
        with contextlib.suppress(OSError):  # TempBusy: a live writer's after all
            remove_leftover(path)
    for effect in plan.effects:
        if effect.op == "remove":
            if os.path.isdir(effect.path) and not os.path.islink(effect.path):
                shutil.rmtree(effect.path)
            else:
                with contextlib.suppress(FileNotFoundError):
                    os.unlink(effect.path)
    if job.make_root:
        os.makedirs(d, exist_ok=True)
    dirs = _open_dirs(job, d)
    digests = dict(job.known)
    if job.archive:
        if job.write:
            digests.update(_write_archive(job, d, ctx))
    else:
        digests.update(_copy(job, d, ctx))
        if job.to_hash:
            hashed = run_parallel(
                job.to_hash,
                lambda e, buf: hash_file(os.path.join(d, e.rel), "sha256", buf),
                job.workers,
                ctx,
                True,
            )
            digests.update({e.rel: h for e, h in zip(job.to_hash, hashed, strict=True)})
    if job.write_document:
        document = _fill(job, digests)
        write_bytes_atomic(os.path.join(d, DOCUMENT), _render(document))
    for path, mode, mtime_ns in reversed(dirs):
        if mode & statmod.S_IRWXU != statmod.S_IRWXU:
            os.chmod(path, mode)
        os.utime(path, ns=(mtime_ns, mtime_ns))
    outputs = dict(plan.outputs)
    if job.archive:
        outputs["checksums"] = {os.path.join(d, job.archive): digests[job.archive]}
    else:
        outputs["checksums"] = {
            os.path.join(d, e.rel): digests[e.rel] for e in job.entries if e.kind == "file"
        }
    return Result(effects=plan.effects, outputs=outputs)


def _open_dirs(job: Job, root: str) -> list[tuple[str, int, int]]:
    """Create the delivery's missing directories (loose files only), and keep
    those of directory products writable while files go in; returns those
    whose mode and mtime are set once their files are in."""
    out: list[tuple[str, int, int]] = []
    if job.archive:
        return out
    made = {e.rel for e in job.make}
    for e in job.entries:
        if e.kind != "dir":
            continue
        path = os.path.join(root, e.rel)
        if e.rel in made:
            os.mkdir(path)
        if e.source is not None:
            if e.rel in made or e.mode & statmod.S_IRWXU != statmod.S_IRWXU:
                os.chmod(path, e.mode | statmod.S_IRWXU)
            out.append((path, e.mode, e.mtime_ns))
    return out


def _copy(job: Job, root: str, ctx: StepContext) -> dict[str, str]:
    """Copy the files to write into the delivery, hashing each in the same pass;
    each digest is recorded in the group's record of its staging area at once,
    so a run that continues this one after a kill need not read the file again."""
    files = sorted(job.write, key=lambda e: e.size, reverse=True)
    umask = current_umask()
    cache = ctx.digests
    task = ctx.progress.task(
        "deliver", total_bytes=sum(e.size for e in files), total_files=len(files)
    )
    lock = threading.Lock()

    def one(e: Entry, buf: bytearray | None) -> str:
        assert e.source is not None
        dest = os.path.join(root, e.rel)
        record = None
        if cache is not None:

            def record(digest: str) -> None:
                cache.add(dest, e.size, e.mtime_ns, "sha256", digest)

        digest = copy_file(
            e.source, dest, e.mode, e.mtime_ns, umask, "sha256", buf, on_digest=record
        )
        if os.stat(dest).st_size != e.size:
            raise StepError("changed while it was being delivered", path=e.source)
        assert digest is not None
        with lock:
            task.advance(bytes=e.size, files=1)
        return digest

    try:
        digests = run_parallel(files, one, job.workers, ctx, buffered=True)
    finally:
        task.close()
    return {e.rel: d for e, d in zip(files, digests, strict=True)}


def _write_archive(job: Job, root: str, ctx: StepContext) -> dict[str, str]:
    """Write the tar archive (through its temporary name) and hash it and its
    files. The files are hashed on a second thread while the archive is written
    (hashlib and the kernel's copy release the GIL), then the archive is hashed
    from the page cache."""
    assert job.archive is not None
    path = os.path.join(root, job.archive)
    tmp = temp_path(path)
    files = [e for e in job.entries if e.kind == "file"]
    sources = [(e.rel, e.source) for e in files if e.source is not None]
    task = ctx.progress.task("tar", total_bytes=sum(e.size for e in files), total_files=len(files))
    with ThreadPoolExecutor(max_workers=1) as background:
        member_digests = background.submit(
            run_parallel,
            sources,
            lambda item, buf: hash_file(item[1], "sha256", buf),
            max(1, job.workers - 1),
            ctx,
            True,
        )
        fd = create_temp(tmp, 0o644, os.O_WRONLY)
        try:
            try:
                tarball.write_tar(
                    fd, job.members, "none", progress=lambda b, n: task.advance(bytes=b, files=n)
                )
            except tarball.SourceChanged as e:
                raise StepError("changed while it was being delivered", path=e.path) from None
            if os.fstat(fd).st_size != job.document["archive"]["bytes"]:
                raise StepError("the archive does not have its planned size", path=path)
            os.rename(tmp, path)  # still held: nobody takes it for a leftover
        except BaseException:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(tmp)
            raise
        finally:
            os.close(fd)
            task.close()
        digests = {job.archive: hash_file(path, "sha256", bytearray(BUFFER_SIZE))}
        for (rel, _), digest in zip(sources, member_digests.result(), strict=True):
            digests[rel] = digest
    return digests
