"""The ``ingest`` step type: ingest the products an ingestion manifest names into the archive."""

from __future__ import annotations

import contextlib
import json
import os
from dataclasses import dataclass
from functools import cache
from typing import Any

from wsrun.core.db import mask
from wsrun.core.effects import Effect, EffectSpool
from wsrun.core.fs import ContentUnknown, WorldView
from wsrun.core.hashing import hash_each
from wsrun.core.spool import SortedSpool
from wsrun.core.step import Plan, Result, StepContext, StepError
from wsrun.formats.tarcheck import is_tar_name, read_through, read_zip_through
from wsrun.formats.tarread import CorruptArchive
from wsrun.stores.archive.records import (
    FileSpec,
    FileSpool,
    IngestRequest,
    ProductRecord,
    ProductSpec,
    new_locator,
)
from wsrun.stores.archive.store import AlreadyIngested, ArchiveError, ArchiveStore, archive_url

NAME = "ingest"
DOC = """Ingest the products an ingestion manifest names into the archive, all or nothing.

This is the archive's front door (NGAS and the metadata database in the NRAO
system). The manifest (schemas/ingestion-manifest.schema.json) names the staged
files in ``ingestion_path``, their product types, their ancillary products
(weblog, artifacts tar files, thumbnails) and the products they derive from.
Every file is copied into the archive's content store and verified, then the
metadata is committed in one transaction: a failure at any point leaves the
archive as it was. Each product gets a locator (``uid://evla/image/<uuid>``).

Before anything is stored the step refuses what it cannot vouch for: a
telescope that is not one of ALMA, EVLA, GBT, VLA or VLBA (it would become
part of every locator), and any ``*.tar``/``*.tgz`` file (and tar inside
it) that does not read through whole: every header, all member data, the
end-of-archive marker and the compression's own check (gzip's CRC); a
``*.zip`` must have every member pass its CRC. One bad file refuses the whole
manifest.

A manifest already ingested with the very same files is left alone (status
ok, its locators are the outputs). The same science product from the same
ingestion_path with different content is refused unless the manifest sets
``reingest``; then the earlier ingestion is replaced in the same transaction.
The refusal tells the user to set reingest in the manifest, or what
``reingest_hint`` says (a recipe names its own option).
"""

#: The telescopes whose products the archive takes; the name is part of every locator.
TELESCOPES = ("ALMA", "EVLA", "GBT", "VLA", "VLBA")

SCHEMA: dict[str, Any] = {
    "type": "object",
    "additionalProperties": False,
    "required": ["manifest"],
    "properties": {
        "manifest": {
            "description": "The ingestion manifest (JSON); relative ingestion_path values are "
            "taken from its directory.",
            "type": "string",
            "minLength": 1,
            "examples": ["{{ inputs.staging }}/ingestion-manifest.json"],
        },
        "archive": {
            "description": "The archive URL (sqlite:///path or a directory). Default: "
            "$WSRUN_ARCHIVE_URL, else the edu.nrao.archive.url setting, else $WSRUN_HOME/archive.",
            "type": ["string", "null"],
            "examples": ["sqlite:///lustre/archive"],
        },
        "reingest_hint": {
            "description": "What the user does to replace an earlier ingestion, named when "
            "a changed re-ingest is refused (default: set reingest in the manifest).",
            "type": ["string", "null"],
            "examples": ["run again with --reingest"],
        },
    },
}

EXAMPLES = [
    """- id: ingest
  uses: ingest
  with:
    manifest: "{{ inputs.staging }}/ingestion-manifest.json"
"""
]

OUTPUTS = {
    "locators": "locators of the science products ingested",
    "products": "every product ingested (science and ancillary): {locator, type, filename}",
    "archive": "the archive URL",
}


@dataclass
class IngestJob:
    url: str
    request: IngestRequest
    #: What the user does to replace an earlier ingestion.
    reingest_hint: str
    #: The files to store and their planned bytes (for progress, without a pass
    #: over a spooled plan).
    files: int = 0
    bytes: int = 0


