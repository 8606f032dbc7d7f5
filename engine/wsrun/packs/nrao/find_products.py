"""The ``find-products`` step type: identify the data products of a processing directory."""

from __future__ import annotations

import fnmatch
import json
import os
import xml.etree.ElementTree as ET
from typing import Any

from wsrun.core.fileio import is_temp_name
from wsrun.core.fs import WorldView
from wsrun.core.step import Plan, Result, StepContext, StepError
from wsrun.packs.nrao.placement import describe

NAME = "find-products"
DOC = """Identify the data products of a processing directory, each with its product type.

A processing directory (a CASA pipeline run) holds ``rawdata/``, ``working/``,
``products/`` and a ``metadata.json``. Delivery needs to know *what* each product
is, so that images, calibration tables, weblogs and execution blocks each land
in their place: this step says so. Given the delivery's ``destination`` it
also places them (``layout``: a sub-directory per type) and describes the
delivery for the generic steps that write it (see the ``nrao/deliver`` recipe):
``placement`` for ``copy`` (``files:``), ``members`` for ``tar``, and the
delivery.json document for ``write-json``, its digests left as ``$digest``
and ``$sha256sums`` references filled in from what copy or tar computed.

With the CASA pipeline manifest (``products/*pipeline_manifest.xml``, root
element ``<piperesults>``) the products are exactly the files it names: the
execution blocks (``asdm``, taken from ``products/`` if there, else from
``rawdata/``), final measurement sets (``finalms``: ``products/``, else
``working/``), per-session calibration tables, flag versions and apply-commands
files, images (with their ``imtype``; thumbnails ``<image>.png``/``.jpg`` beside
them are added), the weblog, the processing request, the scripts, the CASA
commands log, and the manifest itself. Values ``Undefined`` and ``N/A`` are
skipped; a file it names that is missing is an error, raised before anything
is delivered. Without a manifest (or with ``piperesults: never``) every entry
of ``products/`` is one product, typed by its name (see the ``type`` list in
docs/deliver.md). With ``rawdata: true`` every entry of ``rawdata/`` is one
product (SDM directories are execution blocks, ``*.ms`` directories
measurement sets). Names starting with a dot are ignored. The step only reads;
symbolic links are followed (a delivery holds content, never links).
"""

_NULLABLE_STRING = {"type": ["string", "null"]}

SCHEMA: dict[str, Any] = {
    "type": "object",
    "additionalProperties": False,
    "required": ["source"],
    "properties": {
        "source": {
            "type": "string",
            "minLength": 1,
            "description": "The processing directory (holding products/, rawdata/, working/).",
            "examples": ["/lustre/spool/tmp8a7b6c"],
        },
        "piperesults": {
            "enum": ["auto", "always", "never"],
            "default": "auto",
            "description": "Use the CASA pipeline manifest: when present (auto), always "
            "(an error without one), or never (identify products by their names).",
        },
        "rawdata": {
            "type": "boolean",
            "default": False,
            "description": "Take the products from rawdata/ instead of products/ "
            "(the manifest is then not used).",
        },
        "destination": {
            **_NULLABLE_STRING,
            "description": "The delivery directory (final path). Given, the step also places "
            "the products (`placement`, `members`) and describes the delivery (`delivery`).",
            "examples": ["{{ vars.destination }}"],
        },
        "layout": {
            "type": "object",
            "additionalProperties": {"type": "string"},
            "description": "Sub-directory of the delivery per product type, over the defaults "
            "(images, calibration, weblog, scripts, logs, reports; execution blocks, "
            "measurement sets and others at the top). Unknown types go where `other` goes.",
            "examples": [{"image": "images", "weblog": "weblog"}],
        },
        "tar": {
            "type": "boolean",
            "default": False,
            "description": "The delivery is one tar archive (`members`), not loose files.",
        },
        "prefix": {
            **_NULLABLE_STRING,
            "description": "The request's sub-directory of the destination: names the tar "
            "archive (else the source directory's name does); recorded in delivery.json.",
            "examples": ["request-1234"],
        },
        "url": {
            **_NULLABLE_STRING,
            "description": "The delivery's download URL, recorded in delivery.json.",
            "examples": ["https://dl-nrao.aoc.nrao.edu/f4cb5c3494e46595052d29556ef2f8d5"],
        },
    },
}

