"""The ``ingestion-manifest`` step type: write the ingestion manifest of a staging area."""

from __future__ import annotations

import io
import json
import os
import tarfile
from typing import Any

from wsrun.core.fileio import is_temp_name, write_bytes_atomic
from wsrun.core.fs import ContentUnknown
from wsrun.core.step import Plan, Result, StepContext, StepError
from wsrun.steps.checksum import plan_write
from wsrun.steps.ingest import known_telescope

NAME = "ingestion-manifest"
DOC = """Write the ingestion manifest of a staging area, and its ingestion artifacts tar.

The setup half of NRAO's ingest envoy: once the collectors have staged the
products, this step names each staged file's product type and writes
``ingestion-manifest.json`` (schemas/ingestion-manifest.schema.json) for the
``ingest`` step. Files are classified by ``kind``:

- ``calibration``: each ``*.tar`` is a calibration (science product);
- ``image`` and ``seci`` (VLASS): each ``*.fits`` is an image unless it is one of
  the ancillary FITS below; its ``.png`` thumbnail and the primary beam (``.pb.``), clean mask
  (``.mask.``) and spectral index (``.alpha``) FITS sharing its name before
  ``.image`` (or ``.pbcor``) are its ancillary products; ``aux_image_metadata.json`` is the
  additional metadata;
- ``observation``: the one directory (an SDM) is the execution block.

An image is only vouched for with the calibration it was made from: ``kind:
image`` without ``inputs`` is refused unless ``without_calibration`` is set.
The telescope must be one of ALMA, EVLA, GBT, VLA and VLBA (any case; written
in capitals), as the ``ingest`` step requires.

In every kind ``weblog.tgz`` is the pipeline weblog, ``pipeline_artifacts*.tar``
the pipeline artifacts and ``*.log`` log files (ancillary products of the
whole group). The manifest and the additional metadata file are packed into
the ingestion artifacts tar (an ancillary product too), as the envoy does.
Both files are written only when their content changes.
"""

KINDS = ("calibration", "image", "seci", "observation")
MANIFEST = "ingestion-manifest.json"
AUX_METADATA = "aux_image_metadata.json"

SCHEMA: dict[str, Any] = {
    "type": "object",
    "additionalProperties": False,
    "required": ["ingestion_path", "kind"],
    "properties": {
        "ingestion_path": {
            "description": "The staging directory holding the collected products; the manifest "
            "and the artifacts tar are written into it.",
            "type": "string",
            "minLength": 1,
            "examples": ["{{ settings.staging }}/{{ inputs.calibration }}"],
        },
        "kind": {
            "description": "What is being ingested; decides how staged files are classified.",
            "enum": list(KINDS),
        },
        "telescope": {
            "description": "The telescope (part of every locator): ALMA, EVLA, GBT, VLA or VLBA.",
            "type": "string",
            "default": "EVLA",
        },
        "inputs": {
            "description": "Locators of the input products: the execution block of a "
            "calibration, the calibration of an image.",
            "type": "array",
            "items": {"type": "string", "minLength": 1},
            "default": [],
            "examples": [["uid://evla/execblock/8b7c1e0e-5f0a-4c33-9a6f-3b5e0d0d2a11"]],
        },
        "without_calibration": {
            "description": "Images: write the manifest even though ``inputs`` names no "
            "calibration (refused otherwise).",
            "type": "boolean",
            "default": False,
        },
        "reingest": {
            "description": "Let the ingest replace an earlier ingestion of these products.",
            "type": "boolean",
            "default": False,
        },
        "calibrate": {
            "description": "Observations: whether the execution block is to be calibrated.",
            "type": "boolean",
            "default": False,
        },
        "collection_name": {
            "description": "VLASS (seci): the collection the images belong to.",
            "type": ["string", "null"],
            "examples": ["VLASS2.1"],
        },
        "artifacts": {
            "description": "Name of the ingestion artifacts tar (null: write none).",
            "type": ["string", "null"],
            "default": "ingestion_artifacts.tar",
        },
    },
}

EXAMPLES = [
    """- id: manifest
  uses: ingestion-manifest
  with:
    ingestion_path: "{{ inputs.staging }}"
    kind: calibration
    inputs: ["{{ inputs.execution_block }}"]
"""
]

OUTPUTS = {
    "manifest": "path of the manifest written",
    "artifacts": "path of the ingestion artifacts tar, or null",
    "science_products": "the science products: {type, filename}",
}


def destinations(params: dict[str, Any], ctx: StepContext) -> list[str]:
    """The paths this step writes, locked (wsrun.core.locks) before it plans."""
    return [ctx.path(params["ingestion_path"])]