@cache
def manifest_validator() -> Any:
    from jsonschema import Draft202012Validator

    from wsrun.core.resources import schemas_dir

    with open(schemas_dir() / "ingestion-manifest.schema.json", encoding="utf-8") as f:
        return Draft202012Validator(json.load(f))


def read_manifest(path: str, fs: WorldView) -> dict[str, Any]:
    """The manifest at ``path``, checked against its schema."""
    try:
        with fs.open(path) as f:
            manifest = json.load(f)
    except FileNotFoundError:
        raise StepError("no such manifest", path=path) from None
    except ContentUnknown:
        raise StepError("the manifest is only written by the real run", path=path) from None
    except (ValueError, UnicodeDecodeError) as e:
        raise StepError(f"not valid JSON: {e}", path=path) from None
    errors = sorted(manifest_validator().iter_errors(manifest), key=lambda e: list(e.path))
    if errors:
        where = "/".join(str(p) for p in errors[0].absolute_path) or "manifest"
        raise StepError(f"invalid manifest: {where}: {errors[0].message}", path=path)
    return manifest


def build_request(manifest: dict[str, Any], manifest_path: str, fs: WorldView) -> IngestRequest:
    """What to ingest: every product with its files, as ``fs`` sees them."""
    params = manifest["parameters"]
    telescope = known_telescope(params["telescope"], manifest_path)
    base = os.path.normpath(os.path.join(os.path.dirname(manifest_path), params["ingestion_path"]))
    if not fs.is_dir(base):
        raise StepError("ingestion_path is not a directory", path=base)

    def product(spec: dict[str, Any]) -> ProductSpec:
        return ProductSpec(
            locator=new_locator(telescope, spec["type"]),
            type=spec["type"],
            filename=spec["filename"],
            files=product_files(base, spec["filename"], fs),
            ancillary=[product(a) for a in spec.get("ancillary_products", [])],
        )

    output = manifest["output_group"]
    metadata = None
    if params.get("additional_metadata"):
        side = os.path.join(base, params["additional_metadata"])
        if not fs.is_file(side):
            raise StepError("additional_metadata file is missing", path=side)
        try:
            with fs.open(side) as f:
                metadata = json.load(f)
        except ContentUnknown:
            metadata = None  # a dry run: written by an earlier step
        except (ValueError, UnicodeDecodeError) as e:
            raise StepError(f"additional_metadata is not valid JSON: {e}", path=side) from None
    return IngestRequest(
        telescope=telescope,
        ingestion_path=base,
        products=[product(p) for p in output["science_products"]],
        ancillary=[product(a) for a in output.get("ancillary_products", [])],
        inputs=[p["locator"] for p in manifest.get("input_group", {}).get("science_products", [])],
        reingest=bool(params.get("reingest", False)),
        manifest=manifest,
        metadata=metadata,
    )


def known_telescope(value: str, path: str | None = None) -> str:
    """``value`` as the archive spells it (any case is accepted); an unknown
    telescope is refused, naming the known ones."""
    if value.upper() in TELESCOPES:
        return value.upper()
    raise StepError(f"unknown telescope '{value}' (known: {', '.join(TELESCOPES)})", path=path)


def check_archives(ctx: StepContext, request: IngestRequest) -> None:
    """Read every tar and zip file to be ingested through; the first that is not
    whole refuses the ingest (nothing has been stored yet)."""
    for product, _, _ in request.all_products():
        for f in product.files:
            zipped = f.name.lower().endswith(".zip")
            if not zipped and not is_tar_name(f.name):
                continue
            try:
                with ctx.fs.open(f.source) as stream:
                    (read_zip_through if zipped else read_through)(stream)
            except ContentUnknown:
                continue  # a dry run: an earlier step writes it
            except CorruptArchive as e:
                raise StepError(f"cannot be ingested: {e}", path=f.source) from None


