"""Output: the table, the JSON document and the bar chart."""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

__all__ = ["format_micro", "format_peers", "format_redis_reference", "format_scale",
           "format_server_reference", "format_table", "plot"]

Row = dict[str, Any]


def _num(value: float | None, digits: int = 1) -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "-"
    return f"{value:,.{digits}f}"


def _ratio(value: float | None) -> str:
    return "-" if value is None else f"{value:.2f}x"


def _trips(value: float | None) -> str:
    """Round trips per request: blank where not counted (no Redis)."""
    return "" if value is None else f"{value:.3f}"


_COLUMNS = ("case", "framework", "rps", "rps IQR", "us/req", "trips/req", "p50 us", "p99 us",
            "vs bare", "vs starlette", "vs ideal", "check")


def format_table(rows: Sequence[Row]) -> str:
    lines = [_cells(row) for row in rows]
    widths = [max(len(c[i]) for c in [list(_COLUMNS), *lines]) for i in range(len(_COLUMNS))]
    out = [_join(list(_COLUMNS), widths), _join(["-" * w for w in widths], widths)]
    out += [_join(cells, widths) for cells in lines]
    return "\n".join(out)


def _cells(row: Row) -> list[str]:
    return [
        row["name"], row["framework"], _num(row["rps"], 0),
        f"{_num(row['rps_q1'], 0)}-{_num(row['rps_q3'], 0)}", _num(row["us_per_req"], 2),
        _trips(row.get("round_trips_per_req")), _num(row["p50_us"]), _num(row["p99_us"]),
        _ratio(row.get("ratio_to_bare")),
        _ratio(row.get("ratio_to_starlette")), _ratio(row.get("ratio_to_ideal")),
        row["check"] + ("" if row["passed"] else f" BAD x{row['bad_responses']}"),
    ]


def _join(cells: list[str], widths: list[int]) -> str:
    first = cells[0].ljust(widths[0])
    return "  ".join([first, *(c.rjust(w) for c, w in zip(cells[1:], widths[1:], strict=True))])


def format_peers(rows: Sequence[Row]) -> str:
    lines = []
    for row in rows:
        for peer, ratio in (row.get("vs_peers") or {}).items():
            lines.append(f"  {row['name']} vs {peer}: {ratio:.2f}x the requests per second")
    return "\n".join(["keystile against the peers on the same framework:", *lines]) if lines else ""


def format_micro(items: Sequence[Row]) -> str:
    width = max((len(item["name"]) for item in items), default=10)
    lines = [f"{'micro-benchmark'.ljust(width)}  {'ns/call':>10}  note", "-" * (width + 24)]
    for item in items:
        value = "-" if item["ns"] is None else f"{item['ns']:,.0f}"
        lines.append(f"{item['name'].ljust(width)}  {value:>10}  {item.get('note', '')}")
    return "\n".join(lines)


def format_redis_reference(reference: Row, mode: str) -> str:
    """The reference round trip, and each counted case's time per request against it."""
    bench, python = reference["redis_benchmark"], reference["python_asyncio"]
    lines = [f"Redis {reference['server']} at {reference['url']}, EVALSHA of {reference['script']!r}:"]
    if "us_per_call" in bench:
        lines.append(f"  one EVALSHA round trip, single connection: {bench['us_per_call']:.1f} µs"
                     f" (redis-benchmark -c 1 -n {bench['requests']}: {bench['rps']:,.0f} rps,"
                     f" p50 {bench['p50_us']:.0f} µs; server CPU"
                     f" {bench['server_cpu_us_per_call']:.1f} µs/call)")
    else:
        lines.append(f"  redis-benchmark reference skipped: {bench['skipped']}")
    lines.append(f"  one EVALSHA round trip, single connection: {python['us_per_call']:.1f} µs"
                 f" (Python: {python['client']}; server CPU"
                 f" {python['server_cpu_us_per_call']:.1f} µs/call)")
    lean = reference.get("keystile_lean", {})
    if "us_per_call" in lean:
        lines.append(f"  one EVALSHA round trip, single connection: {lean['us_per_call']:.1f} µs"
                     f" ({lean['client']}; server CPU {lean['server_cpu_us_per_call']:.1f} µs/call)")
    settle = reference.get("settle")
    if settle:
        lines.append(f"  {settle['what']}:")
        bench_settle, lean_settle = settle["redis_benchmark"], settle["keystile_lean"]
        if "us_per_call" in bench_settle:
            lines.append(f"    {bench_settle['us_per_call']:.1f} µs a call (redis-benchmark -c 1:"
                         f" {bench_settle['rps']:,.0f} rps; server CPU"
                         f" {bench_settle['server_cpu_us_per_call']:.1f} µs/call)")
        else:
            lines.append(f"    redis-benchmark skipped: {bench_settle['skipped']}")
        if "us_per_call" in lean_settle:
            lines.append(f"    {lean_settle['us_per_call']:.1f} µs a call (keystile's lean client;"
                         f" server CPU {lean_settle['server_cpu_us_per_call']:.1f} µs/call)")
    per = "µs/req (1e6 / rps" + (" at the load generator's concurrency)" if mode == "http" else ")")
    for entry in reference.get("cases", []):
        ratios = [f"{entry['ratio_to_python']:.2f}x the Python one"]
        if entry.get("ratio_to_lean") is not None:
            ratios.append(f"{entry['ratio_to_lean']:.2f}x the lean client's")
        if entry.get("ratio_to_redis_benchmark") is not None:
            ratios.insert(0, f"{entry['ratio_to_redis_benchmark']:.2f}x the redis-benchmark one")
        server = entry.get("server_cpu_us_per_req")
        server_cpu = "" if server is None else f", server CPU {server:.1f} µs/req"
        lines.append(f"  {entry['name']}: {entry['us_per_req']:.1f} {per},"
                     f" {entry['round_trips_per_req']:.3f} round trips/req{server_cpu}:"
                     f" {', '.join(ratios)}")
    added = reference.get("added_by_round_trips")
    if added:
        lines.append(f"  {added['case']} - {added['base']}: {added['us']:.1f} µs/req (the permission"
                     f" query, the credit and limit decision, {added['round_trips_per_req']:.3f}"
                     " round trips)")
        per_settle = [f"{added[f'per_settle_{tool}']:.2f}x the settle call by {name}"
                      for tool, name in (("redis_benchmark", "redis-benchmark"),
                                         ("keystile_lean", "the lean client alone"))
                      if added.get(f"per_settle_{tool}") is not None]
        if per_settle:
            lines.append(f"    that is {', '.join(per_settle)}")
    floor = reference.get("exact_path_floor")
    if floor:
        lines.append(f"  {floor['case']} against {floor['floor']} (the same settle call from a bare"
                     f" route, no auth): {floor['ratio']:.2f}x its time per request,"
                     f" {floor['added_us']:+.1f} µs: keystile's work around its one round trip")
    return "\n".join(lines)


