"""From timed batches to the rows of the table: medians, spreads, percentiles, ratios.

Ratios are paired: cases run in the same rounds, so a ratio is the median over the
rounds of (this case's requests per second / the reference's in the same round),
which cancels the drift between rounds that a ratio of two medians would keep.

Round trips per request (Redis cases) are counted, never assumed, over the timed
batches (in ``--mode http`` by each case's server); the other cases have none
(``round_trips_per_req`` is None).
"""

from __future__ import annotations

import math
import statistics
from collections.abc import Sequence
from typing import Any

from .cases import Case
from .inprocess import Batch
from .stats import percentiles, quartiles

__all__ = ["summarize"]

Row = dict[str, Any]


def summarize(cases: Sequence[Case], batches: dict[str, list[Batch]],
              checks: dict[str, str], round_trips: dict[str, Row] | None = None) -> list[Row]:
    """The rows; ``round_trips`` are counts made apart from the batches (``--mode http``)."""
    rows = [_row(case, batches[case.name], checks[case.name]) for case in cases]
    for row in rows:
        counted = (round_trips or {}).get(row["name"]) or _counted_in(batches[row["name"]])
        row["round_trips"] = counted
        row["round_trips_per_req"] = counted["per_request"] if counted else None
    by_name = {case.name: case for case in cases}
    for row in rows:
        _add_ratios(row, by_name[row["name"]], cases, batches)
    return rows


def _row(case: Case, batches: list[Batch], check: str) -> Row:
    rps = [batch.rps for batch in batches]
    q1, median, q3 = quartiles(rps)
    p50, p99 = _latency(batches)
    bad = sum(batch.bad for batch in batches)
    return {
        "name": case.name, "framework": case.framework, "kind": case.kind,
        "description": case.description, "rps": median, "rps_q1": q1, "rps_q3": q3,
        "rps_min": min(rps), "rps_max": max(rps), "rps_rounds": rps, "us_per_req": 1e6 / median,
        "p50_us": p50, "p99_us": p99, "rounds": len(batches),
        "requests": sum(batch.requests for batch in batches), "bad_responses": bad,
        "check": check, "passed": bad == 0,
    }


def _counted_in(batches: list[Batch]) -> Row | None:
    if not batches or any(batch.round_trips is None for batch in batches):
        return None
    sent = sum(batch.round_trips or 0 for batch in batches)
    requests = sum(batch.requests for batch in batches)
    counted: Row = {"sent": sent, "requests": requests, "per_request": sent / requests,
                    "counted": "during the timed batches"}
    if all(batch.server_cpu_us is not None for batch in batches):
        counted["server_cpu_us_per_req"] = sum(b.server_cpu_us or 0.0 for b in batches) / requests
    return counted


def _latency(batches: list[Batch]) -> tuple[float, float]:
    """p50 and p99 of all per-request times, or the median of the batches' own percentiles."""
    if all(batch.samples_ns for batch in batches):
        p50, p99 = percentiles([ns / 1000 for batch in batches for ns in batch.samples_ns], (50, 99))
        return p50, p99
    return (statistics.median(b.p50_us or math.nan for b in batches),
            statistics.median(b.p99_us or math.nan for b in batches))


def _paired(mine: list[Batch], reference: list[Batch]) -> tuple[float, float, float]:
    ratios = [a.rps / b.rps for a, b in zip(mine, reference, strict=True)]
    return quartiles(ratios)


def _find(cases: Sequence[Case], framework: str, kind: str) -> Case | None:
    return next((c for c in cases if c.framework == framework and c.kind == kind), None)


def _ratio(row: Row, field: str, mine: list[Batch], reference: Case | None,
           batches: dict[str, list[Batch]]) -> None:
    if reference is None:
        row[field] = None
        return
    q1, median, q3 = _paired(mine, batches[reference.name])
    row[field] = median
    row[f"{field}_iqr"] = [q1, q3]


def _add_ratios(row: Row, case: Case, cases: Sequence[Case], batches: dict[str, list[Batch]]) -> None:
    mine = batches[case.name]
    _ratio(row, "ratio_to_bare", mine, _find(cases, case.framework, "bare"), batches)
    _ratio(row, "ratio_to_starlette", mine, _find(cases, "starlette", "bare"), batches)
    if case.kind in ("keystile", "peer"):
        ideal = next((c for c in cases if c.name == case.ideal), None) if case.ideal else _find(
            cases, case.framework, "ideal")
        _ratio(row, "ratio_to_ideal", mine, ideal, batches)
    if case.kind == "keystile":
        peers = [c for c in cases if c.kind == "peer" and c.framework == case.framework]
        row["vs_peers"] = {p.name: _paired(mine, batches[p.name])[1] for p in peers}
