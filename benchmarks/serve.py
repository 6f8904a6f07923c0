"""One case under uvicorn on 127.0.0.1, for ``--mode http`` (a process per case).

It builds its own fixture (so a ``memory://`` store lives where it is served; Redis
keys go under ``--redis-prefix`` and are deleted when it stops), prints one JSON line
with what the harness needs to check and load it, then serves. A case that counts
round trips is served inside :class:`~benchmarks.redisbench.CountedApp`. The case is
built before the process pins itself to its core, so a ``keystile serve`` that a remote
case starts is not pinned with it.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import sys
from pathlib import Path
from typing import Any

import uvicorn

from .cases import CASES
from .fixture import Fixture
from .redisbench import CountedApp, counting_sends
from .remote import counting_forwards

__all__ = ["main"]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.serve")
    parser.add_argument("--case", required=True)
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--workdir", type=Path, required=True)
    parser.add_argument("--cpu", type=int, default=None, help="pin the server to this core")
    parser.add_argument("--redis-prefix", default=None, help="the Redis key prefix of its keys")
    args = parser.parse_args(argv)
    case = next(c for c in CASES if c.name == args.case)
    args.workdir.mkdir(parents=True, exist_ok=True)
    fixture = Fixture(args.workdir, redis_prefix=args.redis_prefix)
    try:
        target = case.build(fixture)
        if args.cpu is not None and hasattr(os, "sched_setaffinity"):
            os.sched_setaffinity(0, {args.cpu})
        print(json.dumps({"headers": target.headers, "wrong_headers": target.wrong_headers,
                          "missing_status": target.missing_status,
                          "wrong_status": target.wrong_status, "path": target.path,
                          "round_trips": target.round_trips}), flush=True)
        if target.round_trips:
            with counting_sends() if target.trips_to == "redis" else counting_forwards():
                _serve(CountedApp(target.app), args.port)
        else:
            _serve(target.app, args.port)
    finally:
        fixture.close()
    return 0


def _serve(app: Any, port: int) -> None:
    # uvicorn shuts down gracefully on SIGTERM, then raises it again with the handler it
    # found: this one, so that the process exits through ``finally`` (the fixture closes,
    # stopping a remote case's keystile serve) instead of dying of the signal.
    signal.signal(signal.SIGTERM, _exit)
    uvicorn.run(app, host="127.0.0.1", port=port, log_level="warning", access_log=False)


def _exit(signum: int, frame: Any) -> None:
    raise SystemExit(0)


if __name__ == "__main__":
    sys.exit(main())