def format_server_reference(reference: Row, mode: str) -> str:
    """keystile serve's own verify throughput, and each remote case against it."""
    lines = [f"{reference['server']}, POST {reference['url']} driven by {reference['loadgen']}:"]
    for m in reference["measured"]:
        bad = f", {m['bad']} BAD" if m["bad"] else ""
        lines.append(f"  {m['key']}, {m['concurrency']} connection{'s' if m['concurrency'] > 1 else ''}:"
                     f" {m['rps']:,.0f} rps, {_num(m['us_per_req'])} µs/req (1e6 / rps), p50"
                     f" {_num(m['p50_us'])} µs, p99 {_num(m['p99_us'])} µs{bad} ({m['what']})")
    per = "µs/req (1e6 / rps" + (" at the load generator's concurrency)" if mode == "http" else ")")
    for entry in reference.get("cases", []):
        against = "" if entry["ratio_to_server"] is None else (
            f": {entry['ratio_to_server']:.2f}x the server's own verify of the {entry['key']} at"
            f" {entry['concurrency']} connection{'s' if entry['concurrency'] > 1 else ''}")
        forwards = "-" if entry["forwards_per_req"] is None else f"{entry['forwards_per_req']:.3f}"
        lines.append(f"  {entry['name']}: {_num(entry['us_per_req'])} {per}, {forwards} forwards/req"
                     f"{against}")
    return "\n".join(lines)


def format_scale(scale: Row) -> str:
    lines = ["cache-miss verify on SQLite (Verifier.verify_request, cache_ttl=0):"]
    for entry in scale["stores"]:
        lines.append(
            f"  {entry['keys']:>10,} keys: p50 {entry['p50_us']:.1f} us, p99 {entry['p99_us']:.1f} us,"
            f" {entry['ratio_to_smallest']:.2f}x the smallest store (filled in {entry['fill_s']:.1f} s)")
    memory = scale.get("memory_per_cached_key")
    if memory:
        lines.append(f"  memory per cached key: {memory['bytes_per_key']:,.0f} bytes"
                     f" ({memory['records']:,} records, {memory['method']})")
    return "\n".join(lines)


_COLORS = {"bare": "#9e9e9e", "ideal": "#607d8b", "keystile": "#2e7d32", "peer": "#c62828"}


def plot(rows: Sequence[Row], path: str, title: str) -> None:
    """Horizontal bars of requests per second; error bars span the rounds' IQR."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    names = [row["name"] for row in rows][::-1]
    rps = [row["rps"] for row in rows][::-1]
    errors = [[row["rps"] - row["rps_q1"] for row in rows][::-1],
              [row["rps_q3"] - row["rps"] for row in rows][::-1]]
    colors = [_COLORS[row["kind"]] for row in rows][::-1]
    fig, ax = plt.subplots(figsize=(10, 0.42 * len(rows) + 1.6))
    ax.barh(names, rps, xerr=errors, color=colors, capsize=3)
    for y, row in enumerate(rows[::-1]):
        ax.text(max(row["rps"], row["rps_q3"]), y,
                f"  {row['rps']:,.0f} ({_ratio(row.get('ratio_to_bare'))} bare)", va="center",
                fontsize=8)
    ax.set_xlabel("requests per second (median of rounds; bars: IQR)")
    ax.set_title(title, fontsize=10)
    ax.set_xlim(0, max(max(rps), *(row["rps_q3"] for row in rows)) * 1.35)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
