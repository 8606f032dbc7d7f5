"""The RabbitMQ bus (``amqp://user:password@host:5672/vhost``), through pika.

The same contract as the embedded bus, on a broker many hosts share:

- **Routing**: one durable topic exchange (``wsrun``); a queue's patterns are
  its bindings, so our ``*`` and ``#`` are RabbitMQ's own. Queues are durable
  and named as the worker names them (``<recipe>:<selector>``); messages are
  persistent and every publish waits for the broker's confirm.
- **Unrouted messages**: the exchange's alternate exchange (a headers
  exchange) puts a message no queue is bound for into the holding queue
  ``wsrun.unrouted`` when it carries the ``keep`` header (every publish except
  ``keep_unrouted=False`` ones, which RabbitMQ then drops). Declaring a queue
  moves the held messages that match it there: the embedded bus's guarantee.
- **Claims**: each process has one consumer connection, run by an I/O thread;
  a claim takes a message the broker delivered (at most ``prefetch`` per
  queue and process, default 1, so one busy worker does not hoard the work of
  idle ones) or else fetches one with ``basic.get``. Acks are manual and sent
  only when ``ack`` is called, after the handler's run committed. There are no
  leases: the broker gives an unacked message back when its consumer's
  connection ends (a SIGKILL closes the socket: redelivered at once; a hung
  host: after the heartbeat times out). A long run needs no renewal (mind the
  broker's ``consumer_timeout``, 30 minutes by default).
- **Retries**: ``fail`` publishes the message again, with its attempts and
  error in headers, to a delay queue ``wsrun.retry.<ms>.<queue>`` whose
  message TTL is the back-off and whose dead-letter target is the queue (so it
  comes back when the back-off ends), then acks the failed delivery. After the
  last attempt it goes to the dead-letter queue ``wsrun.dead`` with its queue
  and error in headers; ``resend`` puts it back in its queue.
- **Request/reply**: RabbitMQ's direct reply-to (``amq.rabbitmq.reply-to``),
  no queue to create or delete per call.
- **Inspecting**: RabbitMQ cannot list messages without taking them, so
  ``messages``/``get`` see the dead-letter and holding queues (read and given
  back), not the messages waiting in a live queue; ``counts`` gives per queue
  the ready messages (those waiting in its retry queues included), the dead
  ones and the unrouted ones; claimed (unacked) messages are not counted and
  handled ones are not kept (``done`` is always 0). The queue list itself is
  kept in the queue ``wsrun.queues`` (one message per queue), because
  RabbitMQ's AMQP side cannot list queues.

URL options (query string, removed before pika sees the URL): ``prefix``
(put before every exchange and queue name, to share a vhost), ``prefetch``,
``max_attempts``, ``backoff``. The password never appears in errors or logs
(``mask``).

One piece: every part above shares the one consumer connection and its I/O
thread (claims, acks, retries and replies must go through the thread that owns the
channel), so splitting them would spread one concurrency design over several files.
"""

from __future__ import annotations

import atexit
import contextlib
import json
import logging
import os
import threading
import time
import uuid
import weakref
from collections import deque
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import Future
from typing import Any
from urllib.parse import parse_qsl, urlencode, urlsplit, urlunsplit

import pika
import pika.exceptions
from pika.adapters.blocking_connection import BlockingChannel

from wsrun.stores.bus.base import (
    DEFAULT_BACKOFF,
    DEFAULT_LEASE,
    DEFAULT_MAX_ATTEMPTS,
    Bus,
    BusError,
    BusTimeout,
    Message,
    check_pattern,
    check_purge_status,
    check_selector,
    decode_body,
    mask,
    matches,
    retry_delay,
)

#: Headers the bus keeps its own bookkeeping in (not shown as the message's headers).
H_ATTEMPTS = "x-wsrun-attempts"  # handling attempts used before this copy
H_ERROR = "x-wsrun-error"
H_QUEUE = "x-wsrun-queue"  # the queue a dead copy belongs to
H_CREATED = "x-wsrun-created"
H_KEEP = (
    "wsrun-keep"  # kept when no queue matches (no x- prefix: the headers exchange ignores those)
)
H_HEADERS = "x-wsrun-headers"  # the message's own headers, as JSON (any JSON values)
DIRECT_REPLY = "amq.rabbitmq.reply-to"
#: Options of ours in the URL's query string; the rest go to pika.
OPTIONS = ("prefix", "prefetch", "max_attempts", "backoff")
#: Seconds an operation waits for the consumer's I/O thread.
IO_TIMEOUT = 30.0
#: Seconds between two ``basic.get`` polls of a queue whose prefetch is used up.
POLL = 0.005
#: Broken connections: what pika raises when the broker or the socket went away.
CONNECTION_ERRORS = (
    pika.exceptions.AMQPConnectionError,
    pika.exceptions.ChannelWrongStateError,
    pika.exceptions.ConnectionWrongStateError,
    pika.exceptions.StreamLostError,
)


