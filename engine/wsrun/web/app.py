"""The application factory: routes of every page, errors as pages, the guard."""

from __future__ import annotations

import contextlib
import hmac
from collections.abc import AsyncIterator
from typing import Any

from starlette.applications import Starlette
from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import RedirectResponse, Response
from starlette.routing import Mount, Route
from starlette.schemas import SchemaGenerator
from starlette.staticfiles import StaticFiles

from wsrun import __version__
from wsrun.web import (
    board,
    distillery,
    files,
    messages,
    pictures,
    review,
    runs,
)
from wsrun.web.common import PACKAGE, api, make_templates, render, unavailable_response
from wsrun.web.config import WebConfig
from wsrun.web.openapi import complete
from wsrun.web.security import TOKEN_COOKIE, Guard, cookie_value
from wsrun.web.sources import Sources, Unavailable

schemas = SchemaGenerator({"openapi": "3.0.0", "info": {"title": "wsrun", "version": __version__}})


def create_app(config: WebConfig | None = None) -> Any:
    """The ASGI application serving ``config``'s stores (the guard wraps it)."""
    config = config or WebConfig()
    sources = Sources(config)

    @contextlib.asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[None]:
        yield
        sources.close()

    app = Starlette(
        lifespan=lifespan,
        routes=[
            Route("/", home),
            Route("/login", login, methods=["GET", "POST"]),
            Route("/api/openapi.json", openapi, include_in_schema=False),
            *runs.routes,
            *board.routes,
            *review.routes,
            *files.routes,
            *distillery.routes,
            *messages.routes,
            *pictures.routes,
            Mount("/static", StaticFiles(directory=str(PACKAGE / "static")), name="static"),
        ],
        exception_handlers={
            HTTPException: http_error,
            Unavailable: unavailable,
            Exception: server_error,
        },
    )
    app.state.config = config
    app.state.sources = sources
    app.state.templates = make_templates()

    async def refuse(scope: Any, status: int, why: str) -> Response:
        request = Request(scope)
        request.scope["app"] = app
        if scope["path"].startswith("/api/"):
            return api({"error": why}, status)
        if status == 401:
            return render(request, "login.html", 401, message=why, next=scope["path"])
        return render(request, "error.html", status, status=status, message=why)

    return Guard(app, config.token, refuse)


async def home(request: Request) -> Response:
    return RedirectResponse("/board", 303)


async def login(request: Request) -> Response:
    """The token form; the right token sets the session cookie and goes on."""
    token = request.app.state.config.token
    if request.method == "GET":
        return render(
            request, "login.html", message="", next=_local(request.query_params.get("next"))
        )
    form = await request.form()
    next_path = _local(str(form.get("next", "")))
    if not token:
        return RedirectResponse(next_path, 303)
    if not hmac.compare_digest(str(form.get("token", "")), token):
        return render(request, "login.html", 401, message="wrong token", next=next_path)
    response = RedirectResponse(next_path, 303)
    response.set_cookie(TOKEN_COOKIE, cookie_value(token), httponly=True, samesite="strict")
    return response


def _local(path: str | None) -> str:
    """A path on this server to go to after logging in (never another site)."""
    if not path or not path.startswith("/") or path.startswith("//"):
        return "/"
    return path


async def openapi(request: Request) -> Response:
    """The OpenAPI description of the JSON API (from the endpoints' docstrings)."""
    api_routes = [r for r in request.app.routes if getattr(r, "path", "").startswith("/api/")]
    return api(complete(schemas.get_schema(api_routes), bool(request.app.state.config.token)))


async def http_error(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, HTTPException)
    if request.url.path.startswith("/api/"):
        response: Response = api({"error": exc.detail}, exc.status_code)
    else:
        response = render(
            request, "error.html", exc.status_code, status=exc.status_code, message=exc.detail
        )
    response.headers.update(exc.headers or {})
    if exc.status_code == 405:  # every method of the path, not of one of its routes
        response.headers["Allow"] = ", ".join(sorted(_methods(request)))
    return response


def _methods(request: Request) -> set[str]:
    """The methods some route answers at the request's path."""
    path = request.url.path
    return {
        m
        for r in request.app.routes
        if isinstance(r, Route) and r.path_regex.match(path)
        for m in (r.methods or ())
    }


async def unavailable(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, Unavailable)
    return unavailable_response(request, exc)


async def server_error(request: Request, exc: Exception) -> Response:
    """No traceback reaches the browser; the server's log has it."""
    message = "internal error; the server's log has the details"
    if request.url.path.startswith("/api/"):
        return api({"error": message}, 500)
    return render(request, "error.html", 500, status=500, message=message)
