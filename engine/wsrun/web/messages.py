"""Messages: the bus's queues with counts, messages by status, dead ones with
their errors, and a re-send button (``bus.resend``)."""

from __future__ import annotations

from typing import Any

from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import RedirectResponse, Response
from starlette.routing import Route

from wsrun.web.common import Paging, Table, api, not_found, page_of, render, sources

STATUSES = ("ready", "claimed", "done", "dead")
COLUMNS = ("id", "selector", "queue", "status", "attempts", "error", "created", "body")
#: How many messages a filter searches.
SEARCH_LIMIT = 5000


def message_row(m: Any) -> dict[str, Any]:
    return {
        "id": m.id,
        "selector": m.selector,
        "queue": m.queue or "(not routed yet)",
        "status": m.status,
        "attempts": m.attempts,
        "error": m.error,
        "created": m.created,
        "body": m.body,
    }


def queue_rows(bus: Any) -> list[dict[str, Any]]:
    """One row per queue: its patterns and how many messages it holds per status."""
    counts = bus.counts()
    patterns = bus.queues()
    names = sorted(set(counts) | set(patterns))
    return [
        {
            "queue": name or "(not routed yet)",
            "patterns": ", ".join(patterns.get(name, [])),
            **{s: counts.get(name, {}).get(s, 0) for s in STATUSES},
        }
        for name in names
    ]


def messages_table(
    request: Request, name: str, status: str | None, queue: str | None = None
) -> Table:
    """A page of messages with one status (or all), newest first."""
    bus = sources(request).bus
    paging = Paging.of(request)
    if paging.q:
        found = bus.messages(queue=queue, status=status, limit=SEARCH_LIMIT)
        return page_of(name, COLUMNS, [message_row(m) for m in found], paging)
    found = bus.messages(queue=queue, status=status, limit=paging.size, offset=paging.offset)
    counts = bus.counts()
    total = sum(
        n
        for q, by_status in counts.items()
        if queue is None or q == queue
        for s, n in by_status.items()
        if status is None or s == status
    )
    return Table(name, COLUMNS, [message_row(m) for m in found], total, paging)


def _status_param(request: Request) -> str | None:
    status = request.query_params.get("status") or None
    if status is not None and status not in STATUSES:
        raise HTTPException(400, f"status must be one of {', '.join(STATUSES)}")
    return status


async def messages_page(request: Request) -> Response:
    return render(
        request,
        "messages.html",
        queues=queue_rows(sources(request).bus),
        dead=messages_table(request, "dead", "dead"),
        everything=messages_table(request, "messages", None),
        notice=request.query_params.get("resent"),
    )


async def queues_fragment(request: Request) -> Response:
    return render(request, "queues.html", queues=queue_rows(sources(request).bus))


async def dead_fragment(request: Request) -> Response:
    return render(request, "dead_table.html", table=messages_table(request, "dead", "dead"))


async def all_fragment(request: Request) -> Response:
    return render(request, "messages_table.html", table=messages_table(request, "messages", None))


def _message(request: Request) -> Any:
    message_id = request.path_params["message_id"]
    message = sources(request).bus.get(message_id)
    if message is None or message.id != message_id:
        raise not_found(f"no message '{message_id}'")
    return message


async def message_page(request: Request) -> Response:
    return render(request, "message.html", message=_message(request))


async def resend(request: Request) -> Response:
    """Re-send a dead message: it becomes ready with its attempts reset."""
    message = _message(request)
    if message.status != "dead":
        raise HTTPException(409, f"message {message.id} is {message.status}, not dead")
    sources(request).bus.resend(message.id)
    if request.url.path.startswith("/api/"):
        return api(message_row(sources(request).bus.get(message.id)))
    return RedirectResponse(f"/messages?resent={message.id}", 303)


async def queues_api(request: Request) -> Response:
    """Queues and counts.
    ---
    summary: Every queue with its patterns and message counts per status
    responses:
      200: {description: One row per queue}
    """
    return api(queue_rows(sources(request).bus))


async def messages_api(request: Request) -> Response:
    """Messages.
    ---
    summary: Messages newest first (status, queue, page, size, q)
    responses:
      200: {description: A page of messages}
    """
    queue = request.query_params.get("queue")
    return api(messages_table(request, "messages", _status_param(request), queue).to_json())


async def message_api(request: Request) -> Response:
    """One message.
    ---
    summary: One message with its body, status, attempts and error
    responses:
      200: {description: The message}
      404: {description: No such message}
    """
    return api(_message(request).to_json())


async def resend_api(request: Request) -> Response:
    """Re-send a dead message.
    ---
    summary: Make a dead message ready again (attempts reset)
    responses:
      200: {description: The message after re-sending}
      404: {description: No such message}
      409: {description: The message is not dead}
    """
    return await resend(request)


routes = [
    Route("/messages", messages_page),
    Route("/messages/queues", queues_fragment),
    Route("/messages/dead", dead_fragment),
    Route("/messages/all", all_fragment),
    Route("/messages/{message_id}", message_page),
    Route("/messages/{message_id}/resend", resend, methods=["POST"]),
    Route("/api/queues", queues_api),
    Route("/api/messages", messages_api),
    Route("/api/messages/{message_id}", message_api),
    Route("/api/messages/{message_id}/resend", resend_api, methods=["POST"]),
]
