"""``wsrun serve`` over plain HTTP: the JSON API of every page, 404s, the token,
CSRF and path traversal refusals. The server runs in a thread on a free port."""

from __future__ import annotations

import http.client
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import httpx
import pytest

from conftest import ROOT, write
from web_data import dead_message, make_ous, state_store


def client(server, **kwargs) -> httpx.Client:
    return httpx.Client(base_url=server.url, timeout=30, **kwargs)


@contextmanager
def csrf_client(server, **kwargs) -> Iterator[httpx.Client]:
    """A client holding the CSRF cookie and sending it back as the header."""
    with client(server, **kwargs) as c:
        c.get("/runs")
        c.headers["X-CSRF-Token"] = c.cookies["wsrun_csrf"]
        yield c


def raw_get(server, path: str) -> tuple[int, bytes]:
    """GET with the path sent exactly as written (no client-side '..' removal)."""
    parts = urlsplit(server.url)
    conn = http.client.HTTPConnection(parts.hostname, parts.port, timeout=10)
    conn.request("GET", path)
    response = conn.getresponse()
    return response.status, response.read()


# ---- runs ---------------------------------------------------------------------


def test_runs_api_lists_runs_with_effects_checksums_and_log(
    cli, live_server, tmp_path: Path
) -> None:
    out = tmp_path / "out"
    assert (
        cli(
            ROOT / "examples" / "quickstart", ROOT / "examples" / "quickstart" / "products", out
        ).code
        == 0
    )
    server = live_server()
    with client(server) as c:
        page = c.get("/api/runs").json()
        assert page["total"] == 1
        [run] = page["rows"]
        assert run["recipe"] == "quickstart" and run["status"] == "changed"
        assert run["duration"] > 0
        detail = c.get(f"/api/runs/{run['id']}").json()
        copy = next(s for s in detail["steps"] if s["key"] == "copy")
        fits = next(e for e in copy["effects"] if e["path"].endswith("J1234+5678.I.pb.fits"))
        assert fits["bytes"] == (out / "request-1" / "J1234+5678.I.pb.fits").stat().st_size
        assert fits["checksum"] == copy["outputs"]["checksums"][fits["path"]]
        assert detail["outputs"]["files"] == 6
        assert any("step copy changed" in line for line in detail["log"])
        html = c.get(f"/runs/{run['id']}")
        assert html.status_code == 200
        assert fits["checksum"] in html.text
        assert c.get("/api/runs", params={"q": "no-such-recipe"}).json()["total"] == 0


def test_a_run_page_counts_the_iterations_of_a_loop_as_finished(
    cli, live_server, tmp_path: Path
) -> None:
    recipe = write(
        tmp_path / "loop.yaml",
        """
        recipe: looped
        steps:
          - id: each
            uses: mkdir
            for_each: [a, b, c]
            with: {path: "{{ run.workdir }}/out/{{ item }}"}
        """,
    )
    assert cli(recipe).code == 0
    server = live_server()
    with client(server) as c:
        [run] = c.get("/api/runs").json()["rows"]
        detail = c.get(f"/api/runs/{run['id']}").json()
        assert [s["key"] for s in detail["steps"]] == ["each", "each[0]", "each[1]", "each[2]"]
        assert all(s["ended"] and s["status"] == "changed" for s in detail["steps"])
        assert "4 of 4 finished" in c.get(f"/runs/{run['id']}").text


