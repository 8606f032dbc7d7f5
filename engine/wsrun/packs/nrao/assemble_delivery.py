"""The ``assemble-delivery`` step type: deliver identified products, whole or not at all."""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import secrets
import shutil
import stat as statmod
import threading
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import quote

from wsrun.core.effects import Effect, create_dir, create_file, remove
from wsrun.core.filecopy import BUFFER_SIZE, copy_file, current_umask, hash_file
from wsrun.core.fileio import TMP_SUFFIX, hidden_name, is_temp_name, write_bytes_atomic
from wsrun.core.fs import FileInfo, WorldView, norm
from wsrun.core.step import Plan, Result, StepContext, StepError
from wsrun.formats import tarball
from wsrun.formats.tarball import Member
from wsrun.steps.copy import run_parallel

NAME = "assemble-delivery"
DOC = """Deliver a list of products into a new directory, with SHA256SUMS and delivery.json.

The last step of a delivery (see the ``nrao/deliver`` recipe and docs/deliver.md):
it takes the products ``find-products`` identified and lays them out by type
(images/, calibration/, weblog/, scripts/, logs/, execution blocks and
measurement sets whole, by name), either as loose files or packed into one tar
archive. Every file is hashed while it is copied (one read), and the delivery
gets a ``SHA256SUMS`` that ``sha256sum -c`` checks and a ``delivery.json``
(schemas/delivery.schema.json) that lists every product with its files, sizes
and checksums.

The destination is ``local_destination[/prefix]``, or without one a new
directory with an unguessable name under ``download_directory`` (plus
``/prefix``), reachable at ``download_url/<name>[/prefix]``. It is assembled
under a hidden staging name beside it and renamed into place at the end, so a
reader never sees half a delivery and a failure leaves nothing behind. A
destination that already holds this very delivery (same products, sizes and
mtimes) is left alone (status ok); one that holds a different delivery is
refused unless ``force`` is set; a non-empty directory that holds no delivery is
always refused.
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
STAGING_SUFFIX = ".wsrun-staging"
OLD_SUFFIX = ".wsrun-old"
DOWNLOAD_DIRECTORY_SETTING = "edu.nrao.workspaces.DeliverySettings.downloadDirectory"
DOWNLOAD_URL_SETTING = "edu.nrao.workspaces.DeliverySettings.downloadUrl"
#: Stands for a digest until apply computes it; as long as a real one, so
#: file sizes are known at plan time.
PENDING = "0" * 64
MAX_LINK_DEPTH = 20

_NULLABLE_STRING = {"type": ["string", "null"]}

SCHEMA: dict[str, Any] = {
    "type": "object",
    "additionalProperties": False,
    "required": ["products", "source"],
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
        "local_destination": {
            **_NULLABLE_STRING,
            "description": "Deliver to this directory (created if missing) instead of the "
            "download area.",
            "examples": ["/home/user/deliveries"],
        },
        "download_directory": {
            **_NULLABLE_STRING,
            "description": "The web root: without local_destination the delivery goes to a new "
            "unguessable directory below it.",
            "examples": ["/lustre/aoc/cluster/pipeline/dsoc-prod/downloads"],
        },
        "download_url": {
            **_NULLABLE_STRING,
            "description": "The URL of download_directory; the delivery's URL is built from it.",
            "examples": ["https://dl-nrao.aoc.nrao.edu"],
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
        "force": {
            "type": "boolean",
            "default": False,
            "description": "Replace a destination that holds a different delivery.",
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

OUTPUTS = {
    "destination": "the delivery directory",
    "url": "its download URL (null for a local destination)",
    "archive": "path of the tar archive, or null",
    "products": "number of products delivered",
    "files": "number of product files delivered",
    "bytes": "total size of the product files",
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
    destination: str
    #: The directory renamed into place at the end (the destination, or its
    #: topmost missing ancestor).
    top: str
    #: Missing directories between ``top`` and the destination (both exclusive).
    chain: list[str]
    #: "new" (top does not exist), "empty" (an empty destination), "replace".
    mode: str
    entries: list[Entry]
    document: dict[str, Any]
    archive: str | None = None
    members: list[Member] = field(default_factory=list)
    workers: int = 1
    noop: bool = False

    @property
    def staging(self) -> str:
        head, tail = os.path.split(self.top)
        return os.path.join(head, hidden_name(tail, STAGING_SUFFIX))

    def staged(self, path: str) -> str:
        """Where a final path is while the delivery is assembled."""
        return self.staging + path[len(self.top) :]


# ---- plan -------------------------------------------------------------------------


def destinations(params: dict[str, Any], ctx: StepContext) -> list[str]:
    """The paths this step writes, locked (wsrun.core.locks) before it plans: the
    local destination, or its topmost missing ancestor, which is what gets
    renamed into place. A download directory gets a new random name each run."""
    local = params.get("local_destination")
    if not local:
        return []
    path = ctx.path(local)
    if params.get("prefix"):
        path = os.path.join(path, params["prefix"])
    while not os.path.lexists(os.path.dirname(path)) and os.path.dirname(path) != path:
        path = os.path.dirname(path)
    return [path]


def plan(params: dict[str, Any], ctx: StepContext) -> Plan:
    fs = ctx.fs
    source = ctx.path(params["source"])
    prefix = params.get("prefix") or None
    if prefix is not None and (
        "/" in prefix or prefix in (".", "..") or prefix.startswith(".") or "\0" in prefix
    ):
        raise StepError(f"prefix {prefix!r} must be a plain directory name")
    destination, url = _destination(params, prefix, ctx)
    tar_name = f"{prefix or os.path.basename(source.rstrip(os.sep)) or 'delivery'}.tar"
    layout = {**DEFAULT_LAYOUT, **(params.get("layout") or {})}
    products = params["products"]
    entries = _entries(fs, products, layout, ctx, reserved={SUMS, DOCUMENT, tar_name})
    for product in products:
        path = ctx.path(product["path"])
        if _inside(destination, path) or _inside(path, destination):
            raise StepError(f"the destination {destination} and the product overlap", path=path)
    document = _document(
        source,
        destination,
        url,
        prefix,
        params,
        products,
        entries,
        tar_name if params.get("tar") else None,
    )
    job = Job(
        destination=destination,
        top=destination,
        chain=[],
        mode="new",
        entries=entries,
        document=document,
        archive=tar_name if params.get("tar") else None,
        workers=params.get("workers") or os.cpu_count() or 1,
    )
    if job.archive:
        job.members = _members(source, entries, tar_name[: -len(".tar")])
        document["archive"]["bytes"] = tarball.archive_size(job.members)
    outputs = {
        "destination": destination,
        "url": url,
        "archive": os.path.join(destination, job.archive) if job.archive else None,
        "products": len(products),
        "files": sum(1 for e in entries if e.kind == "file"),
        "bytes": sum(e.size for e in entries if e.kind == "file"),
    }
    effects: list[Effect] = []
    info = fs.stat(destination)
    if info is not None:
        if not info.is_dir:
            raise StepError("the destination exists and is not a directory", path=destination)
        state = _existing(fs, job)
        if state == "same":
            job.noop = True
            return Plan(outputs=outputs, data=job)
        if state == "empty":
            job.mode = "empty"
        elif state == "delivery":
            if not params.get("force"):
                raise StepError(
                    "the destination already holds a different delivery (--force replaces it)",
                    path=destination,
                )
            job.mode = "replace"
            effects += [remove(destination), create_dir(destination)]
        else:
            raise StepError(
                "the destination is not empty and holds no delivery: refusing to deliver into it",
                path=destination,
            )
    else:
        job.top, job.chain = _missing_parents(fs, destination)
        new_dirs = [job.top, *job.chain] + ([destination] if destination != job.top else [])
        effects += [create_dir(p) for p in new_dirs]
    effects += _content_effects(job)
    return Plan(effects=effects, outputs=outputs, data=job)


def _destination(
    params: dict[str, Any], prefix: str | None, ctx: StepContext
) -> tuple[str, str | None]:
    local = params.get("local_destination")
    if local:
        root = ctx.path(local)
        return (os.path.join(root, prefix) if prefix else root), None
    directory = params.get("download_directory")
    base_url = params.get("download_url")
    if not directory:
        raise StepError(
            "no local destination (-l) given and no download directory configured "
            f"(setting {DOWNLOAD_DIRECTORY_SETTING})"
        )
    if not base_url:
        raise StepError(
            f"no local destination (-l) given and no download URL configured (setting {DOWNLOAD_URL_SETTING})"
        )
    directory = ctx.path(directory)
    if not ctx.fs.is_dir(directory):
        raise StepError(
            f"the download directory ({DOWNLOAD_DIRECTORY_SETTING}) does not exist", path=directory
        )
    while True:
        token = secrets.token_hex(16)
        if ctx.fs.lstat(os.path.join(directory, token)) is None:
            break
    destination = (
        os.path.join(directory, token, prefix) if prefix else os.path.join(directory, token)
    )
    url = f"{base_url.rstrip('/')}/{token}" + (f"/{quote(prefix)}" if prefix else "")
    return destination, url


def _inside(path: str, directory: str) -> bool:
    return path == directory or path.startswith(directory.rstrip(os.sep) + os.sep)


def _missing_parents(fs: WorldView, destination: str) -> tuple[str, list[str]]:
    """(the topmost missing directory, the missing ones below it down to the
    destination's parent); an ancestor that is not a directory is an error."""
    missing = [destination]
    path = os.path.dirname(destination)
    while True:
        info = fs.stat(path)
        if info is not None:
            if not info.is_dir:
                raise StepError(f"cannot deliver to {destination}: not a directory", path=path)
            break
        missing.append(path)
        parent = os.path.dirname(path)
        if parent == path:
            break
        path = parent
    missing.reverse()
    return missing[0], missing[1:-1]


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


def _content_effects(job: Job) -> list[Effect]:
    d = job.destination
    effects: list[Effect] = []
    if job.archive:
        effects.append(create_file(os.path.join(d, job.archive), job.document["archive"]["bytes"]))
    else:
        for e in job.entries:
            path = os.path.join(d, e.rel)
            if e.kind == "dir":
                effects.append(create_dir(path))
            else:
                effects.append(create_file(path, e.size, source=e.source))
    rendered = _render(job.document)
    effects.append(create_file(os.path.join(d, DOCUMENT), len(rendered)))
    effects.append(create_file(os.path.join(d, SUMS), len(_sums(job, job.document, rendered))))
    return effects


# ---- delivery.json and SHA256SUMS -------------------------------------------------------


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


def _sums(job: Job, document: dict[str, Any], rendered: bytes) -> bytes:
    """SHA256SUMS: every delivered file (or the archive) and delivery.json
    (``rendered``)."""
    if job.archive:
        files = [(job.archive, document["archive"]["sha256"])]
    else:
        files = [(f["path"], f["sha256"]) for p in document["products"] for f in p["files"]]
    files.append((DOCUMENT, hashlib.sha256(rendered).hexdigest()))
    files.sort(key=lambda item: os.fsencode(item[0]))
    return b"".join(sums_line(digest, path) for path, digest in files)


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


# ---- an existing destination ----------------------------------------------------------


def _existing(fs: WorldView, job: Job) -> str:
    """What the existing destination holds: "empty", "same" (this very
    delivery), "delivery" (another one) or "other"."""
    d = job.destination
    names = fs.listdir(d)
    if not names:
        return "empty"
    if DOCUMENT not in names:
        return "other"
    try:
        with fs.open(os.path.join(d, DOCUMENT)) as f:
            old = json.loads(f.read())
    except (OSError, ValueError, UnicodeDecodeError):
        return "delivery"
    if _pending(old) != _pending(job.document):
        return "delivery"
    rendered = _render(job.document)
    expected: dict[str, tuple[str, int, int | None]] = {
        DOCUMENT: ("file", len(rendered), None),
        SUMS: ("file", len(_sums(job, job.document, rendered)), None),
    }
    if job.archive:
        expected[job.archive] = ("file", job.document["archive"]["bytes"], None)
    else:
        for e in job.entries:
            expected[e.rel] = ("dir", 0, None) if e.kind == "dir" else ("file", e.size, e.mtime_ns)
    found = 0
    for rel, info in fs.walk(d):
        want = expected.get(rel)
        if want is None or want[0] != info.kind:
            return "delivery"
        if info.kind == "file" and (info.size != want[1] or want[2] not in (None, info.mtime_ns)):
            return "delivery"
        found += 1
    return "same" if found == len(expected) else "delivery"


# ---- apply --------------------------------------------------------------------------


def apply(plan: Plan, ctx: StepContext) -> Result:
    job: Job = plan.data
    staging = job.staging
    if os.path.lexists(staging):  # left by a run that was killed
        shutil.rmtree(staging)
    if job.noop:
        _remove_old(job)
        return Result(outputs=plan.outputs)
    try:
        os.mkdir(staging)
        for path in [*job.chain, job.destination]:
            if path != job.top:
                os.mkdir(job.staged(path))
        root = job.staged(job.destination)
        made = _make_dirs(job, root)
        digests = _write_archive(job, root, ctx) if job.archive else _copy(job, root, ctx)
        document = _fill(job, digests)
        rendered = _render(document)
        write_bytes_atomic(os.path.join(root, DOCUMENT), rendered)
        write_bytes_atomic(os.path.join(root, SUMS), _sums(job, document, rendered))
        for path, mode, mtime_ns in reversed(made):
            if mode & statmod.S_IRWXU != statmod.S_IRWXU:
                os.chmod(path, mode)
            os.utime(path, ns=(mtime_ns, mtime_ns))
        _install(job, ctx)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    return Result(effects=plan.effects, outputs=plan.outputs)


def _make_dirs(job: Job, root: str) -> list[tuple[str, int, int]]:
    """Create the delivery's directories (loose files only); returns those whose
    mode and mtime are set once their files are in."""
    made: list[tuple[str, int, int]] = []
    if job.archive:
        return made
    for e in job.entries:
        if e.kind != "dir":
            continue
        path = os.path.join(root, e.rel)
        os.mkdir(path)
        if e.source is not None:
            os.chmod(path, e.mode | statmod.S_IRWXU)
            made.append((path, e.mode, e.mtime_ns))
    return made


def _copy(job: Job, root: str, ctx: StepContext) -> dict[str, str]:
    """Copy every file into the staging tree, hashing it in the same pass."""
    files = sorted((e for e in job.entries if e.kind == "file"), key=lambda e: e.size, reverse=True)
    umask = current_umask()
    task = ctx.progress.task(
        "deliver", total_bytes=sum(e.size for e in files), total_files=len(files)
    )
    lock = threading.Lock()

    def one(e: Entry, buf: bytearray | None) -> str:
        assert e.source is not None
        dest = os.path.join(root, e.rel)
        digest = copy_file(e.source, dest, e.mode, e.mtime_ns, umask, "sha256", buf)
        if os.stat(dest).st_size != e.size:
            raise StepError("changed while it was being delivered", path=e.source)
        with lock:
            task.advance(bytes=e.size, files=1)
        assert digest is not None
        return digest

    try:
        digests = run_parallel(files, one, job.workers, ctx, buffered=True)
    finally:
        task.close()
    return {e.rel: d for e, d in zip(files, digests, strict=True)}


def _write_archive(job: Job, root: str, ctx: StepContext) -> dict[str, str]:
    """Write the tar archive and hash it and its files. The files are hashed on
    a second thread while the archive is written (hashlib and the kernel's copy
    release the GIL), then the archive is hashed from the page cache."""
    assert job.archive is not None
    path = os.path.join(root, job.archive)
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
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o644)
        try:
            tarball.write_tar(
                fd, job.members, "none", progress=lambda b, n: task.advance(bytes=b, files=n)
            )
        except tarball.SourceChanged as e:
            raise StepError("changed while it was being delivered", path=e.path) from None
        finally:
            os.close(fd)
            task.close()
        if os.stat(path).st_size != job.document["archive"]["bytes"]:
            raise StepError("the archive does not have its planned size", path=path)
        digests = {job.archive: hash_file(path, "sha256", bytearray(BUFFER_SIZE))}
        for (rel, _), digest in zip(sources, member_digests.result(), strict=True):
            digests[rel] = digest
    return digests


def _install(job: Job, ctx: StepContext) -> None:
    """Rename the staged delivery into place."""
    if job.mode != "replace":
        # over a missing path, or over an empty destination directory
        os.rename(job.staging, job.top)
        return
    old = _remove_old(job)
    os.rename(job.destination, old)
    try:
        os.rename(job.staging, job.destination)
    except BaseException:
        with contextlib.suppress(OSError):
            os.rename(old, job.destination)
        raise
    try:
        shutil.rmtree(old)
    except OSError as e:  # the new delivery is in place: do not fail it for this
        ctx.log(f"warning: could not remove the replaced delivery {old}: {e}")


def _remove_old(job: Job) -> str:
    """Remove the replaced delivery a killed run left aside; returns its name."""
    head, tail = os.path.split(job.destination)
    old = os.path.join(head, hidden_name(tail, OLD_SUFFIX))
    if os.path.lexists(old):
        shutil.rmtree(old)
    return old