EXAMPLES = [
    """- id: products
  uses: find-products
  with:
    source: "{{ inputs.source_directory }}"
    piperesults: auto
""",
    """- id: raw
  uses: find-products
  with: {source: /lustre/spool/tmp8a7b6c, rawdata: true}
""",
]

OUTPUTS = {
    "products": "the products, each {type, name, path, kind (file or dir), attributes}",
    "method": "how they were identified: pipeline_manifest, names or rawdata",
    "manifests": "paths of the pipeline manifests used (empty unless method is pipeline_manifest)",
    "metadata": "the content of the processing directory's metadata.json, or null",
    "count": "number of products",
    "placement": "with `destination`: {path in the delivery: source} of every product, "
    "layout applied (copy's `files`)",
    "archive": "with `destination` and `tar`: the archive's path, else null",
    "members": "with `destination` and `tar`: {member name: source} of the archive, in "
    "order, directories holding products ending in / (tar's `members`); else null",
    "delivery": "with `destination`: delivery.json (schemas/delivery.schema.json), digests "
    "as `$digest`/`$sha256sums` references to copy's or tar's `checksums` (write-json's `value`; "
    'a directory product\'s checksum `{"$sha256sums": "files"}`, from its own `files`)',
    "files": "with `destination`: number of product files delivered",
    "bytes": "with `destination`: their total size",
}

MANIFEST_GLOB = "*pipeline_manifest.xml"

#: Product types in the order they are listed.
TYPES = (
    "execution_block",
    "measurement_set",
    "calibration_tables",
    "flag_versions",
    "apply_commands",
    "calibration_auxiliary",
    "image",
    "thumbnail",
    "weblog",
    "qa_report",
    "ppr",
    "script",
    "log",
    "pipeline_manifest",
    "other",
)

#: Manifest element -> (product type, directories searched below the source).
MANIFEST_ELEMENTS: dict[str, tuple[str, tuple[str, ...]]] = {
    "asdm": ("execution_block", ("products", "rawdata")),
    "aux_asdm": ("execution_block", ("products", "rawdata")),
    "finalms": ("measurement_set", ("products", "working")),
    "caltables": ("calibration_tables", ("products",)),
    "aux_caltables": ("calibration_tables", ("products",)),
    "finalflags": ("flag_versions", ("products",)),
    "applycmds": ("apply_commands", ("products",)),
    "flux_file": ("calibration_auxiliary", ("products",)),
    "antennapos_file": ("calibration_auxiliary", ("products",)),
    "cont_file": ("calibration_auxiliary", ("products",)),
    "image": ("image", ("products",)),
    "weblog": ("weblog", ("products",)),
    "aqua_report": ("qa_report", ("products",)),
    "piperequest": ("ppr", ("products",)),
    "ppr": ("ppr", ("products",)),
    "pipescript": ("script", ("products",)),
    "casa_pipescript": ("script", ("products",)),
    "restorescript": ("script", ("products",)),
    "casa_piperestorescript": ("script", ("products",)),
    "casa_cmdlog": ("log", ("products",)),
    "casa_cmds": ("log", ("products",)),
    "aux_products_file": ("other", ("products",)),
}

#: Attribute values that mean "nothing here".
UNDEFINED = frozenset({"", "undefined", "n/a", "na", "none", "null"})