def test_a_run_page_is_in_execution_order_collapses_loops_and_pages_effects(
    cli, live_server, tmp_path: Path
) -> None:
    """A loop over a called recipe: the called recipe's steps come after the loop
    starts (not by their own numbering), fold into the loop, and their effects
    are listed once (not again under the loop), 100 a page."""
    write(
        tmp_path / "sub.yaml",
        """
        recipe: sub
        inputs:
          n: {type: int}
        steps:
          - id: one
            uses: mkdir
            with: {path: "{{ run.workdir }}/out/{{ inputs.n }}/a"}
          - id: two
            uses: mkdir
            with: {path: "{{ run.workdir }}/out/{{ inputs.n }}/b"}
        """,
    )
    recipe = write(
        tmp_path / "main.yaml",
        """
        recipe: main
        steps:
          - id: first
            uses: mkdir
            with: {path: "{{ run.workdir }}/out"}
          - id: each
            for_each: "{{ range(60) | list }}"
            uses: ./sub.yaml
            with: {n: "{{ item }}"}
          - id: last
            uses: mkdir
            with: {path: "{{ run.workdir }}/end"}
        """,
    )
    assert cli(recipe, cwd=tmp_path).code == 0
    server = live_server()
    with client(server) as c:
        [run] = c.get("/api/runs").json()["rows"]
        keys = [s["key"] for s in c.get(f"/api/runs/{run['id']}").json()["steps"]]
        assert keys[:4] == ["first", "each", "each[0]/one", "each[0]/two"]
        assert keys[-1] == "last" and len(keys) == 3 + 120
        html = c.get(f"/runs/{run['id']}").text
        assert "120 inner steps (120 finished)" in html
        # 1 + 3 × 60 + 1 directories made (the loop's own copy of them is not listed)
        assert '<h2 id="effects-title">Effects <span class="muted">182</span>' in html
        assert html.count("<td>create_dir</td>") == 100 and "page 1 of 2" in html
        last = c.get(f"/runs/{run['id']}", params={"effects": "2"}).text
        assert last.count("<td>create_dir</td>") == 82
        assert "<code>last</code></td><td>create_dir" in last
        live = c.get(f"/runs/{run['id']}/live", params={"effects": "2"}).text
        assert "page 2 of 2" in live and 'hx-get="/runs/' not in live  # finished: no polling


def test_unknown_ids_are_404_pages_not_tracebacks(live_server) -> None:
    state_store()
    server = live_server()
    with client(server) as c:
        for path in (
            "/runs/20260101-000000-deadbeef",
            "/messages/nope",
            "/review/ous?id=uid://X9/X9/X9",
            "/entities/ous?id=uid://X9/X9/X9",
            "/pictures/recipe/no/such",
            "/pictures/lifecycle/nokind",
            "/files/nope/",
            "/board/tables/nope",
            "/no/such/page",
        ):
            r = c.get(path)
            assert r.status_code == 404, path
            assert "text/html" in r.headers["content-type"]
            assert "Traceback" not in r.text and 'id="error-message"' in r.text
        r = c.get("/api/runs/nope")
        assert r.status_code == 404 and r.json() == {"error": "no run 'nope'"}
        assert c.get("/api/messages/nope").status_code == 404


def test_openapi_describes_the_json_api(live_server) -> None:
    server = live_server()
    with client(server) as c:
        r = c.get("/api/openapi.json")
    assert r.status_code == 200
    paths = r.json()["paths"]
    assert {"/api/runs/{run_id}", "/api/review/decide", "/api/messages/{message_id}/resend"} <= set(
        paths
    )
    assert all(p.startswith("/api/") for p in paths)
    assert paths["/api/review/decide"]["post"]["responses"]["409"]["description"]
    import re

    for path, operations in paths.items():
        for method, op in operations.items():
            named = {p["name"] for p in op.get("parameters", []) if p["in"] == "path"}
            assert named == set(re.findall(r"{(\w+)}", path)), (method, path)
            if method == "post" and path != "/api/messages/{message_id}/resend":
                assert op["requestBody"]["content"]["application/json"]["schema"], path
            if op.get("parameters") or op.get("requestBody"):
                assert "400" in op["responses"], (method, path)
    assert "security" not in r.json()  # no token configured: none needed
    decide = paths["/api/review/decide"]["post"]["requestBody"]["content"]["application/json"]
    assert decide["schema"]["properties"]["flag"]["enum"] == ["Pass", "SemiPass", "Fail", "Cancel"]


def test_a_wrong_method_is_405_with_every_allowed_method(live_server) -> None:
    server = live_server()
    with csrf_client(server) as c:
        for path, allowed in (
            ("/api/distillery", "GET, HEAD, POST"),
            ("/api/runs", "GET, HEAD"),
            ("/distillery", "GET, HEAD, POST"),
        ):
            r = c.request("DELETE", path)
            assert r.status_code == 405 and r.headers["allow"] == allowed, path


# ---- board --------------------------------------------------------------------


