"""Serve a local stand-in for Kombo's API with churning data, to try the relay and to test its consumers.

relay simulate serves GET /v1/ats/users, /v1/ats/candidates, /v1/ats/jobs and /v1/hris/employees as Kombo's
OpenAPI spec describes them (bearer API key, X-Integration-Id, cursor pagination, updated_after, include_deleted,
filters, Kombo's error envelope and rate-limit headers), over seeded data that a steady churn keeps creating,
updating, deleting, restoring and hard-deleting.

A control API under /_sim/ (JSON, no auth; GET /_sim/ lists it) changes records, injects faults, sets the rate
limit and integration states, and serves the log of every mutation (GET /_sim/mutations?since=N).

It runs until interrupted (Ctrl-C or SIGTERM), then exits 0. (This text is also `relay simulate --help`.)

example:
  relay simulate --users 100000 --churn 20
  curl -H 'Authorization: Bearer sim-api-key' -H 'X-Integration-Id: personio:acme' \\
       'http://127.0.0.1:8765/v1/ats/users?page_size=2'
"""

from __future__ import annotations

import argparse
import asyncio
import os
import signal
import sys
import time

from relay.simulator.model import DEFAULT_API_KEY, Simulator
from relay.simulator.server import SimulatorServer

DEFAULT_HOST = "127.0.0.1"
DEFAULT_PORT = 8765
DEFAULT_INTEGRATIONS = "personio:acme,greenhouse:globex"


def _non_negative_int(text: str) -> int:
    value = int(text)
    if value < 0:
        raise argparse.ArgumentTypeError(f"must not be negative: {text}")
    return value


def _non_negative_float(text: str) -> float:
    value = float(text)
    if value < 0:
        raise argparse.ArgumentTypeError(f"must not be negative: {text}")
    return value


def _positive_float(text: str) -> float:
    value = float(text)
    if value <= 0:
        raise argparse.ArgumentTypeError(f"must be positive: {text}")
    return value


def _positive_int(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be at least 1: {text}")
    return value


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--host", default=DEFAULT_HOST, help="address to listen on (default: %(default)s)")
    parser.add_argument(
        "--port",
        type=_non_negative_int,
        default=DEFAULT_PORT,
        help="port to listen on, 0 for any (default: %(default)s)",
    )
    parser.add_argument(
        "--api-key", default=DEFAULT_API_KEY, help="the bearer API key clients must send (default: %(default)s)"
    )
    parser.add_argument(
        "--integrations",
        default=DEFAULT_INTEGRATIONS,
        help="comma-separated integration ids, sent by clients as X-Integration-Id (default: %(default)s)",
    )
    for flag, resource, default in (
        ("--users", "ats/users", 1000),
        ("--candidates", "ats/candidates", 200),
        ("--jobs", "ats/jobs", 50),
        ("--employees", "hris/employees", 200),
    ):
        help_text = f"{resource} seeded per integration (default: %(default)s)"
        parser.add_argument(flag, type=_non_negative_int, default=default, help=help_text)
    parser.add_argument(
        "--churn",
        type=_non_negative_float,
        default=2.0,
        metavar="CHANGES_PER_SECOND",
        help="random mutations per second across all integrations and resources, 0 for none (default: %(default)s)",
    )
    parser.add_argument(
        "--seed",
        type=int,
        default=1,
        help="seed of the data, ids and churn: same seed, same data (default: %(default)s)",
    )
    parser.add_argument(
        "--rate-limit",
        type=_positive_int,
        default=10_000,
        metavar="REQUESTS",
        help="requests allowed per API key per window, then 429 (default: %(default)s)",
    )
    parser.add_argument(
        "--rate-window",
        type=_positive_float,
        default=60.0,
        metavar="SECONDS",
        help="length of a rate-limit window (default: %(default)s)",
    )
    parser.add_argument(
        "--no-retry-after", action="store_true", help="send 429s without a Retry-After header (default: with)"
    )
    parser.add_argument(
        "--webhook-url",
        metavar="URL",
        help="send signed Kombo data-changed webhooks after mutations to this URL, e.g. "
        "http://127.0.0.1:8080/webhooks/kombo (default: none)",
    )
    parser.add_argument(
        "--webhook-secret",
        metavar="SECRET",
        default=os.environ.get("SIM_WEBHOOK_SECRET"),
        help="the secret webhooks are signed with (X-Kombo-Signature); default: $SIM_WEBHOOK_SECRET",
    )
    parser.add_argument(
        "--webhook-batch-seconds",
        type=_non_negative_float,
        default=1.0,
        metavar="SECONDS",
        help="at most one data-changed per integration in this time, naming every model changed (default: %(default)s)",
    )


def main(args: argparse.Namespace) -> int:
    integrations = [i.strip() for i in args.integrations.split(",") if i.strip()]
    if not integrations:
        print("relay simulate: --integrations names no integration", file=sys.stderr)
        return 2
    if args.webhook_url and not args.webhook_secret:
        print("relay simulate: --webhook-url needs --webhook-secret (or SIM_WEBHOOK_SECRET)", file=sys.stderr)
        return 2
    started = time.monotonic()
    sim = Simulator(
        api_key=args.api_key,
        integrations=integrations,
        users=args.users,
        seed=args.seed,
        sizes={"ats/candidates": args.candidates, "ats/jobs": args.jobs, "hris/employees": args.employees},
        rate_limit=args.rate_limit,
        rate_window=args.rate_window,
        retry_after=not args.no_retry_after,
    )
    seeded_in = time.monotonic() - started
    try:
        server = SimulatorServer(
            sim,
            host=args.host,
            port=args.port,
            webhook_url=args.webhook_url or None,
            webhook_secret=args.webhook_secret if args.webhook_url else None,
            webhook_batch_seconds=args.webhook_batch_seconds,
        )
        asyncio.run(_serve(server, args.churn, seeded_in))
    except OSError as exc:
        print(f"relay simulate: cannot listen on {args.host}:{args.port}: {exc}", file=sys.stderr)
        return 1
    return 0


async def _serve(server: SimulatorServer, churn: float, seeded_in: float) -> None:
    sim = server.sim
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(signum, stop.set)
    async with server:
        if churn > 0:
            sim.start_churn(churn)
        webhooks = f" webhooks={server.webhooks.url}" if server.webhooks else ""
        print(
            f"relay simulate: serving {server.url} api-key={sim.api_key} integrations={','.join(sim.integrations)} "
            f"churn={churn:g}/s control={server.control_url}/{webhooks} (seeded in {seeded_in:.1f}s)",
            flush=True,
        )
        await stop.wait()
    print("relay simulate: stopped", flush=True)
