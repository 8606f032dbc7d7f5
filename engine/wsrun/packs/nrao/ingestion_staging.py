"""The ``ingestion-staging`` step type: collect a processing directory's products for ingest."""

from __future__ import annotations

import fnmatch
import json
import os
import shutil
import time
from dataclasses import dataclass, field
from typing import Any

from wsrun.core.effects import Effect, create_dir, create_file
from wsrun.core.fileio import atomic_write, write_bytes_atomic
from wsrun.core.fs import ContentUnknown
from wsrun.core.step import Plan, Result, StepContext, StepError
from wsrun.formats import tarball, tarread
from wsrun.formats.tarcheck import is_tar_name, read_through

NAME = "ingestion-staging"
DOC = """Collect the products of a processing directory into an ingestion staging area.

The collectors of NRAO's ingest envoy (calibration-table-collector.sh,
image-product-collector.sh) as one step. ``source`` is a workflow's processing
directory (it holds ``metadata.json``); the staging area is
``<workspaces_root>/staging/<kind>-<name of the processing directory>``, the same
name on every run so a failed ingestion is retried on the same files
(``ingestion-source`` says where, before anything is staged). ``ingest_envoy`` runs
this step inside an atomic group (``group:``) whose destination is that directory,
so the staging area appears whole or not at all and a killed staging is continued:
files already staged whole are not written again. It stages:

- ``calibration``: ``<fileSetIds>.caltables.tar`` (a tar of ``products/*caltables*``:
  the calibration tables tar or directory) and ``weblog.tgz``; the input is the
  execution block (``productLocator`` in metadata.json);
- ``image``: the FITS images and PNG thumbnails of ``products/``, ``weblog.tgz``,
  ``pipeline_artifacts.tar`` (``casa_pipescript.py``, ``*.pprequest.xml``,
  ``PPR.xml`` and the ``*.log`` files of ``products/`` and ``working/``) and
  ``aux_image_metadata.json`` (the processing directory's own, else one made
  from metadata.json); the input is the calibration (``calProductLocator``).

``weblog.tgz`` is always made fresh and holds only the newest weblog: the
``pipeline-*`` directory with the greatest name (they are named by time) that has
an ``html`` directory, in ``products/`` or ``working/``; without one, the
pipeline's ``products/weblog.tgz`` is staged as is. Generated tar files are
streamed to disk (never held in memory) and byte-for-byte the same for the same
files; one that is not older than its newest member and lists the same members
(name, size, mode, mtime) is kept, so a re-run changes nothing. The size of
``weblog.tgz`` is only known once it is written.

A tar the pipeline made (a calibration tables file, ``products/weblog.tgz``) is
read through before it is staged: a file that is not a whole tar archive (a
truncated tgz, a random file with a caltables name) is refused, naming it.

Any other ``source`` (a staging directory, or another kind) is passed through:
the outputs then name ``staging_directory`` and no inputs.
"""

KINDS = ("calibration", "image", "observation", "seci")
AUX_METADATA = "aux_image_metadata.json"
ARTIFACT_PATTERNS = ("casa_pipescript.py", "*.pprequest.xml", "PPR.xml", "*.log")


@dataclass
class _Tar:
    """A tar to generate: written straight to disk from ``members`` in apply."""

    members: list[tarball.Member]
    compression: str = "none"
    #: Members that must themselves be tar archives (the pipeline's caltables tar).
    tars: list[str] = field(default_factory=list)


#: What a staged file is made from: a file to copy, small generated content, or a tar.
What = str | bytes | _Tar

SCHEMA: dict[str, Any] = {
    "type": "object",
    "additionalProperties": False,
    "required": ["source", "kind"],
    "properties": {
        "source": {
            "description": "A processing directory (with metadata.json) to collect from, or a "
            "staging directory that is already staged.",
            "type": "string",
            "minLength": 1,
            "examples": ["/lustre/aoc/cluster/pipeline/dsoc-prod/spool/tmp8a7b6c"],
        },
        "kind": {
            "description": "What is being ingested; only calibration and image are collected.",
            "enum": list(KINDS),
        },
        "workspaces_root": {
            "description": "The workspaces root; the staging area is its staging/ directory. "
            "Needed only when collecting.",
            "type": ["string", "null"],
            "examples": ["/lustre/aoc/cluster/pipeline/dsoc-prod/workspaces"],
        },
        "staging_directory": {
            "description": "The staging directory to use when ``source`` is not a processing "
            "directory (default: ``source``).",
            "type": ["string", "null"],
        },
    },
}

