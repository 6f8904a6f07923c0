"""The benchmark harness runs end to end in --quick mode: every case passes its check
(the valid key gets 200, no key is rejected) and the JSON has its documented shape.
Timings are never asserted: they belong to the harness's report, not to tests."""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Any

import pytest

from benchmarks.cli import main

CORE_CASES = ("starlette-bare", "starlette-ideal", "starlette-keystile-memory-hit",
              "starlette-keystile-sqlite-miss")
CASE_FIELDS = {"name", "framework", "kind", "rps", "us_per_req", "p50_us", "p99_us",
               "ratio_to_bare", "ratio_to_starlette", "check", "passed"}


def run_harness(capsys: pytest.CaptureFixture[str], *args: str) -> dict[str, Any]:
    assert main(["--quick", "--json", "--quiet", *args]) == 0
    doc: dict[str, Any] = json.loads(capsys.readouterr().out)
    return doc


def assert_every_case_passed(doc: dict[str, Any]) -> None:
    for case in doc["cases"]:
        assert case.keys() >= CASE_FIELDS, case["name"]
        assert case["passed"], case["name"]
        assert case["check"].startswith("200"), case["name"]
        assert case["rps"] > 0 and case["p99_us"] >= case["p50_us"] > 0


def test_quick_inprocess_run_checks_the_core_cases_and_prints_the_json_shape(
    capsys: pytest.CaptureFixture[str],
) -> None:
    doc = run_harness(capsys, "--cases", ",".join(CORE_CASES))

    assert {case["name"] for case in doc["cases"]} >= set(CORE_CASES)
    assert_every_case_passed(doc)
    by_name = {case["name"]: case for case in doc["cases"]}
    assert by_name["starlette-bare"]["ratio_to_bare"] == 1.0
    assert by_name["starlette-keystile-memory-hit"]["check"] == "200/401/401"
    assert {"cpu", "cores", "python", "platform", "versions"} <= doc["machine"].keys()
    assert doc["config"]["mode"] == "inprocess"


def test_micro_benchmarks_report_the_verify_to_sha256_ratio(
    capsys: pytest.CaptureFixture[str],
) -> None:
    doc = run_harness(capsys, "--no-cases")

    names = {item["name"] for item in doc["micro"]}
    assert {"sha256 of a key (hashlib)", "verify_request, cache hit"} <= names
    assert {"ratio", "target", "met", "verify_hit_ns", "sha256_ns"} <= doc["verify_vs_sha256"].keys()


def test_a_small_scale_run_verifies_bulk_written_keys(capsys: pytest.CaptureFixture[str]) -> None:
    doc = run_harness(capsys, "--no-cases", "--no-micro", "--keys", "50", "--keys", "3000",
                      "--key-samples", "50", "--cached-records", "200")

    assert [store["keys"] for store in doc["scale"]["stores"]] == [50, 3000]
    assert doc["scale"]["memory_per_cached_key"]["records"] == 200


def test_peer_cases_pass_their_checks(capsys: pytest.CaptureFixture[str]) -> None:
    for module in ("fastapi_key_auth", "keyshield", "aiocache", "argon2", "greenlet"):
        pytest.importorskip(module)

    doc = run_harness(capsys, "--no-micro", "--cases", "authmw,fastapi-key-auth,keyshield")

    assert {case["kind"] for case in doc["cases"]} >= {"bare", "peer"}
    assert not doc["skipped"]
    assert_every_case_passed(doc)


def test_django_cases_pass_their_checks(capsys: pytest.CaptureFixture[str]) -> None:
    for module in ("django", "rest_framework", "rest_framework_api_key"):
        pytest.importorskip(module)

    doc = run_harness(capsys, "--no-micro", "--cases", "django")

    assert {case["name"] for case in doc["cases"]} >= {"django-drf-bare", "django-drf-api-key",
                                                       "django-drf-keystile"}
    assert_every_case_passed(doc)


REDIS_HIT, REDIS_FULL, REDIS_MISS, REDIS_LEASED = (
    f"starlette-keystile-redis-{name}" for name in ("hit", "full", "miss", "leased"))


def test_redis_cases_count_their_round_trips_and_report_one_evalsha_as_the_reference(
    capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch, redis_url: str,
) -> None:
    import redis

    monkeypatch.setenv("KEYSTILE_BENCH_REDIS", redis_url)

    doc = run_harness(capsys, "--no-micro", "--cases", "redis", "--requests", "20", "--rounds", "2")

    assert not doc["skipped"]
    assert_every_case_passed(doc)
    by_name = {case["name"]: case for case in doc["cases"]}
    assert by_name.keys() >= {REDIS_HIT, REDIS_FULL, REDIS_MISS, REDIS_LEASED}
    # Counted sends to Redis over the timed requests, not timings: exact.
    assert by_name[REDIS_HIT]["round_trips_per_req"] == 0
    assert by_name[REDIS_FULL]["round_trips_per_req"] == 1
    # One read per request; on a slow machine a keyspace-map reload (every 30 s) may fall in.
    assert 1 <= by_name[REDIS_MISS]["round_trips_per_req"] < 1.1
    assert 0 <= by_name[REDIS_LEASED]["round_trips_per_req"] < 1
    assert by_name[REDIS_FULL]["round_trips"] == {**by_name[REDIS_FULL]["round_trips"],
                                                 "sent": 40, "requests": 40}
    # The floor of the exact path: the same settle call from a bare route, one trip each.
    assert by_name["starlette-bare-redis-settle"]["round_trips_per_req"] == 1
    assert by_name["starlette-bare"]["round_trips_per_req"] is None

    reference = doc["redis_reference"]
    assert reference["python_asyncio"]["us_per_call"] > 0
    assert reference["keystile_lean"]["us_per_call"] > 0
    if shutil.which("redis-benchmark"):
        assert reference["redis_benchmark"]["us_per_call"] > 0
    else:
        assert "not installed" in reference["redis_benchmark"]["skipped"]
    full = next(entry for entry in reference["cases"] if entry["name"] == REDIS_FULL)
    assert full["us_per_req"] == by_name[REDIS_FULL]["us_per_req"]
    # The settle script as the full case calls it, on states under the run's prefix.
    assert reference["settle"]["keystile_lean"]["us_per_call"] > 0
    added = reference["added_by_round_trips"]
    assert added["per_settle_keystile_lean"] == pytest.approx(
        added["us"] / reference["settle"]["keystile_lean"]["us_per_call"])
    if shutil.which("redis-benchmark"):
        assert reference["settle"]["redis_benchmark"]["us_per_call"] > 0
    floor = reference["exact_path_floor"]
    assert floor["ratio"] == pytest.approx(
        by_name[REDIS_FULL]["us_per_req"] / by_name["starlette-bare-redis-settle"]["us_per_req"])

    client = redis.Redis.from_url(redis_url)
    try:
        assert not list(client.scan_iter(match=doc["config"]["redis"]["prefix"] + "*"))
    finally:
        client.close()


