"""The access token and CSRF protection, as one ASGI middleware.

Token: when one is configured every request needs it, as ``Authorization:
Bearer T``, ``X-Wsrun-Token: T`` or the cookie the login page (or ``?token=T``
once) sets. The cookie holds an HMAC of the token, never the token itself.
``/login`` and the package's own static files are the only exceptions.

CSRF: every browser gets a random token in an HttpOnly, SameSite=Strict cookie;
pages put it into each form (``csrf_token``) and into htmx's request headers
(``X-CSRF-Token``). A POST whose form field or header does not equal the cookie
is refused with 403. A request that carries the access token in a header
cannot be forged by another site, so it needs no CSRF token.

Framing: every response says no other page may frame it (``X-Frame-Options:
DENY`` and CSP ``frame-ancestors 'none'``), so no site can dress a page's
buttons (QA2's Fail) in its own clothes (clickjacking).
"""

from __future__ import annotations

import hashlib
import hmac
import secrets
from collections.abc import Awaitable, Callable, MutableMapping
from http.cookies import SimpleCookie
from typing import Any
from urllib.parse import parse_qs, urlencode

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]
ASGIApp = Callable[[Scope, Receive, Send], Awaitable[None]]

CSRF_COOKIE = "wsrun_csrf"
CSRF_FIELD = "csrf_token"
CSRF_HEADER = "x-csrf-token"
TOKEN_COOKIE = "wsrun_token"
TOKEN_HEADER = "x-wsrun-token"
#: Scope key under which pages find the CSRF token to render into forms.
SCOPE_CSRF = "wsrun.csrf"
#: A form body larger than this is refused before it is parsed.
MAX_FORM_BYTES = 1 << 20
OPEN_PATHS = ("/login",)
FRAME_ANCESTORS = "frame-ancestors 'none'"
OPEN_PREFIXES = ("/static/",)
UNSAFE_METHODS = ("POST", "PUT", "PATCH", "DELETE")


def cookie_value(token: str) -> str:
    """What the token cookie holds: an HMAC of the token, not the token."""
    return hmac.new(token.encode(), b"wsrun-web-session", hashlib.sha256).hexdigest()


class Guard:
    """Checks the access token and the CSRF token before the app sees a request."""

    def __init__(
        self,
        app: ASGIApp,
        token: str | None,
        refuse: Callable[[Scope, int, str], Awaitable[Any]],
    ) -> None:
        """``refuse(scope, status, reason)`` builds the response for a refused
        request (an HTML page or JSON, as the app prefers)."""
        self.app = app
        self.token = token
        self.refuse = refuse

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        headers = {k.decode("latin-1").lower(): v.decode("latin-1") for k, v in scope["headers"]}
        cookies = _cookies(headers.get("cookie", ""))
        csrf = cookies.get(CSRF_COOKIE) or ""
        new_csrf = None
        if len(csrf) != 43:  # secrets.token_urlsafe(32)
            csrf = new_csrf = secrets.token_urlsafe(32)
        scope[SCOPE_CSRF] = csrf
        send = _unframed(_with_cookie(send, new_csrf))

        path = scope["path"]
        by_header = False
        if self.token and path not in OPEN_PATHS and not path.startswith(OPEN_PREFIXES):
            given_query = parse_qs(scope.get("query_string", b"").decode()).get("token", [""])[0]
            if given_query and scope["method"] == "GET":
                if hmac.compare_digest(given_query, self.token):
                    await _redirect_with_cookie(scope, send, cookie_value(self.token))
                else:
                    await self._refuse(scope, receive, send, 401, "wrong token")
                return
            by_header = self._header_ok(headers)
            if not by_header and not hmac.compare_digest(
                cookies.get(TOKEN_COOKIE, ""), cookie_value(self.token)
            ):
                await self._refuse(scope, receive, send, 401, "a token is required")
                return

        if scope["method"] in UNSAFE_METHODS and not by_header:
            receive, given = await _csrf_given(scope, receive, headers)
            if new_csrf is not None or not given or not hmac.compare_digest(given, csrf):
                await self._refuse(scope, receive, send, 403, "missing or wrong CSRF token")
                return
        await self.app(scope, receive, send)

    def _header_ok(self, headers: dict[str, str]) -> bool:
        assert self.token
        given = headers.get(TOKEN_HEADER, "")
        auth = headers.get("authorization", "")
        if auth.lower().startswith("bearer "):
            given = auth[7:].strip()
        return bool(given) and hmac.compare_digest(given, self.token)

    async def _refuse(self, scope: Scope, receive: Receive, send: Send, status: int, why: str):
        response = await self.refuse(scope, status, why)
        await response(scope, receive, send)


