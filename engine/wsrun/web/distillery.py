"""Distillery: the form that queues a collection, the queue, live progress.

A request is a bus message on the configured selector (default
``distillery.process``, setting ``wsrun.web.distillery.selector``) whose body
is ``distillery_request(...)``; the Distillery's scheduler recipe consumes it
(``on: {message: distillery.process}``, engine/wsrun/packs/distillery/recipes/alchemist.yaml)
through ``wsrun worker``; ``wsrun distillery/queue`` sends the same body.
Progress per collection is the message's status, the scheduler's
``distillery-collection`` entity (state, substate, image N of M) and the
journal's newest run since the request whose inputs name the collection.
"""

from __future__ import annotations

import re
from typing import Any

from starlette.requests import Request
from starlette.responses import RedirectResponse, Response
from starlette.routing import Route

from wsrun.stores.state.outcome import outcome
from wsrun.web.common import api, render, sources
from wsrun.web.sources import Unavailable

#: An ArchivesSpace resource identifier as the Distillery accepts it.
COLLECTION_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$")
#: The body field naming the collection (the scheduler recipe's input).
COLLECTION_FIELD = "collection"
#: The scheduler's (engine/wsrun/packs/distillery/recipes/alchemist.yaml) lock and progress entity.
COLLECTION_KIND = "distillery-collection"
#: How many recent messages and runs the queue page looks through.
LOOK_BACK = 500


class InvalidRequest(ValueError):
    """Form input the server refuses; the message says what to fix."""


class AlreadyQueued(InvalidRequest):
    """The collection has a request waiting already (409 from the API)."""


def distillery_request(collection: str, preservation: bool, access: bool) -> dict[str, Any]:
    """The message body that asks the Distillery to process a collection."""
    collection = collection.strip()
    if not COLLECTION_ID.match(collection):
        raise InvalidRequest(
            "collection id: 1 to 64 letters, digits, '.', '_' or '-', starting with a letter or digit"
        )
    if not (preservation or access):
        raise InvalidRequest("choose preservation, access or both")
    return {COLLECTION_FIELD: collection, "preservation": preservation, "access": access}


def queue_rows(request: Request) -> list[dict[str, Any]]:
    """One row per collection requested, newest first, with its progress."""
    selector = request.app.state.config.distillery_selector
    bus = sources(request).bus
    latest: dict[str, Any] = {}
    for m in bus.messages(limit=LOOK_BACK):
        collection = m.body.get(COLLECTION_FIELD) if isinstance(m.body, dict) else None
        if m.selector == selector and isinstance(collection, str) and collection not in latest:
            latest[collection] = m
    runs = sources(request).journal.runs(LOOK_BACK)
    rows = []
    for collection, m in latest.items():
        run = next(
            (
                r
                for r in runs
                if r.inputs.get(COLLECTION_FIELD) == collection and r.started >= m.created
            ),
            None,
        )
        row: dict[str, Any] = {
            "collection": collection,
            # JSON booleans only, as the worker reads them: "no" is not true (nor false)
            "preservation": m.body.get("preservation") is True,
            "access": m.body.get("access") is True,
            "message": m.id,
            "status": m.status,
            "error": m.error,
            "queued": m.created,
            "processing": processing(request, collection),
            "run": None,
        }
        if run is not None:
            steps = sources(request).journal.steps(run.id, effects_limit=0)
            row["run"] = {
                "id": run.id,
                "recipe": run.recipe,
                "status": run.shown_status,
                "steps_done": sum(1 for s in steps if s["ended"]),
                "steps": len(steps),
                "current": next((s["key"] for s in steps if not s["ended"]), None),
            }
        rows.append(row)
    return rows


