"""What every page module uses: rendering, the stores, paging and filtering."""

from __future__ import annotations

import json
import time
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import HTMLResponse, JSONResponse, Response
from starlette.templating import Jinja2Templates

from wsrun.stores.state.outcome import reason
from wsrun.web.security import CSRF_FIELD, SCOPE_CSRF
from wsrun.web.sources import Sources, Unavailable

PACKAGE = Path(__file__).resolve().parent
PAGE_SIZE = 25
MAX_PAGE_SIZE = 500


def _template_context(request: Request) -> dict[str, Any]:
    return {
        "csrf": request.scope.get(SCOPE_CSRF, ""),
        "csrf_field": CSRF_FIELD,
        "refresh": request.app.state.config.refresh,
    }


def make_templates() -> Jinja2Templates:
    """The package's templates, with filters for times, sizes and JSON."""
    templates = Jinja2Templates(
        directory=str(PACKAGE / "templates"), context_processors=[_template_context]
    )
    env = templates.env
    env.filters["when"] = when
    env.filters["ago"] = ago
    env.filters["size"] = human_size
    env.filters["seconds"] = seconds
    env.filters["cell"] = cell
    env.filters["reason"] = reason
    env.globals["board_links"] = board_links
    env.filters["tojson_pretty"] = lambda v: json.dumps(v, indent=2, default=str, sort_keys=True)
    return templates


def board_links(table_name: str) -> dict[str, str]:
    """Which column of a board table links where (the id to its own page)."""
    if table_name.startswith("kind-"):
        return {"id": f"/entities/{table_name[5:]}?id="}
    if table_name == "unread":
        return {"id": "/messages/"}
    return {}


def render(request: Request, name: str, status_code: int = 200, **context: Any) -> HTMLResponse:
    """An HTML page or fragment from the package's templates."""
    return request.app.state.templates.TemplateResponse(
        request, name, context, status_code=status_code
    )


def sources(request: Request) -> Sources:
    return request.app.state.sources


def api(data: Any, status: int = 200) -> JSONResponse:
    """A JSON API answer (anything json.dumps can print, with str for the rest)."""
    return JSONResponse(json.loads(json.dumps(data, default=str)), status_code=status)


def not_found(what: str) -> HTTPException:
    """The exception an endpoint raises for an unknown id: a 404 page, or JSON under /api/."""
    return HTTPException(404, what)


def unavailable_response(request: Request, error: Unavailable) -> Response:
    """A page (or API answer) saying which store is missing, with 503."""
    if request.url.path.startswith("/api/"):
        return api({"error": str(error)}, 503)
    return render(request, "unavailable.html", 503, message=str(error))


#: Columns whose numbers are times (epoch seconds) and sizes (bytes).
TIME_COLUMNS = ("started", "ended", "updated", "at", "created", "ingested", "time")
SIZE_COLUMNS = ("size", "bytes")


def cell(value: Any, column: str = "") -> str:
    """A table cell's text: times and sizes readable, structures as compact JSON."""
    if value is None:
        return ""
    if column in TIME_COLUMNS and isinstance(value, int | float):
        return when(value)
    if column in SIZE_COLUMNS and isinstance(value, int):
        return human_size(value)
    if column == "duration" and isinstance(value, int | float):
        return seconds(value)
    if isinstance(value, dict):
        value = {k: _abbreviated(v) for k, v in value.items()}
    if isinstance(value, dict | list):
        text = json.dumps(value, default=str, separators=(", ", ": "))
        return text if len(text) <= 160 else text[:157] + "..."
    return str(value)


def _abbreviated(value: Any) -> Any:
    """A long string (an embedded report) as its length, so the other values show."""
    if isinstance(value, str) and len(value) > 60:
        return f"({len(value)} characters)"
    return value


def when(ts: float | None) -> str:
    if not ts:
        return "-"
    return time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(ts))


def ago(ts: float | None) -> str:
    if not ts:
        return "-"
    delta = max(0.0, time.time() - ts)
    for unit, size in (("d", 86400), ("h", 3600), ("min", 60)):
        if delta >= size:
            return f"{int(delta // size)} {unit} ago"
    return f"{int(delta)} s ago"


def human_size(n: int | None) -> str:
    if n is None:
        return "-"
    if n < 1024:
        return f"{n} B"
    value = n / 1024
    for unit in ("KiB", "MiB", "GiB"):
        if value < 1024:
            return f"{value:.1f} {unit}"
        value /= 1024
    return f"{value:.1f} TiB"


def seconds(value: float | None) -> str:
    return "-" if value is None else f"{value:.1f} s"


@dataclass
class Paging:
    """A table's page and filter, from the query string (``page``, ``size``, ``q``)."""

    page: int
    size: int
    q: str

    @classmethod
    def of(cls, request: Request) -> Paging:
        def number(name: str, default: int, top: int) -> int:
            raw = request.query_params.get(name, "")
            if not raw:
                return default
            if not raw.isdigit() or not 1 <= int(raw) <= top:
                raise HTTPException(400, f"{name} must be a whole number from 1 to {top}")
            return int(raw)

        return cls(
            number("page", 1, 1_000_000),
            number("size", PAGE_SIZE, MAX_PAGE_SIZE),
            request.query_params.get("q", "").strip()[:200],
        )

    @property
    def offset(self) -> int:
        return (self.page - 1) * self.size


@dataclass
class Table:
    """One page of rows, with what the pager needs."""

    name: str
    columns: Sequence[str]
    rows: list[dict[str, Any]]
    total: int
    paging: Paging

    @property
    def pages(self) -> int:
        return max(1, -(-self.total // self.paging.size))

    def to_json(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "columns": list(self.columns),
            "rows": self.rows,
            "total": self.total,
            "page": self.paging.page,
            "pages": self.pages,
            "size": self.paging.size,
            "q": self.paging.q,
        }


def page_of(
    name: str, columns: Sequence[str], rows: Iterable[dict[str, Any]], paging: Paging
) -> Table:
    """Filter rows by ``paging.q`` (case-insensitive; every word must appear in
    the row's values) and cut out the requested page."""
    words = paging.q.lower().split()

    def matches(row: dict[str, Any]) -> bool:
        text = " ".join(str(v) for v in row.values()).lower()
        return all(w in text for w in words)

    kept = [r for r in rows if matches(r)] if words else list(rows)
    start = paging.offset
    return Table(name, columns, kept[start : start + paging.size], len(kept), paging)