def product_files(base: str, filename: str, fs: WorldView) -> FileSpool:
    """A product's files: the file itself, or every file of a directory
    (an execution block), named by their path under ``base``; spooled to disk
    when there are many (an execution block may hold a million)."""
    path = os.path.join(base, filename)
    info = fs.stat(path)
    if info is None:
        raise StepError("a file the manifest names is missing", path=path)
    if info.is_file:
        return FileSpool([FileSpec(filename, path, info.size, info.mtime_ns)])
    if not info.is_dir:
        raise StepError("cannot ingest a special file", path=path)
    files = FileSpool()
    for rel, entry in fs.walk(path):
        if entry.is_file:
            name = os.path.join(filename, rel)
            files.append(FileSpec(name, os.path.join(path, rel), entry.size, entry.mtime_ns))
        elif not entry.is_dir:
            raise StepError("cannot ingest a symlink or special file", path=os.path.join(path, rel))
    return files


def _planned_size(ctx: StepContext, f: FileSpec) -> int | None:
    """A file's size, or None in a dry run where an earlier step would write it
    and its size is only known then (a compressed archive)."""
    if ctx.fs.virtual:
        info = ctx.fs.stat(f.source)
        if info is not None and not info.size_known:
            return None
    return f.size


def destinations(params: dict[str, Any], ctx: StepContext) -> list[str]:
    """What this step writes, locked (wsrun.core.locks) before it plans: the
    archive's record of the products staged in the manifest's ingestion_path."""
    manifest_path = ctx.path(params["manifest"])
    try:
        with ctx.fs.open(manifest_path) as f:
            staged = json.load(f)["parameters"]["ingestion_path"]
        base = os.path.normpath(os.path.join(os.path.dirname(manifest_path), staged))
    except (OSError, ValueError, KeyError, TypeError, ContentUnknown):
        return []  # plan says what is wrong with the manifest
    return [f"archive {mask(archive_url(params.get('archive'), ctx.env))} ({base})"]


def plan(params: dict[str, Any], ctx: StepContext) -> Plan:
    manifest_path = ctx.path(params["manifest"])
    manifest = read_manifest(manifest_path, ctx.fs)
    request = build_request(manifest, manifest_path, ctx.fs)
    url = archive_url(params.get("archive"), ctx.env)
    replaces: dict[str, str] = {}
    existing = _existing(ctx, url, request)
    if existing:
        old_products, same = existing
        if same:
            # Nothing to ingest; the url lets apply sweep what killed ingests left.
            return Plan(outputs=_outputs(url, old_products), data=url)
        if not request.reingest:
            first = next(p for p in old_products if p.science)
            raise StepError(
                f"{first.filename} is already ingested as {first.locator} with other content; "
                f"{_hint(params)} to replace it",
                path=manifest_path,
            )
        replaces = {p.filename: p.locator for p in old_products if p.science}
    check_archives(ctx, request)
    # Spooled: an execution block of a million files is a million uploads.
    effects = EffectSpool()
    job = IngestJob(url, request, _hint(params))
    products = list(request.all_products())
    target = mask(url)
    for product, _, _ in products:
        for f in product.files:
            size = _planned_size(ctx, f)
            effects.append(Effect("upload", f.source, bytes=size, target=target))
            job.files += 1
            job.bytes += size or 0
    for product, _, science in products:
        extra: dict[str, Any] = {"type": product.type}
        if science and product.filename in replaces:
            extra["replaces"] = replaces[product.filename]
        path = os.path.join(request.ingestion_path, product.filename)
        effects.append(Effect("record", path, extra=extra))
    outputs = {
        "locators": [p.locator for p in request.products],
        "products": [
            {"locator": p.locator, "type": p.type, "filename": p.filename} for p, _, _ in products
        ],
        "archive": target,  # no password in plans, logs or the journal
    }
    return Plan(effects=effects if effects.spilled else list(effects), outputs=outputs, data=job)


