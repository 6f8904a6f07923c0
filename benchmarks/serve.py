"""One case under uvicorn on 127.0.0.1, for ``--mode http`` (a process per case).

It builds its own fixture (so a ``memory://`` store lives where it is served),
prints one JSON line with what the harness needs to check and load it, then serves.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path

import uvicorn

from .cases import CASES
from .fixture import Fixture

__all__ = ["main"]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.serve")
    parser.add_argument("--case", required=True)
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--workdir", type=Path, required=True)
    parser.add_argument("--cpu", type=int, default=None, help="pin the server to this core")
    args = parser.parse_args(argv)
    if args.cpu is not None and hasattr(os, "sched_setaffinity"):
        os.sched_setaffinity(0, {args.cpu})
    case = next(c for c in CASES if c.name == args.case)
    args.workdir.mkdir(parents=True, exist_ok=True)
    target = case.build(Fixture(args.workdir))
    print(json.dumps({"headers": target.headers, "wrong_headers": target.wrong_headers,
                      "missing_status": target.missing_status, "wrong_status": target.wrong_status,
                      "path": target.path}), flush=True)
    uvicorn.run(target.app, host="127.0.0.1", port=args.port, log_level="warning",
                access_log=False)
    return 0


if __name__ == "__main__":
    sys.exit(main())