def test_board_columns_follow_the_lifecycle_newest_first(live_server) -> None:
    store = state_store()
    make_ous(store, "uid://X1/X1/Xb0", "ReadyForReview")
    make_ous(store, "uid://X1/X1/Xb1", "Processing")
    make_ous(store, "uid://X1/X1/Xb2", "ReadyForReview")
    server = live_server()
    with client(server) as c:
        board = c.get("/api/board").json()
    assert [col["state"] for col in board["columns"]][:4] == [
        "ReadyForProcessing",
        "Processing",
        "ProcessingProblem",
        "ReadyForReview",
    ]
    by_state = {col["state"]: [e["id"] for e in col["entities"]] for col in board["columns"]}
    assert by_state["ReadyForReview"] == ["uid://X1/X1/Xb2", "uid://X1/X1/Xb0"]
    assert by_state["Processing"] == ["uid://X1/X1/Xb1"]


def test_board_tables_page_and_filter(live_server) -> None:
    store = state_store()
    for i in range(30):
        store.transition(
            "delivery-status",
            f"uid://X1/X1/X{i:02d}",
            state="complete",
            create=True,
            attributes={"products": i},
        )
    server = live_server()
    with client(server) as c:
        first = c.get("/api/board/tables/kind-delivery-status").json()
        assert (first["total"], first["pages"], len(first["rows"])) == (30, 2, 25)
        second = c.get("/api/board/tables/kind-delivery-status", params={"page": 2}).json()
        assert len(second["rows"]) == 5
        ids = {r["id"] for r in first["rows"]} | {r["id"] for r in second["rows"]}
        assert len(ids) == 30
        found = c.get("/api/board/tables/kind-delivery-status", params={"q": "X07"}).json()
        assert [r["id"] for r in found["rows"]] == ["uid://X1/X1/X07"]
        assert (
            c.get("/api/board/tables/kind-delivery-status", params={"page": "0"}).status_code == 400
        )
        names = [t["name"] for t in c.get("/api/board/tables").json()]
        assert names == [
            "kind-pipeline-report",
            "kind-delivery-status",
            "unread",
            "archive",
            "products",
        ]


def test_board_archive_table_lists_stored_files(cli, live_server, tmp_path: Path) -> None:
    from fixtures import staging

    manifest = staging.calibration(tmp_path / "cal")
    recipe = tmp_path / "ingest.yaml"
    recipe.write_text(
        "recipe: ingest-one\nsteps:\n  - uses: ingest\n    with: {manifest: "
        + str(manifest)
        + "}\n"
    )
    assert cli(recipe).code == 0
    server = live_server()
    with client(server) as c:
        table = c.get("/api/board/tables/archive").json()
        assert table["total"] == 3
        assert {r["file"] for r in table["rows"]} == {
            "19A-001_sb1_eb2.ms.calapply.tar",
            "weblog.tgz",
            "ingestion_artifacts_2026_11_23.tar",
        }
        assert all(len(r["sha256"]) == 64 and r["size"] > 0 for r in table["rows"])
        products = c.get("/api/board/tables/products").json()
        assert [r["type"] for r in products["rows"]] == [
            "ingestion_artifacts",
            "pipeline_weblog",
            "calibration",
        ]


# ---- messages -----------------------------------------------------------------


def test_dead_message_is_listed_and_resent(live_server) -> None:
    message_id = dead_message(error="validation failed: ousUID missing")
    server = live_server()
    with csrf_client(server) as c:
        dead = c.get("/api/messages", params={"status": "dead"}).json()
        assert [(r["id"], r["error"]) for r in dead["rows"]] == [
            (message_id, "validation failed: ousUID missing")
        ]
        queues = {q["queue"]: q for q in c.get("/api/queues").json()}
        assert queues["pipeline"]["dead"] == 1
        r = c.post(f"/api/messages/{message_id}/resend")
        assert r.status_code == 200 and r.json()["status"] == "ready"
        again = c.post(f"/api/messages/{message_id}/resend")
        assert again.status_code == 409 and "not dead" in again.json()["error"]
        assert c.post("/api/messages/nope/resend").status_code == 404
    from wsrun.stores.bus import open_bus

    assert open_bus().get(message_id).status == "ready"


