"""QA2 review: the OUSs ReadyForReview, one OUS's Pipeline report and weblog,
and the Pass / SemiPass / Fail / Cancel buttons.

Opening an OUS sets it Reviewing (the same store call as the terminal
review's ``reviewing`` step). A decision runs the terminal review's own recipe
(``alma/aqua-qa2-review --ous ID --flag FLAG``; setting
``wsrun.web.review.recipe``), journaled like any run, so the web and the
terminal do exactly the same thing. A decision on an OUS that is no longer
ReadyForReview or Reviewing is refused with a message.
"""

from __future__ import annotations

import base64
import binascii
import os
import xml.etree.ElementTree as ET
from typing import Any

from starlette.concurrency import run_in_threadpool
from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import RedirectResponse, Response
from starlette.routing import Route

from wsrun.web.common import api, not_found, render, sources

KIND = "ous"
REPORT_KIND = "pipeline-report"
FLAGS = ("Pass", "SemiPass", "Fail", "Cancel")
#: Flags the page acts on only after the reviewer confirms (they undo the processing).
CONFIRM = ("Fail", "Cancel")
DECIDABLE = ("ReadyForReview", "Reviewing")
ACTOR = "wsrun serve"
#: Seconds the review recipe waits for AQUA to store a missing report.
REPORT_TIMEOUT = 5.0
#: Where JAO's cache serves the expanded weblogs when no ``weblogs`` directory is served here.
WEBLOG_URL = "http://localhost:8001/weblogs"


class Refused(Exception):
    """A review action that cannot be done now; the message says why."""


def queue(request: Request) -> dict[str, list[dict[str, Any]]]:
    """The OUSs waiting for review and those being reviewed, newest first."""
    store = sources(request).state
    return {
        state: [e.to_json() for e in store.list(KIND, state=state, limit=500)]
        for state in DECIDABLE
    }


def ous_or_404(request: Request, ous_id: str) -> Any:
    entity = sources(request).state.get(KIND, ous_id) if ous_id else None
    if entity is None:
        raise not_found(f"no OUS '{ous_id}'")
    return entity


def report_of(request: Request, entity: Any) -> dict[str, Any] | None:
    """The OUS's Pipeline report (the one of its latest run), decoded and parsed."""
    timestamp = entity.attributes.get("timestamp")
    if not timestamp:
        return None
    found = sources(request).state.get(REPORT_KIND, f"{entity.id}@{timestamp}")
    if found is None:
        return None
    raw = found.attributes.get("report", "")
    try:
        xml = base64.b64decode(raw, validate=True).decode("utf-8", "replace")
    except (binascii.Error, ValueError):
        xml = str(raw)
    try:
        tree: list[dict[str, Any]] | None = outline(ET.fromstring(xml))
    except ET.ParseError:
        tree = None
    return {
        "id": found.id,
        "attributes": {k: v for k, v in found.attributes.items() if k != "report"},
        "xml": xml,
        "outline": tree,
    }


def outline(root: ET.Element, depth: int = 0) -> list[dict[str, Any]]:
    """An XML tree as rows (depth, tag, attributes, text) for a readable table."""
    rows = [
        {
            "depth": depth,
            "tag": root.tag,
            "attributes": dict(root.attrib),
            "text": (root.text or "").strip(),
        }
    ]
    for child in root:
        rows.extend(outline(child, depth + 1))
    return rows


def weblog_link(request: Request, entity: Any) -> str | None:
    """Where the OUS's expanded weblog is (the replicated cache expands it to
    ``<cache>/weblogs/<name>/``): served here when a ``weblogs`` or ``cache``
    directory is configured, else at JAO's cache (as the terminal review says)."""
    weblog = entity.attributes.get("weblog")
    if not weblog:
        return None
    name = weblog[:-4] if weblog.endswith(".zip") else weblog
    dirs = request.app.state.config.dirs
    if "weblogs" in dirs:
        return f"/files/weblogs/{name}/index.html"
    if "cache" in dirs:
        return f"/files/cache/weblogs/{name}/index.html"
    return f"{WEBLOG_URL}/{name}/index.html"


def open_review(request: Request, ous_id: str) -> Any:
    """ReadyForReview -> Reviewing, and the change relayed to the bus."""
    from wsrun.stores.state import StateError

    entity = ous_or_404(request, ous_id)
    if entity.state == "Reviewing":
        return entity
    store = sources(request).state
    try:
        store.transition(
            KIND, ous_id, state="Reviewing", expect_state="ReadyForReview", actor=ACTOR
        )
    except StateError as e:
        raise Refused(str(e)) from None
    _relay(request)
    return store.get(KIND, ous_id)


def _relay(request: Request) -> None:
    from wsrun.stores.bus.events import relay_state_changes

    relay_state_changes(sources(request).state, sources(request).bus)


def decide(request: Request, ous_id: str, flag: str) -> dict[str, Any]:
    """Run the terminal review's recipe on the OUS with the flag; its report."""

    if flag not in FLAGS:
        raise HTTPException(400, f"flag must be one of {', '.join(FLAGS)}")
    entity = ous_or_404(request, ous_id)
    if entity.state not in DECIDABLE:
        raise Refused(
            f"{ous_id} is {entity.state}: only an OUS ReadyForReview or Reviewing can be decided"
        )
    report = run_review_recipe(
        request.app.state.config, ous_id, flag, opened=entity.state == "Reviewing"
    )
    _relay(request)
    if report.status == "failed":
        raise Refused(f"the review of {ous_id} failed: {report.error} (run {report.run_id})")
    return {"ous": ous_id, "flag": flag, "run": report.run_id, "status": report.status}


