"""The ``http`` step through recipes, against a small local web server."""

from __future__ import annotations

import json
import threading
from collections.abc import Iterator
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest

from conftest import write

TOKEN = "tok-Very-Secret-123"


@dataclass
class Server:
    url: str
    received: list[tuple[str, str, dict[str, str], bytes]] = field(default_factory=list)
    #: path -> statuses to answer before a 200 (a flaky service)
    failures: dict[str, list[int]] = field(default_factory=dict)


@pytest.fixture
def server() -> Iterator[Server]:
    state = Server("")

    class Handler(BaseHTTPRequestHandler):
        def answer(self, method: str) -> None:
            length = int(self.headers.get("Content-Length") or 0)
            body = self.rfile.read(length) if length else b""
            state.received.append((method, self.path, dict(self.headers), body))
            pending = state.failures.get(self.path.split("?")[0])
            if pending:
                self.reply(pending.pop(0), {"error": "try later"})
            elif self.path.startswith("/missing"):
                self.reply(404, {"error": "no such object"})
            elif self.path.startswith("/echo"):
                self.reply(200, {"authorization": self.headers.get("Authorization")})
            elif method == "POST":
                self.reply(201, {"created": json.loads(body)}, {"Location": "/items/7"})
            else:
                self.reply(200, {"path": self.path, "items": [1, 2, 3]}, {"X-Api-Key": TOKEN})

        def reply(self, status: int, doc: Any, headers: dict[str, str] | None = None) -> None:
            data = json.dumps(doc).encode()
            self.send_response(status)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(data)))
            for k, v in (headers or {}).items():
                self.send_header(k, v)
            self.end_headers()
            if self.command != "HEAD":
                self.wfile.write(data)

        def do_GET(self) -> None:
            self.answer("GET")

        def do_HEAD(self) -> None:
            self.answer("HEAD")

        def do_POST(self) -> None:
            self.answer("POST")

        def log_message(self, format: str, *args: Any) -> None:
            pass

    httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    threading.Thread(
        target=httpd.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True
    ).start()
    state.url = f"http://127.0.0.1:{httpd.server_address[1]}"
    yield state
    httpd.shutdown()
    httpd.server_close()


def recipe(tmp_path: Path, with_: str) -> Path:
    body = "\n".join("      " + line for line in with_.strip().splitlines())
    return write(
        tmp_path / "http.yaml",
        f"""
recipe: call-api
inputs:
  base: {{type: string}}
settings:
  token: {{name: islandora.api.token, secret: true}}
steps:
  - id: call
    uses: http
    with:
{body}
outputs:
  response: "{{{{ steps.call.outputs }}}}"
""",
    )


def run(cli: Any, path: Path, server: Server, *args: str) -> Any:
    return cli(path, "--base", server.url, "--set", f"islandora.api.token={TOKEN}", *args)


def ok(r: Any) -> dict[str, Any]:
    assert r.code == 0, r.err + r.out
    return json.loads(r.out)


def test_get_outputs_status_headers_json_and_runs_in_a_dry_run(
    cli: Any, tmp_path: Path, server: Server
) -> None:
    path = recipe(
        tmp_path,
        """
url: "{{ inputs.base }}/objects"
params: {page: 2}
headers: {Authorization: "Bearer {{ settings.token }}", Accept: application/json}
""",
    )
    for dry in ([], ["--dry-run"]):
        doc = ok(run(cli, path, server, "--json", *dry))
        assert doc["status"] == "ok" and doc["steps"][0]["effects"] == []
        response = doc["outputs"]["response"]
        assert response["status"] == 200
        assert response["json"] == {"path": "/objects?page=2", "items": [1, 2, 3]}
        assert json.loads(response["text"]) == response["json"]
        assert response["headers"]["content-type"] == "application/json"
        assert response["headers"]["x-api-key"] == "********"
    assert [(m, p) for m, p, _, _ in server.received] == [("GET", "/objects?page=2")] * 2
    assert server.received[0][2]["Authorization"] == f"Bearer {TOKEN}"