def test_resend_form_without_csrf_token_is_refused(live_server) -> None:
    message_id = dead_message()
    server = live_server()
    with client(server) as c:
        c.get("/messages")
        r = c.post(f"/messages/{message_id}/resend")
        assert r.status_code == 403 and "CSRF" in r.text
        r = c.post(f"/messages/{message_id}/resend", data={"csrf_token": "x" * 43})
        assert r.status_code == 403
        r = c.post(f"/messages/{message_id}/resend", data={"csrf_token": c.cookies["wsrun_csrf"]})
        assert r.status_code == 303 and r.headers["location"] == f"/messages?resent={message_id}"
    from wsrun.stores.bus import open_bus

    assert open_bus().get(message_id).status == "ready"


# ---- Distillery ---------------------------------------------------------------


def test_distillery_api_queues_and_validates(live_server) -> None:
    server = live_server()
    with csrf_client(server) as c:
        r = c.post("/api/distillery", json={"collection": "HaleGE", "access": True})
        assert r.status_code == 201, r.text
        assert r.json()["body"] == {"collection": "HaleGE", "preservation": False, "access": True}
        dup = c.post("/api/distillery", json={"collection": "HaleGE", "preservation": True})
        assert dup.status_code == 409 and "already queued" in dup.json()["error"]
        bad = c.post("/api/distillery", json={"collection": "../etc", "preservation": True})
        assert bad.status_code == 400 and "collection id" in bad.json()["error"]
        neither = c.post("/api/distillery", json={"collection": "Other"})
        assert (
            neither.status_code == 400 and "preservation, access or both" in neither.json()["error"]
        )
        [row] = c.get("/api/distillery").json()
        assert (row["collection"], row["status"], row["run"]) == ("HaleGE", "ready", None)
        form = c.post("/distillery", data={"collection": "", "access": "on"})
        assert form.status_code == 400 and "collection id" in form.text
    from wsrun.stores.bus import open_bus

    [message] = open_bus().messages(queue="")
    assert message.selector == "distillery.process"


def test_distillery_queue_shows_only_json_booleans_as_requested(live_server) -> None:
    """A request another client sent with "yes"/"no" strings: the worker refuses
    it (message bodies are JSON), so the page must not show it as requested."""
    from wsrun.stores.bus import open_bus

    bus = open_bus()
    bus.publish("distillery.process", {"collection": "MS07", "preservation": "no", "access": "yes"})
    bus.publish("distillery.process", {"collection": "MS08", "preservation": True, "access": False})
    server = live_server()
    with csrf_client(server) as c:
        rows = {r["collection"]: r for r in c.get("/api/distillery").json()}
    assert (rows["MS07"]["preservation"], rows["MS07"]["access"]) == (False, False)
    assert (rows["MS08"]["preservation"], rows["MS08"]["access"]) == (True, False)


# ---- QA2 review -----------------------------------------------------------------


def test_review_api_fail_and_cancel_do_what_the_terminal_review_does(live_server) -> None:
    store = state_store()
    make_ous(store, "uid://X1/X1/Xc0", "ReadyForReview")
    make_ous(store, "uid://X1/X1/Xc1", "ReadyForReview")
    server = live_server()
    with csrf_client(server) as c:
        detail = c.get("/api/review/ous", params={"id": "uid://X1/X1/Xc0"}).json()
        assert detail["report"]["outline"][0]["tag"] == "PipelineReport"
        assert detail["weblog"] == "http://localhost:8001/weblogs/weblog-Xc0/index.html"
        opened = c.post("/api/review/open", json={"id": "uid://X1/X1/Xc0"})
        assert opened.status_code == 200 and opened.json()["state"] == "Reviewing"
        r = c.post("/api/review/decide", json={"id": "uid://X1/X1/Xc0", "flag": "Fail"})
        assert r.status_code == 200, r.text
        assert r.json()["flag"] == "Fail"
        r = c.post("/api/review/decide", json={"id": "uid://X1/X1/Xc1", "flag": "Cancel"})
        assert r.status_code == 200, r.text
        assert (
            c.post(
                "/api/review/decide", json={"id": "uid://X1/X1/Xc1", "flag": "Maybe"}
            ).status_code
            == 400
        )
        assert (
            c.post("/api/review/decide", json={"id": "uid://X9/X9/X9", "flag": "Pass"}).status_code
            == 404
        )
    assert store.get("ous", "uid://X1/X1/Xc0").state == "ReadyForProcessing"
    assert store.get("ous", "uid://X1/X1/Xc0").attributes["qa2"] == "Fail"
    assert store.get("ous", "uid://X1/X1/Xc1").state == "ReadyForReview"