def _cookies(header: str) -> dict[str, str]:
    jar: SimpleCookie = SimpleCookie()
    try:
        jar.load(header)
    except Exception:  # a malformed Cookie header is as good as none
        return {}
    return {k: m.value for k, m in jar.items()}


def _set_cookie(name: str, value: str) -> bytes:
    return f"{name}={value}; Path=/; HttpOnly; SameSite=Strict".encode("latin-1")


def _with_cookie(send: Send, csrf: str | None) -> Send:
    """``send`` that adds a Set-Cookie for a newly made CSRF token."""
    if csrf is None:
        return send

    async def sending(message: Message) -> None:
        if message["type"] == "http.response.start":
            message.setdefault("headers", [])
            message["headers"] = [
                *message["headers"],
                (b"set-cookie", _set_cookie(CSRF_COOKIE, csrf)),
            ]
        await send(message)

    return sending


def _unframed(send: Send) -> Send:
    """``send`` that forbids framing: X-Frame-Options, and frame-ancestors added
    to the response's Content-Security-Policy (or as one)."""

    async def sending(message: Message) -> None:
        if message["type"] == "http.response.start":
            headers = [
                (k, v) for k, v in message.get("headers", []) if k.lower() != b"x-frame-options"
            ]
            csp = [v for k, v in headers if k.lower() == b"content-security-policy"]
            headers = [(k, v) for k, v in headers if k.lower() != b"content-security-policy"]
            policy = "; ".join([*(v.decode("latin-1") for v in csp), FRAME_ANCESTORS])
            headers += [
                (b"x-frame-options", b"DENY"),
                (b"content-security-policy", policy.encode("latin-1")),
            ]
            message["headers"] = headers
        await send(message)

    return sending


async def _redirect_with_cookie(scope: Scope, send: Send, value: str) -> None:
    """303 to the same URL without ``token=``, setting the token cookie."""
    query = [
        (k, v)
        for k, vs in parse_qs(scope.get("query_string", b"").decode()).items()
        for v in vs
        if k != "token"
    ]
    location = scope["path"] + (f"?{urlencode(query)}" if query else "")
    await send(
        {
            "type": "http.response.start",
            "status": 303,
            "headers": [
                (b"location", location.encode("latin-1", "replace")),
                (b"set-cookie", _set_cookie(TOKEN_COOKIE, value)),
                (b"content-length", b"0"),
            ],
        }
    )
    await send({"type": "http.response.body", "body": b""})


async def _csrf_given(
    scope: Scope, receive: Receive, headers: dict[str, str]
) -> tuple[Receive, str]:
    """The CSRF token of a request (header, else form field), and a ``receive``
    that replays the body this had to read."""
    if headers.get(CSRF_HEADER):
        return receive, headers[CSRF_HEADER]
    body = b""
    more = True
    while more:
        message = await receive()
        body += message.get("body", b"")
        more = message.get("more_body", False)
        if len(body) > MAX_FORM_BYTES:
            return receive, ""
    replayed = False

    async def replay() -> Message:
        nonlocal replayed
        if replayed:
            return await receive()
        replayed = True
        return {"type": "http.request", "body": body, "more_body": False}

    given = ""
    if headers.get("content-type", "").startswith("application/x-www-form-urlencoded"):
        given = parse_qs(body.decode("utf-8", "replace")).get(CSRF_FIELD, [""])[0]
    return replay, given