#: Heuristics for files in products/: first match wins (patterns are lower-case).
FILE_PATTERNS: tuple[tuple[str, str], ...] = (
    ("*pipeline_manifest.xml", "pipeline_manifest"),
    ("*caltables*.tgz", "calibration_tables"),
    ("*.flagversions.tgz", "flag_versions"),
    ("*calapply.txt", "apply_commands"),
    ("*weblog*.tgz", "weblog"),
    ("*aquareport*.xml", "qa_report"),
    ("ppr*.xml", "ppr"),
    ("*pprequest*.xml", "ppr"),
    ("*.fits", "image"),
    ("*.fits.gz", "image"),
    ("*.png", "thumbnail"),
    ("*.jpg", "thumbnail"),
    ("*.jpeg", "thumbnail"),
    ("*.py", "script"),
    ("*.log", "log"),
)
THUMBNAIL_SUFFIXES = (".png", ".jpg", ".jpeg")


def plan(params: dict[str, Any], ctx: StepContext) -> Plan:
    fs = ctx.fs
    source = ctx.path(params["source"])
    info = fs.stat(source)
    if info is None:
        raise StepError("source directory does not exist", path=source)
    if not info.is_dir:
        raise StepError("source is not a directory", path=source)
    metadata = _metadata(fs, os.path.join(source, "metadata.json"))
    manifests: list[str] = []
    if params.get("rawdata", False):
        method = "rawdata"
        products = _entries(fs, _subdir(fs, source, "rawdata"), rawdata=True)
    else:
        products_dir = _subdir(fs, source, "products")
        mode = params.get("piperesults", "auto")
        if mode != "never":
            manifests = [
                os.path.join(products_dir, n)
                for n in fs.listdir(products_dir)
                if fnmatch.fnmatchcase(n, MANIFEST_GLOB)
                and fs.is_file(os.path.join(products_dir, n))
            ]
        if mode == "always" and not manifests:
            raise StepError(
                f"no CASA pipeline manifest ({MANIFEST_GLOB}) here, and -p/--use-piperesults "
                "asks for one",
                path=products_dir,
            )
        if manifests:
            method = "pipeline_manifest"
            products = _from_manifests(fs, source, manifests)
        else:
            method = "names"
            products = _entries(fs, products_dir, rawdata=False)
    if not products:
        where = "rawdata" if method == "rawdata" else "products"
        raise StepError("no products to deliver", path=os.path.join(source, where))
    order = {t: i for i, t in enumerate(TYPES)}
    products.sort(key=lambda p: (order[p["type"]], p["name"]))
    outputs = {
        "products": products,
        "method": method,
        "manifests": manifests,
        "metadata": metadata,
        "count": len(products),
    }
    if params.get("destination"):
        outputs.update(describe(params, ctx, source, products, method, metadata))
    return Plan(outputs=outputs)


def apply(plan: Plan, ctx: StepContext) -> Result:
    return Result(outputs=plan.outputs)


def _subdir(fs: WorldView, source: str, name: str) -> str:
    path = os.path.join(source, name)
    if not fs.is_dir(path):
        raise StepError(f"no {name}/ directory in the source directory", path=path)
    return path


def _metadata(fs: WorldView, path: str) -> Any:
    if not fs.is_file(path):
        return None
    with fs.open(path) as f:
        data = f.read()
    try:
        return json.loads(data)
    except (ValueError, UnicodeDecodeError) as e:
        raise StepError(f"not valid JSON: {e}", path=path) from None


def _product(ptype: str, path: str, kind: str, **attributes: str) -> dict[str, Any]:
    return {
        "type": ptype,
        "name": os.path.basename(path),
        "path": path,
        "kind": kind,
        "attributes": attributes,
    }


# ---- by name ------------------------------------------------------------------------


def _entries(fs: WorldView, directory: str, rawdata: bool) -> list[dict[str, Any]]:
    """One product per entry of ``directory``, typed by its name and content."""
    products = []
    for name in fs.listdir(directory):
        if name.startswith(".") or is_temp_name(name):
            continue
        path = os.path.join(directory, name)
        info = fs.stat(path)
        if info is None:
            raise StepError("dangling symbolic link", path=path)
        if info.is_dir:
            products.append(_product(_dir_type(fs, path, rawdata), path, "dir"))
        elif info.is_file:
            products.append(_product("other" if rawdata else _file_type(name), path, "file"))
        else:
            raise StepError("cannot deliver a special file (device, fifo or socket)", path=path)
    return products