def test_fail_and_cancel_on_the_page_ask_for_confirmation_first(live_server) -> None:
    store = state_store()
    make_ous(store, "uid://X1/X1/Xc3", "Reviewing")
    server = live_server()
    with csrf_client(server) as c:
        for flag in ("Fail", "Cancel"):
            page = c.post("/review/decide", data={"id": "uid://X1/X1/Xc3", "flag": flag})
            assert page.status_code == 200 and 'id="confirm-yes"' in page.text
            assert f'name="confirmed" value="{flag}"' in page.text
            assert store.get("ous", "uid://X1/X1/Xc3").state == "Reviewing"  # nothing done yet
        done = c.post(
            "/review/decide",
            data={"id": "uid://X1/X1/Xc3", "flag": "Fail", "confirmed": "Fail"},
        )
        assert done.status_code == 303
    assert store.get("ous", "uid://X1/X1/Xc3").state == "ReadyForProcessing"
    assert store.get("ous", "uid://X1/X1/Xc3").attributes["qa2"] == "Fail"


def test_decision_on_an_ous_no_longer_in_review_is_refused(live_server) -> None:
    store = state_store()
    make_ous(store, "uid://X1/X1/Xc2", "Delivered")
    before = store.get("ous", "uid://X1/X1/Xc2")
    server = live_server()
    with csrf_client(server) as c:
        r = c.post("/api/review/decide", json={"id": "uid://X1/X1/Xc2", "flag": "Pass"})
        assert r.status_code == 409
        assert "is Delivered: only an OUS ReadyForReview or Reviewing" in r.json()["error"]
        page = c.post("/review/decide", data={"id": "uid://X1/X1/Xc2", "flag": "Fail"})
        assert page.status_code == 409 and "is Delivered" in page.text
        opened = c.post("/api/review/open", json={"id": "uid://X1/X1/Xc2"})
        assert opened.status_code == 409
    assert store.get("ous", "uid://X1/X1/Xc2") == before


# ---- files --------------------------------------------------------------------


def test_files_are_browsed_and_traversal_is_refused(live_server, tmp_path: Path) -> None:
    cache = tmp_path / "cache"
    (cache / "weblog-Xb0").mkdir(parents=True)
    (cache / "weblog-Xb0" / "index.html").write_text("<h1>weblog</h1>")
    (tmp_path / "secret.txt").write_text("not served")  # 10 B
    os.symlink(tmp_path / "secret.txt", cache / "escape.txt")
    server = live_server(dirs={"cache": str(cache)})
    with client(server) as c:
        assert c.get("/api/files").json() == {"cache": str(cache)}
        entries = c.get("/api/files/cache/").json()
        assert [e["name"] for e in entries] == ["weblog-Xb0/", "escape.txt"]
        # nothing about a target outside the served root: no size, no mtime
        assert entries[1] == {
            "name": "escape.txt",
            "dir": False,
            "size": None,
            "modified": None,
            "link": True,
        }
        assert "link outside the served directory" in c.get("/files/cache/").text
        assert "10 B" not in c.get("/files/cache/").text
        r = c.get("/files/cache/weblog-Xb0/index.html")
        assert r.text == "<h1>weblog</h1>"
        assert r.headers["content-security-policy"].startswith("sandbox")
        assert "frame-ancestors 'none'" in r.headers["content-security-policy"]
        assert c.get("/files/cache/weblog-Xb0").status_code == 307
        listing = c.get("/files/cache/weblog-Xb0/")
        assert 'href="index.html"' in listing.text
        assert c.get("/files/cache/escape.txt").status_code == 403
        assert c.get("/files/cache/nothing-here").status_code == 404
    for path in (
        "/files/cache/../secret.txt",
        "/files/cache/weblog-Xb0/../../secret.txt",
        "/files/cache/%2e%2e/secret.txt",
        "/files/cache/..%2fsecret.txt",
        "/api/files/cache/../",
    ):
        status, body = raw_get(server, path)
        assert status == 403, path
        assert b"not served" not in body