# pika logs every closed channel and failed connection attempt itself (a
# passive look at a retry queue that does not exist is one); this bus reports
# the failures that matter as BusError. Left alone when the application set a level.
if logging.getLogger("pika").level == logging.NOTSET:
    logging.getLogger("pika").setLevel(logging.CRITICAL)


#: Every bus of this process, closed at exit: their connections end cleanly.
_BUSES: weakref.WeakSet[AmqpBus] = weakref.WeakSet()


@atexit.register
def _close_all() -> None:
    for bus in list(_BUSES):
        bus.close()


class AmqpBus(Bus):
    """The bus on a RabbitMQ broker. Thread-safe: each thread publishes on its
    own connection; claims and acks go through the consumer's I/O thread."""

    def __init__(self, url: str) -> None:
        self.url = url
        parts = urlsplit(url)
        ours = dict(parse_qsl(parts.query))
        rest = [(k, v) for k, v in parse_qsl(parts.query) if k not in OPTIONS]
        try:
            self.prefetch = max(1, int(ours.get("prefetch", 1)))
            self.max_attempts = int(ours.get("max_attempts", DEFAULT_MAX_ATTEMPTS))
            self.backoff = float(ours.get("backoff", DEFAULT_BACKOFF))
        except ValueError as e:
            raise BusError(f"{mask(url)}: {e}") from None
        self.prefix = ours.get("prefix", "")
        self.exchange = self.prefix + "wsrun"
        self.alternate = self.prefix + "wsrun.unrouted"
        self.holding = self.prefix + "wsrun.unrouted"
        self.dead = self.prefix + "wsrun.dead"
        self.registry = self.prefix + "wsrun.queues"
        self._params = pika.URLParameters(urlunsplit(parts._replace(query=urlencode(rest))))
        self._local = threading.local()
        self._lock = threading.Lock()
        self._connections: list[pika.BlockingConnection] = []
        self._consumer: _Consumer | None = None
        self._pid = os.getpid()
        _BUSES.add(self)
        with self._channel() as ch:  # errors show where the bus is opened
            self._declare_topology(ch)

    def __repr__(self) -> str:
        return f"AmqpBus({mask(self.url)!r})"

    # ---- names and connections --------------------------------------------------------

    def _q(self, name: str) -> str:
        """The broker's name of queue ``name`` (a reply-to address is absolute)."""
        return name if name.startswith("amq.") else self.prefix + name

    def _retry_queue(self, name: str, delay: float) -> str:
        return f"{self.prefix}wsrun.retry.{int(delay * 1000)}.{name}"

    def _connect(self) -> pika.BlockingConnection:
        try:
            connection = pika.BlockingConnection(self._params)
        except pika.exceptions.AMQPError as e:
            raise BusError(f"{mask(self.url)}: cannot connect: {_describe(e)}") from None
        with self._lock:
            self._connections.append(connection)
        return connection

    def _publisher(self) -> BlockingChannel:
        """This thread's channel in confirm mode, reconnected when it broke."""
        if self._pid != os.getpid():  # forked: the parent's sockets are not ours
            self._pid, self._local, self._consumer = os.getpid(), threading.local(), None
        channel: BlockingChannel | None = getattr(self._local, "channel", None)
        if channel is None or not channel.is_open:
            connection = getattr(self._local, "connection", None)
            if connection is None or not connection.is_open:
                connection = self._local.connection = self._connect()
            channel = connection.channel()
            channel.confirm_delivery()
            self._local.channel = channel
        return channel

    def _with_publisher(self, action: Callable[[BlockingChannel], Any]) -> Any:
        """``action`` on this thread's channel, once more on a new connection
        when the old one broke (an idle connection the broker closed)."""
        try:
            return action(self._publisher())
        except CONNECTION_ERRORS:
            self._local.connection = self._local.channel = None
            return action(self._publisher())

    @contextlib.contextmanager
    def _channel(self, confirm: bool = True) -> Iterator[BlockingChannel]:
        """A short-lived channel on this thread's connection; closing it gives
        back every message taken on it and not acked."""
        self._publisher()
        try:
            channel = self._local.connection.channel()
        except CONNECTION_ERRORS:  # the broker closed an idle connection: once more
            self._local.connection = self._local.channel = None
            self._publisher()
            channel = self._local.connection.channel()
        if confirm:
            channel.confirm_delivery()
        try:
            yield channel
        except pika.exceptions.ChannelClosedByBroker as e:
            raise BusError(f"{mask(self.url)}: {_describe(e)}") from None
        finally:
            if channel.is_open:
                channel.close()

    def _consumer_io(self) -> _Consumer:
        with self._lock:
            if self._pid != os.getpid():
                self._pid, self._local, self._consumer = os.getpid(), threading.local(), None
            if self._consumer is None or not self._consumer.alive():
                self._consumer = _Consumer(self)
            return self._consumer

    def close(self) -> None:
        with self._lock:
            consumer, self._consumer = self._consumer, None
            connections, self._connections = self._connections, []
        if consumer is not None:
            consumer.stop()
        for connection in connections:
            with contextlib.suppress(Exception):  # another thread's, or already gone
                if connection.is_open:
                    connection.close()
        self._local = threading.local()

    # ---- topology --------------------------------------------------------------

    def _declare_topology(self, ch: BlockingChannel) -> None:
        ch.exchange_declare(self.alternate, "headers", durable=True)
        ch.queue_declare(self.holding, durable=True)
        ch.queue_bind(self.holding, self.alternate, arguments={"x-match": "all", H_KEEP: "1"})
        ch.exchange_declare(
            self.exchange, "topic", durable=True, arguments={"alternate-exchange": self.alternate}
        )
        ch.queue_declare(self.dead, durable=True)
        ch.queue_declare(self.registry, durable=True)

    def declare_queue(self, name: str, patterns: Sequence[str]) -> None:
        if not name:
            raise BusError("a queue needs a name")
        patterns = [check_pattern(p) for p in patterns]
        rq = self._q(name)
        with self._channel() as ch:
            ch.queue_declare(rq, durable=True)
            for pattern in patterns:
                ch.queue_bind(rq, self.exchange, routing_key=pattern)
            old = self._update_registry(ch, name, patterns)
            for pattern in set(old or ()) - set(patterns):
                ch.queue_unbind(rq, self.exchange, routing_key=pattern)
        self._route_held(name, patterns)

    def _route_held(self, name: str, patterns: list[str]) -> None:
        """Move the held (unrouted) messages matching ``patterns`` to ``name``."""
        if not patterns:
            return
        with self._channel() as ch:
            while True:
                method, props, body = ch.basic_get(self.holding)
                if method is None:
                    return
                if any(matches(p, props.type or method.routing_key) for p in patterns):
                    ch.basic_publish("", self._q(name), body, props)
                    ch.basic_ack(method.delivery_tag)
            # closing the channel gives the others back to the holding queue

    def _update_registry(
        self, ch: BlockingChannel, name: str, patterns: list[str] | None
    ) -> list[str] | None:
        """Record ``name``'s patterns (None: deleted) in the registry queue,
        rewriting it compactly; the patterns it had before."""
        records, last_tag = self._read_registry(ch)
        old = records.get(name)
        if old == patterns and last_tag is not None:
            return old
        if patterns is None:
            records.pop(name, None)
        else:
            records[name] = patterns
        for queue, bound in records.items():
            ch.basic_publish(
                "",
                self.registry,
                json.dumps({"name": queue, "patterns": bound}),
                pika.BasicProperties(delivery_mode=2),
            )
        if last_tag is not None:
            ch.basic_ack(last_tag, multiple=True)
        return old

    def _read_registry(self, ch: BlockingChannel) -> tuple[dict[str, list[str]], int | None]:
        records: dict[str, list[str]] = {}
        last_tag = None
        while True:
            method, _, body = ch.basic_get(self.registry)
            if method is None:
                return records, last_tag
            last_tag = method.delivery_tag
            record = json.loads(body)
            records[record["name"]] = record["patterns"]

    def delete_queue(self, name: str) -> None:
        with self._channel() as ch:
            ch.queue_delete(self._q(name))
            self._update_registry(ch, name, None)

    def queues(self) -> dict[str, list[str]]:
        with self._channel(confirm=False) as ch:
            records, _ = self._read_registry(ch)
        return dict(sorted(records.items()))

    def destroy(self) -> None:
        """Delete every queue and exchange of this bus (its ``prefix``): for
        tests and for taking a bus out of service. Messages in them are lost."""
        names = list(self.queues())
        delays = {retry_delay(n, self.backoff) for n in range(1, self.max_attempts + 1)}
        with self._channel(confirm=False) as ch:
            for name in names:
                ch.queue_delete(self._q(name))
                for delay in delays:
                    ch.queue_delete(self._retry_queue(name, delay))
            for queue in (self.holding, self.dead, self.registry):
                ch.queue_delete(queue)
            ch.exchange_delete(self.exchange)
            ch.exchange_delete(self.alternate)
        self.close()

    # ---- sending ---------------------------------------------------------------

    def publish(
        self,
        selector: str,
        body: dict[str, Any],
        *,
        reply_to: str | None = None,
        correlation_id: str | None = None,
        headers: dict[str, Any] | None = None,
        keep_unrouted: bool = True,
    ) -> str:
        check_selector(selector)
        id = uuid.uuid4().hex[:16]
        own: dict[str, Any] = {H_CREATED: time.time()}
        if keep_unrouted:
            own[H_KEEP] = "1"
        props = _properties(id, selector, headers, own, reply_to, correlation_id)
        data = _dump(body)
        self._with_publisher(lambda ch: ch.basic_publish(self.exchange, selector, data, props))
        return id

    def send_to_queue(
        self,
        queue: str,
        selector: str,
        body: dict[str, Any],
        *,
        correlation_id: str | None = None,
        headers: dict[str, Any] | None = None,
    ) -> str | None:
        id = uuid.uuid4().hex[:16]
        props = _properties(id, selector, headers, {H_CREATED: time.time()}, None, correlation_id)
        data, target = _dump(body), self._q(queue)
        # a direct reply-to address cannot be checked (the reply is dropped
        # when the caller is gone); a queue can: mandatory returns it unrouted
        mandatory = not queue.startswith("amq.")
        try:
            self._with_publisher(
                lambda ch: ch.basic_publish("", target, data, props, mandatory=mandatory)
            )
        except pika.exceptions.UnroutableError:
            return None
        return id

    def _republish(self, message: Message, target: str, own: dict[str, Any]) -> None:
        """A copy of a claimed message to queue ``target`` (broker name),
        confirmed: the bytes received, so a poison body is kept as it came."""
        props = _properties(
            message.id,
            message.selector,
            message.headers,
            {H_CREATED: message.created, **own},
            message.reply_to,
            message.correlation_id,
        )
        data = message.receipt[1].body
        self._with_publisher(lambda ch: ch.basic_publish("", target, data, props))

    # ---- consuming -------------------------------------------------------------

    def claim(self, queue: str, consumer: str, lease: float = DEFAULT_LEASE) -> Message | None:
        io = self._consumer_io()
        rq = self._q(queue)
        io.subscribe(rq)
        while True:
            delivery = io.take(rq)
            if delivery is None:
                io.fetch(rq)
                delivery = io.take(rq)
            if delivery is None:
                return None
            if not delivery.props.message_id or not delivery.props.type:
                self._adopt(queue, delivery, io)
                continue
            message = self._message(queue, consumer, delivery, io)
            if delivery.redelivered and message.attempts > self.max_attempts:
                self.fail(message, "redelivered: its consumer stopped without finishing")
                continue
            return message

    def _adopt(self, queue: str, d: _Delivery, io: _Consumer) -> None:
        """A message another client published without ``message_id`` or
        ``type``: put it back in its queue with an id and its routing key as
        the selector (so a redelivery keeps the id), and ack the original."""
        head = {k: v for k, v in (d.props.headers or {}).items() if not k.startswith("x-")}
        props = _properties(
            d.props.message_id or uuid.uuid4().hex[:16],
            d.props.type or d.routing_key,
            json.loads(json.dumps(head, default=str)),
            {H_CREATED: time.time()},
            d.props.reply_to,
            d.props.correlation_id,
        )
        target = self._q(queue)
        self._with_publisher(lambda ch: ch.basic_publish("", target, d.body, props))
        io.ack(d)

    def _message(self, queue: str, consumer: str, d: _Delivery, io: _Consumer) -> Message:
        head = dict(d.props.headers or {})
        attempts = int(head.get(H_ATTEMPTS, 0)) + 1 + (1 if d.redelivered else 0)
        body, invalid = decode_body(d.body)
        return Message(
            id=d.props.message_id or "",
            selector=d.props.type or "",
            body=body,
            invalid=invalid,
            queue=queue,
            attempts=attempts,
            status="claimed",
            error=head.get(H_ERROR),
            created=float(head.get(H_CREATED, time.time())),
            reply_to=d.props.reply_to,
            correlation_id=d.props.correlation_id,
            headers=_user_headers(head),
            consumer=consumer,
            receipt=(io, d),
        )

    def _ack_delivery(self, message: Message) -> None:
        """Ack a claimed delivery; nothing when its connection is gone (the
        broker gave the message back already)."""
        io, delivery = message.receipt
        if io.alive():
            io.ack(delivery)

    def extend(self, message: Message, lease: float = DEFAULT_LEASE) -> bool:
        io, _ = message.receipt
        return bool(io.alive())

    def ack(self, message: Message) -> None:
        self._ack_delivery(message)
        message.status = "done"

    def fail(
        self, message: Message, error: str, *, retry: bool = True, delay: float | None = None
    ) -> str:
        io, _ = message.receipt
        if not io.alive():  # the broker redelivers it anyway
            return "ready"
        own = {H_ATTEMPTS: message.attempts, H_ERROR: error[:4000]}
        if retry and message.attempts < self.max_attempts:
            delay = retry_delay(message.attempts, self.backoff, delay)
            target = self._retry_queue(message.queue, delay)
            ms = int(delay * 1000)
            self._with_publisher(
                lambda ch: ch.queue_declare(
                    target,
                    durable=True,
                    arguments={
                        "x-message-ttl": ms,
                        "x-dead-letter-exchange": "",
                        "x-dead-letter-routing-key": self._q(message.queue),
                        "x-expires": ms + 60_000,
                    },
                )
            )
            self._republish(message, target, own)
            message.status, message.available = "ready", time.time() + delay
        else:
            self._republish(message, self.dead, {**own, H_QUEUE: message.queue})
            message.status = "dead"
        self._ack_delivery(message)
        message.error = error
        return message.status

    def release(self, message: Message) -> None:
        # a copy with the attempts it had, not a requeue: the broker would mark
        # that redelivered, which counts as an attempt
        io, _ = message.receipt
        if io.alive():
            self._republish(message, self._q(message.queue), {H_ATTEMPTS: message.attempts - 1})
            self._ack_delivery(message)
        message.status = "ready"

    def wait(self, queue: str | Sequence[str], timeout: float) -> bool:
        io = self._consumer_io()
        names = [self._q(q) for q in ([queue] if isinstance(queue, str) else queue)]
        for rq in names:
            io.subscribe(rq)
        return io.wait(names, timeout)

    # ---- request / reply ----------------------------------------------------------

    def call(self, selector: str, body: dict[str, Any], timeout: float = 30.0) -> dict[str, Any]:
        check_selector(selector)
        replies: dict[str, dict[str, Any]] = getattr(self._local, "replies", None) or {}
        ch = self._publisher()
        if getattr(self._local, "reply_channel", None) is not ch:
            replies = self._local.replies = {}

            def on_reply(_ch: Any, _method: Any, props: Any, data: bytes) -> None:
                replies[props.correlation_id or ""] = decode_body(data)[0]

            ch.basic_consume(DIRECT_REPLY, on_reply, auto_ack=True)
            self._local.reply_channel = ch
        correlation_id = uuid.uuid4().hex
        props = _properties(
            uuid.uuid4().hex[:16],
            selector,
            None,
            {H_CREATED: time.time(), H_KEEP: "1"},
            DIRECT_REPLY,
            correlation_id,
        )
        ch.basic_publish(self.exchange, selector, _dump(body), props)
        deadline = time.monotonic() + timeout
        while correlation_id not in replies:
            left = deadline - time.monotonic()
            if left <= 0:
                replies.clear()  # a late answer to an earlier call is dropped
                raise BusTimeout(f"no reply to {selector} within {timeout:g} s")
            ch.connection.process_data_events(time_limit=min(left, 0.5))
        return replies.pop(correlation_id)

    # ---- inspecting --------------------------------------------------------------

    def _peek(self, rq: str, status: str) -> list[Message]:
        """Every message in queue ``rq``, read and given back."""
        found = []
        with self._channel(confirm=False) as ch:
            while True:
                method, props, body = ch.basic_get(rq)
                if method is None:
                    break
                head = dict(props.headers or {})
                data, invalid = decode_body(body)
                found.append(
                    Message(
                        id=props.message_id or "",
                        selector=props.type or method.routing_key,
                        body=data,
                        invalid=invalid,
                        queue=str(head.get(H_QUEUE, "")),
                        attempts=int(head.get(H_ATTEMPTS, 0)),
                        status=status,
                        error=head.get(H_ERROR),
                        created=float(head.get(H_CREATED, 0.0)),
                        reply_to=props.reply_to,
                        correlation_id=props.correlation_id,
                        headers=_user_headers(head),
                    )
                )
        return found

    def messages(
        self,
        queue: str | None = None,
        status: str | None = None,
        limit: int = 100,
        offset: int = 0,
    ) -> list[Message]:
        found: list[Message] = []
        if status in (None, "dead") and queue != "":
            found += [m for m in self._peek(self.dead, "dead") if queue in (None, m.queue)]
        if status in (None, "ready") and queue in (None, ""):
            found += self._peek(self.holding, "ready")
        found.sort(key=lambda m: m.created, reverse=True)
        return found[offset : offset + limit]

    def get(self, id: str) -> Message | None:
        every = self.messages(limit=1_000_000)
        exact = [m for m in every if m.id == id]
        if exact:
            return exact[0]
        prefixed = {m.id: m for m in every if m.id.startswith(id)}
        return next(iter(prefixed.values())) if len(prefixed) == 1 else None

    def resend(self, id: str) -> Message:
        with self._channel() as ch:
            while True:
                method, props, body = ch.basic_get(self.dead)
                if method is None:
                    break
                mid = props.message_id or ""
                if mid == id or (len(id) >= 4 and mid.startswith(id)):
                    head = dict(props.headers or {})
                    queue = str(head.pop(H_QUEUE, ""))
                    head.pop(H_ERROR, None)
                    head[H_ATTEMPTS] = 0
                    props.headers = head
                    ch.basic_publish("", self._q(queue), body, props)
                    ch.basic_ack(method.delivery_tag)
                    return Message(
                        id=mid,
                        selector=props.type or "",
                        body=decode_body(body)[0],
                        queue=queue,
                        created=float(head.get(H_CREATED, 0.0)),
                        headers=_user_headers(head),
                    )
        raise BusError(f"no dead message '{id}' (RabbitMQ keeps no done messages to resend)")

    def counts(self) -> dict[str, dict[str, int]]:
        if self._consumer is not None and self._consumer.alive():
            self._consumer.flush()  # our own acks reach the broker first
        out: dict[str, dict[str, int]] = {}
        delays = {retry_delay(n, self.backoff) for n in range(1, self.max_attempts)}
        for name in self.queues():
            ready = self._depth(self._q(name)) + self._buffered(self._q(name))
            ready += sum(self._depth(self._retry_queue(name, d)) for d in delays)
            out[name] = {"ready": ready} if ready else {}
        for m in self._peek(self.dead, "dead"):
            by_status = out.setdefault(m.queue, {})
            by_status["dead"] = by_status.get("dead", 0) + 1
        held = self._depth(self.holding)
        if held:
            out[""] = {"ready": held}
        return out

    def _buffered(self, rq: str) -> int:
        """Messages delivered to this process for ``rq`` and not claimed yet
        (other processes' are invisible: at most ``prefetch`` each)."""
        io = self._consumer
        if io is None or not io.alive():
            return 0
        with io.cond:
            return len(io.buffers.get(rq, ()))

    def _depth(self, rq: str) -> int:
        """Ready messages in queue ``rq`` (0 when it does not exist)."""
        try:
            with self._channel(confirm=False) as ch:
                return int(ch.queue_declare(rq, passive=True).method.message_count)
        except BusError:
            return 0

    def purge(
        self,
        status: str = "done",
        older_than: float = 0.0,
        queue: str | None = None,
    ) -> int:
        check_purge_status(status)
        if status == "done":
            return 0  # RabbitMQ forgets a message once it is acked
        cutoff = time.time() - older_than
        if status == "dead":
            sources = [self.dead]
        elif queue == "" or queue is None:
            sources = [self.holding] + (
                [self._q(q) for q in self.queues()] if queue is None else []
            )
        else:
            sources = [self._q(queue)]
        removed = 0
        with self._channel(confirm=False) as ch:
            for rq in sources:
                while True:
                    method, props, _ = ch.basic_get(rq)
                    if method is None:
                        break
                    head = props.headers or {}
                    mine = status != "dead" or queue in (None, head.get(H_QUEUE))
                    if mine and float(head.get(H_CREATED, 0.0)) < cutoff:
                        ch.basic_ack(method.delivery_tag)
                        removed += 1
        return removed


