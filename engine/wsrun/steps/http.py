"""The ``http`` step type: one request to a web API."""

from __future__ import annotations

import json
import threading
import time
from dataclasses import dataclass, field
from typing import Any

from wsrun.core.effects import Effect
from wsrun.core.settings import MASK
from wsrun.core.step import Plan, Result, StepContext, StepError

NAME = "http"
DOC = """Send one HTTP request to a web API and use its status, headers and body in later steps.

For services without a step type of their own (Islandora's REST API, a
notification hook, a status page). A safe request (GET, HEAD, OPTIONS, or any
method with ``safe: true``) only reads, so it is sent while planning, dry runs
included, and its outputs are real; any other request is planned as a
``record`` effect (method and URL) and sent only by a real run. A response whose
status is not in ``expect`` fails the step with the status and the start of the
body; 5xx responses, 429 and connection errors are retried ``retries`` times
with a doubling back-off (``backoff`` seconds first); when they run out the
failure is transient, so ``wsrun worker`` retries its message later (not
before the response's ``Retry-After``), while any other status is permanent.
Values of secret headers
(Authorization, Cookie, tokens, keys; see ``secret_headers``) never appear in
effects, outputs, logs or errors: pass them from a secret setting, e.g.
``Authorization: "Bearer {{ settings.api_token }}"``.
"""

SCHEMA: dict[str, Any] = {
    "type": "object",
    "additionalProperties": False,
    "required": ["url"],
    "properties": {
        "url": {
            "description": "The URL to request.",
            "type": "string",
            "minLength": 1,
            "examples": ["https://islandora.example.edu/islandora/rest/v1/object/{{ vars.pid }}"],
        },
        "method": {
            "description": "The HTTP method.",
            "enum": ["GET", "HEAD", "OPTIONS", "POST", "PUT", "PATCH", "DELETE"],
            "default": "GET",
        },
        "headers": {
            "description": "Request headers. Secret ones are masked everywhere wsrun prints.",
            "type": "object",
            "additionalProperties": {"type": "string"},
            "examples": [{"Authorization": "Bearer {{ settings.api_token }}"}],
        },
        "params": {
            "description": "Query parameters added to the URL.",
            "type": "object",
            "additionalProperties": {"type": ["string", "number", "boolean"]},
            "examples": [{"page": 1}],
        },
        "json": {
            "description": "A body sent as JSON (sets Content-Type: application/json).",
            "examples": [{"title": "Letters, 1921", "state": "A"}],
        },
        "body": {
            "description": "A body sent as text, as it is (give Content-Type in `headers`).",
            "type": "string",
        },
        "expect": {
            "description": "The status codes that count as success; by default any 2xx.",
            "type": "array",
            "items": {"type": "integer", "minimum": 100, "maximum": 599},
            "minItems": 1,
            "examples": [[200, 201, 204]],
        },
        "timeout": {
            "description": "Seconds to wait for a connection and for each read.",
            "type": "number",
            "exclusiveMinimum": 0,
            "default": 30,
        },
        "retries": {
            "description": "Times to retry after a 5xx or 429 response or a connection error.",
            "type": "integer",
            "minimum": 0,
            "default": 3,
        },
        "backoff": {
            "description": "Seconds before the first retry; doubled for each next one.",
            "type": "number",
            "minimum": 0,
            "default": 1,
        },
        "safe": {
            "description": "Whether the request only reads (sent while planning, dry runs "
            "included); by default true for GET, HEAD and OPTIONS.",
            "type": "boolean",
        },
        "secret_headers": {
            "description": "More header names whose values are secrets (case-insensitive), "
            "besides Authorization, Proxy-Authorization, Cookie and names holding token, key, "
            "secret, password or session.",
            "type": "array",
            "items": {"type": "string"},
            "default": [],
        },
    },
    "not": {"required": ["json", "body"]},
}

EXAMPLES = [
    """- id: status
  uses: http
  with:
    url: "{{ settings.islandora_url }}/islandora/rest/v1/object/{{ vars.pid }}"
    headers: {Authorization: "Bearer {{ settings.islandora_token }}"}
    expect: [200, 404]
""",
    """- id: notify
  uses: http
  with:
    method: POST
    url: https://hooks.example.edu/archives
    json: {collection: "{{ inputs.collection }}", status: done}
    retries: 5
""",
]

OUTPUTS = {
    "status": "the response's status code (null when a planned request has not been sent)",
    "headers": "the response's headers (lower-case names; secret ones masked)",
    "json": "the body parsed as JSON, or null when it is not JSON",
    "text": "the body as text (the first 1 MiB)",
}

TEXT_LIMIT = 1 << 20
_SECRET_WORDS = ("authorization", "cookie", "token", "key", "secret", "password", "session")
_SAFE_METHODS = {"GET", "HEAD", "OPTIONS"}
_NOT_SENT: dict[str, Any] = {"status": None, "headers": {}, "json": None, "text": None}


@dataclass
class _Request:
    method: str
    url: str
    params: dict[str, Any]
    json: Any
    body: str | None
    expect: list[int] | None
    timeout: float
    retries: int
    backoff: float
    headers: dict[str, str] = field(repr=False)  # may hold secrets
    secrets: list[str] = field(repr=False)