EXAMPLES = [
    """- id: stage
  uses: ingestion-staging
  with:
    source: "{{ inputs.calibration }}"
    kind: calibration
    workspaces_root: "{{ settings.workspaces_root }}"
"""
]

OUTPUTS = {
    "staging": "the staging directory",
    "inputs": "locators of the input products read from metadata.json ([] when passed through)",
    "collected": "whether the products were collected from a processing directory",
    "timestamp": "when the products were made, as YYYY_MM_DDTHH_MM_SS (UTC): the mtime of "
    "metadata.json, or of the newest staged entry when passed through; it names the "
    "ingestion artifacts tar and stays the same on a re-run",
}


@dataclass
class Source:
    """Where an ingest's products are: a processing directory to collect into the
    staging area, or a directory already staged (``collected`` false)."""

    staging: str
    collected: bool
    #: Locators of the input products (from metadata.json; [] for a staged directory).
    inputs: list[str]
    timestamp: str
    metadata: dict[str, Any] = field(default_factory=dict)

    def outputs(self) -> dict[str, Any]:
        return {
            "staging": self.staging,
            "inputs": self.inputs,
            "collected": self.collected,
            "timestamp": self.timestamp,
        }


def locate(params: dict[str, Any], ctx: StepContext) -> Source:
    """Where ``params`` (this step's) say the products are; also the
    ``ingestion-source`` step. The staging directory of a processing directory is
    ``ctx.path``'s, so that inside an atomic group it is the staged one."""
    source = ctx.path(params["source"])
    kind = params["kind"]
    meta_path = os.path.join(source, "metadata.json")
    if kind not in ("calibration", "image") or not ctx.fs.is_file(meta_path):
        staging = ctx.path(params.get("staging_directory") or params["source"])
        return Source(staging, False, [], _timestamp(_newest_staged(ctx, staging)))
    metadata = _metadata(ctx, meta_path)
    made = ctx.fs.stat(meta_path)
    root = params.get("workspaces_root")
    if not root:
        raise StepError(
            "no workspaces root (set edu.nrao.workspaces.ProcessingSettings.rootDirectory)"
        )
    name = f"{kind}-{os.path.basename(source)}"
    staging = ctx.path(os.path.join(ctx.path(root), "staging", name))
    key = "productLocator" if kind == "calibration" else "calProductLocator"
    inputs = [_key(metadata, key, meta_path)]
    return Source(staging, True, inputs, _timestamp(made.mtime_ns if made else 0), metadata)


def plan(params: dict[str, Any], ctx: StepContext) -> Plan:
    found = locate(params, ctx)
    if not found.collected:
        return Plan(effects=[], outputs=found.outputs(), data=[])
    source, staging, metadata = ctx.path(params["source"]), found.staging, found.metadata
    products = os.path.join(source, "products")
    if not ctx.fs.is_dir(products):
        raise StepError("processing directory has no products/", path=source)
    if params["kind"] == "calibration":
        files = _calibration(ctx, source, products, metadata)
    else:
        files = _image(ctx, source, products, metadata)
    effects = [create_dir(d) for d in _missing_dirs(ctx, staging)]
    todo: list[tuple[str, What]] = []
    for name, what in files:
        target = os.path.join(staging, name)
        effect = _plan_file(ctx, target, what)
        if effect is not None:
            _vouch(ctx, name, what)
            effects.append(effect)
            todo.append((target, what))
    return Plan(effects=effects, outputs=found.outputs(), data=todo)


def _newest_staged(ctx: StepContext, staging: str) -> int:
    """The newest mtime among the products in a staging directory, leaving out what
    the envoy itself writes there (so a re-run finds the same time)."""
    if not ctx.fs.is_dir(staging):
        return 0
    times = [
        info.mtime_ns
        for name in ctx.fs.listdir(staging)
        if name != "ingestion-manifest.json" and not name.startswith("ingestion_artifacts")
        if (info := ctx.fs.stat(os.path.join(staging, name))) is not None
    ]
    return max(times, default=0)


