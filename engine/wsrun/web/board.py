"""The life-cycle board (the seed's dashboard): one column per state of the
board's kind with its entities, newest first, and tables of pipeline reports,
delivery status, unread messages, archive contents and product metadata, each
paged and filterable. Every part polls itself, so the page updates live.
"""

from __future__ import annotations

from typing import Any

from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from wsrun.web.common import Paging, Table, api, not_found, page_of, render, sources
from wsrun.web.messages import COLUMNS as MESSAGE_COLUMNS
from wsrun.web.messages import message_row
from wsrun.web.pictures import lifecycle_or_none
from wsrun.web.sources import Unavailable

#: Cards shown per column (the count says how many there are).
COLUMN_LIMIT = 50
#: Entities (or archive products) a table filter searches.
SEARCH_LIMIT = 5000
ENTITY_COLUMNS = ("id", "state", "substate", "updated", "attributes")
#: Table titles of the state kinds the ALMA recipes keep.
TITLES = {"pipeline-report": "Pipeline reports", "delivery-status": "Delivery status"}
ARCHIVE_COLUMNS = ("locator", "type", "file", "size", "sha256", "ingested")
PRODUCT_COLUMNS = (
    "locator",
    "type",
    "filename",
    "telescope",
    "ingestion_path",
    "parent",
    "ingested",
)


def columns(request: Request, kind: str) -> dict[str, Any]:
    """The board's columns: the lifecycle's states in order (or, for a kind
    without one, the states its entities are in), each with its newest entities."""
    store = sources(request).state
    lifecycle = lifecycle_or_none(request, kind)
    if lifecycle is not None:
        states = list(lifecycle.states)
    else:
        states = sorted({e.state for e in store.list(kind, limit=SEARCH_LIMIT)})
    return {
        "kind": kind,
        "lifecycle": lifecycle is not None,
        "columns": [
            {
                "state": state,
                "count": store.count(kind, state=state),
                "entities": [
                    e.to_json() for e in store.list(kind, state=state, limit=COLUMN_LIMIT)
                ],
            }
            for state in states
        ],
    }


def table_names(request: Request) -> list[tuple[str, str]]:
    """(name, title) of the board's tables, in page order."""
    kinds = request.app.state.config.table_kinds
    titled = [(f"kind-{k}", TITLES.get(k, k)) for k in kinds]
    return [
        *titled,
        ("unread", "Unread messages"),
        ("archive", "Archive contents"),
        ("products", "Product metadata"),
    ]


def table(request: Request, name: str) -> Table:
    """One of the board's tables, paged and filtered as the request asks."""
    paging = Paging.of(request)
    if name.startswith("kind-") and name[5:] in request.app.state.config.table_kinds:
        return entity_table(request, name, name[5:], paging)
    if name == "unread":
        bus = sources(request).bus
        # Messages no queue subscribes to (state changes nobody reacts to)
        # are not work anyone has to read: the Messages page lists them.
        found = [
            m
            for status in ("ready", "claimed")
            for m in bus.messages(status=status, limit=SEARCH_LIMIT)
            if m.queue
        ]
        found.sort(key=lambda m: m.created, reverse=True)
        return page_of(name, MESSAGE_COLUMNS, [message_row(m) for m in found], paging)
    if name == "archive":
        return page_of(name, ARCHIVE_COLUMNS, archive_rows(request), paging)
    if name == "products":
        return page_of(name, PRODUCT_COLUMNS, product_rows(request), paging)
    raise not_found(f"no table '{name}' on the board")


def entity_table(request: Request, name: str, kind: str, paging: Paging) -> Table:
    store = sources(request).state
    if paging.q:
        rows = [_entity_row(e) for e in store.list(kind, limit=SEARCH_LIMIT)]
        return page_of(name, ENTITY_COLUMNS, rows, paging)
    rows = [_entity_row(e) for e in store.list(kind, limit=paging.size, offset=paging.offset)]
    return Table(name, ENTITY_COLUMNS, rows, store.count(kind), paging)