def _sweep(url: str) -> None:
    """Remove what killed ingests left in the archive (temporary copies,
    unreferenced content), if no other ingest is in flight. Housekeeping: a
    failure here fails nothing, and the next ingest sweeps again."""
    with contextlib.suppress(Exception):
        archive = ArchiveStore.open(url)
        try:
            archive.sweep()
        finally:
            archive.close()


def _hint(params: dict[str, Any]) -> str:
    return str(params.get("reingest_hint") or "set reingest in the manifest")


def _existing(
    ctx: StepContext, url: str, request: IngestRequest
) -> tuple[list[ProductRecord], bool] | None:
    """The products of the earlier ingestion of these science products (without
    their files), and whether it was of this very manifest with the very same
    files; read without creating anything."""
    try:
        archive = ArchiveStore.open(url, create=False)
    except ArchiveError:
        return None  # no archive yet: nothing ingested
    try:
        names = [p.filename for p in request.products]
        found = archive.existing(request.ingestion_path, names, files=False)
        if not found:
            return None
        old_manifest, old = archive.ingestion(found[0].locator, files=False)
        same = old_manifest == request.manifest and _same_files(ctx, archive, request, old)
        return old, same
    finally:
        archive.close()


def _same_files(
    ctx: StepContext, archive: ArchiveStore, request: IngestRequest, old: list[ProductRecord]
) -> bool:
    """Whether the staged files are exactly the ones already ingested: the same
    count, then the same names, sizes and sha256, compared in name order as
    both sides stream (the staged side hashed and sorted on disk)."""
    new = {(p.type, p.filename): p.files for p, _, _ in request.all_products()}
    if set(new) != {(p.type, p.filename) for p in old}:
        return False
    counts = archive.file_counts([p.locator for p in old])
    if any(counts.get(p.locator, 0) != len(new[(p.type, p.filename)]) for p in old):
        return False
    for p in old:
        staged = _hashed(ctx, new[(p.type, p.filename)])
        try:
            if staged is None:
                return False
            stored = ((f.name, f.sha256, f.size) for f in archive.stored_files(p.locator))
            with contextlib.closing(stored):
                if any(a != b for a, b in zip(staged, stored, strict=False)):
                    return False
        finally:
            if staged is not None:
                staged.close()
    return True


def _hashed(ctx: StepContext, files: Any) -> SortedSpool[tuple[str, str, int]] | None:
    """(name, sha256, size) of each staged file, sorted by name; None when a
    dry run cannot know a file's content yet."""
    total = getattr(files, "bytes", None)
    digests = hash_each(ctx, (f.source for f in files), "sha256", total, len(files))
    out: SortedSpool[tuple[str, str, int]] = SortedSpool()
    with contextlib.closing(digests):
        for f, (_, found) in zip(files, digests, strict=True):
            if found is None:
                out.close()
                return None
            out.append((f.name, found[0], found[1]))
    return out


def _outputs(url: str, products: list[ProductRecord]) -> dict[str, Any]:
    return {
        "locators": [p.locator for p in products if p.science],
        "products": [
            {"locator": p.locator, "type": p.type, "filename": p.filename} for p in products
        ],
        "archive": mask(url),
    }


def apply(plan: Plan, ctx: StepContext) -> Result:
    job: IngestJob | str = plan.data
    if isinstance(job, str):  # already ingested: only tidy up after killed ingests
        _sweep(job)
        return Result(outputs=plan.outputs)
    task = ctx.progress.task("ingest", total_bytes=job.bytes, total_files=job.files)

    def stored(size: int) -> None:
        task.advance(bytes=size, files=1)
        ctx.check_deadline()

    try:
        archive = ArchiveStore.open(job.url)
        try:
            archive.ingest(job.request, stored)
        finally:
            archive.close()
    except AlreadyIngested as e:  # by another run since the plan
        raise StepError(f"{e.what}; {job.reingest_hint} to replace it") from None
    except ArchiveError as e:
        raise StepError(str(e)) from None
    finally:
        task.close()
    return Result(effects=plan.effects, outputs=plan.outputs)
