"""The ``archive-check`` step type: are these products in the archive?"""

from __future__ import annotations

from typing import Any

from wsrun.core.step import Plan, Result, StepContext, StepError
from wsrun.stores.archive.store import ArchiveError, ArchiveStore, archive_url

NAME = "archive-check"
DOC = """Check that products are in the archive, by locator or by name; read only.

A tracker that must not declare a delivery complete before every product
is really stored (the ALMA Data Tracker) lists what it expects and lets this
step look it up: ``locators``, or the ``filenames`` of science products
ingested from ``ingestion_path`` (names are known before the ingest, the
locators it assigns only after). With ``require`` (the default) a missing
product fails the step, naming it; without it the step only reports what is
present and what is missing. A missing archive holds nothing.
"""

SCHEMA: dict[str, Any] = {
    "type": "object",
    "additionalProperties": False,
    "oneOf": [{"required": ["locators"]}, {"required": ["filenames", "ingestion_path"]}],
    "properties": {
        "locators": {
            "description": "The product locators to look up (or give `filenames`).",
            "type": "array",
            "items": {"type": "string", "minLength": 1},
            "examples": [["uid://alma/alma_data_product/0b6c…"]],
        },
        "filenames": {
            "description": "Names of science products ingested from `ingestion_path` to look up.",
            "type": "array",
            "items": {"type": "string", "minLength": 1},
            "examples": [["product-0-X1-X1-Xb0-2018-07-19T07:10:03.781.data"]],
        },
        "ingestion_path": {
            "description": "The directory the `filenames` were ingested from.",
            "type": "string",
            "minLength": 1,
            "examples": ["{{ steps.delivery.outputs.attributes.ingestion_path }}"],
        },
        "require": {
            "description": "Fail when any product is missing.",
            "type": "boolean",
            "default": True,
        },
        "archive": {
            "description": "The archive URL. Default: $WSRUN_ARCHIVE_URL, else the "
            "edu.nrao.archive.url setting, else $WSRUN_HOME/archive.",
            "type": ["string", "null"],
            "examples": ["sqlite:///lustre/archive"],
        },
    },
}

EXAMPLES = [
    """- id: in_archive
  uses: archive-check
  with:
    locators: "{{ steps.request.outputs.locators }}"
""",
    """- id: delivered
  uses: archive-check
  with:
    ingestion_path: "{{ steps.delivery.outputs.attributes.ingestion_path }}"
    filenames: "{{ steps.delivery.outputs.attributes.products }}"
""",
]

OUTPUTS = {
    "present": "the locators (or file names) found in the archive",
    "missing": "the locators (or file names) not found",
    "files": "number of files the present products hold",
    "complete": "true when nothing is missing",
}


def plan(params: dict[str, Any], ctx: StepContext) -> Plan:
    url = archive_url(params.get("archive"), ctx.env)
    wanted = params["locators"] if "locators" in params else params["filenames"]
    found: dict[str, int] = {}  # what was asked -> its number of files
    try:
        archive = ArchiveStore.open(url, create=False)
    except ArchiveError:
        archive = None  # no archive yet: it holds nothing
    if archive is not None:
        try:
            if "locators" in params:
                records = [r for loc in wanted if (r := archive.product(loc)) is not None]
                found = {r.locator: len(r.files) for r in records}
            else:
                base = ctx.path(params["ingestion_path"])
                found = {r.filename: len(r.files) for r in archive.existing(base, wanted)}
        finally:
            archive.close()
    present = [w for w in wanted if w in found]
    missing = [w for w in wanted if w not in found]
    if missing and params.get("require", True):
        more = f" (and {len(missing) - 1} more)" if len(missing) > 1 else ""
        raise StepError(f"not in the archive {url}{more}", path=missing[0])
    outputs = {
        "present": present,
        "missing": missing,
        "files": sum(found[w] for w in present),
        "complete": not missing,
    }
    return Plan(outputs=outputs)


def apply(plan: Plan, ctx: StepContext) -> Result:
    return Result(outputs=plan.outputs)