class _Delivery:
    """A message the broker handed to this process and nobody acked yet."""

    __slots__ = ("tag", "redelivered", "props", "body", "queue", "pushed", "routing_key")

    def __init__(
        self,
        tag: int,
        redelivered: bool,
        props: Any,
        body: bytes,
        queue: str,
        pushed: bool,
        routing_key: str = "",
    ) -> None:
        self.tag, self.redelivered, self.props, self.body = tag, redelivered, props, body
        self.queue, self.pushed = queue, pushed  # pushed: by a consumer (holds a prefetch slot)
        self.routing_key = routing_key


class _Consumer:
    """The process's consuming connection, owned by one I/O thread (pika's
    connections are not thread-safe). Other threads hand it work with
    ``add_callback_threadsafe`` and wait for the result; deliveries land in
    per-queue buffers that ``claim`` and ``wait`` read."""

    def __init__(self, bus: AmqpBus) -> None:
        self.bus = bus
        self.cond = threading.Condition()
        self.buffers: dict[str, deque[_Delivery]] = {}
        self.pushed: dict[str, int] = {}  # pushed deliveries not settled, per queue
        self.stopping = False
        self.failure: BaseException | None = None
        self.started = threading.Event()
        self.thread = threading.Thread(target=self._run, name="wsrun-amqp", daemon=True)
        self.thread.start()
        self.started.wait(IO_TIMEOUT)
        if self.failure is not None:
            raise BusError(f"{mask(bus.url)}: cannot connect: {_describe(self.failure)}")

    def _run(self) -> None:
        try:
            self.connection = pika.BlockingConnection(self.bus._params)
            self.channel = self.connection.channel()
            self.channel.basic_qos(prefetch_count=self.bus.prefetch)
        except Exception as e:  # reported by the constructor
            self.failure = e
            self.started.set()
            return
        self.started.set()
        try:
            while not self.stopping:
                self.connection.process_data_events(time_limit=1)
        except Exception as e:  # the broker or the network went away
            self.failure = e
        finally:
            with self.cond:
                self.cond.notify_all()
            with contextlib.suppress(Exception):
                if self.connection.is_open:
                    self.connection.close()

    def alive(self) -> bool:
        return self.failure is None and not self.stopping and self.thread.is_alive()

    def do(self, action: Callable[[], Any], wait: bool = True) -> Any:
        """Run ``action`` in the I/O thread; its result (or exception)."""
        if not self.alive():
            raise BusError(f"{mask(self.bus.url)}: connection lost: {_describe(self.failure)}")
        done: Future[Any] = Future()

        def run() -> None:
            try:
                done.set_result(action())
            except BaseException as e:
                done.set_exception(e)

        try:
            self.connection.add_callback_threadsafe(run)
        except CONNECTION_ERRORS as e:
            self.failure = e
            raise BusError(f"{mask(self.bus.url)}: connection lost: {_describe(e)}") from None
        if not wait:
            return None
        try:
            return done.result(IO_TIMEOUT)
        except TimeoutError:
            raise BusError(
                f"{mask(self.bus.url)}: no answer from the broker in {IO_TIMEOUT:g} s"
            ) from None
        except pika.exceptions.ChannelClosedByBroker as e:
            self.failure = e  # the channel is gone: the next use opens a new connection
            raise BusError(f"{mask(self.bus.url)}: {_describe(e)}") from None

    def stop(self) -> None:
        self.stopping = True
        with contextlib.suppress(Exception):
            self.connection.add_callback_threadsafe(lambda: None)
        self.thread.join(5)

    def subscribe(self, rq: str) -> None:
        """Start consuming ``rq`` (once)."""
        if rq in self.buffers:
            return

        def start() -> None:
            if rq in self.buffers:
                return
            probe = self.connection.channel()  # a missing queue closes this one, not ours
            try:
                probe.queue_declare(rq, passive=True)
            except pika.exceptions.ChannelClosedByBroker:
                raise BusError(f"no queue '{rq}' on the bus (declare it first)") from None
            probe.close()
            with self.cond:
                self.buffers[rq], self.pushed[rq] = deque(), 0
            self.channel.basic_consume(rq, self._on_message(rq))

        self.do(start)

    def _on_message(self, rq: str) -> Callable[..., None]:
        def deliver(_ch: Any, method: Any, props: Any, body: bytes) -> None:
            with self.cond:
                self.pushed[rq] += 1
            self._buffer(
                _Delivery(
                    method.delivery_tag,
                    method.redelivered,
                    props,
                    body,
                    rq,
                    True,
                    method.routing_key,
                )
            )

        return deliver

    def take(self, rq: str) -> _Delivery | None:
        with self.cond:
            buffer = self.buffers[rq]
            return buffer.popleft() if buffer else None

    def fetch(self, rq: str) -> bool:
        """Add one message taken by ``basic.get`` (past the prefetch window) to
        ``rq``'s buffer, in the queue's order; False when the queue is empty."""

        def get() -> bool:
            method, props, body = self.channel.basic_get(rq)
            if method is None:
                return False
            self._buffer(
                _Delivery(
                    method.delivery_tag,
                    method.redelivered,
                    props,
                    body,
                    rq,
                    False,
                    method.routing_key,
                )
            )
            return True

        # a push on its way during the get lands in the buffer a moment later,
        # behind this one: the order of a queue is kept only roughly
        return bool(self.do(get))

    def _buffer(self, delivery: _Delivery) -> None:
        """Put a delivery in its queue's buffer in the queue's order: delivery
        tags count up in the order the broker sent the messages."""
        with self.cond:
            buffer = self.buffers[delivery.queue]
            at = len(buffer)
            while at and buffer[at - 1].tag > delivery.tag:
                at -= 1
            buffer.insert(at, delivery)
            self.cond.notify_all()

    def ack(self, delivery: _Delivery) -> None:
        """Ack without waiting: the I/O thread sends it next, and sends every
        ack queued before it stops (``stop``, at the latest when the process
        exits), so none is lost by a process that ends right after."""
        if delivery.pushed:
            with self.cond:
                self.pushed[delivery.queue] -= 1
        self.do(lambda: self.channel.basic_ack(delivery.tag), wait=False)

    def flush(self) -> None:
        """Wait until the broker has every ack sent so far (``basic.qos`` is a
        round trip on the same channel, answered after them)."""
        self.do(lambda: self.channel.basic_qos(prefetch_count=self.bus.prefetch))

    def wait(self, names: list[str], timeout: float) -> bool:
        deadline = time.monotonic() + timeout
        while True:
            with self.cond:
                if any(self.buffers[rq] for rq in names):
                    return True
                left = deadline - time.monotonic()
                if left <= 0 or not self.alive():
                    return False
                # a queue whose prefetch window is full (its messages being
                # handled here) gets nothing pushed: look with basic.get
                full = [rq for rq in names if self.pushed[rq] >= self.bus.prefetch]
                self.cond.wait(min(left, POLL) if full else left)
            for rq in full:
                if self.fetch(rq):
                    return True


