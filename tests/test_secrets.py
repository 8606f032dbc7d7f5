"""Secrets are masked by value wherever a run's data leaves the process: printed
lines, --json, the journal (and so `wsrun runs` and the web pages), error
messages; inside paths and URLs too. The secret is still used for the real work."""

from __future__ import annotations

import json
import sqlite3
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from urllib.parse import parse_qs, quote, quote_plus, unquote, urlsplit

import httpx
import pytest
import zstandard

from conftest import write

#: Made of characters that percent-encoding changes, so the URL holds another form.
SECRET = "Xq9 z+k!hunter2"
FORMS = (SECRET, quote(SECRET), quote(SECRET, safe=""), quote_plus(SECRET))

RECIPE = """
recipe: leaky
inputs:
  src: {type: path, positional: true}
  dest: {type: path, positional: true}
  api: {type: string, default: "http://127.0.0.1:9"}
settings:
  word: {name: test.service.word, secret: true}
steps:
  - id: stage
    uses: copy
    with: {sources: "{{ inputs.src }}", to: "{{ inputs.dest }}/{{ settings.word }}"}
  - id: notify
    uses: http
    with:
      method: POST
      url: "{{ inputs.api }}/hook/{{ settings.word | urlencode }}"
      params: {key: "{{ settings.word }}"}
      json: {staged: "{{ inputs.dest }}/{{ settings.word }}"}
outputs:
  staged: "{{ inputs.dest }}/{{ settings.word }}"
"""


@pytest.fixture
def hook() -> Iterator[tuple[str, list[str]]]:
    """A web service that records the paths of the POSTs it receives."""
    received: list[str] = []

    class Handler(BaseHTTPRequestHandler):
        def do_POST(self) -> None:
            self.rfile.read(int(self.headers.get("Content-Length") or 0))
            received.append(self.path)
            self.send_response(204)
            self.end_headers()

        def log_message(self, *args: object) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_port}", received
    server.shutdown()
    server.server_close()


def assert_masked(text: str, where: str) -> None:
    for form in FORMS:
        assert form not in text, f"secret ({form!r}) in {where}"


def test_a_secret_is_masked_everywhere_and_still_used(
    cli, tmp_path: Path, wsrun_home: Path, monkeypatch: pytest.MonkeyPatch, hook, live_server
) -> None:
    api, received = hook
    monkeypatch.setenv("TEST_SERVICE_WORD", SECRET)
    recipe = write(tmp_path / "leaky.yaml", RECIPE)
    src = tmp_path / "src"
    write(src / "a.txt", "data\n")
    for i in range(30):  # effects and outputs long enough for compressed journal blobs
        write(src / f"more-{i:02d}.txt", "more\n")
    dest = tmp_path / "out"

    plan = cli(recipe, src, dest, "--api", api, "--dry-run")
    assert plan.code == 0, plan.err
    assert f"{dest}/***/src/a.txt" in plan.out and "/hook/***" in plan.out
    real = cli(recipe, src, dest, "--api", api, "--json")
    assert real.code == 0, real.err
    report = json.loads(real.out)
    [staged, notify] = report["steps"]
    assert {e["path"] for e in staged["effects"]} >= {f"{dest}/***", f"{dest}/***/src/a.txt"}
    assert notify["effects"][0]["path"].startswith(f"{api}/hook/***")
    assert report["outputs"] == {"staged": f"{dest}/***"}
    # the real work used the secret itself: the file is at the secret path, the
    # service got the secret in the URL
    assert (dest / SECRET / "src" / "a.txt").read_text() == "data\n"
    [sent] = [urlsplit(p) for p in received]
    assert unquote(sent.path) == f"/hook/{SECRET}" and parse_qs(sent.query) == {"key": [SECRET]}

    again = cli(recipe, src, dest, "--api", api)  # text output of a real run
    assert again.code == 0, again.err
    assert f"staged: {dest}/***" in again.out
    failed = cli(recipe, tmp_path / "missing" / SECRET, dest, "--api", api)
    assert failed.code == 1 and "missing/***" in failed.err

    runs = cli("runs", "--json")
    run_ids = [r["id"] for r in json.loads(runs.out)]
    shown = [cli("runs", "show", run_id) for run_id in run_ids]
    shown_json = [cli("runs", "show", run_id, "--json") for run_id in run_ids]
    assert any("***" in s.out for s in shown_json)
    assert "missing/***" in shown[0].out  # the newest: the failed run's error

    server = live_server()
    with httpx.Client(base_url=server.url, timeout=30) as c:
        pages = [c.get(f"/api/runs/{run_id}").text for run_id in run_ids]
        pages += [c.get(f"/runs/{run_id}").text for run_id in run_ids]
        pages.append(c.get("/api/runs").text)
    assert all("***" in page for page in pages[: len(run_ids)])

    printed = [plan, real, again, failed, runs, *shown, *shown_json]
    for i, result in enumerate(printed):
        assert_masked(result.out + result.err, f"output {i}")
    for i, page in enumerate(pages):
        assert_masked(page, f"web page {i}")
    # nothing under $WSRUN_HOME (the journal's database, its WAL) holds the bytes
    files = [p for p in wsrun_home.rglob("*") if p.is_file()]
    assert any(p.name == "journal.db" for p in files)
    for path in files:
        data = path.read_bytes()
        for form in FORMS:
            assert form.encode() not in data, f"secret ({form!r}) in {path}"
    # nor the compressed blobs (masked before they were compressed): chunks and
    # their manifests are a 4-byte tag and a zstd frame, older blobs a frame
    with sqlite3.connect(wsrun_home / "journal.db") as db:
        blobs = [
            zstandard.decompress(d[4:] if d[:4] in (b"WSC2", b"WSM2") else d).decode("latin-1")
            for (d,) in db.execute("SELECT data FROM blobs")
        ]
    assert blobs and any("***" in b for b in blobs)
    for i, blob in enumerate(blobs):
        assert_masked(blob, f"journal blob {i}")


