"""``wsrun serve`` in a real browser: Debian's chromium driven by Playwright.

Each test changes the world behind the page's back (the state store, the bus,
a running recipe) and waits for the page to show it without reloading: a
marker set on ``window`` must survive, which a full reload would clear.
"""

from __future__ import annotations

import contextlib
import os
import subprocess
import sys
import time
from pathlib import Path

from conftest import ROOT, write
from fixtures.webserver import artifacts_dir
from web_data import make_ous, state_store

COLLECTION_LIFECYCLE = (
    ROOT / "engine" / "wsrun" / "packs" / "distillery" / "recipes" / "collection-lifecycle.yaml"
)

BOARD_CARD = 'section.column[data-state="{state}"] .card[data-id="{id}"]'


def mark(page) -> None:
    page.evaluate("window.__notReloaded = true")


def not_reloaded(page) -> bool:
    return page.evaluate("window.__notReloaded === true")


def test_board_follows_an_ous_through_its_lifecycle(live_server, browser_page) -> None:
    from playwright.sync_api import expect

    store = state_store()
    make_ous(store, "uid://X1/X1/Xb0", "ReadyForProcessing")
    server = live_server()
    page = browser_page
    page.goto(server.url + "/board")
    expect(
        page.locator(BOARD_CARD.format(state="ReadyForProcessing", id="uid://X1/X1/Xb0"))
    ).to_be_visible()
    mark(page)
    store.transition("ous", "uid://X1/X1/Xb0", state="Processing")
    expect(
        page.locator(BOARD_CARD.format(state="Processing", id="uid://X1/X1/Xb0"))
    ).to_be_visible()
    expect(
        page.locator(BOARD_CARD.format(state="ReadyForProcessing", id="uid://X1/X1/Xb0"))
    ).to_have_count(0)
    store.transition("pipeline-report", "uid://X1/X1/Xb0@t1", state="Stored", create=True)
    expect(page.locator("#kind-pipeline-report-body .total")).to_have_text("1")
    page.fill('#kind-pipeline-report input[type="search"]', "no-such-report")
    expect(page.locator("#kind-pipeline-report-body .total")).to_have_text("0")
    assert not_reloaded(page)


def test_review_decision_through_the_buttons_reaches_the_store(
    live_server, browser_page, tmp_path: Path
) -> None:
    from playwright.sync_api import expect

    from wsrun.stores.bus import open_bus

    store = state_store()
    make_ous(store, "uid://X1/X1/Xb1", "ReadyForReview")
    bus = open_bus()
    bus.declare_queue("product-ingestor", ["ingest.JAO"])
    write(tmp_path / "cache" / "weblogs" / "weblog-Xb1" / "index.html", "<h1>Weblog of Xb1</h1>")
    server = live_server(dirs={"cache": str(tmp_path / "cache")})
    page = browser_page
    page.goto(server.url + "/review")
    row = page.locator('#ready tr[data-id="uid://X1/X1/Xb1"]')
    expect(row).to_be_visible()
    row.get_by_role("button", name="Open").click()
    expect(page.locator("#ous-state")).to_have_text("Reviewing")
    assert store.get("ous", "uid://X1/X1/Xb1").state == "Reviewing"
    expect(page.locator("#report")).to_contain_text("Calibration looks fine")
    with page.expect_popup() as weblog:
        page.click("#weblog-link")
    expect(weblog.value.locator("h1")).to_have_text("Weblog of Xb1")
    weblog.value.close()
    page.get_by_role("button", name="Pass", exact=True).click()
    expect(page.locator("#notice")).to_contain_text("Pass")
    ous = store.get("ous", "uid://X1/X1/Xb1")
    assert (ous.state, ous.substate, ous.attributes["qa2"]) == (
        "DeliveryInProgress",
        "IngestionTriggered",
        "Pass",
    )
    [request] = bus.messages(queue="product-ingestor")
    assert request.body["ousUID"] == "uid://X1/X1/Xb1"
    # The OUS is no longer in review: its page offers no decision any more.
    page.goto(server.url + "/review/ous?id=uid%3A%2F%2FX1%2FX1%2FXb1")
    expect(page.locator("#ous-state")).to_contain_text("DeliveryInProgress")
    assert page.locator("#decision").count() == 0