def _dir_type(fs: WorldView, path: str, rawdata: bool) -> str:
    name = os.path.basename(path).lower()
    if fs.is_file(os.path.join(path, "ASDM.xml")):
        return "execution_block"
    if name.endswith(".ms"):
        return "measurement_set"
    if not rawdata and (name == "weblog" or name.startswith("pipeline-")):
        return "weblog"
    return "other"


def _file_type(name: str) -> str:
    lower = name.lower()
    for pattern, ptype in FILE_PATTERNS:
        if fnmatch.fnmatchcase(lower, pattern):
            return ptype
    return "other"


# ---- by the pipeline manifest -------------------------------------------------------


def _defined(value: str | None) -> str | None:
    if value is None:
        return None
    value = value.strip()
    return None if value.lower() in UNDEFINED else value


def _parse(fs: WorldView, path: str) -> ET.Element:
    with fs.open(path) as f:
        data = f.read()
    try:
        root = ET.fromstring(data)
    except ET.ParseError as e:
        raise StepError(f"not a valid pipeline manifest: {e}", path=path) from None
    if root.tag != "piperesults":
        raise StepError(
            f"not a pipeline manifest: the root element is <{root.tag}>, not <piperesults>",
            path=path,
        )
    return root


def _from_manifests(fs: WorldView, source: str, manifests: list[str]) -> list[dict[str, Any]]:
    products: dict[str, dict[str, Any]] = {}
    missing: list[str] = []
    for manifest in manifests:
        root = _parse(fs, manifest)
        products.setdefault(manifest, _product("pipeline_manifest", manifest, "file"))
        for parent in root.iter():
            for element in parent:
                spec = MANIFEST_ELEMENTS.get(element.tag)
                name = _defined(element.get("name"))
                if spec is None or name is None:
                    continue
                ptype, places = spec
                if "/" in name or name in (".", ".."):
                    raise StepError(
                        f"<{element.tag}> names {name!r}, not a file name", path=manifest
                    )
                path = _locate(fs, source, name, places)
                if path is None:
                    missing.append(f"{name} (<{element.tag}>, looked in {', '.join(places)})")
                    continue
                if path in products:
                    continue
                info = fs.stat(path)
                assert info is not None
                kind = "dir" if info.is_dir else "file"
                products[path] = _product(ptype, path, kind, **_attributes(parent, element))
                if ptype == "image":
                    for thumb in _thumbnails(fs, path):
                        products.setdefault(thumb, _product("thumbnail", thumb, "file", image=name))
    if missing:
        shown = "; ".join(missing[:5]) + (
            f"; and {len(missing) - 5} more" if len(missing) > 5 else ""
        )
        raise StepError(f"the pipeline manifest names missing files: {shown}", path=manifests[0])
    return list(products.values())


def _locate(fs: WorldView, source: str, name: str, places: tuple[str, ...]) -> str | None:
    for place in places:
        path = os.path.join(source, place, name)
        info = fs.stat(path)
        if info is not None and (info.is_file or info.is_dir):
            return path
    return None


def _attributes(parent: ET.Element, element: ET.Element) -> dict[str, str]:
    """What the manifest says about a product besides its name: the image type,
    and the session or execution block it belongs to."""
    out = {}
    imtype = _defined(element.get("imtype"))
    if imtype:
        out["imtype"] = imtype
    owner = _defined(parent.get("name"))
    if owner and parent.tag in ("session", "asdm", "aux_asdm"):
        out["session" if parent.tag == "session" else "execution_block"] = owner
    return out


def _thumbnails(fs: WorldView, image: str) -> list[str]:
    stem = image[: -len(".fits")] if image.lower().endswith(".fits") else image
    found = []
    for base in dict.fromkeys((image, stem)):
        for suffix in THUMBNAIL_SUFFIXES:
            if fs.is_file(base + suffix):
                found.append(base + suffix)
    return found
