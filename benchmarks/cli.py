"""The harness's command line: ``keystile bench`` and ``python -m benchmarks``."""

from __future__ import annotations

import argparse
import asyncio
import json
import shutil
import sys
import tempfile
from collections.abc import Sequence
from contextlib import ExitStack
from pathlib import Path
from typing import Any

from . import redisbench, report
from .cases import CASES, Case, Target, needs_redis, needs_remote, select
from .checks import CheckFailed, check
from .fixture import Fixture
from .inprocess import Batch, Runner, make_runner, run_rounds
from .machine import machine_info
from .results import summarize

__all__ = ["main"]

TIMING = {
    "inprocess": "rps and us_per_req from each batch's wall time (median over rounds, IQR as"
                 " spread); p50/p99 from per-request perf_counter_ns around the app call",
    "http": "rps from the load generator's wall time per batch (median over rounds, IQR as"
            " spread); p50/p99 client-side per request (builtin) or wrk's latency percentiles",
}


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="keystile bench", description=(
        "keystile against a bare app, an ideal middleware and peer libraries, side by side."))
    p.add_argument("--mode", choices=["inprocess", "http"], default="inprocess")
    p.add_argument("--cases", default=None,
                   help="comma-separated substrings of case names (baselines are always added)")
    p.add_argument("--list", action="store_true", help="list the cases and exit")
    p.add_argument("--requests", type=int, default=None, help="requests per case per round")
    p.add_argument("--rounds", type=int, default=None, help="rounds (every case once per round)")
    p.add_argument("--warmup", type=int, default=None, help="warm-up requests per case")
    p.add_argument("--quick", action="store_true", help="a few hundred requests per case")
    p.add_argument("--concurrency", type=int, default=16, help="connections in --mode http")
    p.add_argument("--loadgen", choices=["auto", "wrk", "builtin"], default="auto",
                   help="--mode http load generator, and the one that drives keystile serve for"
                        " the remote cases' reference (auto: wrk if installed)")
    p.add_argument("--duration", type=float, default=None,
                   help="seconds per case per round with wrk, which is bounded by time (default 1)")
    p.add_argument("--keys", type=int, action="append", default=[], metavar="N",
                   help="also fill SQLite stores with N keys and time cache-miss verifies (repeat)")
    p.add_argument("--key-samples", type=int, default=2000, help="keys verified per store size")
    p.add_argument("--cached-records", type=int, default=10_000,
                   help="records in the cache when measuring memory per cached key")
    p.add_argument("--no-cases", action="store_true", help="skip the request cases")
    p.add_argument("--no-micro", action="store_true", help="skip the micro-benchmarks")
    p.add_argument("--json", action="store_true", help="print one JSON document instead of tables")
    p.add_argument("--save", metavar="FILE.json", help="also write the JSON document to a file")
    p.add_argument("--plot", metavar="FILE.png", help="draw the cases as a bar chart")
    p.add_argument("--seed", type=int, default=1, help="seed of the round order")
    p.add_argument("--quiet", action="store_true", help="no progress on stderr")
    return p