def test_fail_asks_for_confirmation_before_it_acts(live_server, browser_page) -> None:
    from playwright.sync_api import expect

    store = state_store()
    make_ous(store, "uid://X1/X1/Xb2", "Reviewing")
    server = live_server()
    page = browser_page
    page.goto(server.url + "/review/ous?id=uid%3A%2F%2FX1%2FX1%2FXb2")
    page.get_by_role("button", name="Fail…").click()
    expect(page.locator("#confirm")).to_contain_text("Fail uid://X1/X1/Xb2?")
    assert store.get("ous", "uid://X1/X1/Xb2").state == "Reviewing"
    page.click("#confirm-no")  # changing one's mind changes nothing
    expect(page.locator("#decision")).to_be_visible()
    assert store.get("ous", "uid://X1/X1/Xb2").state == "Reviewing"
    page.get_by_role("button", name="Fail…").click()
    page.click("#confirm-yes")
    expect(page.locator("#notice")).to_contain_text("Fail")
    ous = store.get("ous", "uid://X1/X1/Xb2")
    assert (ous.state, ous.attributes["qa2"]) == ("ReadyForProcessing", "Fail")


def test_distillery_form_queues_a_collection_with_live_progress(live_server, browser_page) -> None:
    from playwright.sync_api import expect

    from wsrun.stores.bus import open_bus
    from wsrun.stores.state import load_lifecycle

    bus = open_bus()
    bus.declare_queue("alchemist", ["distillery.process"])
    server = live_server()
    page = browser_page
    page.goto(server.url + "/distillery")
    page.fill('input[name="collection"]', "HaleGE")
    page.check('input[name="access"]')
    page.get_by_role("button", name="Queue").click()
    expect(page.locator("#notice")).to_contain_text("HaleGE")
    row = page.locator('#distillery-queue tr[data-collection="HaleGE"]')
    expect(row).to_contain_text("preservation + access")
    expect(row).to_contain_text("ready")
    [message] = bus.messages(queue="alchemist")
    assert message.body == {"collection": "HaleGE", "preservation": True, "access": True}
    mark(page)
    claimed = bus.claim("alchemist", "scheduler")
    assert claimed is not None
    expect(row).to_contain_text("claimed")
    # What the scheduler (engine/wsrun/packs/distillery/recipes/alchemist.yaml) records as it goes.
    store = state_store()
    store.register_lifecycle(load_lifecycle(str(COLLECTION_LIFECYCLE)))
    store.transition("distillery-collection", "HaleGE", state="Queued", create=True)
    progress = {
        "processing": "preservation",
        "folder": "f1",
        "image": "a.tif",
        "position": 2,
        "total": 5,
    }
    store.transition(
        "distillery-collection",
        "HaleGE",
        state="Processing",
        substate="Preservation",
        attributes={"progress": progress},
    )
    expect(row).to_contain_text("Processing · Preservation · image 2 of 5")
    store.transition("distillery-collection", "HaleGE", state="Done")
    bus.ack(claimed)
    expect(row).to_contain_text("done")
    expect(row.locator(".collection-state")).to_contain_text("Done")
    assert not_reloaded(page)
    page.fill('input[name="collection"]', "../etc")
    page.evaluate("document.querySelector('#distillery-form').noValidate = true")
    page.get_by_role("button", name="Queue").click()
    expect(page.locator("#error-message")).to_contain_text("collection id")