def test_no_page_may_be_framed_by_another_site(live_server) -> None:
    server = live_server(token="s3cret-token")
    with client(server) as c:
        for path in ("/board", "/api/runs", "/login", "/static/style.css", "/no-such-page"):
            r = c.get(path, follow_redirects=False)
            assert r.headers["x-frame-options"] == "DENY", path
            assert r.headers["content-security-policy"] == "frame-ancestors 'none'", path


# ---- the token ---------------------------------------------------------------------


def test_token_is_required_on_every_request(live_server) -> None:
    server = live_server(token="s3cret-token")
    with client(server) as c:
        r = c.get("/api/runs")
        assert r.status_code == 401 and r.json() == {"error": "a token is required"}
        r = c.get("/board")
        assert r.status_code == 401 and 'name="token"' in r.text
        assert c.get("/runs", params={"token": "wrong"}).status_code == 401
        assert (
            c.get("/api/runs", headers={"Authorization": "Bearer s3cret-token"}).status_code == 200
        )
        assert c.get("/api/runs", headers={"X-Wsrun-Token": "s3cret-token"}).status_code == 200
        r = c.get("/runs", params={"token": "s3cret-token", "page": "1"})
        assert r.status_code == 303 and r.headers["location"] == "/runs?page=1"
        assert "s3cret-token" not in r.headers["set-cookie"]
        assert c.get("/runs").status_code == 200  # the cookie now
    with client(server) as c:
        c.get("/login")
        r = c.post("/login", data={"token": "nope", "csrf_token": c.cookies["wsrun_csrf"]})
        assert r.status_code == 401
        r = c.post(
            "/login",
            data={
                "token": "s3cret-token",
                "next": "/messages",
                "csrf_token": c.cookies["wsrun_csrf"],
            },
        )
        assert r.status_code == 303 and r.headers["location"] == "/messages"
        assert c.get("/messages").status_code == 200
    with client(server, headers={"Authorization": "Bearer s3cret-token"}) as c:
        # A header token cannot be forged cross-site: no CSRF token needed.
        r = c.post("/api/distillery", json={"collection": "HaleGE", "preservation": True})
        assert r.status_code == 201


# ---- the command ------------------------------------------------------------------


@contextmanager
def wsrun_serve(tmp_path: Path, wsrun_home: Path, *args: str) -> Iterator[tuple[str, Any]]:
    """``wsrun serve`` as its own process on a free port: (base URL, process)."""
    from fixtures.webserver import free_port

    port = free_port()
    proc = subprocess.Popen(
        [sys.executable, "-m", "wsrun", "serve", "--port", str(port), *args],
        cwd=tmp_path,
        env={**os.environ, "WSRUN_HOME": str(wsrun_home)},
        stderr=subprocess.PIPE,
        text=True,
    )
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 20
        while True:
            try:
                httpx.get(f"{url}/login", timeout=5)
                break
            except httpx.TransportError:
                if time.monotonic() > deadline or proc.poll() is not None:
                    pytest.fail("wsrun serve did not start")
                time.sleep(0.05)
        yield url, proc
    finally:
        if proc.poll() is None:
            proc.send_signal(signal.SIGINT)
        proc.wait(timeout=20)


def test_wsrun_serve_listens_on_loopback(tmp_path: Path, wsrun_home: Path) -> None:
    with wsrun_serve(tmp_path, wsrun_home) as (url, proc):
        r = httpx.get(f"{url}/api/runs", timeout=5)
        assert r.status_code == 200 and r.json()["total"] == 0
        proc.send_signal(signal.SIGINT)
        _, err = proc.communicate(timeout=20)
    assert f"{url}/" in err
    assert proc.returncode == 0


