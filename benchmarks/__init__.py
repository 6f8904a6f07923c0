"""keystile's benchmark harness: keystile against a bare app, an ideal middleware and peers.

Run it as ``keystile bench`` or ``python -m benchmarks`` (``pip install -e '.[bench]'``).
Every case is checked before it is timed (the valid key gets 200, a request without a
key is rejected), then all cases run interleaved in rounds so that machine noise hits
them alike. ``--mode inprocess`` calls each ASGI/WSGI app directly from one loop;
``--mode http`` serves each under uvicorn and loads it from a second process.
"""

from __future__ import annotations

__all__ = ["main"]


def main(argv: list[str] | None = None) -> int:
    """Run the harness; see ``python -m benchmarks --help``."""
    from .cli import main as run

    return run(argv)