def test_run_page_shows_live_progress(
    live_server, browser_page, tmp_path: Path, wsrun_home: Path
) -> None:
    from playwright.sync_api import expect

    from wsrun.core.journal import Journal

    store = state_store()
    store.transition("gate", "g1", state="closed", create=True)
    recipe = write(
        tmp_path / "slow.yaml",
        f"""
        recipe: slow
        steps:
          - id: first
            uses: mkdir
            with: {{path: "{tmp_path}/a"}}
          - id: wait
            uses: wait-state
            with: {{kind: gate, id: g1, until: open, timeout: 30, poll: 0.05}}
          - id: last
            uses: mkdir
            with: {{path: "{tmp_path}/b"}}
        """,
    )
    proc = subprocess.Popen(
        [sys.executable, "-m", "wsrun", str(recipe), "-q"],
        cwd=tmp_path,
        env={**os.environ, "WSRUN_HOME": str(wsrun_home)},
    )
    try:
        journal = Journal()
        deadline = time.monotonic() + 20
        while not (runs := journal.runs(1)) or not journal.steps(runs[0].id):
            assert time.monotonic() < deadline, "the run did not start"
            time.sleep(0.05)
        server = live_server()
        page = browser_page
        page.goto(f"{server.url}/runs/{runs[0].id}")
        expect(page.locator("#run-status")).to_have_text("running")
        expect(page.locator("#steps")).to_contain_text("mkdir")
        mark(page)
        store.transition("gate", "g1", state="open")
        expect(page.locator("#run-status")).to_have_text("changed", timeout=20_000)
        expect(page.locator("#steps-done")).to_have_text("3 of 3 finished")
        expect(page.locator("#effects")).to_contain_text(f"{tmp_path}/b")
        expect(page.locator("#log")).to_contain_text("run changed")
        assert not_reloaded(page)
        assert proc.wait(20) == 0
    finally:
        proc.kill()
        proc.wait()


def test_run_page_shows_a_running_steps_files_bytes_rate_and_eta(
    live_server, browser_page, tmp_path: Path, wsrun_home: Path
) -> None:
    """The journal's progress of a running step (wsrun.core.progress) on the run
    page, live: a bar and the heartbeat line, gone once the step is done."""
    from playwright.sync_api import expect

    from fixtures.progress_step import progress_plugin_env
    from wsrun.core.journal import Journal

    gate = tmp_path / "gate"
    recipe = write(
        tmp_path / "long.yaml",
        f"""
        recipe: long
        steps:
          - id: work
            uses: test-progress
            with: {{files: 5, bytes_each: 2000000, gate: "{gate}", hold_after: 2}}
        """,
    )
    env = {**os.environ, **progress_plugin_env(tmp_path), "WSRUN_HOME": str(wsrun_home)}
    proc = subprocess.Popen(
        [sys.executable, "-m", "wsrun", str(recipe), "-q"], cwd=tmp_path, env=env
    )
    try:
        journal = Journal()
        deadline = time.monotonic() + 20
        while not (runs := journal.runs(1)) or not journal.steps(runs[0].id):
            assert time.monotonic() < deadline, "the run did not start"
            time.sleep(0.05)
        server = live_server()
        page = browser_page
        page.goto(f"{server.url}/runs/{runs[0].id}")
        expect(page.locator("#run-status")).to_have_text("running")
        mark(page)
        row = page.locator('#steps tr.step-progress[data-step="work"]')
        # held at the gate after 2 of 5 files: the journal has them within a second
        expect(row).to_contain_text("2/5 files, 4.0/10.0 MB, ", timeout=20_000)
        expect(row).to_contain_text("files/s")
        expect(row).to_contain_text("MB/s")
        expect(row).to_contain_text("ETA ")
        expect(row.get_by_role("progressbar")).to_have_attribute("aria-valuenow", "40.0")
        gate.write_text("open")
        expect(page.locator("#run-status")).to_have_text("ok", timeout=20_000)
        expect(page.locator("#steps tr.step-progress")).to_have_count(0)
        assert not_reloaded(page)
        assert proc.wait(20) == 0
    finally:
        proc.kill()
        proc.wait()


def test_404_page_and_token_login_in_the_browser(live_server, browser_page) -> None:
    from playwright.sync_api import expect

    server = live_server(token="s3cret-token")
    page = browser_page
    response = page.goto(server.url + "/board")
    assert response.status == 401
    page.fill('input[name="token"]', "wrong")
    page.get_by_role("button", name="Log in").click()
    expect(page.locator("#error-message")).to_have_text("wrong token")
    page.fill('input[name="token"]', "s3cret-token")
    page.get_by_role("button", name="Log in").click()
    expect(page.locator("h1")).to_contain_text("Life-cycle board")
    response = page.goto(server.url + "/runs/20260101-000000-deadbeef")
    assert response.status == 404
    expect(page.locator("#error-message")).to_have_text("no run '20260101-000000-deadbeef'")