def _entity_row(e: Any) -> dict[str, Any]:
    return {
        "id": e.id,
        "state": e.state,
        "substate": e.substate,
        "updated": e.updated,
        "attributes": e.attributes,
    }


def archive_rows(request: Request) -> list[dict[str, Any]]:
    """One row per stored file, newest product first (none while there is no archive)."""
    rows: list[dict[str, Any]] = []
    try:
        with sources(request).archive() as archive:
            for p in reversed(archive.products()[-SEARCH_LIMIT:]):
                for f in sources(request).product_files(archive, p.locator):
                    rows.append(
                        {
                            "locator": p.locator,
                            "type": p.type,
                            "file": f.name,
                            "size": f.size,
                            "sha256": f.sha256,
                            "ingested": p.ingested,
                        }
                    )
    except Unavailable:
        return []
    return rows


def product_rows(request: Request) -> list[dict[str, Any]]:
    """One metadata record per archived product, newest first."""
    try:
        with sources(request).archive() as archive:
            products = archive.products()[-SEARCH_LIMIT:]
    except Unavailable:
        return []
    return [{c: getattr(p, c) for c in PRODUCT_COLUMNS} for p in reversed(products)]


def _kind(request: Request) -> str:
    return request.query_params.get("kind") or request.app.state.config.board_kind


async def board_page(request: Request) -> Response:
    kind = _kind(request)
    return render(
        request,
        "board.html",
        board=columns(request, kind),
        tables=[(table(request, name), title) for name, title in table_names(request)],
    )


async def columns_fragment(request: Request) -> Response:
    return render(request, "board_columns.html", board=columns(request, _kind(request)))


async def table_fragment(request: Request) -> Response:
    return render(request, "board_table.html", table=table(request, request.path_params["name"]))


async def entity_page(request: Request) -> Response:
    kind = request.path_params["kind"]
    entity_id = request.query_params.get("id", "")
    store = sources(request).state
    entity = store.get(kind, entity_id) if entity_id else None
    if entity is None:
        raise not_found(f"no {kind} '{entity_id}'")
    return render(request, "entity.html", entity=entity, history=store.history(kind, entity_id))


async def board_api(request: Request) -> Response:
    """The board's columns.
    ---
    summary: One column per lifecycle state with its newest entities (kind query parameter)
    responses:
      200: {description: "{kind, lifecycle, columns: [{state, count, entities}]}"}
    """
    return api(columns(request, _kind(request)))


async def tables_api(request: Request) -> Response:
    """The board's tables.
    ---
    summary: The names and titles of the board's tables
    responses:
      200: {description: "[{name, title}]"}
    """
    return api([{"name": n, "title": t} for n, t in table_names(request)])


async def table_api(request: Request) -> Response:
    """One board table.
    ---
    summary: A page of one of the board's tables (page, size, q)
    responses:
      200: {description: A page of rows}
      404: {description: No such table}
    """
    return api(table(request, request.path_params["name"]).to_json())


async def entity_api(request: Request) -> Response:
    """One entity.
    ---
    summary: An entity (kind in the path, id as the id parameter) with its history
    responses:
      200: {description: "{entity, history}"}
      404: {description: No such entity}
    """
    kind = request.path_params["kind"]
    entity_id = request.query_params.get("id", "")
    store = sources(request).state
    entity = store.get(kind, entity_id) if entity_id else None
    if entity is None:
        raise not_found(f"no {kind} '{entity_id}'")
    return api(
        {
            "entity": entity.to_json(),
            "history": [c.to_json() for c in store.history(kind, entity_id)],
        }
    )


routes = [
    Route("/board", board_page),
    Route("/board/columns", columns_fragment),
    Route("/board/tables/{name}", table_fragment),
    Route("/entities/{kind}", entity_page),
    Route("/api/board", board_api),
    Route("/api/board/tables", tables_api),
    Route("/api/board/tables/{name}", table_api),
    Route("/api/entities/{kind}", entity_api),
]
