"""Analytics as people read them: a terminal table with a sparkline, or a PNG plot.

Pure formatting over :class:`~keystile.Bucket` and :class:`~keystile.Top` lists; the
plot needs matplotlib (the ``plot`` extra) and is imported only when asked for.
"""

from __future__ import annotations

import datetime as dt
from collections import Counter
from collections.abc import Sequence
from pathlib import Path
from typing import Any, Final

from ._analytics import BUCKETS, Bucket, Top
from ._errors import ConfigurationError
from ._models import Code

__all__ = ["format_report", "plot_buckets", "sparkline", "totals"]

_BARS: Final = "▁▂▃▄▅▆▇█"
#: Outcome codes in the order tables and plots show them: VALID first, then failures.
_FIRST: Final = ("VALID", "RATE_LIMITED", "USAGE_EXCEEDED", "INSUFFICIENT_PERMISSIONS", "FORBIDDEN",
                  "DISABLED", "EXPIRED", "NOT_FOUND")
CODE_ORDER: Final = (*_FIRST, *(code.value for code in Code if code.value not in _FIRST))
_COLORS: Final = {"VALID": "#2e7d32", "RATE_LIMITED": "#f9a825", "USAGE_EXCEEDED": "#ef6c00",
                  "INSUFFICIENT_PERMISSIONS": "#8e24aa", "FORBIDDEN": "#6d4c41",
                  "DISABLED": "#546e7a", "EXPIRED": "#90a4ae", "NOT_FOUND": "#c62828"}
MAX_ROWS: Final = 48


def sparkline(values: Sequence[int], width: int = 60) -> str:
    """One character per value (summed into ``width`` groups when there are more)."""
    if not values:
        return ""
    if len(values) > width:
        size = -(-len(values) // width)
        values = [sum(values[i:i + size]) for i in range(0, len(values), size)]
    top = max(values)
    if top == 0:
        return _BARS[0] * len(values)
    return "".join(" " if v == 0 else _BARS[min(len(_BARS) - 1, v * len(_BARS) // (top + 1))]
                   for v in values)


def totals(buckets: Sequence[Bucket]) -> Counter[str]:
    counts: Counter[str] = Counter()
    for bucket in buckets:
        counts.update(bucket.counts)
    return counts


def _when(ms: int, by: str) -> str:
    moment = dt.datetime.fromtimestamp(ms / 1000, tz=dt.UTC)
    return moment.strftime("%Y-%m-%d" if by == "day" else "%Y-%m-%d %H:%M")


def format_report(buckets: Sequence[Bucket], by: str, title: str,
                  top: Sequence[Top] = (), top_by: str = "key") -> str:
    """The table: a header with a sparkline of all verifications, one row per non-empty
    bucket by outcome code (the latest :data:`MAX_ROWS`), then the top keys or identities."""
    counts = totals(buckets)
    codes = [code for code in CODE_ORDER if counts.get(code)]
    total = sum(counts.values())
    lines = [title,
             f"verifications {sparkline([b.total for b in buckets])}  total {total:,}"
             + (f"  ({' · '.join(f'{code} {counts[code]:,}' for code in codes)})" if codes else "")]
    rows = [b for b in buckets if b.total]
    if not rows:
        lines.append("no verifications in this range")
    else:
        header = ["bucket (UTC)", "total", *codes, "spent"]
        table = [[_when(b.start, by), f"{b.total:,}", *(f"{b.counts.get(c, 0):,}" for c in codes),
                  f"{b.spent:,}"] for b in rows[-MAX_ROWS:]]
        lines += ["", *_columns(header, table)]
        if len(rows) > MAX_ROWS:
            lines.append(f"({len(rows) - MAX_ROWS} earlier {by}s with verifications not shown;"
                         " --json has all)")
    if top:
        header = [f"top {top_by}s", "total", "valid", "spent"] + (["credits left"] if top_by == "key" else [])
        table = []
        for entry in top:
            name = entry.id if entry.external_id is None else f"{entry.id} ({entry.external_id})"
            row = [name, f"{entry.total:,}", f"{entry.valid:,}", f"{entry.spent:,}"]
            if top_by == "key":
                row.append("unlimited" if entry.credits is None else f"{entry.credits:,}")
            table.append(row)
        lines += ["", *_columns(header, table)]
    return "\n".join(lines)


def _columns(header: list[str], rows: list[list[str]]) -> list[str]:
    widths = [max(len(cell) for cell in column) for column in zip(header, *rows, strict=True)]

    def line(cells: list[str]) -> str:
        return "  ".join(cell.ljust(w) if i == 0 else cell.rjust(w)
                         for i, (cell, w) in enumerate(zip(cells, widths, strict=True)))

    return [line(header), line(["-" * w for w in widths]), *(line(row) for row in rows)]


def plot_buckets(buckets: Sequence[Bucket], by: str, title: str, path: str | Path) -> None:
    """Verifications per bucket as bars stacked by outcome code, written to ``path`` (PNG)."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError as exc:
        raise ConfigurationError(
            "--plot needs matplotlib: pip install 'keystile[plot]'") from exc
    counts = totals(buckets)
    codes = [code for code in CODE_ORDER if counts.get(code)]
    starts: Any = [dt.datetime.fromtimestamp(b.start / 1000, tz=dt.UTC) for b in buckets]
    width: Any = dt.timedelta(milliseconds=BUCKETS[by] * 0.85)
    figure, axes = plt.subplots(figsize=(10, 4.2), dpi=110)
    bottom = [0] * len(buckets)
    for code in codes:
        heights = [b.counts.get(code, 0) for b in buckets]
        axes.bar(starts, heights, width=width, bottom=bottom, label=code, align="edge",
                 color=_COLORS.get(code))
        bottom = [low + h for low, h in zip(bottom, heights, strict=True)]
    axes.set_title(title)
    axes.set_ylabel(f"verifications per {by}")
    axes.set_xlabel("UTC")
    if codes:
        axes.legend(loc="upper left", fontsize="small", ncols=min(4, len(codes)))
    axes.grid(axis="y", alpha=0.3)
    figure.autofmt_xdate()
    figure.tight_layout()
    figure.savefig(path)
    plt.close(figure)


def report_dict(buckets: Sequence[Bucket], since: int, until: int, by: str,
                top: Sequence[Top] = (), top_by: str = "key") -> dict[str, Any]:
    out: dict[str, Any] = {"since": since, "until": until, "by": by,
                           "totals": dict(totals(buckets)),
                           "buckets": [b.to_dict() for b in buckets]}
    if top:
        out["top"] = {"by": top_by, "entries": [t.to_dict() for t in top]}
    return out