def _timestamp(mtime_ns: int) -> str:
    return time.strftime("%Y_%m_%dT%H_%M_%S", time.gmtime(mtime_ns // 1_000_000_000))


def apply(plan: Plan, ctx: StepContext) -> Result:
    for e in plan.effects:
        if e.op == "create_dir":
            os.makedirs(e.path, exist_ok=True)
    for target, what in plan.data:
        ctx.check_deadline()
        stage_file(target, what, ctx)
    return Result(effects=list(plan.effects), outputs=plan.outputs)


def stage_file(target: str, what: What, ctx: StepContext) -> None:
    """Write one staged file whole (temporary name, then rename): a killed run
    leaves it whole or absent, and the next run stages only what is absent."""
    if isinstance(what, bytes):
        write_bytes_atomic(target, what)
    elif isinstance(what, _Tar):
        _write(target, what, ctx)
    else:
        with open(what, "rb") as src, atomic_write(target, 0o644) as dst:
            shutil.copyfileobj(src, dst, 1 << 20)
        st = os.stat(what)
        os.utime(target, ns=(st.st_atime_ns, st.st_mtime_ns))


def _calibration(
    ctx: StepContext, source: str, products: str, metadata: dict[str, Any]
) -> list[tuple[str, What]]:
    tables = [n for n in sorted(ctx.fs.listdir(products)) if "caltables" in n]
    if not tables:
        raise StepError("no calibration tables (*caltables*) in products/", path=products)
    members = [m for n in tables for m in _tree(ctx, products, n)]
    tar = _tar(ctx, members)
    # A tables file (not a directory) is the pipeline's caltables tar: it must be one.
    tar.tars = [p for n in tables if ctx.fs.is_file(p := os.path.join(products, n))]
    name = f"{metadata.get('fileSetIds') or os.path.basename(source)}.caltables.tar"
    return [(name, tar), ("weblog.tgz", _weblog(ctx, source, products))]


def _image(
    ctx: StepContext, source: str, products: str, metadata: dict[str, Any]
) -> list[tuple[str, What]]:
    names = sorted(ctx.fs.listdir(products))
    files: list[tuple[str, What]] = [
        (n, os.path.join(products, n)) for n in names if n.endswith((".fits", ".png"))
    ]
    if not any(n.endswith(".fits") for n, _ in files):
        raise StepError("no FITS images in products/", path=products)
    files.append(("weblog.tgz", _weblog(ctx, source, products)))
    artifacts = []
    for sub in ("products", "working"):
        d = os.path.join(source, sub)
        if ctx.fs.is_dir(d):
            for n in sorted(ctx.fs.listdir(d)):
                p = os.path.join(d, n)
                if any(fnmatch.fnmatch(n, pat) for pat in ARTIFACT_PATTERNS) and ctx.fs.is_file(p):
                    artifacts.append((n, p))
    files.append(("pipeline_artifacts.tar", _tar(ctx, artifacts)))
    aux = next(
        (
            p
            for p in (os.path.join(products, AUX_METADATA), os.path.join(source, AUX_METADATA))
            if ctx.fs.is_file(p)
        ),
        None,
    )
    if aux is None:
        made = {
            "projectMetadata": metadata.get("projectMetadata"),
            "calProductLocator": metadata.get("calProductLocator"),
            "sdmId": metadata.get("sdmId") or metadata.get("fileSetIds"),
            "workflowName": metadata.get("workflowName"),
        }
        files.append((AUX_METADATA, (json.dumps(made, indent=2) + "\n").encode()))
    else:
        files.append((AUX_METADATA, aux))
    return files


def _weblog(ctx: StepContext, source: str, products: str) -> str | _Tar:
    """A fresh tgz of the newest ``pipeline-*/html``, else products/weblog.tgz."""
    found = []
    for sub in ("products", "working"):
        d = os.path.join(source, sub)
        if ctx.fs.is_dir(d):
            for n in ctx.fs.listdir(d):
                if n.startswith("pipeline-") and ctx.fs.is_dir(os.path.join(d, n, "html")):
                    found.append((n, d))
    if found:
        name, d = max(found)
        return _tar(ctx, _tree(ctx, d, name), "gz")
    tgz = os.path.join(products, "weblog.tgz")
    if not ctx.fs.is_file(tgz):
        raise StepError("no weblog (pipeline-*/html or products/weblog.tgz)", path=source)
    return tgz


def _tree(ctx: StepContext, base: str, name: str) -> list[tuple[str, str]]:
    """(member name, path) of the file or every file below the directory ``base/name``."""
    path = os.path.join(base, name)
    if ctx.fs.is_file(path):
        return [(name, path)]
    return [
        (os.path.join(name, rel), os.path.join(path, rel))
        for rel, info in ctx.fs.walk(path)
        if info.is_file
    ]


def _tar(ctx: StepContext, members: list[tuple[str, str]], compression: str = "none") -> _Tar:
    """A tar of ``members`` (name, path), byte-for-byte the same for the same files."""
    planned = []
    for name, path in members:
        info = ctx.fs.stat(path)
        if info is None or not info.is_file:
            raise StepError("vanished while staging", path=path)
        planned.append(
            tarball.Member(
                name, "file", path, info.size, info.mode & 0o7777, info.mtime_ns // 1_000_000_000
            )
        )
    return _Tar(planned, compression)


def _write(target: str, tar: _Tar, ctx: StepContext) -> None:
    """Write ``tar`` to ``target`` through a temporary file, streaming each member."""
    size = tarball.archive_size(tar.members)
    task = ctx.progress.task(
        "tar", total_bytes=sum(m.size for m in tar.members), total_files=len(tar.members)
    )

    def progress(n: int, files: int) -> None:
        task.advance(bytes=n, files=files)
        ctx.check_deadline()

    try:
        with atomic_write(target, 0o644) as f:
            try:
                tarball.write_tar(f.fileno(), tar.members, tar.compression, None, progress, size)
            except tarball.SourceChanged as e:
                raise StepError(
                    "changed while the step ran (planned size or type differs); run it again",
                    path=e.path,
                ) from None
            written = os.fstat(f.fileno()).st_size
            if tar.compression == "none" and written != size:
                raise StepError(f"wrote {written} bytes, planned {size}", path=target)
    finally:
        task.close()


def _vouch(ctx: StepContext, name: str, what: What) -> None:
    """Read through the pipeline's tar files ``what`` stages as ``name``."""
    if isinstance(what, _Tar):
        paths = what.tars
    else:
        paths = [what] if isinstance(what, str) and is_tar_name(name) else []
    for path in paths:
        try:
            with ctx.fs.open(path) as f:
                read_through(f)
        except ContentUnknown:
            continue  # a dry run: an earlier step writes it
        except tarread.CorruptArchive as e:
            raise StepError(f"cannot be staged: {e}", path=path) from None


def _plan_file(ctx: StepContext, target: str, what: What) -> Effect | None:
    """The effect of staging ``what`` (content, a tar, or a file to copy) at ``target``, if
    needed."""
    existing = ctx.fs.lstat(target)
    if existing is not None and not existing.is_file:
        raise StepError("exists and is not a regular file; refusing to replace it", path=target)
    if isinstance(what, bytes):
        if existing and existing.size == len(what) and _read(ctx, target) == what:
            return None
        return create_file(target, bytes=len(what), content=what, mode=0o644)
    if isinstance(what, _Tar):
        size = tarball.archive_size(what.members) if what.compression == "none" else None
        if existing and tarread.holds(
            target,
            ctx.fs.open,
            existing,
            what.members,
            what.compression,
            size,
            max((m.mtime * 1_000_000_000 for m in what.members), default=0),
        ):
            return None
        return create_file(target, bytes=size, mode=0o644)
    src = ctx.fs.stat(what)
    if src is None:
        raise StepError("vanished while staging", path=what)
    if existing and existing.size == src.size and existing.mtime_ns == src.mtime_ns:
        return None
    return create_file(target, bytes=src.size, source=what, mode=0o644)


def _missing_dirs(ctx: StepContext, directory: str) -> list[str]:
    missing = []
    while not ctx.fs.is_dir(directory):
        if ctx.fs.exists(directory):
            raise StepError("exists and is not a directory", path=directory)
        missing.append(directory)
        directory = os.path.dirname(directory)
    return list(reversed(missing))


def _metadata(ctx: StepContext, path: str) -> dict[str, Any]:
    try:
        data = json.loads(_read(ctx, path))
    except ValueError as e:
        raise StepError(f"not valid JSON: {e}", path=path) from None
    if not isinstance(data, dict):
        raise StepError("not a JSON object", path=path)
    return data


def _key(metadata: dict[str, Any], key: str, path: str) -> str:
    value = metadata.get(key)
    if not isinstance(value, str) or not value:
        raise StepError(f"metadata.json has no {key}", path=path)
    return value


def _read(ctx: StepContext, path: str) -> bytes:
    try:
        with ctx.fs.open(path) as f:
            return f.read()
    except ContentUnknown:
        raise StepError("content only known after the real run", path=path) from None
