"""The ALMA system scaled out (issue 9): every component a separate worker
process, the EU executive's (pipeline driver, EU replicated cache) and JAO's
(JAO replicated cache, AQUA QA2, product ingestor, data tracker, XTSS, and the
automatic reviewer), sharing PostgreSQL (state store, archive metadata, run
journal) and RabbitMQ (bus), as workers on several hosts would."""

from __future__ import annotations

import importlib.util
import sys
import time
from pathlib import Path
from typing import Any

from conftest import ROOT

COUNT = 50
#: Runs of each recipe at once in each worker, but one in the pipeline driver:
#: the copy step removes the temporary files it finds in the directory it
#: writes to, so two driver runs copying into one cache at once can remove
#: each other's (an engine defect, reported).
CONCURRENCY = 2


def demo() -> Any:
    spec = importlib.util.spec_from_file_location("alma_demo", ROOT / "examples/alma/demo.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules["alma_demo"] = module  # dataclasses look their module up
    spec.loader.exec_module(module)
    return module


def wait_until(what: str, done: Any, system: Any, timeout: float) -> Any:
    """Poll ``done()`` until it gives something true; that value."""
    deadline = time.monotonic() + timeout
    while not (value := done()):
        if time.monotonic() > deadline:
            raise TimeoutError(f"{what} not after {timeout} s{system.logs()}")
        time.sleep(0.1)
    return value


def test_fifty_ouss_through_separate_workers_survive_a_killed_ingestor(
    tmp_path: Path, scale_out_backends: dict[str, str]
) -> None:
    """50 OUSs launched at once, QA2 passed automatically. JAO's cache starts
    late (a site coming up), so the product ingestor's runs are waiting for
    the products when it is SIGKILLed; a replacement gets the messages it held
    back from the broker and, once JAO replicates, every OUS is Delivered with
    each product ingested exactly once and no message left."""
    from wsrun.packs.alma.alma_pipeline import ous_tag

    alma = demo()
    system = alma.System(
        tmp_path / "alma",
        failure_rate=0.0,
        seed="1",
        concurrency=CONCURRENCY,
        concurrency_of={"eu-pipeline-driver": 1},
        auto_review="Pass",
        **scale_out_backends,
    )
    ids = [f"uid://X1/X3/Xe{i}" for i in range(COUNT)]

    def substates(substate: str) -> set[str]:
        with system.state_store() as store:
            found = store.list(kind="ous", substate=substate, limit=COUNT)
        return {e.id for e in found}

    def ingestions() -> dict[str, list[str]]:
        """The product ingestor's runs per OUS, oldest first, as the journal shows them."""
        from wsrun.core.journal import Journal

        journal = Journal(url=system.journal_url)
        try:
            runs = [r for r in journal.runs(limit=10000) if r.recipe == "alma/product-ingestor"]
        finally:
            journal.close()
        found: dict[str, list[str]] = {}
        for run in sorted(runs, key=lambda r: r.started):
            found.setdefault(run.inputs["ousUID"], []).append(run.shown_status)
        return found

    try:
        system.start(hold=["jao-cache"])
        system.launch_many(ids)
        in_flight = wait_until(
            "the ingestor busy with every run slot",
            lambda: (busy := substates("AnalyzingProducts")) and len(busy) >= CONCURRENCY and busy,
            system,
            90,
        )
        system.crash_and_replace("product-ingestor")
        wait_until(  # the broker gave the killed worker's messages to the new one
            "the held messages taken up again",
            lambda: all(len(ingestions().get(ous, [])) == 2 for ous in in_flight),
            system,
            60,
        )
        system.start_held("jao-cache")
        wait_until(
            "every OUS Delivered",
            lambda: set(system.states(ids).values()) == {"Delivered"},
            system,
            180,
        )
        system.settle()
        with system.state_store() as store:
            histories = {ous: store.history("ous", ous) for ous in ids}
            statuses = [store.get("delivery-status", ous) for ous in ids]
        archive = system.archive()
        try:
            products = archive.products()
        finally:
            archive.close()
        left = system.messages()
        runs = ingestions()
    finally:
        codes = system.stop()
    assert codes and not any(codes.values()), system.logs()
    for ous, changes in histories.items():
        states = [c.state for c in changes]
        moves = [s for i, s in enumerate(states) if i == 0 or states[i - 1] != s]
        assert moves == alma.HAPPY_PATH, (ous, states)
    # the runs the killed worker was in were done again, and only those
    assert runs == {
        ous: ["interrupted", "changed"] if ous in in_flight else ["changed"] for ous in ids
    }
    assert all(s is not None and s.state == "Complete" for s in statuses)
    data = [p for p in products if p.type == "alma_data_product"]
    assert len({p.filename for p in data}) == len(data) == 5 * COUNT
    per_ous = {ous: sum(f"-{ous_tag(ous)}-" in p.filename for p in data) for ous in ids}
    assert set(per_ous.values()) == {5}, per_ous
    weblogs = [p for p in products if p.type == "pipeline_weblog"]
    assert len({p.filename for p in weblogs}) == len(weblogs) == COUNT
    assert left == {}