def test_the_api_keeps_to_its_openapi_document(tmp_path: Path, wsrun_home: Path) -> None:
    """schemathesis against a live ``wsrun serve`` (with a token): every operation,
    documented parameters and bodies, valid and invalid data, undocumented
    methods; a fixed number of examples, deterministic, so the run is repeatable."""
    store = state_store()
    make_ous(store, "uid://X1/X1/Xs0", "Reviewing")
    # Real ids for some operations, so they are tested past their 404.
    write(
        tmp_path / "schemathesis.toml",
        """
        [[operations]]
        include-name = "GET /api/review/ous"
        parameters = {"query.id" = "uid://X1/X1/Xs0"}

        [[operations]]
        include-name = "GET /api/entities/{kind}"
        parameters = {"path.kind" = "ous", "query.id" = "uid://X1/X1/Xs0"}

        [[operations]]
        include-name = "GET /api/pictures/recipe/{name}"
        parameters = {"path.name" = "nrao/deliver"}
        """,
    )
    with wsrun_serve(tmp_path, wsrun_home, "--token", "s3cret-token") as (url, _):
        schema = httpx.get(f"{url}/api/openapi.json", headers={"X-Wsrun-Token": "s3cret-token"})
        operations = [(m, p) for p, ops in schema.json()["paths"].items() for m in ops]
        assert len(operations) == 22
        r = subprocess.run(
            [
                sys.executable, "-m", "schemathesis.cli", "run", f"{url}/api/openapi.json",
                "--header", "Authorization: Bearer s3cret-token",
                "--checks", "all", "--max-examples", "10", "--generation-deterministic",
                "--no-color", "--workers", "1", "--request-timeout", "30",
                "--continue-on-failure",
            ],
            cwd=tmp_path, capture_output=True, text=True, timeout=600,
        )  # fmt: skip
    assert r.returncode == 0, r.stdout[-6000:] + r.stderr[-2000:]
    assert "Tested: 22" in r.stdout and " passed, " in r.stdout, r.stdout[-3000:]
    assert "failed" not in r.stdout.split("Test cases:")[1].splitlines()[1], r.stdout[-3000:]
    for reached in ("GET /api/review/ous", "GET /api/entities/{kind}", "GET /api/pictures/recipe"):
        assert reached not in r.stdout, r.stdout[-3000:]  # not among those that only got 404


# ---- seams and failures -------------------------------------------------------------


def test_distillery_progress_comes_from_the_run_of_the_collection(
    cli, live_server, tmp_path: Path
) -> None:
    recipe = write(
        tmp_path / "distill.yaml",
        f"""
        recipe: distill
        inputs:
          collection: {{type: string, flags: [--collection]}}
        steps:
          - id: folders
            uses: mkdir
            with: {{path: "{tmp_path}/{{{{ inputs.collection }}}}"}}
          - id: done
            uses: mkdir
            with: {{path: "{tmp_path}/{{{{ inputs.collection }}}}/done"}}
        """,
    )
    server = live_server()
    with csrf_client(server) as c:
        assert (
            c.post(
                "/api/distillery", json={"collection": "HaleGE", "preservation": True}
            ).status_code
            == 201
        )
        assert cli(recipe, "--collection", "HaleGE").code == 0
        state_store().transition(
            "distillery-collection",
            "HaleGE",
            state="Failed",
            create=True,
            attributes={"error": "bucket gone"},
        )
        [row] = c.get("/api/distillery").json()
    assert (row["processing"]["state"], row["processing"]["error"]) == ("Failed", "bucket gone")
    assert row["run"]["recipe"] == "distill"
    assert (row["run"]["status"], row["run"]["steps_done"], row["run"]["steps"]) == (
        "changed",
        2,
        2,
    )


def test_distillery_page_says_what_was_skipped_and_errors_in_one_line(live_server) -> None:
    trace = (
        "step 'preserve' (/opt/wsrun/engine/wsrun/packs/distillery/recipes/distill.yaml:70:5) failed: "
        "/srv/distillery/initial/MS02/f1/x.tif: the bucket is gone\n"
        'Traceback (most recent call last):\n  File "/opt/wsrun/engine/x.py", line 1'
    )
    skipped = [
        {"image": f"MS01/f1/p{n}.tif", "failed_step": "master", "error": f"/srv/i/p{n}.tif: bad"}
        for n in range(4)
    ]
    store = state_store()
    for collection, state, attributes in (
        ("MS01", "Done", {"skipped": skipped, "counts": {"images": 12, "books": 0}}),
        ("MS02", "Failed", {"error": trace, "skipped": []}),
    ):
        store.transition("distillery-collection", collection, state=state, create=True,
                         attributes=attributes)  # fmt: skip
    server = live_server()
    with csrf_client(server) as c:
        for collection in ("MS01", "MS02"):
            c.post("/api/distillery", json={"collection": collection, "preservation": True})
        rows = {r["collection"]: r for r in c.get("/api/distillery").json()}
        page = c.get("/distillery").text
    assert rows["MS01"]["processing"]["outcome"] == "Done, 4 of 12 images skipped"
    assert rows["MS01"]["processing"]["skipped"][0] == "image MS01/f1/p0.tif (step master): bad"
    assert "Done, 4 of 12 images skipped" in page and "image MS01/f1/p3.tif (step master)" in page
    # the reason in one line; the whole text only inside the details
    assert '<summary class="status-failed">x.tif: the bucket is gone</summary>' in page
    assert page.index("Traceback") > page.index("<pre>", page.index("x.tif: the bucket is gone"))