def _properties(
    id: str,
    selector: str,
    headers: dict[str, Any] | None,
    own: dict[str, Any],
    reply_to: str | None,
    correlation_id: str | None,
) -> pika.BasicProperties:
    return pika.BasicProperties(
        message_id=id,
        type=selector,
        content_type="application/json",
        delivery_mode=2,  # persistent
        headers={
            H_HEADERS: json.dumps(headers or {}),
            **{k: (repr(v) if isinstance(v, float) else v) for k, v in own.items()},
        },
        reply_to=reply_to,
        correlation_id=correlation_id,
    )


def _user_headers(head: dict[str, Any]) -> dict[str, Any]:
    text = head.get(H_HEADERS) or "{}"
    return json.loads(text.decode() if isinstance(text, bytes) else text)  # type: ignore[no-any-return]


def _dump(value: Any) -> bytes:
    if not isinstance(value, dict):
        raise BusError(f"a message body must be a JSON object, not {type(value).__name__}")
    try:
        return json.dumps(value, separators=(",", ":")).encode()
    except (TypeError, ValueError) as e:
        raise BusError(f"a message body must be JSON: {e}") from None


def _describe(e: BaseException | None) -> str:
    """A pika exception in one line (they often print as an empty tuple)."""
    if e is None:
        return "unknown error"
    text = str(e).strip() or repr(e)
    if isinstance(e, pika.exceptions.ProbableAuthenticationError):
        return "login refused (user or password)"
    if isinstance(e, pika.exceptions.AMQPConnectionError) and text in ("", "()"):
        return type(e).__name__
    return f"{type(e).__name__}: {text}" if type(e).__name__ not in text else text
