"""``wsrun bus``: send, list, inspect and re-send messages."""

from __future__ import annotations

import json
import sys
from datetime import datetime
from typing import Annotated, Any

import typer

bus_app = typer.Typer(
    add_completion=False,
    no_args_is_help=True,
    help="Send, list, inspect and re-send bus messages.",
)

BusOption = Annotated[
    str | None,
    typer.Option(
        "--bus", help="Bus URL (default: $WSRUN_BUS_URL, the setting, $WSRUN_HOME/bus.db)"
    ),
]


def _bus(url: str | None) -> Any:
    from wsrun.stores.bus import BusError, bus_url, open_bus

    try:
        return open_bus(bus_url(url))
    except BusError as e:
        _fail(str(e))


def _fail(message: str, code: int = 2) -> Any:
    print(f"wsrun bus: {message}", file=sys.stderr)
    raise typer.Exit(code)


def _body(text: str) -> dict[str, Any]:
    try:
        body = json.loads(text)
    except json.JSONDecodeError as e:
        _fail(f"the body is not JSON: {e}")
    if not isinstance(body, dict):
        _fail('the body must be a JSON object, e.g. \'{"ousUID": "uid://X1/X1/Xb2"}\'')
    return body


def _when(ts: float | None) -> str:
    return datetime.fromtimestamp(ts).strftime("%Y-%m-%d %H:%M:%S") if ts else "-"


@bus_app.command("send")
def send(
    selector: Annotated[str, typer.Argument(help="Dotted selector, e.g. pipeline.process.EU")],
    body: Annotated[str, typer.Argument(help="The message body as a JSON object")] = "{}",
    bus: BusOption = None,
    as_json: Annotated[bool, typer.Option("--json")] = False,
) -> None:
    """Publish a message; prints its id."""
    from wsrun.stores.bus import BusError

    try:
        id = _bus(bus).publish(selector, _body(body))
    except BusError as e:
        _fail(str(e))
    print(json.dumps({"id": id, "selector": selector}) if as_json else id)


@bus_app.command("call")
def call(
    selector: Annotated[str, typer.Argument(help="Dotted selector, e.g. xtss")],
    body: Annotated[str, typer.Argument(help="The request body as a JSON object")] = "{}",
    timeout: Annotated[float, typer.Option(help="Seconds to wait for the reply")] = 30.0,
    bus: BusOption = None,
    as_json: Annotated[bool, typer.Option("--json", help="The reply on one line")] = False,
) -> None:
    """Send a request and print the reply's body (exit 1 on timeout)."""
    from wsrun.stores.bus import BusError, BusTimeout

    try:
        reply = _bus(bus).call(selector, _body(body), timeout=timeout)
    except BusTimeout as e:
        _fail(str(e), 1)
    except BusError as e:
        _fail(str(e))
    print(json.dumps(reply) if as_json else json.dumps(reply, indent=2))


@bus_app.command("ls")
def ls(
    queue: Annotated[str | None, typer.Option(help="Only this queue ('' for unrouted)")] = None,
    status: Annotated[str | None, typer.Option(help="ready, claimed, done or dead")] = None,
    limit: Annotated[int, typer.Option(help="How many, newest first")] = 50,
    as_json: Annotated[bool, typer.Option("--json")] = False,
    bus: BusOption = None,
) -> None:
    """List messages, newest first."""
    from wsrun.stores.bus.base import STATUSES

    if status is not None and status not in STATUSES:
        _fail(f"unknown status '{status}' (one of {', '.join(STATUSES)})")
    found = _bus(bus).messages(queue=queue, status=status, limit=limit)
    if as_json:
        print(json.dumps([m.to_json() for m in found], indent=2))
        return
    for m in found:
        error = f"  {m.error}" if m.error and m.status != "done" else ""
        print(
            f"{m.id}  {_when(m.created)}  {m.status:<7} {m.attempts}  {m.queue or '(unrouted)'}  {m.selector}{error}"
        )


@bus_app.command("show")
def show(
    id: Annotated[str, typer.Argument(help="A message id (a unique prefix is enough)")],
    as_json: Annotated[bool, typer.Option("--json")] = False,
    bus: BusOption = None,
) -> None:
    """One message with its body, status, attempts and last error."""
    m = _bus(bus).get(id)
    if m is None:
        _fail(f"no message '{id}'")
    if as_json:
        print(json.dumps(m.to_json(), indent=2))
        return
    print(f"message {m.id}")
    print(f"  selector {m.selector}, queue {m.queue or '(unrouted)'}")
    print(f"  status {m.status}, attempts {m.attempts}, created {_when(m.created)}")
    if m.consumer:
        print(f"  consumer {m.consumer}")
    if m.reply_to:
        print(f"  reply to {m.reply_to} (correlation {m.correlation_id})")
    if m.headers:
        print(f"  headers {json.dumps(m.headers)}")
    if m.error:
        print(f"  error: {m.error}")
    if m.invalid:
        print(f"  invalid: {m.invalid}")
    print(f"  body {json.dumps(m.body, indent=2)}")


@bus_app.command("resend")
def resend(
    id: Annotated[str, typer.Argument(help="A dead (or done) message's id")],
    bus: BusOption = None,
    as_json: Annotated[bool, typer.Option("--json")] = False,
) -> None:
    """Make a dead message ready again, attempts reset."""
    from wsrun.stores.bus import BusError

    try:
        m = _bus(bus).resend(id)
    except BusError as e:
        _fail(str(e))
    if as_json:
        print(json.dumps(m.to_json(), indent=2))
    else:
        print(f"{m.id}: ready again in {m.queue or '(unrouted)'}")


@bus_app.command("purge")
def purge(
    status: Annotated[str, typer.Option(help="done, dead, or ready (loses the work)")] = "done",
    older_than: Annotated[
        str,
        typer.Option(
            "--older-than", help="Only messages created before this long ago: 1d, 12h, 30m, 90"
        ),
    ] = "0",
    queue: Annotated[str | None, typer.Option(help="Only this queue ('' for unrouted)")] = None,
    bus: BusOption = None,
    as_json: Annotated[bool, typer.Option("--json")] = False,
) -> None:
    """Remove handled (or dead) messages; prints how many. Done messages
    past the bus's retention (7 days by default) are removed anyway."""
    from wsrun.stores.bus import BusError
    from wsrun.stores.bus.base import parse_duration

    try:
        removed = _bus(bus).purge(status, parse_duration(older_than), queue)
    except BusError as e:
        _fail(str(e))
    if as_json:
        print(json.dumps({"removed": removed, "status": status}))
    else:
        print(f"{removed} {status} message{'' if removed == 1 else 's'} removed")


@bus_app.command("queues")
def queues(
    as_json: Annotated[bool, typer.Option("--json")] = False,
    bus: BusOption = None,
) -> None:
    """Every queue with its patterns and message counts by status."""
    from wsrun.stores.bus.base import STATUSES

    b = _bus(bus)
    counts = b.counts()
    patterns = b.queues()
    if as_json:
        print(
            json.dumps(
                {q: {"patterns": patterns.get(q, []), "counts": c} for q, c in counts.items()},
                indent=2,
            )
        )
        return
    print(f"{'queue':<40} " + " ".join(f"{s:>7}" for s in STATUSES) + "  patterns")
    for q, c in sorted(counts.items()):
        cells = " ".join(f"{c.get(s, 0):>7}" for s in STATUSES)
        print(f"{q or '(unrouted)':<40} {cells}  {', '.join(patterns.get(q, []))}")