def processing(request: Request, collection: str) -> dict[str, Any] | None:
    """Where the scheduler is with the collection: its entity's state, substate
    (Preservation, Access, Completing), ``progress`` (image N of M), error, and
    ``outcome`` ("Done, 4 of 12 images skipped") with each skipped item's reason."""
    try:
        entity = sources(request).state.get(COLLECTION_KIND, collection)
    except Unavailable:
        return None
    if entity is None:
        return None
    progress = entity.attributes.get("progress")
    summary, reasons = outcome(entity.state, entity.attributes)
    return {
        "state": entity.state,
        "outcome": summary,
        "skipped": reasons,
        "substate": entity.substate,
        "progress": progress if isinstance(progress, dict) else None,
        "error": entity.attributes.get("error"),
        "updated": entity.updated,
    }


def pending(rows: list[dict[str, Any]], collection: str) -> bool:
    """Whether the collection has a request not yet handled."""
    return any(r["collection"] == collection and r["status"] in ("ready", "claimed") for r in rows)


async def distillery_page(request: Request) -> Response:
    return render(
        request,
        "distillery.html",
        rows=queue_rows(request),
        error="",
        form={"collection": "", "preservation": True, "access": False},
        queued=request.query_params.get("queued", ""),
    )


async def queue_fragment(request: Request) -> Response:
    return render(request, "distillery_queue.html", rows=queue_rows(request))


async def submit(request: Request) -> Response:
    """Queue a collection from the form; invalid input re-shows the form with 400."""
    form = await request.form()
    values = {
        "collection": str(form.get("collection", "")),
        "preservation": form.get("preservation") is not None,
        "access": form.get("access") is not None,
    }
    try:
        _queue(request, **values)
    except InvalidRequest as e:
        return render(
            request,
            "distillery.html",
            400,
            rows=queue_rows(request),
            error=str(e),
            form=values,
            queued="",
        )
    return RedirectResponse(f"/distillery?queued={values['collection'].strip()}", 303)


def _queue(
    request: Request, collection: str, preservation: bool, access: bool
) -> tuple[str, dict[str, Any]]:
    """Publish a request; (message id, body). A collection already waiting is refused."""
    body = distillery_request(collection, preservation, access)
    if pending(queue_rows(request), body[COLLECTION_FIELD]):
        raise AlreadyQueued(f"collection {body[COLLECTION_FIELD]} is already queued")
    selector = request.app.state.config.distillery_selector
    return sources(request).bus.publish(selector, body), body


async def queue_api(request: Request) -> Response:
    """The Distillery queue.
    ---
    summary: Collections requested, newest first, with message status and run progress
    responses:
      200: {description: One row per collection}
    """
    return api(queue_rows(request))


async def submit_api(request: Request) -> Response:
    """Queue a collection.
    ---
    summary: "Queue a collection: JSON {collection, preservation, access}"
    responses:
      201: {description: "Queued: {message, body}"}
      400: {description: Invalid input}
      409: {description: The collection is already queued}
    """
    try:
        data = await request.json()
    except ValueError:
        return api({"error": "expected a JSON object"}, 400)
    if not isinstance(data, dict):
        return api({"error": "expected a JSON object"}, 400)
    if not isinstance(data.get(COLLECTION_FIELD), str):
        return api({"error": "collection: a string is required"}, 400)
    for flag in ("preservation", "access"):
        if not isinstance(data.get(flag, False), bool):
            return api({"error": f"{flag}: true or false"}, 400)
    try:
        message_id, body = _queue(
            request,
            data[COLLECTION_FIELD],
            data.get("preservation") is True,
            data.get("access") is True,
        )
    except InvalidRequest as e:
        return api({"error": str(e)}, 409 if isinstance(e, AlreadyQueued) else 400)
    return api({"message": message_id, "body": body}, 201)


routes = [
    Route("/distillery", distillery_page),
    Route("/distillery", submit, methods=["POST"]),
    Route("/distillery/queue", queue_fragment),
    Route("/api/distillery", queue_api),
    Route("/api/distillery", submit_api, methods=["POST"]),
]