def test_entity_page_shows_history(live_server) -> None:
    store = state_store()
    make_ous(store, "uid://X1/X1/Xe0", "ReadyForReview")
    server = live_server()
    with client(server) as c:
        data = c.get("/api/entities/ous", params={"id": "uid://X1/X1/Xe0"}).json()
        assert [h["state"] for h in data["history"]] == [
            "ReadyForProcessing",
            "Processing",
            "ReadyForReview",
        ]
        page = c.get("/entities/ous", params={"id": "uid://X1/X1/Xe0"})
        assert page.status_code == 200 and 'id="entity-state">ReadyForReview<' in page.text


def test_unreachable_state_store_is_a_503_page(
    live_server, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("WSRUN_STATE_URL", "nosuch://somewhere")
    server = live_server()
    with client(server) as c:
        page = c.get("/board")
        assert page.status_code == 503 and "cannot open the state store" in page.text
        r = c.get("/api/board")
        assert r.status_code == 503 and "nosuch://" in r.json()["error"]
        assert c.get("/runs").status_code == 200  # the journal still works


def test_an_unexpected_error_is_a_page_without_traceback(
    live_server, monkeypatch: pytest.MonkeyPatch
) -> None:
    import wsrun.web.runs

    def broken(*args, **kwargs):
        raise RuntimeError("secret detail")

    monkeypatch.setattr(wsrun.web.runs, "page_of", broken)
    server = live_server()
    with client(server) as c:
        r = c.get("/runs")
        assert r.status_code == 500
        assert "secret detail" not in r.text and "Traceback" not in r.text
        assert "internal error" in r.text
    with client(server) as c:  # uvicorn closes a connection whose request raised
        r = c.get("/api/runs")
        assert r.status_code == 500 and r.json() == {
            "error": "internal error; the server's log has the details"
        }


def test_serve_refuses_a_bad_directory_option(cli) -> None:
    r = cli("serve", "--dir", "no-equals-sign")
    assert r.code == 2 and "expected NAME=DIRECTORY" in r.err


def test_configuration_comes_from_settings_and_options(tmp_path: Path) -> None:
    from wsrun.core.settings import Settings
    from wsrun.web.config import config_from_settings

    settings = Settings(
        env={"WSRUN_WEB_TOKEN": "from-env", "CAPO_PATH": str(tmp_path)},
        overrides={
            "wsrun.web.dirs": f"cache={tmp_path}/c, weblogs=rel",
            "wsrun.web.board.tables": "a,b",
        },
    )
    config = config_from_settings(settings, board_kind="request", token=None)
    assert config.token == "from-env"
    assert config.dirs == {"cache": f"{tmp_path}/c", "weblogs": os.path.abspath("rel")}
    assert config.table_kinds == ("a", "b")
    assert config.board_kind == "request"
    assert config_from_settings(settings, token="given").token == "given"


def test_unread_messages_are_those_waiting_in_a_queue(live_server) -> None:
    from wsrun.stores.bus import open_bus

    bus = open_bus()
    bus.declare_queue("product-ingestor", ["ingest.JAO"])
    waiting = bus.publish("ingest.JAO", {"ousUID": "uid://X1/X1/Xb0"})
    bus.publish("state.ous.Delivered", {"id": "uid://X1/X1/Xb0"})  # nobody subscribes
    server = live_server()
    with client(server) as c:
        unread = c.get("/api/board/tables/unread").json()
        assert [(r["selector"], r["queue"]) for r in unread["rows"]] == [
            ("ingest.JAO", "product-ingestor")
        ]
        assert unread["rows"][0]["id"] == waiting
        assert c.get("/api/messages").json()["total"] == 2