def test_secret_headers_are_masked_even_when_echoed(
    cli: Any, tmp_path: Path, server: Server
) -> None:
    path = recipe(
        tmp_path,
        """
url: "{{ inputs.base }}/echo"
headers: {Authorization: "Bearer {{ settings.token }}"}
""",
    )
    r = run(cli, path, server, "--json")
    doc = ok(r)
    assert doc["outputs"]["response"]["json"] == {"authorization": "********"}
    assert TOKEN not in r.out + r.err


def test_post_is_planned_as_a_record_and_sent_only_for_real(
    cli: Any, tmp_path: Path, server: Server
) -> None:
    path = recipe(
        tmp_path,
        """
method: POST
url: "{{ inputs.base }}/items"
json: {title: "Letters, 1921"}
expect: [201]
""",
    )
    dry = ok(run(cli, path, server, "--json", "--dry-run"))
    assert server.received == []
    assert dry["outputs"]["response"]["status"] is None
    real = ok(run(cli, path, server, "--json"))
    expected = [{"op": "record", "path": f"{server.url}/items", "method": "POST"}]
    assert dry["steps"][0]["effects"] == real["steps"][0]["effects"] == expected
    [(method, _, headers, body)] = server.received
    assert method == "POST" and json.loads(body) == {"title": "Letters, 1921"}
    assert headers["Content-Type"] == "application/json"
    response = real["outputs"]["response"]
    assert response["status"] == 201
    assert response["json"] == {"created": {"title": "Letters, 1921"}}
    assert response["headers"]["location"] == "/items/7"


def test_5xx_is_retried_with_back_off(cli: Any, tmp_path: Path, server: Server) -> None:
    server.failures["/flaky"] = [503, 502]
    path = recipe(tmp_path, 'url: "{{ inputs.base }}/flaky"\nretries: 2\nbackoff: 0.01')
    doc = ok(run(cli, path, server, "--json"))
    assert doc["outputs"]["response"]["status"] == 200
    assert len(server.received) == 3
    # One retry too few: the last 5xx is the step's error.
    server.failures["/flaky"] = [503, 503]
    server.received.clear()
    path = recipe(tmp_path, 'url: "{{ inputs.base }}/flaky"\nretries: 1\nbackoff: 0.01')
    r = run(cli, path, server)
    assert r.code != 0 and "status 503 Service Unavailable" in r.err
    assert len(server.received) == 2


def test_unexpected_status_fails_with_the_body(cli: Any, tmp_path: Path, server: Server) -> None:
    path = recipe(tmp_path, 'url: "{{ inputs.base }}/missing"')
    r = run(cli, path, server)
    assert r.code != 0
    assert f"GET {server.url}/missing: status 404 Not Found" in r.err
    assert "no such object" in r.err
    assert len(server.received) == 1  # a 4xx is not retried
    # A 404 the recipe expects is a success.
    path = recipe(tmp_path, 'url: "{{ inputs.base }}/missing"\nexpect: [200, 404]')
    assert ok(run(cli, path, server, "--json"))["outputs"]["response"]["status"] == 404


def test_connection_refused_is_one_clear_line(cli: Any, tmp_path: Path, server: Server) -> None:
    path = recipe(
        tmp_path, 'url: "http://127.0.0.1:9/nothing"\nretries: 1\nbackoff: 0.01\ntimeout: 2'
    )
    r = run(cli, path, server)
    assert r.code != 0
    assert "GET http://127.0.0.1:9/nothing: ConnectError" in r.err


def test_json_and_body_are_exclusive(cli: Any, tmp_path: Path, server: Server) -> None:
    path = recipe(tmp_path, 'method: PUT\nurl: "{{ inputs.base }}/x"\njson: {a: 1}\nbody: text')
    r = run(cli, path, server)
    assert r.code != 0 and server.received == []
