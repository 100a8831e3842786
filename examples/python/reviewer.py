#!/usr/bin/env python3
"""Review stepgate batches from Python, over NATS.

Follows the review events stepgate publishes to JetStream (stream
STEPGATE_EVENTS, subjects stepgate.v1.events.batch.>) with a durable pull
consumer, prints each one, and decides every batch that opens and is still
pending: it asks stepgate.v1.review.get for the batch, then sends
stepgate.v1.review.decide quoting the batch's binding digest. All payloads
are JSON (header Content-Type: application/json).

Exit codes: 0 done (with --once: one batch decided and applied; without:
stopped by --timeout or Ctrl-C), 1 a decision was refused or answered with
an error, or --once found nothing to decide in time, 2 bad usage or
stepgate/NATS unreachable.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import sys
import time
from datetime import datetime, timezone

import nats
from nats.errors import NoRespondersError
from nats.errors import TimeoutError as NatsTimeoutError
from nats.js.api import AckPolicy, ConsumerConfig, DeliverPolicy
from nats.js.errors import NotFoundError

PREFIX = "stepgate.v1"
STREAM = "STEPGATE_EVENTS"
BATCH_EVENTS = f"{PREFIX}.events.batch.>"
JSON_HEADERS = {"Content-Type": "application/json"}


class Usage(Exception):
    """Bad flags or environment: exit 2."""


class Unreachable(Exception):
    """NATS or stepgate did not answer: exit 2."""


class StepgateError(Exception):
    """stepgate answered with an `error` reply."""

    def __init__(self, code: str, message: str):
        super().__init__(f"{code}: {message}")
        self.code = code


def when(ms: int | None) -> str:
    if ms is None:
        return "-"
    return datetime.fromtimestamp(ms / 1000, tz=timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")


def read_svid(path: str | None) -> str:
    if path:
        try:
            text = sys.stdin.read() if path == "-" else open(path, encoding="utf-8").read()
        except OSError as e:
            raise Usage(f"cannot read --svid-file {path}: {e.strerror}") from e
    else:
        text = os.environ.get("STEPGATE_SVID", "")
    svid = text.strip()
    if not svid:
        raise Usage("no reviewer identity: pass --svid-file FILE or set STEPGATE_SVID")
    return svid


async def call(nc, op: str, payload: dict, timeout: float) -> dict:
    """One JSON request to stepgate.v1.<op>; returns the reply, raises on `error`."""
    subject = f"{PREFIX}.{op}"
    try:
        msg = await nc.request(
            subject, json.dumps(payload).encode(), timeout=timeout, headers=JSON_HEADERS
        )
    except NoRespondersError as e:
        raise Unreachable(f"no stepgate engine serves {subject}") from e
    except NatsTimeoutError as e:
        raise Unreachable(f"{subject}: no answer within {timeout:g} s") from e
    reply = json.loads(msg.data)
    if reply.get("reply") == "error":
        raise StepgateError(reply.get("code", "?"), reply.get("message", ""))
    return reply


def show_items(items: list[dict]) -> None:
    for n, item in enumerate(items, 1):
        print(f"  {n}. {item['step']}  [{item['risk']}]  agent {item['agent']}")
        print(f"     {item['action']} on {item['resource']}")
        print(f"     scopes: {' '.join(item['scopes'])}")
        print(f"     intent: {item['intent']}")
        if item.get("policy_ids"):
            print(f"     asked for by: {', '.join(item['policy_ids'])}")


def show(entry: dict) -> None:
    """Prints one batch event for people."""
    event = entry["event"]
    kind = event["type"]
    batch, run = event.get("batch"), event.get("run")
    if kind == "batch_opened":
        print(f"[{entry['seq']}] batch {batch} opened for run {run}")
        print(f"  group {event['group']}, expires {when(event['expires_at'])}")
        print(f"  binding {event['binding']}")
        show_items(event["items"])
    elif kind == "batch_decided":
        verdict = "approved" if event["approved"] else "denied"
        line = f"[{entry['seq']}] batch {batch} {verdict} by {event['reviewer']}"
        if event["approved"]:
            line += f", valid until {when(event['valid_until'])}"
        if event.get("comment"):
            line += f": {event['comment']}"
        print(line)
    elif kind == "batch_expired":
        print(f"[{entry['seq']}] batch {batch} expired undecided (run {run})")
    elif kind == "batch_withdrawn":
        print(f"[{entry['seq']}] batch {batch} withdrawn: {event.get('reason', '')}")
    else:
        print(f"[{entry['seq']}] {kind}: {json.dumps(event, sort_keys=True)}")
    sys.stdout.flush()


async def decide(nc, args, svid: str, event: dict) -> bool | None:
    """Decides the batch of a `batch_opened` event if it is still pending.

    Returns None when there was nothing to decide, True when the decision
    was applied, False when it was refused.
    """
    batch = event["batch"]
    reply = await call(nc, "review.get", {"batch": batch}, args.request_timeout)
    views = reply.get("batches") or []
    if len(views) != 1:
        raise StepgateError("unexpected", f"review.get answered {len(views)} batches")
    view = views[0]
    state = view["status"]["state"]
    if state != "pending":
        print(f"  batch {batch} is {state}; nothing to decide")
        return None
    if view["binding"] != event["binding"]:
        # The event and the engine disagree on what was shown: do not sign it.
        print(f"  batch {batch}: binding differs from the published event; not deciding")
        return False
    request = {
        "batch": batch,
        "svid": svid,
        "approve": args.approve,
        "binding": view["binding"],
        "comment": args.comment,
    }
    verdict = "approve" if args.approve else "deny"
    print(f"  deciding batch {batch}: {verdict}")
    reply = await call(nc, "review.decide", request, args.request_timeout)
    print(f"  reply: {json.dumps(reply, sort_keys=True)}")
    sys.stdout.flush()
    return reply.get("status") == "applied"


async def review(args) -> int:
    svid = read_svid(args.svid_file)

    async def quiet(_e):  # connection errors are reported by the calls that fail
        return None

    try:
        nc = await nats.connect(
            servers=[args.nats],
            name="stepgate-py-reviewer",
            connect_timeout=2,
            max_reconnect_attempts=5,
            reconnect_time_wait=1,
            error_cb=quiet,
        )
    except Exception as e:  # nats-py raises several kinds here
        raise Unreachable(f"cannot connect to NATS at {args.nats}: {e}") from e
    try:
        js = nc.jetstream()
        config = ConsumerConfig(
            durable_name=args.consumer,
            ack_policy=AckPolicy.EXPLICIT,
            deliver_policy=DeliverPolicy.ALL,
            filter_subject=BATCH_EVENTS,
        )
        try:
            sub = await js.pull_subscribe(
                BATCH_EVENTS, durable=args.consumer, stream=STREAM, config=config
            )
        except NotFoundError as e:
            raise Unreachable(f"JetStream stream {STREAM} not found; is `stepgate serve` running?") from e
        print(f"following {BATCH_EVENTS} on {STREAM} as consumer {args.consumer}")
        sys.stdout.flush()

        deadline = None if args.timeout is None else time.monotonic() + args.timeout
        failed = False
        while True:
            left = None if deadline is None else deadline - time.monotonic()
            if left is not None and left <= 0:
                if args.once:
                    print(f"no pending batch decided within {args.timeout:g} s", file=sys.stderr)
                    return 1
                return 1 if failed else 0
            wait = 1.0 if left is None else max(0.05, min(1.0, left))
            try:
                messages = await sub.fetch(1, timeout=wait)
            except NatsTimeoutError:
                continue
            for msg in messages:
                try:
                    entry = json.loads(msg.data)
                    event = entry["event"]
                except (ValueError, KeyError, TypeError):
                    print(f"skipping a message on {msg.subject} that is not an event entry", file=sys.stderr)
                    await msg.ack()
                    continue
                show(entry)
                if event.get("type") != "batch_opened":
                    await msg.ack()
                    continue
                try:
                    outcome = await decide(nc, args, svid, event)
                except StepgateError as e:
                    print(f"  stepgate refused: {e}", file=sys.stderr)
                    outcome = False
                except Unreachable:
                    await msg.nak()  # try this event again later
                    raise
                await msg.ack()
                if outcome is False:
                    failed = True
                if args.once and outcome is not None:
                    return 0 if outcome else 1
    finally:
        await nc.close()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description="Decide stepgate review batches as they open (JetStream pull consumer).",
    )
    parser.add_argument("--nats", default="nats://127.0.0.1:4222", help="NATS server URL")
    verdict = parser.add_mutually_exclusive_group(required=True)
    verdict.add_argument("--approve", dest="approve", action="store_true", help="approve every pending batch")
    verdict.add_argument("--deny", dest="approve", action="store_false", help="deny every pending batch")
    parser.add_argument("--svid-file", help="file holding the reviewer's JWT-SVID (`-` for stdin); default: $STEPGATE_SVID")
    parser.add_argument("--consumer", default="py-reviewer", help="durable consumer name (default: py-reviewer)")
    parser.add_argument("--once", action="store_true", help="exit after deciding one batch")
    parser.add_argument("--timeout", type=float, default=None, help="stop after this many seconds (default: run until interrupted)")
    parser.add_argument("--request-timeout", type=float, default=10.0, help="seconds to wait for each stepgate reply")
    parser.add_argument("--comment", default=None, help="words recorded with each decision")
    args = parser.parse_args(argv)
    try:
        return asyncio.run(review(args))
    except Usage as e:
        print(f"reviewer: {e}", file=sys.stderr)
        return 2
    except Unreachable as e:
        print(f"reviewer: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        return 0


if __name__ == "__main__":
    sys.exit(main())