def run_review_recipe(config: Any, ous_id: str, flag: str, opened: bool = False) -> Any:
    """``wsrun REVIEW_RECIPE --ous ID --flag FLAG [--opened]``, in this process,
    journaled; ``opened``: this reviewer set it Reviewing when opening it."""
    from wsrun.core.journal import Journal
    from wsrun.core.recipe import resolve
    from wsrun.core.runner import Runner, coerce_inputs
    from wsrun.core.settings import Settings
    from wsrun.core.validate import load_valid

    recipe = load_valid(resolve(config.review_recipe))
    inputs = coerce_inputs(
        recipe,
        {"ous": ous_id, "flag": flag, "report_timeout": REPORT_TIMEOUT, "opened": opened},
        os.getcwd(),
    )
    journal = Journal(config.home)
    try:
        settings = Settings(profile=config.profile, overrides=config.overrides)
        return Runner(recipe, inputs, settings, journal=journal).run()
    finally:
        journal.close()


async def _field(request: Request, name: str) -> str:
    if request.headers.get("content-type", "").startswith("application/json"):
        try:
            data = await request.json()
        except ValueError:
            raise HTTPException(400, "expected a JSON object") from None
        value = data.get(name) if isinstance(data, dict) else None
    else:
        value = (await request.form()).get(name)
    if not isinstance(value, str) or not value:
        raise HTTPException(400, f"'{name}' is required")
    return value


def _refused(request: Request, ous_id: str, message: str) -> Response:
    if request.url.path.startswith("/api/"):
        return api({"error": message}, 409)
    entity = sources(request).state.get(KIND, ous_id)
    return render(
        request,
        "review_ous.html",
        409,
        entity=entity,
        report=report_of(request, entity) if entity else None,
        weblog=weblog_link(request, entity) if entity else None,
        error=message,
        flags=FLAGS,
    )


async def review_page(request: Request) -> Response:
    return render(
        request,
        "review.html",
        queue=queue(request),
        decided=request.query_params.get("decided", ""),
        flag=request.query_params.get("flag", ""),
    )


async def review_list(request: Request) -> Response:
    return render(request, "review_list.html", queue=queue(request))


async def ous_page(request: Request) -> Response:
    entity = ous_or_404(request, request.query_params.get("id", ""))
    return render(
        request,
        "review_ous.html",
        entity=entity,
        report=report_of(request, entity),
        weblog=weblog_link(request, entity),
        error="",
        flags=FLAGS,
    )


async def open_action(request: Request) -> Response:
    ous_id = await _field(request, "id")
    try:
        entity = open_review(request, ous_id)
    except Refused as e:
        return _refused(request, ous_id, str(e))
    if request.url.path.startswith("/api/"):
        return api(entity.to_json())
    return RedirectResponse(f"/review/ous?id={_quote(ous_id)}", 303)


async def decide_action(request: Request) -> Response:
    """Run a decision; on the page, Fail and Cancel first ask for confirmation
    (the form is sent again with ``confirmed`` set to the flag)."""
    ous_id = await _field(request, "id")
    flag = await _field(request, "flag")
    page = not request.url.path.startswith("/api/")
    entity = sources(request).state.get(KIND, ous_id)
    confirmed = page and (await request.form()).get("confirmed") == flag
    if page and flag in CONFIRM and not confirmed and entity and entity.state in DECIDABLE:
        return render(
            request,
            "review_ous.html",
            entity=entity,
            report=report_of(request, entity),
            weblog=weblog_link(request, entity),
            error="",
            flags=FLAGS,
            confirm=flag,
        )
    try:
        outcome = await run_in_threadpool(decide, request, ous_id, flag)
    except Refused as e:
        return _refused(request, ous_id, str(e))
    if request.url.path.startswith("/api/"):
        return api(outcome)
    return RedirectResponse(f"/review?decided={_quote(ous_id)}&flag={flag}", 303)


def _quote(value: str) -> str:
    from urllib.parse import quote

    return quote(value, safe="")


async def queue_api(request: Request) -> Response:
    """The review queue.
    ---
    summary: OUSs ReadyForReview and Reviewing
    responses:
      200: {description: "{ReadyForReview: [...], Reviewing: [...]}"}
    """
    return api(queue(request))


async def ous_api(request: Request) -> Response:
    """One OUS for review.
    ---
    summary: An OUS (id parameter) with its Pipeline report and weblog link
    responses:
      200: {description: "{entity, report, weblog}"}
      404: {description: No such OUS}
    """
    entity = ous_or_404(request, request.query_params.get("id", ""))
    return api(
        {
            "entity": entity.to_json(),
            "report": report_of(request, entity),
            "weblog": weblog_link(request, entity),
        }
    )


async def open_api(request: Request) -> Response:
    """Open an OUS for review.
    ---
    summary: "Set an OUS Reviewing (form or JSON: id)"
    responses:
      200: {description: The OUS}
      404: {description: No such OUS}
      409: {description: The OUS is not ReadyForReview}
    """
    return await open_action(request)


async def decide_api(request: Request) -> Response:
    """Decide a review.
    ---
    summary: "Record a QA2 flag (form or JSON: id, flag = Pass, SemiPass, Fail or Cancel)"
    responses:
      200: {description: "{ous, flag, run, status}"}
      400: {description: Bad flag}
      404: {description: No such OUS}
      409: {description: The OUS is not ReadyForReview or Reviewing, or the review failed}
    """
    return await decide_action(request)


routes = [
    Route("/review", review_page),
    Route("/review/list", review_list),
    Route("/review/ous", ous_page),
    Route("/review/open", open_action, methods=["POST"]),
    Route("/review/decide", decide_action, methods=["POST"]),
    Route("/api/review", queue_api),
    Route("/api/review/ous", ous_api),
    Route("/api/review/open", open_api, methods=["POST"]),
    Route("/api/review/decide", decide_api, methods=["POST"]),
]