def _sizes(args: argparse.Namespace) -> tuple[int, int, int]:
    """(requests, rounds, warm-up) from the flags, the mode's defaults and --quick."""
    if args.quick:
        requests, rounds = 100, 3
    elif args.mode == "http":
        requests, rounds = 2000, 8
    else:  # many short rounds: the machine's slow and fast spells hit every case alike
        requests, rounds = 1000, 20
    requests = args.requests or requests
    rounds = args.rounds or rounds
    warmup = args.warmup if args.warmup is not None else max(50, requests // 4)
    return requests, rounds, warmup


def _duration(args: argparse.Namespace) -> float:
    return float(args.duration or 1.0)


def _progress(quiet: bool) -> Any:
    def say(message: str) -> None:
        if not quiet:
            print(f"[bench] {message}", file=sys.stderr, flush=True)

    return say


async def _check_inprocess(runners: Sequence[tuple[Case, Target, Runner]]) -> dict[str, str]:
    results = {}
    for case, target, runner in runners:

        async def send(headers: Sequence[tuple[str, str]], runner: Runner = runner) -> int:
            return (await runner.request(headers)).status

        results[case.name] = await check(case.name, target, send)
    return results


def _run_inprocess(cases: Sequence[Case], fixture: Fixture, args: argparse.Namespace,
                   say: Any) -> tuple[dict[str, list[Batch]], dict[str, str]]:
    requests, rounds, warmup = _sizes(args)
    server_cpu = redisbench.ServerCpu(redisbench.redis_url()) if any(
        needs_redis(case) for case in cases) else None
    built = []
    for case in cases:
        say(f"building {case.name}")
        target = case.build(fixture)
        built.append((case, target, make_runner(case, target, server_cpu if needs_redis(case) else None)))
    counting = {target.trips_to for _, target, _ in built if target.round_trips}

    async def go() -> tuple[dict[str, list[Batch]], dict[str, str]]:
        checks = await _check_inprocess(built)
        say(f"all {len(built)} cases passed their checks; {rounds} rounds x {requests} requests")
        runners = [runner for _, _, runner in built]
        batches = await run_rounds(runners, rounds=rounds, requests=requests, warmup=warmup,
                                   seed=args.seed, progress=say)
        return batches, checks

    try:
        with ExitStack() as stack:
            if "redis" in counting:
                stack.enter_context(redisbench.counting_sends())
            if "remote" in counting:
                from .remote import counting_forwards

                stack.enter_context(counting_forwards())
            return asyncio.run(go())
    finally:
        if server_cpu is not None:
            server_cpu.close()


def _run_http(cases: Sequence[Case], fixture: Fixture, workdir: Path, args: argparse.Namespace,
              say: Any) -> tuple[dict[str, list[Batch]], dict[str, str], dict[str, Any], str]:
    from .httpmode import run_http

    requests, rounds, warmup = _sizes(args)
    tool = _loadgen(args)
    batches, checks, round_trips = run_http(
        cases, rounds=rounds, requests=requests, warmup=warmup, concurrency=args.concurrency,
        tool=tool, duration=_duration(args), seed=args.seed, workdir=workdir, progress=say,
        redis_prefix=fixture.redis_child_prefix)
    return batches, checks, round_trips, tool


def _loadgen(args: argparse.Namespace) -> str:
    tool: str = args.loadgen
    if tool == "auto":
        tool = "wrk" if shutil.which("wrk") else "builtin"
    return tool


def _server_reference(doc: dict[str, Any], fixture: Fixture, cases: Sequence[Case],
                      args: argparse.Namespace, say: Any) -> None:
    """keystile serve's own keys.verifyKey, beside the remote cases (their server in
    --mode inprocess; in --mode http one of the harness's own, as each case's is in its
    server process)."""
    from . import remote

    tool = _loadgen(args)
    say(f"reference: keystile serve's own keys.verifyKey ({tool})")
    requests, _, _ = _sizes(args)
    doc["server_reference"] = remote.reference(
        fixture.remote(), tool=tool, concurrency=args.concurrency, requests=requests,
        duration=_duration(args))
    names = {case.name for case in cases if needs_remote(case)}
    remote.compare(doc["server_reference"], [row for row in doc["cases"] if row["name"] in names],
                   concurrency=args.concurrency if args.mode == "http" else 1)


def _cases(doc: dict[str, Any], fixture: Fixture, workdir: Path, args: argparse.Namespace,
           say: Any) -> None:
    patterns = [p.strip() for p in args.cases.split(",") if p.strip()] if args.cases else None
    cases, skipped = select(patterns, http=args.mode == "http")
    doc["skipped"] = [{"name": case.name, "reason": reason} for case, reason in skipped]
    round_trips: dict[str, Any] = {}
    if args.mode == "http":
        batches, checks, round_trips, tool = _run_http(cases, fixture, workdir, args, say)
        doc["config"].update(loadgen=tool, concurrency=args.concurrency)
        if tool == "wrk":
            doc["config"]["seconds_per_round"] = _duration(args)
    else:
        batches, checks = _run_inprocess(cases, fixture, args, say)
    doc["cases"] = summarize(cases, batches, checks, round_trips)
    if any(needs_redis(case) for case in cases):
        say("reference: one EVALSHA round trip (redis-benchmark, redis.asyncio)")
        doc["config"]["redis"] = {"url": redisbench.public_url(redisbench.redis_url()),
                                  "prefix": fixture.redis_prefix}
        doc["redis_reference"] = redisbench.reference(redisbench.redis_url(), quick=args.quick,
                                                      prefix=fixture.redis_prefix)
        names = {case.name for case in cases if needs_redis(case)}
        redisbench.compare(doc["redis_reference"], [row for row in doc["cases"] if row["name"] in names])
    if any(needs_remote(case) for case in cases):
        _server_reference(doc, fixture, cases, args, say)


def _config(args: argparse.Namespace) -> dict[str, Any]:
    requests, rounds, warmup = _sizes(args)
    return {"mode": args.mode, "requests_per_round": requests, "rounds": rounds,
            "warmup": warmup, "quick": args.quick, "seed": args.seed, "timing": TIMING[args.mode],
            "ratios": "paired: median over rounds of (case rps / reference rps in the same round)"}


def _run(args: argparse.Namespace, workdir: Path) -> dict[str, Any]:
    say = _progress(args.quiet)
    doc: dict[str, Any] = {"machine": machine_info(), "config": _config(args), "cases": [],
                           "skipped": [], "micro": []}
    fixture = Fixture(workdir)
    try:
        if not args.no_cases:
            _cases(doc, fixture, workdir, args, say)
        if not args.no_micro:
            from .micro import run_micro

            say("micro-benchmarks")
            doc["micro"], doc["verify_vs_sha256"] = run_micro(fixture, quick=args.quick)
        if args.keys:
            from .scale import run_scale

            doc["scale"] = run_scale(args.keys, workdir, samples=args.key_samples,
                                     records=args.cached_records, progress=say)
    finally:
        fixture.close()
    return doc


def _headline(doc: dict[str, Any]) -> str:
    config, machine = doc["config"], doc["machine"]
    where = f"{machine['cpu']}, {machine['cores']} cores, Python {machine['python']}"
    if not doc["cases"]:
        return f"keystile bench: {where}"
    per_round = (f"{config['seconds_per_round']:g} s" if "seconds_per_round" in config
                 else f"{config['requests_per_round']} requests")
    loadgen = f", loadgen {config['loadgen']} x{config['concurrency']}" if "loadgen" in config else ""
    return (f"keystile bench --mode {config['mode']}: {config['rounds']} rounds x {per_round}"
            f" per case{loadgen}; {where}")


def _print_tables(doc: dict[str, Any]) -> None:
    print(_headline(doc))
    if doc["cases"]:
        print(report.format_table(doc["cases"]))
        peers = report.format_peers(doc["cases"])
        if peers:
            print(peers)
    for skipped in doc["skipped"]:
        print(f"skipped {skipped['name']}: {skipped['reason']}")
    if "redis_reference" in doc:
        print(report.format_redis_reference(doc["redis_reference"], doc["config"]["mode"]))
    if "server_reference" in doc:
        print(report.format_server_reference(doc["server_reference"], doc["config"]["mode"]))
    if doc["micro"]:
        ratio = doc["verify_vs_sha256"]
        print(f"\n{report.format_micro(doc['micro'])}\nverify on a cache hit / sha256:"
              f" {ratio['ratio']:.1f}x (target <= {ratio['target']:.0f}x:"
              f" {'met' if ratio['met'] else 'NOT met'})")
    if "scale" in doc:
        print(f"\n{report.format_scale(doc['scale'])}")


def main(argv: Sequence[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    if args.list:
        for case in CASES:
            print(f"{case.name:32} {case.framework:10} {case.kind:9} {case.description}")
        return 0
    with tempfile.TemporaryDirectory(prefix="keystile-bench-") as tmp:
        try:
            doc = _run(args, Path(tmp))
        except CheckFailed as exc:
            print(f"keystile bench: check failed: {exc}", file=sys.stderr)
            return 1
    if args.save:
        Path(args.save).write_text(json.dumps(doc, indent=2) + "\n", encoding="utf-8")
    if args.json:
        print(json.dumps(doc, indent=2))
    else:
        _print_tables(doc)
    if args.plot and doc["cases"]:
        title = (f"keystile bench --mode {doc['config']['mode']} -"
                 f" {doc['machine']['cpu']}, Python {doc['machine']['python']}")
        report.plot(doc["cases"], args.plot, title)
        print(f"plot written to {args.plot}", file=sys.stderr)
    return 0