def plan(params: dict[str, Any], ctx: StepContext) -> Plan:
    base = ctx.path(params["ingestion_path"])
    kind = params["kind"]
    if not ctx.fs.is_dir(base):
        raise StepError("ingestion_path is not a directory", path=base)
    artifacts = params.get("artifacts", "ingestion_artifacts.tar")
    names = sorted(
        n
        for n in ctx.fs.listdir(base)
        if not is_temp_name(n) and n not in (MANIFEST, artifacts, AUX_METADATA)
    )
    science, group = classify(base, names, kind, ctx)
    if not science:
        raise StepError(f"no {kind} products staged here", path=base)
    if kind == "image" and not params.get("inputs") and not params.get("without_calibration"):
        raise StepError(
            "an image ingest needs the locator of the calibration it was made from in "
            "inputs; set without_calibration to ingest it without one",
            path=base,
        )
    if artifacts:
        group.append({"type": "ingestion_artifacts", "filename": artifacts})
    parameters: dict[str, Any] = {
        "telescope": known_telescope(params.get("telescope", "EVLA")),
        "ingestion_path": base,
        "reingest": bool(params.get("reingest", False)),
        "ngas_ingest": True,
    }
    if kind == "observation":
        parameters["calibrate"] = bool(params.get("calibrate", False))
    aux = os.path.join(base, AUX_METADATA)
    if kind in ("image", "seci") and ctx.fs.is_file(aux):
        parameters["additional_metadata"] = AUX_METADATA
    if params.get("collection_name"):
        parameters["collection_name"] = params["collection_name"]
    manifest: dict[str, Any] = {"parameters": parameters}
    if params.get("inputs"):
        manifest["input_group"] = {
            "science_products": [{"locator": loc} for loc in params["inputs"]]
        }
    output: dict[str, Any] = {"science_products": science}
    if group:
        output["ancillary_products"] = group
    manifest["output_group"] = output
    content = (json.dumps(manifest, indent=2) + "\n").encode()

    manifest_path = os.path.join(base, MANIFEST)
    writes = [(manifest_path, content)]
    effects, _ = plan_write(ctx, manifest_path, content, len(content))
    artifacts_path = None
    if artifacts:
        artifacts_path = os.path.join(base, artifacts)
        members = [(MANIFEST, content)]
        if "additional_metadata" in parameters:
            members.append((AUX_METADATA, _read(ctx, aux)))
        tar = _tar(members)
        writes.append((artifacts_path, tar))
        more, _ = plan_write(ctx, artifacts_path, tar, len(tar))
        effects += more
    written = {e.path for e in effects}
    return Plan(
        effects=effects,
        outputs={
            "manifest": manifest_path,
            "artifacts": artifacts_path,
            "science_products": science,
        },
        data=[(p, c) for p, c in writes if p in written],
    )


def classify(
    base: str, names: list[str], kind: str, ctx: StepContext
) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """The science products and the group's ancillary products among ``names``."""
    science: list[dict[str, Any]] = []
    group: list[dict[str, Any]] = []
    rest = []
    for name in names:
        if name.startswith("ingestion_artifacts"):
            continue  # an earlier envoy's: replaced by the one written here
        if name == "weblog.tgz":
            group.append({"type": "pipeline_weblog", "filename": name})
        elif name.startswith("pipeline_artifacts") and name.endswith(".tar"):
            group.append({"type": "pipeline_artifacts", "filename": name})
        elif name.endswith(".log"):
            group.append({"type": "log_file", "filename": name})
        else:
            rest.append(name)
    if kind == "calibration":
        science = [{"type": "calibration", "filename": n} for n in rest if n.endswith(".tar")]
    elif kind == "observation":
        dirs = [n for n in rest if ctx.fs.is_dir(os.path.join(base, n))]
        if len(dirs) > 1:
            raise StepError(f"more than one execution block staged: {', '.join(dirs)}", path=base)
        science = [{"type": "execution_block", "filename": n} for n in dirs]
    else:
        science, leftover = _images(rest)
        group += leftover
    return science, group


_IMAGE_ANCILLARY = (
    (".pb.", "primary_beam"),
    (".mask.", "clean_mask"),
    (".alpha", "spectral_index"),
)


def _images(names: list[str]) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """Images with their own ancillary products; ancillary FITS that match no image."""
    images: dict[str, dict[str, Any]] = {}
    ancillary: list[tuple[str, str, str]] = []  # (name, owner's stem, type)
    for name in names:
        if not name.endswith(".fits"):
            continue
        found = next(((m, t) for m, t in _IMAGE_ANCILLARY if m in name), None)
        if found:
            ancillary.append((name, name.split(".image")[0].split(found[0])[0], found[1]))
        else:
            images[name] = {"type": "image", "filename": name, "ancillary_products": []}
    stems = {name.split(".image")[0].split(".pbcor")[0]: img for name, img in images.items()}
    for name, img in images.items():
        thumb = name[: -len(".fits")] + ".png"
        if thumb in names:
            img["ancillary_products"].append({"type": "thumbnail_image", "filename": thumb})
    leftover = []
    for name, stem, kind in ancillary:
        owner = stems.get(stem)
        entry = {"type": kind, "filename": name}
        (owner["ancillary_products"] if owner else leftover).append(entry)
    for img in images.values():
        if not img["ancillary_products"]:
            del img["ancillary_products"]
    return list(images.values()), leftover


def _read(ctx: StepContext, path: str) -> bytes:
    try:
        with ctx.fs.open(path) as f:
            return f.read()
    except ContentUnknown:
        raise StepError("content only known after the real run", path=path) from None


def _tar(members: list[tuple[str, bytes]]) -> bytes:
    """A tar of ``members``, byte-for-byte the same for the same content."""
    out = io.BytesIO()
    with tarfile.open(fileobj=out, mode="w", format=tarfile.PAX_FORMAT) as tar:
        for name, data in members:
            info = tarfile.TarInfo(name)
            info.size = len(data)
            info.mode = 0o644
            tar.addfile(info, io.BytesIO(data))
    return out.getvalue()


def apply(plan: Plan, ctx: StepContext) -> Result:
    for path, content in plan.data:
        write_bytes_atomic(path, content)
    return Result(effects=list(plan.effects), outputs=plan.outputs)
