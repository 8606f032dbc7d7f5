"""The ALMA data-processing workflow (engine/wsrun/packs/alma/recipes/): the seed's checks after
one OUS with every component a separate worker process, and each path and
refusal with the recipes run by hand."""

from __future__ import annotations

import importlib.util
import io
import json
import sys
import time
import zipfile
from pathlib import Path
from typing import Any

import pytest

from conftest import ROOT

LIFECYCLE = ROOT / "engine" / "wsrun" / "packs" / "alma" / "recipes" / "ous-lifecycle.yaml"
PROG = "2015.1.00657.S"
OUS = "uid://X1/X1/Xb0"
TIMESTAMP = "2018-07-19T07:10:03.781"


def demo() -> Any:
    """examples/alma/demo.py: the System that starts and watches the workers."""
    spec = importlib.util.spec_from_file_location("alma_demo", ROOT / "examples/alma/demo.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules["alma_demo"] = module  # dataclasses look their module up
    spec.loader.exec_module(module)
    return module


def store() -> Any:
    from wsrun.stores.state import open_state_store

    return open_state_store()


def entity(id: str = OUS, kind: str = "ous") -> Any:
    with store() as s:
        return s.get(kind, id)


def history(id: str = OUS) -> list[Any]:
    with store() as s:
        return s.history("ous", id)


# ---- the whole system, one process per component ------------------------------


def test_one_ous_launched_passed_and_delivered_meets_the_seeds_checks(
    tmp_path: Path, alma_backends: dict[str, str]
) -> None:
    """On the embedded stores and on PostgreSQL + RabbitMQ (+ S3 for the
    archive's files); "0 unconsumed messages" counts every queue, unrouted
    messages included."""
    alma = demo()
    system = alma.System(tmp_path / "alma", failure_rate=0.0, seed="1", **alma_backends)
    try:
        system.start()
        system.launch(OUS)
        assert system.wait_for(OUS, ["ReadyForReview", "ProcessingProblem"]) == "ReadyForReview"
        review = system.review(OUS, "Pass")
        assert "flag: Pass" in review.stdout
        system.wait_for(OUS, "Delivered")
        system.settle()
        checks = system.checks(OUS)
        with system.state_store() as s:
            changes = s.history("ous", OUS)
        bad = system.bus()
        try:  # a body that does not match the recipe's inputs: parked, not crashed on
            bad.publish("pipeline.process.EU", {"progID": PROG, "ousUID": OUS, "colour": "red"})
            deadline = time.monotonic() + 20
            while not (dead := bad.messages(status="dead")) and time.monotonic() < deadline:
                time.sleep(0.05)
        finally:
            bad.close()
        xtss = system.wsrun(
            "bus", "call", "xtss", json.dumps({"operation": "get-state", "ousUID": OUS})
        )
    finally:
        codes = system.stop()
    assert codes and not any(codes.values()), system.logs()
    assert checks == {
        "attempt": 1,
        "states": alma.HAPPY_PATH,
        "archive_files": 6,
        "product_metadata_records": 5,
        "pipeline_reports": 1,
        "complete_delivery_statuses": 1,
        "unconsumed_messages": 0,
        "weblog_expanded": {"EU": True, "JAO": True},
        "products_identical": True,
        "superseded": {"archive_files": 0, "pipeline_reports": 0},
    }
    assert [c.state for c in changes] == [
        "ReadyForProcessing",
        "Processing",
        "ReadyForReview",
        "Reviewing",
        "Verified",
        "DeliveryInProgress",
        "DeliveryInProgress",
        "DeliveryInProgress",
        "DeliveryInProgress",
        "Delivered",
    ]
    assert [c.substate for c in changes[5:]] == [
        "IngestionTriggered",
        "AnalyzingProducts",
        "IngestingProducts",
        "ProductsIngested",
        "ProductsIngested",
    ]
    assert len(dead) == 1 and "colour" in (dead[0].error or ""), dead
    assert json.loads(xtss.stdout)["state"] == "Delivered"


@pytest.mark.parametrize("backends", ["embedded", "postgresql-rabbitmq"])
def test_a_relaunch_after_qa2_fail_supersedes_and_a_late_tracker_catches_up(
    tmp_path: Path, request: pytest.FixtureRequest, backends: str
) -> None:
    """The first attempt's weblog and report stay in the archive (7 files for
    the OUS), marked superseded; the seed's checks hold on the current
    attempt. The data tracker starts only after the OUS was ingested: it
    catches up, as the seed's polling tracker would."""
    alma = demo()
    urls = {} if backends == "embedded" else request.getfixturevalue("scale_out_backends")
    system = alma.System(tmp_path / "alma", failure_rate=0.0, seed="1", **urls)
    try:
        system.start(hold=["data-tracker"])
        system.launch(OUS)
        system.wait_for(OUS, "ReadyForReview")
        assert "flag: Fail" in system.review(OUS, "Fail").stdout
        system.launch(OUS)
        deadline = time.monotonic() + 60
        while (e := entity_of(system)).state != "ReadyForReview" or e.attributes["attempt"] != 2:
            assert time.monotonic() < deadline, system.logs()
            time.sleep(0.05)
        system.review(OUS, "Pass")
        deadline = time.monotonic() + 60
        while entity_of(system).substate != "ProductsIngested":
            assert time.monotonic() < deadline, system.logs()
            time.sleep(0.05)
        system.settle()
        assert entity_of(system).state == "DeliveryInProgress"  # nobody tracks it yet
        system.start_held("data-tracker")
        system.wait_for(OUS, "Delivered")
        system.settle()
        checks = system.checks(OUS)
        first, second = (r for r in sorted(reports_of(system), key=lambda r: r.id))
        ous = entity_of(system)
    finally:
        codes = system.stop()
    assert codes and not any(codes.values()), system.logs()
    assert checks == {
        "attempt": 2,
        "states": alma.HAPPY_PATH,
        "archive_files": 6,
        "product_metadata_records": 5,
        "pipeline_reports": 1,
        "complete_delivery_statuses": 1,
        "unconsumed_messages": 0,
        "weblog_expanded": {"EU": True, "JAO": True},
        "products_identical": True,
        "superseded": {"archive_files": 1, "pipeline_reports": 1},
    }
    assert (first.state, second.state) == ("Superseded", "Stored")
    assert first.attributes["superseded_by"] == second.attributes["timestamp"]
    assert ous.attributes["timestamp"] == second.attributes["timestamp"]
    (earlier,) = ous.attributes["superseded"]
    assert earlier["attempt"] == 1 and earlier["qa2"] == "Fail"
    assert earlier["timestamp"] == first.attributes["timestamp"]
    assert ous.attributes["qa2"] == "Pass"


def entity_of(system: Any, id: str = OUS) -> Any:
    with system.state_store() as s:
        return s.get("ous", id)


def reports_of(system: Any, id: str = OUS) -> list[Any]:
    with system.state_store() as s:
        return [r for r in s.list(kind="pipeline-report") if r.attributes["ousUID"] == id]


# ---- the recipes by hand --------------------------------------------------------


@pytest.fixture
def alma(cli, tmp_path: Path) -> Any:
    """A registered OUS lifecycle and the caches, for running components by hand."""
    assert cli("state", "lifecycle", str(LIFECYCLE)).code == 0

    class Alma:
        eu = tmp_path / "eu-cache"
        jao = tmp_path / "jao-cache"

        def launch(self, ous: str = OUS, exec: str = "EU") -> Any:
            return cli("alma/launcher", PROG, ous, "PipelineCalibration", exec)

        def drive(self, ous: str = OUS, rate: float = 0.0, timestamp: str = TIMESTAMP) -> Any:
            return cli(
                "alma/pipeline-driver",
                *("-e", "EU", "--cache", self.eu, "--failure-rate", rate),
                *("--prog-id", PROG, "--ous-uid", ous, "--timestamp", timestamp),
            )

        def store_report(self, ous: str = OUS) -> Any:
            body = published("pipeline.report.JAO")[-1]
            return cli("alma/aqua-qa2", *_options(body))

        def review(self, *args: str) -> Any:
            return cli("alma/aqua-qa2-review", "--report-timeout", "0.5", *args)

        def ready_for_review(self, ous: str = OUS) -> None:
            assert self.launch(ous).code == 0
            assert self.drive(ous).code == 0
            assert self.store_report(ous).code == 0
            assert entity(ous).state == "ReadyForReview"

    return Alma()


def published(selector: str) -> list[dict[str, Any]]:
    """Bodies of the messages published on ``selector``, oldest first."""
    from wsrun.stores.bus import open_bus

    bus = open_bus()
    try:
        found = [m for m in bus.messages(limit=1000) if m.selector == selector]
    finally:
        bus.close()
    return [m.body for m in sorted(found, key=lambda m: m.created)]


def _options(body: dict[str, Any]) -> list[str]:
    flags = {
        "ousUID": "--ous-uid",
        "source": "--source",
        "report": "--report",
        "timestamp": "--timestamp",
        "productsDir": "--products-dir",
    }
    return [a for k, v in body.items() for a in (flags[k], str(v))]


def test_the_driver_publishes_the_seeds_messages_and_caches_the_products(alma) -> None:
    assert alma.launch().code == 0
    assert published("pipeline.process.EU") == [
        {"progID": PROG, "ousUID": OUS, "recipe": "PipelineCalibration"}
    ]
    assert alma.drive().code == 0
    products_dir = "2015.1.00657.S_2018_07_19T07_10_03.781"
    weblog = "weblog-X1-X1-Xb0-2018-07-19T07:10:03.781.zip"
    assert published("cached.JAO") == [
        {"fileType": "productsdir", "cachedAt": "EU", "name": products_dir},
        {"fileType": "weblog", "cachedAt": "EU", "name": weblog},
    ]
    assert published("cached.EU") == [{"fileType": "weblog", "cachedAt": "EU", "name": weblog}]
    (report,) = published("pipeline.report.JAO")
    assert {k: v for k, v in report.items() if k != "report"} == {
        "ousUID": OUS,
        "source": "EU",
        "timestamp": TIMESTAMP,
        "productsDir": products_dir,
    }
    import base64

    assert b"<pipeline-report" in base64.b64decode(report["report"])
    products = alma.eu / products_dir / "SOUS" / "GOUS" / "uid___X1_X1_Xb0" / "products"
    assert sorted(p.name for p in products.iterdir()) == [
        "pl-report-X1-X1-Xb0-2018-07-19T07:10:03.781.xml",
        *[f"product-{i}-X1-X1-Xb0-2018-07-19T07:10:03.781.data" for i in range(5)],
        weblog,
    ]
    assert (alma.eu / weblog).read_bytes() == (products / weblog).read_bytes()
    assert entity().state == "ReadyForReview"


def test_qa2_fail_sends_the_ous_back_to_processing_and_it_can_be_launched_again(alma) -> None:
    alma.ready_for_review()
    done = alma.review("--ous", OUS, "--flag", "f")
    assert done.code == 0, done.err
    assert entity().state == "ReadyForProcessing"
    assert entity().attributes["qa2"] == "Fail"
    assert [c.state for c in history()][-3:] == [
        "ReadyForReview",
        "Reviewing",
        "ReadyForProcessing",
    ]
    assert published("ingest.JAO") == []
    assert alma.launch().code == 0
    assert len(published("pipeline.process.EU")) == 2


def test_qa2_cancel_puts_the_ous_back_to_ready_for_review(alma) -> None:
    alma.ready_for_review()
    assert alma.review("--ous", OUS, "--flag", "Cancel").code == 0
    assert entity().state == "ReadyForReview"
    assert [c.state for c in history()][-2:] == ["Reviewing", "ReadyForReview"]


def test_qa2_pass_verifies_and_hands_the_ous_to_the_product_ingestor(alma) -> None:
    alma.ready_for_review()
    assert alma.review("--ous", OUS, "--flag", "SemiPass").code == 0
    ous = entity()
    assert (ous.state, ous.substate, ous.attributes["qa2"]) == (
        "DeliveryInProgress",
        "IngestionTriggered",
        "SemiPass",
    )
    assert published("ingest.JAO") == [
        {
            "ousUID": OUS,
            "timestamp": TIMESTAMP,
            "productsDir": "2015.1.00657.S_2018_07_19T07_10_03.781",
        }
    ]


def test_the_product_ingestor_records_each_product_as_it_is_ingested(
    alma, cli, tmp_path: Path
) -> None:
    """As the seed's ingestor: the delivery status's ``ingested`` list grows one
    product at a time, each ingested on its own (the board shows progress)."""
    from fixtures.alma import PRODUCTS_DIR, passed

    passed(tmp_path)
    ingest = [
        "alma/product-ingestor",
        *("--cache", alma.jao, "--ous-uid", OUS, "--timestamp", TIMESTAMP),
        *("--products-dir", PRODUCTS_DIR),
    ]
    done = cli(*ingest, "--json")
    assert done.code == 0, done.err
    assert len(set(json.loads(done.out)["outputs"]["locators"])) == 5
    products = [f"product-{i}-X1-X1-Xb0-{TIMESTAMP}.data" for i in range(5)]
    with store() as s:
        changes = s.history("delivery-status", OUS)
    assert [c.attributes.get("ingested") for c in changes] == [
        [],
        *[products[: i + 1] for i in range(5)],
        products,
    ]
    assert [c.state for c in changes][-1] == "Complete"
    assert (entity().state, entity().substate) == ("DeliveryInProgress", "ProductsIngested")
    again = cli(*ingest)  # the same request delivered twice: done, nothing changes
    assert again.code == 0, again.err
    with store() as s:
        assert len(s.history("delivery-status", OUS)) == len(changes)


def test_a_failing_pipeline_sets_processing_problem_and_a_relaunch_is_allowed(alma) -> None:
    assert alma.launch().code == 0
    done = alma.drive(rate=1.0)
    assert done.code == 0, done.err  # the failure is handled: the message is done
    ous = entity()
    assert ous.state == "ProcessingProblem"
    assert "simulated Pipeline processing error" in ous.attributes["error"]
    assert not alma.eu.exists()
    assert published("cached.JAO") == [] and published("pipeline.report.JAO") == []
    assert alma.launch().code == 0
    assert [c.state for c in history()] == [
        "ReadyForProcessing",
        "Processing",
        "ProcessingProblem",
        "ReadyForProcessing",
    ]


def test_a_driver_run_failing_after_taking_the_ous_leaves_a_processing_problem(alma) -> None:
    """Not Processing for ever: a redelivery would be refused, so nobody would move it."""
    assert alma.launch().code == 0
    alma.eu.parent.mkdir(parents=True, exist_ok=True)
    alma.eu.write_text("a file where the cache directory should be")
    failed = alma.drive()
    assert failed.code == 1 and "cache_products" in failed.err
    ous = entity()
    assert ous.state == "ProcessingProblem" and "cache_products" in ous.attributes["error"]
    assert alma.launch().code == 0  # relaunch allowed
    assert [c.state for c in history()][-2:] == ["ProcessingProblem", "ReadyForProcessing"]


def test_unknown_ous_duplicate_launch_and_review_out_of_turn_are_refused_unchanged(
    alma, cli
) -> None:
    assert alma.launch().code == 0
    before = len(history())
    again = alma.launch()
    assert again.code == 1 and "already launched" in again.err
    early = alma.review("--ous", OUS, "--flag", "Pass")
    assert early.code == 1 and "only an OUS ReadyForReview can be reviewed" in early.err
    assert alma.drive().code == 0
    processed = len(history())
    late = alma.launch()
    assert late.code == 1 and "already ReadyForReview" in late.err
    assert len(history()) == processed == before + 2
    unknown = "uid://X9/X9/X99"
    refused = [
        alma.review("--ous", unknown, "--flag", "Pass"),
        cli(
            "alma/product-ingestor",
            *("--cache", alma.jao, "--ous-uid", unknown),
            *("--timestamp", TIMESTAMP, "--products-dir", "x"),
        ),
        cli("alma/data-tracker", "--id", unknown),
    ]
    assert [r.code for r in refused] == [1, 1, 1]
    assert "no such OUS" in refused[0].err and "no such OUS" in refused[1].err
    assert "has no delivery status" in refused[2].err
    with store() as s:
        assert s.get("ous", unknown) is None
    xtss = cli("alma/xtss", "--operation", "set-state", "--ous-uid", OUS, "--value", "Delivered")
    assert xtss.code == 0 and "ReadyForReview -> Delivered is not allowed" in xtss.out
    assert entity().state == "ReadyForReview" and len(history()) == processed


def test_review_without_a_flag_and_without_a_terminal_says_how_and_changes_nothing(
    alma, monkeypatch: pytest.MonkeyPatch
) -> None:
    alma.ready_for_review()
    monkeypatch.setattr(sys, "stdin", io.StringIO(""))
    done = alma.review("--ous", OUS)
    assert done.code == 1
    assert "no answer given and no terminal to ask on (give it with --flag)" in done.err
    assert entity().state == "ReadyForReview"
    nothing = alma.review()
    assert "no terminal" in nothing.err and "--ous" in nothing.err


class Terminal(io.StringIO):
    def isatty(self) -> bool:
        return True


def test_the_interactive_review_lists_shows_the_report_and_asks_until_answered(
    alma, monkeypatch: pytest.MonkeyPatch
) -> None:
    alma.ready_for_review()
    monkeypatch.setattr(sys, "stdin", Terminal(f"Xb0\n{OUS}\nmaybe\np\n"))
    done = alma.review("--weblog-url", "http://jao:8001/weblogs")
    assert done.code == 0, done.err
    assert entity().state == "DeliveryInProgress"
    assert "OUSs ready to be reviewed:\nuid://X1/X1/Xb0" in done.err
    assert '<pipeline-report progID="2015.1.00657.S" ousUID="uid://X1/X1/Xb0"' in done.err
    assert (
        "Weblog: http://jao:8001/weblogs/weblog-X1-X1-Xb0-2018-07-19T07:10:03.781/index.html"
        in done.err
    )
    assert "please answer one of: Pass, SemiPass, Fail, Cancel" in done.err


def test_an_invalid_flag_is_refused_before_the_ous_changes(alma) -> None:
    alma.ready_for_review()
    before = len(history())
    refused = alma.review("--ous", OUS, "--flag", "Maybe")
    assert refused.code == 1
    assert "'Maybe' is not one of: Pass, SemiPass, Fail, Cancel" in refused.err
    assert entity().state == "ReadyForReview" and len(history()) == before


def test_cancel_on_the_terminal_goes_back_to_the_list_of_ouss(
    alma, monkeypatch: pytest.MonkeyPatch
) -> None:
    """As in the seed: Cancel puts the OUS back and shows the list again, where
    the reviewer picks again; with --flag Cancel the run just ends."""
    alma.ready_for_review()
    monkeypatch.setattr(sys, "stdin", Terminal(f"{OUS}\nc\n{OUS}\nf\n"))
    done = alma.review("--json")
    assert done.code == 0, done.err
    assert done.err.count("OUSs ready to be reviewed:") == 2
    assert json.loads(done.out)["outputs"] == {"ous": OUS, "flag": "Fail"}
    assert [c.state for c in history()][-5:] == [
        "ReadyForReview",
        "Reviewing",
        "ReadyForReview",
        "Reviewing",
        "ReadyForProcessing",
    ]
    monkeypatch.setattr(sys, "stdin", Terminal(""))
    assert alma.launch().code == 0 and alma.drive(timestamp="2018-07-20T00:00:00.000").code == 0
    assert alma.store_report().code == 0
    once = alma.review("--ous", OUS, "--flag", "Cancel")
    assert once.code == 0 and "OUSs ready to be reviewed" not in once.err
    assert entity().state == "ReadyForReview"


def test_no_ous_ready_for_review_is_a_clear_error(alma, monkeypatch) -> None:
    monkeypatch.setattr(sys, "stdin", Terminal(""))
    done = alma.review()
    assert done.code == 1 and "no OUS is ReadyForReview" in done.err


def _cache_with_zip(cache: Path, name: str, members: dict[str, bytes]) -> None:
    cache.mkdir(parents=True)
    with zipfile.ZipFile(cache / name, "w") as z:
        for member, data in members.items():
            z.writestr(member, data)


@pytest.mark.parametrize("member", ["../escaped.html", "/tmp/absolute.html", "a/../../up.html"])
def test_a_weblog_zip_leaving_its_directory_is_refused(alma, cli, tmp_path: Path, member) -> None:
    name = "weblog-X1-X1-Xb0-2018-07-19T07:10:03.781.zip"
    _cache_with_zip(alma.eu, name, {"index.html": b"<html/>", member: b"gotcha"})
    done = cli(
        "alma/replicated-cache",
        *("-e", "JAO", "--lc", alma.jao, "--euc", alma.eu),
        *("--file-type", "weblog", "--cached-at", "EU", "--name", name),
    )
    assert done.code == 1
    assert "escaped" in done.err or "absolute" in done.err or "up.html" in done.err
    weblog = alma.jao / "weblogs" / name[:-4]
    assert not weblog.exists() or not any(weblog.rglob("*.html"))
    assert not (tmp_path / "jao-cache" / "weblogs" / "escaped.html").exists()
    assert not Path("/tmp/absolute.html").exists()
    from wsrun.stores.archive.store import ArchiveError, ArchiveStore

    try:
        archive = ArchiveStore.open(str(tmp_path / "wsrun-home" / "archive"), create=False)
    except ArchiveError:
        return  # nothing ingested
    try:
        assert archive.products() == []
    finally:
        archive.close()


def test_a_name_from_a_message_cannot_leave_the_cache(alma, cli) -> None:
    done = cli(
        "alma/replicated-cache",
        *("-e", "JAO", "--lc", alma.jao, "--euc", alma.eu),
        *("--file-type", "productsdir", "--cached-at", "EU", "--name", "../../etc"),
    )
    assert done.code == 1 and "names come from messages" in done.err
    assert not alma.jao.exists()


def test_a_report_that_is_not_base64_xml_is_refused(alma, cli) -> None:
    base = ["--ous-uid", OUS, "--source", "EU", "--timestamp", TIMESTAMP, "--products-dir", "p"]
    garbage = cli("alma/aqua-qa2", *base, "--report", "not base64!")
    assert garbage.code == 1 and "not base64" in garbage.err
    import base64

    text = cli("alma/aqua-qa2", *base, "--report", base64.b64encode(b"plain").decode())
    assert text.code == 1 and "not XML" in text.err
    with store() as s:
        assert s.list(kind="pipeline-report") == []


# ---- the simulated Pipeline -------------------------------------------------------


def test_the_simulated_pipeline_is_seeded_and_its_products_depend_only_on_the_run(
    cli, tmp_path: Path
) -> None:
    def run(seed: str, out: str, timestamp: str = TIMESTAMP) -> Any:
        return cli(
            "alma/pipeline",
            *(PROG, OUS, "EU", "-o", tmp_path / out),
            *("--failure-rate", "0.5", "--seed", seed, "--timestamp", timestamp),
        )

    outcomes = {seed: run(seed, f"a{seed}").code for seed in map(str, range(12))}
    assert set(outcomes.values()) == {0, 1}  # about half fail
    assert all(run(seed, f"b{seed}").code == code for seed, code in outcomes.items())
    ok = next(seed for seed, code in outcomes.items() if code == 0)
    from conftest import tree

    assert tree(tmp_path / f"a{ok}") == tree(tmp_path / f"b{ok}")
    failed = next(seed for seed, code in outcomes.items() if code == 1)
    assert not (tmp_path / f"a{failed}").exists()
    weblog = next((tmp_path / f"a{ok}").rglob("weblog-*.zip"))
    with zipfile.ZipFile(weblog) as z:
        assert "index.html" in z.namelist() and all(".." not in n for n in z.namelist())


def test_the_simulated_pipeline_waits_up_to_its_delay(cli, tmp_path: Path) -> None:
    started = time.monotonic()
    done = cli(
        "alma/pipeline", PROG, OUS, "EU", "-o", tmp_path, "--failure-rate", "0", "--delay", "0.4"
    )
    took = time.monotonic() - started
    assert done.code == 0 and 0.2 <= took < 5


# ---- the generic steps the workflow brought -------------------------------------------


def test_wait_files_and_archive_check_name_what_is_missing(cli, tmp_path: Path) -> None:
    from conftest import write

    write(
        tmp_path / "r.yaml",
        """
        recipe: r
        inputs:
          require: {type: bool, flags: [--require]}
        steps:
          - id: archived
            uses: archive-check
            with: {ingestion_path: staged, filenames: [a.data, b.data], require: "{{ inputs.require }}"}
          - id: replicated
            uses: wait-files
            with: {base: staged, paths: [a.data, b.data], timeout: 0.2}
        outputs:
          missing: "{{ steps.archived.outputs.missing }}"
        """,
    )
    (tmp_path / "staged").mkdir()
    (tmp_path / "staged" / "a.data").write_text("a")
    required = cli("r.yaml", "--require")
    assert required.code == 1 and "a.data: not in the archive" in required.err
    assert "(and 1 more)" in required.err
    started = time.monotonic()
    waited = cli("r.yaml", "--json")
    assert waited.code == 1 and time.monotonic() - started >= 0.2
    assert f"{tmp_path / 'staged' / 'b.data'}: still missing after 0.2 s" in waited.err
    (tmp_path / "staged" / "b.data").write_text("b")
    done = cli("r.yaml", "--json")
    assert done.code == 0, done.err
    assert json.loads(done.out)["outputs"]["missing"] == ["a.data", "b.data"]