def plan(params: dict[str, Any], ctx: StepContext) -> Plan:
    request = _request(params)
    safe = params.get("safe", request.method in _SAFE_METHODS)
    if safe:
        return Plan(outputs=send(request, ctx))
    effect = Effect("record", request.url, extra={"method": request.method})
    return Plan(effects=[effect], outputs=dict(_NOT_SENT), data=request)


def apply(plan: Plan, ctx: StepContext) -> Result:
    if not plan.effects:
        return Result(outputs=plan.outputs)
    return Result(effects=plan.effects, outputs=send(plan.data, ctx))


def is_secret_header(name: str, extra: list[str]) -> bool:
    """Whether a header's value must never be shown."""
    lower = name.lower()
    return lower in {e.lower() for e in extra} or any(w in lower for w in _SECRET_WORDS)


def mask(text: str, secrets: list[str]) -> str:
    """``text`` with every secret value replaced by the mask."""
    for secret in secrets:
        text = text.replace(secret, MASK)
    return text


def _request(params: dict[str, Any]) -> _Request:
    headers = dict(params.get("headers", {}))
    extra = params.get("secret_headers", [])
    secrets = [v for k, v in headers.items() if is_secret_header(k, extra) and v]
    # "Bearer abc": the token alone may also be echoed back by a server
    secrets += [v.split(None, 1)[1] for v in secrets if " " in v.strip()]
    return _Request(
        method=params.get("method", "GET"),
        url=params["url"],
        params=dict(params.get("params", {})),
        json=params.get("json"),
        body=params.get("body"),
        expect=params.get("expect"),
        timeout=float(params.get("timeout", 30)),
        retries=int(params.get("retries", 3)),
        backoff=float(params.get("backoff", 1)),
        headers=headers,
        secrets=sorted(set(secrets), key=len, reverse=True),
    )


_ssl: dict[str, Any] = {}
_ssl_lock = threading.Lock()


def _ssl_context() -> Any:
    """The default (verifying) SSL context, made once per process and shared by
    every request: loading the CA bundle costs 0.03-0.15 s per client. It holds
    no credentials; each request still gets a client (and cookie jar) of its own."""
    import httpx

    with _ssl_lock:
        if "default" not in _ssl:
            _ssl["default"] = httpx.create_ssl_context()
        return _ssl["default"]


def send(r: _Request, ctx: StepContext) -> dict[str, Any]:
    """Send the request (retrying 5xx, 429 and connection errors) and return the outputs."""
    import httpx

    where = mask(f"{r.method} {r.url}", r.secrets)
    delay = r.backoff
    with httpx.Client(timeout=r.timeout, follow_redirects=True, verify=_ssl_context()) as client:
        for attempt in range(r.retries + 1):
            last = attempt == r.retries
            try:
                response = client.request(
                    r.method,
                    r.url,
                    params=r.params or None,
                    headers=r.headers,
                    json=r.json,
                    content=r.body.encode() if r.body is not None else None,
                )
            except httpx.HTTPError as e:
                problem = mask(f"{type(e).__name__}: {e}", r.secrets)
                if last:
                    raise StepError(f"{where}: {problem}", transient=True) from None
            else:
                retryable = response.status_code >= 500 or response.status_code == 429
                if not retryable or last:
                    return _outputs(response, r, where)
                problem = f"status {response.status_code}"
            ctx.log(f"{where}: {problem}; retrying in {delay:g}s")
            remaining = ctx.remaining()
            if remaining is not None and remaining < delay:
                raise StepError(
                    f"{where}: {problem}; no time left to retry", transient=True
                ) from None
            time.sleep(delay)
            delay *= 2
    raise AssertionError("unreachable")


def retry_after(value: str | None) -> float | None:
    """Seconds from a Retry-After header (a number or an HTTP date); None if absent."""
    if not value:
        return None
    if value.strip().isdigit():
        return float(value.strip())
    from email.utils import parsedate_to_datetime

    try:
        return max(0.0, parsedate_to_datetime(value).timestamp() - time.time())
    except (TypeError, ValueError):
        return None


def _outputs(response: Any, r: _Request, where: str) -> dict[str, Any]:
    text = mask(response.text[:TEXT_LIMIT], r.secrets)
    status = response.status_code
    ok = status in r.expect if r.expect else 200 <= status < 300
    if not ok:
        excerpt = " ".join(text.split())[:200]
        raise StepError(
            f"{where}: status {status} {response.reason_phrase}"
            + (f" (expected {', '.join(map(str, r.expect))})" if r.expect else "")
            + (f": {excerpt}" if excerpt else ""),
            transient=status >= 500 or status == 429,
            retry_after=retry_after(response.headers.get("retry-after")),
        )
    try:
        body = json.loads(text) if text else None  # the masked text: no secret comes back
    except ValueError:
        body = None
    headers = {
        k.lower(): (MASK if is_secret_header(k, []) else mask(v, r.secrets))
        for k, v in response.headers.items()
    }
    return {"status": status, "headers": headers, "json": body, "text": text}