def test_a_failing_browser_test_leaves_a_screenshot(tmp_path: Path) -> None:
    """The hook and the page fixture, run by pytest on two inner tests; a fake
    browser writes the 'screenshot', so no chromium is needed for this."""
    write(
        tmp_path / "inner" / "conftest.py",
        """
        import pytest

        from fixtures.webserver import browser_page, pytest_runtest_makereport  # noqa: F401


        class Page:
            def screenshot(self, path, full_page):
                open(path, "wb").write(b"PNG of the page")


        class Context:
            def set_default_timeout(self, ms):
                pass

            def new_page(self):
                return Page()

            def close(self):
                pass


        class Browser:
            def new_context(self):
                return Context()


        @pytest.fixture(scope="session")
        def chromium():
            return Browser()
        """,
    )
    write(
        tmp_path / "inner" / "test_inner.py",
        """
        def test_fails(browser_page):
            assert False

        def test_passes(browser_page):
            pass
        """,
    )
    artifacts = tmp_path / "artifacts"
    done = subprocess.run(
        [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "test_inner.py"],
        cwd=tmp_path / "inner",
        env={
            **os.environ,
            "PYTHONPATH": str(Path(__file__).parent),
            "WSRUN_TEST_ARTIFACTS": str(artifacts),
        },
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 1, done.stdout + done.stderr
    assert "1 failed, 1 passed" in done.stdout
    shot = artifacts / "test_inner.py__test_fails.png"
    assert [p.name for p in artifacts.iterdir()] == [shot.name]
    assert shot.read_bytes() == b"PNG of the page"
    assert f"screenshot of the failed page: {shot}" in done.stdout


#: For every header word on the page, how many lines it takes (1 unless broken
#: mid-word); and how far the page and each element overflow sideways.
LAYOUT_PROBE = """() => {
  const broken = [];
  for (const el of document.querySelectorAll('h1, h2, h3, th, header a')) {
    const walker = document.createTreeWalker(el, NodeFilter.SHOW_TEXT);
    for (let node = walker.nextNode(); node; node = walker.nextNode()) {
      const re = /\\S+/g;
      for (let m = re.exec(node.data); m; m = re.exec(node.data)) {
        const range = document.createRange();
        range.setStart(node, m.index);
        range.setEnd(node, m.index + m[0].length);
        const tops = new Set([...range.getClientRects()].map(r => Math.round(r.top)));
        if (tops.size > 1) broken.push(m[0]);
      }
    }
  }
  // only a wide table may scroll, inside its own box (.scroll)
  const wide = [...document.querySelectorAll('body *')]
    .filter(el => !el.closest('.scroll'))
    .filter(el => el.scrollWidth > el.clientWidth + 1 && getComputedStyle(el).overflowX !== 'visible'
                  || el.getBoundingClientRect().right > document.documentElement.clientWidth + 1)
    .map(el => el.tagName + '.' + el.className);
  return {broken, wide, page: document.documentElement.scrollWidth - document.documentElement.clientWidth};
}"""


def test_board_fits_a_narrow_screen_without_broken_words(live_server, browser_page) -> None:
    """At 420 px (a phone) and at desktop width: no header word is broken across
    lines and nothing is wider than the window."""
    from playwright.sync_api import expect

    store = state_store()
    for n, state in enumerate(["ReadyForProcessing", "DeliveryInProgress", "ProcessingProblem"]):
        make_ous(store, f"uid://X1/X1/Xn{n}", state)
    server = live_server()
    page = browser_page
    for width in (420, 1280):
        page.set_viewport_size({"width": width, "height": 900})
        page.goto(server.url + "/board")
        expect(
            page.locator('section.column[data-state="DeliveryInProgress"] .card')
        ).to_be_visible()
        layout = page.evaluate(LAYOUT_PROBE)
        # For a person to look at; chromium may refuse a screenshot on a loaded machine.
        with contextlib.suppress(Exception):
            page.screenshot(path=str(artifacts_dir() / f"board-{width}.png"), full_page=True)
        assert layout == {"broken": [], "wide": [], "page": 0}, width
