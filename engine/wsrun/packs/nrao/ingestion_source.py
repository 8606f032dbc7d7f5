"""The ``ingestion-source`` step type: where an ingest's products are, before any is staged."""

from __future__ import annotations

from typing import Any

from wsrun.core.step import Plan, Result, StepContext
from wsrun.packs.nrao import ingestion_staging

NAME = "ingestion-source"
DOC = """Say where an ingest's products are: a processing directory to collect, or a
directory already staged. It reads and writes nothing else.

The first half of ``ingestion-staging``, on its own so that a recipe knows
before staging whether there is anything to collect, where to (the destination
of the atomic group that collects it) and what the products derive from (for
the manifest), also when the staging is skipped. It takes the same parameters
and gives the same outputs as ``ingestion-staging``, which collects into
``staging``: for ``kind`` calibration or image and a ``source`` holding
``metadata.json`` (a workflow's processing directory), ``staging`` is
``<workspaces_root>/staging/<kind>-<name of the processing directory>`` and
``inputs`` the ``productLocator`` (calibration) or ``calProductLocator`` (image)
of metadata.json; any other ``source`` is a staging directory already staged
(``staging_directory``, default ``source``), with no inputs.
"""

SCHEMA: dict[str, Any] = ingestion_staging.SCHEMA

EXAMPLES = [
    """- id: source
  uses: ingestion-source
  with:
    source: "{{ inputs.calibration }}"
    kind: calibration
    workspaces_root: "{{ settings.workspaces_root }}"
"""
]

OUTPUTS = {
    "staging": "the staging directory (to be collected into when ``collected``)",
    "inputs": "locators of the input products read from metadata.json ([] for a staged directory)",
    "collected": "whether the products are to be collected from a processing directory",
    "timestamp": ingestion_staging.OUTPUTS["timestamp"],
}


def plan(params: dict[str, Any], ctx: StepContext) -> Plan:
    return Plan(effects=[], outputs=ingestion_staging.locate(params, ctx).outputs())


def apply(plan: Plan, ctx: StepContext) -> Result:
    return Result(effects=[], outputs=plan.outputs)
