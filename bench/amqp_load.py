#!/usr/bin/env python3
"""Load for the RabbitMQ bus cases of bench/run.py: wsrun's ``amqp://`` bus
against a bare pika producer and consumer doing the same durable work on the
same broker (a topic exchange, a durable queue, persistent messages, publisher
confirms, manual acks, the same prefetch).

    amqp_load.py throughput wsrun|pika URL MESSAGES   one producer, one consumer process
    amqp_load.py latency wsrun|pika URL MESSAGES      publish-to-handler delay, idle consumer
    amqp_load.py consume wsrun|pika URL MESSAGES      (the consumer; started by the above)

URL carries a ``prefix`` of its own; everything under it is deleted at the
end. Each command prints one JSON object. The consumer stops after MESSAGES
messages (not at a "stop" message: a claim past the prefetch window may
overtake a message on its way to the consumer, so order is not strict).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from typing import Any
from urllib.parse import parse_qsl, urlencode, urlsplit, urlunsplit

sys.path.insert(
    0, os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "engine")
)

import pika  # noqa: E402

from wsrun.stores.bus import open_bus  # noqa: E402
from wsrun.stores.bus.amqp import AmqpBus  # noqa: E402

QUEUE = "bench"


def pika_names(url: str) -> tuple[pika.URLParameters, str, str, int]:
    """Connection parameters, exchange, queue and prefetch of the bare pika side."""
    parts = urlsplit(url)
    query = dict(parse_qsl(parts.query))
    prefix = query.pop("prefix", "") + "pika."
    prefetch = int(query.pop("prefetch", 1))
    for ours in ("max_attempts", "backoff"):
        query.pop(ours, None)
    params = pika.URLParameters(urlunsplit(parts._replace(query=urlencode(query))))
    return params, prefix + "exchange", prefix + QUEUE, prefetch


def pika_channel(url: str) -> tuple[Any, str, str, int]:
    params, exchange, queue, prefetch = pika_names(url)
    channel = pika.BlockingConnection(params).channel()
    channel.exchange_declare(exchange, "topic", durable=True)
    channel.queue_declare(queue, durable=True)
    channel.queue_bind(queue, exchange, routing_key="bench.*")
    return channel, exchange, queue, prefetch


class Producer:
    """Publishes ``{"n": ..}`` or ``{"sent": ..}`` bodies the way one side does."""

    def __init__(self, kind: str, url: str) -> None:
        self.kind = kind
        if kind == "wsrun":
            self.bus = open_bus(url)
        else:
            self.channel, self.exchange, _, _ = pika_channel(url)
            self.channel.confirm_delivery()
            self.props = pika.BasicProperties(content_type="application/json", delivery_mode=2)

    def publish(self, selector: str, body: dict[str, Any]) -> None:
        if self.kind == "wsrun":
            self.bus.publish(selector, body)
        else:
            self.channel.basic_publish(self.exchange, selector, json.dumps(body), self.props)


def consume(kind: str, url: str, messages: int) -> None:
    handled, delays, last = 0, [], 0.0
    if kind == "wsrun":
        bus = open_bus(url)
        bus.declare_queue(QUEUE, ["bench.*"])
        print("ready", flush=True)
        while True:
            message = bus.claim(QUEUE, "bench")
            if message is None:
                bus.wait(QUEUE, 1.0)
                continue
            now = time.time()
            bus.ack(message)
            handled, last = handled + 1, time.time()
            if "sent" in message.body:
                delays.append(now - message.body["sent"])
            if handled == messages:
                break
    else:
        channel, _, queue, prefetch = pika_channel(url)
        channel.basic_qos(prefetch_count=prefetch)
        print("ready", flush=True)
        for method, _props, data in channel.consume(queue):
            now = time.time()
            body = json.loads(data)
            channel.basic_ack(method.delivery_tag)
            handled, last = handled + 1, time.time()
            if "sent" in body:
                delays.append(now - body["sent"])
            if handled == messages:
                break
    print(json.dumps({"handled": handled, "last": last, "delays": delays}), flush=True)


def start_consumer(kind: str, url: str, messages: int) -> subprocess.Popen[str]:
    proc = subprocess.Popen(
        [sys.executable, __file__, "consume", kind, url, str(messages)],
        stdout=subprocess.PIPE,
        text=True,
    )
    assert proc.stdout is not None and proc.stdout.readline().strip() == "ready"
    return proc


def finish(proc: subprocess.Popen[str]) -> dict[str, Any]:
    out, _ = proc.communicate(timeout=600)
    return json.loads(out)  # type: ignore[no-any-return]


def throughput(kind: str, url: str, messages: int) -> dict[str, Any]:
    proc = start_consumer(kind, url, messages)
    producer = Producer(kind, url)
    started = time.time()
    for n in range(messages):
        producer.publish("bench.work", {"n": n})
    published = time.time()
    result = finish(proc)
    if result["handled"] != messages:
        raise SystemExit(f"handled {result['handled']} of {messages} messages")
    seconds = result["last"] - started
    return {
        "seconds": seconds,
        "publish_seconds": published - started,
        "per_second": messages / seconds,
    }


def latency(kind: str, url: str, messages: int) -> dict[str, Any]:
    proc = start_consumer(kind, url, messages)
    producer = Producer(kind, url)
    time.sleep(0.2)  # let the consumer go idle: the delay measured includes waking it
    for _ in range(messages):
        producer.publish("bench.ping", {"sent": time.time()})
        time.sleep(0.03)
    delays = sorted(finish(proc)["delays"])
    pick = lambda q: delays[min(len(delays) - 1, int(q * len(delays)))]  # noqa: E731
    return {"p50": pick(0.5), "p99": pick(0.99), "max": delays[-1], "n": len(delays)}


def clean_up(url: str) -> None:
    AmqpBus(url).destroy()
    params, exchange, queue, _ = pika_names(url)
    connection = pika.BlockingConnection(params)
    channel = connection.channel()
    channel.queue_delete(queue)
    channel.exchange_delete(exchange)
    connection.close()


if __name__ == "__main__":
    command, kind, url, *rest = sys.argv[1:]
    if command == "consume":
        consume(kind, url, int(rest[0]))
    else:
        try:
            measure = throughput if command == "throughput" else latency
            print(json.dumps(measure(kind, url, int(rest[0]))))
        finally:
            clean_up(url)