def test_secret_inputs_are_masked_and_not_resumed(cli, tmp_path: Path) -> None:
    """An input declared secret is masked like a secret setting; its run cannot be
    resumed, since the journal does not keep the value."""
    recipe = write(
        tmp_path / "r.yaml",
        """
        recipe: r
        inputs:
          dest: {type: path, positional: true}
          code: {type: string, secret: true, required: true}
        steps:
          - uses: mkdir
            with: {path: "{{ inputs.dest }}/{{ inputs.code }}"}
          - uses: copy
            with: {sources: "{{ inputs.dest }}/nothing-{{ inputs.code }}", to: "{{ inputs.dest }}"}
        """,
    )
    result = cli(recipe, tmp_path / "out", "--code", "pass-phrase-77")
    assert result.code == 1
    assert (tmp_path / "out" / "pass-phrase-77").is_dir()
    assert "nothing-***" in result.err and "pass-phrase-77" not in result.out + result.err
    run_id = json.loads(cli("runs", "--json").out)[0]["id"]
    assert "pass-phrase-77" not in cli("runs", "show", run_id, "--json").out
    resumed = cli("resume", run_id)
    assert resumed.code == 2 and "secret inputs" in resumed.err


def test_environment_credentials_and_url_passwords_are_masked(
    cli, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A credential in the environment (by its name) and the password of a URL in a
    setting are secrets too, wherever a recipe puts them."""
    monkeypatch.setenv("DEPLOY_API_TOKEN", "tok-abcdef-123456")
    monkeypatch.setenv("TEST_MIRROR_URL", "https://mirror:pa55word-xyz@example.org/data")
    recipe = write(
        tmp_path / "r.yaml",
        """
        recipe: r
        inputs:
          dest: {type: path, positional: true}
        settings:
          mirror: {name: test.mirror.url}
        steps:
          - uses: mkdir
            with:
              path: "{{ inputs.dest }}/{{ env.DEPLOY_API_TOKEN }}/{{ settings.mirror.split(':')[2].split('@')[0] }}"
        """,
    )
    result = cli(recipe, tmp_path / "out", "--json")
    assert result.code == 0, result.err
    paths = [e["path"] for e in json.loads(result.out)["steps"][0]["effects"]]
    assert paths[-1] == f"{tmp_path}/out/***/***"
    assert (tmp_path / "out" / "tok-abcdef-123456" / "pa55word-xyz").is_dir()


def test_an_invalid_secret_input_is_not_echoed(cli, tmp_path: Path) -> None:
    recipe = write(
        tmp_path / "r.yaml",
        """
        recipe: r
        inputs:
          pin: {type: int, secret: true, required: true}
        steps:
          - uses: noop
        """,
    )
    result = cli(recipe, "--pin", "not-a-number-4711")
    assert result.code == 2
    assert "input 'pin'" in result.err and "not-a-number-4711" not in result.err
