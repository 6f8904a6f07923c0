"""Draw docs/analytics.png: a day of synthetic traffic through the middleware, reported
by ``keystile analytics``. Run: ``python docs/analytics_example.py`` (needs matplotlib).

The clock is simulated (a day passes in seconds), the verifications are real: three
customers' keys on a SQLite store, one with credits that run out, one rate limited,
and some unknown keys, with a daily pattern and a fixed seed.
"""

from __future__ import annotations

import math
import random
import subprocess
import sys
import tempfile
from pathlib import Path

from keystile import Analytics, Credits, Keystile, RatelimitConfig

HOUR = 3_600_000
START = 1_795_564_800_000  # 2026-11-25 00:00 UTC


def main() -> None:
    store = f"sqlite:///{Path(tempfile.mkdtemp()) / 'keys.db'}"
    now = [START]
    rng = random.Random(7)
    with Keystile(store, now=lambda: now[0], analytics=Analytics(last_used_interval=3600)) as ks:
        api = ks.create_api("payments", prefix="sk_live")
        for name in ("acme", "globex", "initech"):
            ks.create_identity(name)
        keys = [
            ks.create_key(api.id, external_id="acme").key,
            ks.create_key(api.id, external_id="globex", credits=Credits(700)).key,
            ks.create_key(api.id, external_id="initech",
                          ratelimits=[RatelimitConfig("burst", 40, 60_000, auto_apply=True)]).key,
        ]
        for hour in range(24):
            load = int(120 + 100 * math.sin((hour - 9) / 24 * 2 * math.pi))
            for _ in range(load):
                now[0] = START + hour * HOUR + rng.randrange(HOUR)
                roll = rng.random()
                key = "sk_live_unknown1234567890abcd" if roll < 0.04 else keys[int(roll * 3) % 3]
                ks.verify(key, tags=("route=/charge",))
            # bursts from initech at its busy hours: the rate limit answers
            if hour in (10, 11, 14, 15):
                now[0] = START + hour * HOUR + 1_800_000
                for _ in range(90):
                    ks.verify(keys[2])
        now[0] = START + 24 * HOUR
        ks.verifications(since=START, by="hour")  # write what is queued
    out = Path(__file__).with_name("analytics.png")
    subprocess.run([sys.executable, "-m", "keystile", "analytics", "--store", store, "--since",
                    str(START), "--until", str(START + 24 * HOUR), "--by", "hour", "--top", "keys",
                    "--plot", str(out)], check=True)


if __name__ == "__main__":
    main()
