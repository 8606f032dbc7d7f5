"""Data for the web tests: OUSs in a given state, their Pipeline reports, dead messages."""

from __future__ import annotations

import base64
from typing import Any

from conftest import ROOT

LIFECYCLE = ROOT / "engine" / "wsrun" / "packs" / "alma" / "recipes" / "ous-lifecycle.yaml"
#: The path an OUS takes to each state, from its creation.
PATHS = {
    "ReadyForProcessing": [],
    "Processing": ["Processing"],
    "ProcessingProblem": ["Processing", "ProcessingProblem"],
    "ReadyForReview": ["Processing", "ReadyForReview"],
    "Reviewing": ["Processing", "ReadyForReview", "Reviewing"],
    "Verified": ["Processing", "ReadyForReview", "Reviewing", "Verified"],
    "DeliveryInProgress": [
        "Processing",
        "ReadyForReview",
        "Reviewing",
        "Verified",
        "DeliveryInProgress",
    ],
    "Delivered": [
        "Processing",
        "ReadyForReview",
        "Reviewing",
        "Verified",
        "DeliveryInProgress",
        "Delivered",
    ],
}
REPORT_XML = """<?xml version="1.0"?>
<PipelineReport version="1">
  <ProjectStructure><ProposalCode>2015.1.00657.S</ProposalCode></ProjectStructure>
  <ProcessingRequest><ProcessingProcedure>PipelineCalibration</ProcessingProcedure></ProcessingRequest>
  <QaSummary score="0.91">Calibration looks fine</QaSummary>
</PipelineReport>
"""


def state_store() -> Any:
    """The default state store of this test's $WSRUN_HOME, with the OUS lifecycle."""
    from wsrun.stores.state import load_lifecycle, open_state_store

    store = open_state_store()
    store.register_lifecycle(load_lifecycle(str(LIFECYCLE)))
    return store


def make_ous(store: Any, ous: str, state: str, timestamp: str = "2026-11-23T10:00:00.000") -> None:
    """An OUS moved to ``state`` the legal way, with the attributes the
    pipeline driver records, and (from ReadyForReview on) its Pipeline report."""
    attributes = {
        "progID": "2015.1.00657.S",
        "exec": "EU",
        "timestamp": timestamp,
        "productsDir": f"2015.1.00657.S_{timestamp.replace('-', '_').replace(':', '_')}",
        "weblog": f"weblog-{ous.rsplit('/', 1)[-1]}.zip",
    }
    store.transition("ous", ous, state="ReadyForProcessing", create=True, attributes=attributes)
    for step in PATHS[state]:
        if step == "ReadyForReview":
            store.transition(
                "pipeline-report",
                f"{ous}@{timestamp}",
                state="Stored",
                create=True,
                attributes={
                    "ousUID": ous,
                    "source": "EU",
                    "timestamp": timestamp,
                    "report": base64.b64encode(REPORT_XML.encode()).decode(),
                },
            )
        store.transition("ous", ous, state=step)


def dead_message(selector: str = "pipeline.process.EU", error: str = "no such recipe") -> str:
    """A message parked dead on the default bus; its id."""
    from wsrun.stores.bus import open_bus

    bus = open_bus()
    bus.declare_queue("pipeline", ["pipeline.#"])
    bus.publish(selector, {"ousUID": "uid://X1/X1/Xd0"})
    message = bus.claim("pipeline", "test")
    assert message is not None
    assert bus.fail(message, error, retry=False) == "dead"
    return message.id