def test_redis_cases_are_skipped_with_the_reason_when_no_redis_answers(
    capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch,
) -> None:
    pytest.importorskip("redis")
    from tests.conftest import free_port

    monkeypatch.setenv("KEYSTILE_BENCH_REDIS", f"redis://127.0.0.1:{free_port()}/0")

    doc = run_harness(capsys, "--no-micro", "--cases", "redis")

    assert {case["name"] for case in doc["cases"]} == {"starlette-bare"}
    reasons = {skipped["name"]: skipped["reason"] for skipped in doc["skipped"]}
    assert reasons.keys() >= {REDIS_HIT, REDIS_FULL, REDIS_MISS}
    assert all(reason.startswith("no Redis answers at") for reason in reasons.values())
    assert "redis_reference" not in doc


def test_plot_is_drawn(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    pytest.importorskip("matplotlib")
    path = tmp_path / "bench.png"

    run_harness(capsys, "--no-micro", "--cases", "starlette-bare", "--plot", str(path))

    assert path.read_bytes().startswith(b"\x89PNG")


REMOTE_HIT, REMOTE_FORWARDED = (f"starlette-keystile-remote-{name}" for name in ("hit", "forwarded"))


def test_remote_cases_count_their_forwards_and_report_the_servers_own_verify(
    capsys: pytest.CaptureFixture[str], tmp_path: Path,
) -> None:
    pytest.importorskip("uvicorn")
    saved = tmp_path / "bench.json"

    assert main(["--quick", "--quiet", "--no-micro", "--cases", "remote", "--requests", "20",
                 "--rounds", "2", "--loadgen", "builtin", "--concurrency", "4", "--save", str(saved)]) == 0
    printed = capsys.readouterr().out
    doc = json.loads(saved.read_text())

    assert not doc["skipped"]
    assert_every_case_passed(doc)
    by_name = {case["name"]: case for case in doc["cases"]}
    assert by_name.keys() == {"starlette-bare", REMOTE_HIT, REMOTE_FORWARDED}
    assert by_name[REMOTE_HIT]["check"] == by_name[REMOTE_FORWARDED]["check"] == "200/401/401"
    # Forwards to keystile serve, counted over the timed requests: exact.
    assert by_name[REMOTE_HIT]["round_trips_per_req"] == 0
    assert by_name[REMOTE_FORWARDED]["round_trips"] == {**by_name[REMOTE_FORWARDED]["round_trips"],
                                                       "sent": 40, "requests": 40}
    reference = doc["server_reference"]
    assert reference["loadgen"] == "builtin" and reference["url"].endswith("/v2/keys.verifyKey")
    assert {(m["key"], m["concurrency"]) for m in reference["measured"]} == {
        ("full key", 1), ("full key", 4), ("plain key", 1), ("plain key", 4)}
    assert all(m["rps"] > 0 and m["bad"] == 0 and m["us_per_req"] > 0 for m in reference["measured"])
    assert all(not m["body"]["key"].startswith("sk_") for m in reference["measured"])
    entries = {entry["name"]: entry for entry in reference["cases"]}
    assert entries.keys() == {REMOTE_HIT, REMOTE_FORWARDED}
    forwarded = entries[REMOTE_FORWARDED]
    assert (forwarded["forwards_per_req"], forwarded["key"]) == (1, "full key")
    assert forwarded["ratio_to_server"] > 0
    # Printed after the table: the server's own lines, then each remote case against them.
    table_at = printed.index(REMOTE_FORWARDED)
    reference_at = printed.index("keys.verifyKey driven by builtin")
    assert table_at < reference_at
    assert f"{REMOTE_FORWARDED}: " in printed[reference_at:] and "forwards/req" in printed[reference_at:]


def test_remote_cases_are_skipped_with_the_reason_without_uvicorn(
    capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch,
) -> None:
    from benchmarks import cases

    installed = cases.Case.missing_modules
    monkeypatch.setattr(cases.Case, "missing_modules", lambda case: [
        *installed(case), *(["uvicorn"] if "uvicorn" in case.requires else [])])

    doc = run_harness(capsys, "--no-micro", "--cases", "remote")

    assert {case["name"] for case in doc["cases"]} == {"starlette-bare"}
    reasons = {skipped["name"]: skipped["reason"] for skipped in doc["skipped"]}
    assert reasons.keys() == {REMOTE_HIT, REMOTE_FORWARDED}
    assert all(reason.startswith("not installed: uvicorn") for reason in reasons.values())
    assert "server_reference" not in doc
