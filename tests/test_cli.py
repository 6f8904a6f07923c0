"""The keystile command line, run in-process with its real SQLite store."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from keystile.cli import duration_spec, main


class Cli:
    def __init__(self, store: str, capsys: pytest.CaptureFixture[str]) -> None:
        self.store = store
        self.capsys = capsys

    def __call__(self, *argv: str, status: int = 0) -> Any:
        code = main([*argv, "--store", self.store, "--json"])
        out = self.capsys.readouterr().out
        assert code == status, out
        return json.loads(out)


@pytest.fixture
def cli(sqlite_url: str, capsys: pytest.CaptureFixture[str]) -> Cli:
    return Cli(sqlite_url, capsys)


@pytest.fixture
def api(cli: Cli) -> dict[str, Any]:
    created: dict[str, Any] = cli("apis", "create", "payments", "--prefix", "sk_live")
    return created


def test_if_api_created_then_json_has_api_keyspace_and_prefix(api: dict[str, Any]) -> None:
    assert set(api) == {"apiId", "keyspaceId", "prefix"}
    assert api["apiId"].startswith("api_")
    assert api["keyspaceId"].startswith("ks_")
    assert api["prefix"] == "sk_live"


def test_if_key_created_with_options_then_get_shows_them(cli: Cli, api: dict[str, Any]) -> None:
    created = cli("keys", "create", "--api", api["apiId"], "--name", "n1", "--external-id", "acme",
                  "--credits", "100", "--refill", "monthly:100:1",
                  "--ratelimit", "requests:10:60000", "--permission", "docs.read",
                  "--expires", "2030-01-01T00:00Z", "--meta", '{"plan": "pro"}')
    assert created["key"].startswith("sk_live_")
    info = cli("keys", "get", created["keyId"])
    assert info["name"] == "n1"
    assert info["identity"]["externalId"] == "acme"
    assert info["credits"] == {"remaining": 100,
                               "refill": {"interval": "monthly", "amount": 100, "refillDay": 1}}
    assert info["ratelimits"][0]["autoApply"] is True
    assert info["permissions"] == ["docs.read"]
    assert info["expires"] == 1_893_456_000_000
    assert info["meta"] == {"plan": "pro"}
    assert created["key"] not in json.dumps(info)


def test_if_key_verified_then_exit_status_says_whether_it_is_valid(
    cli: Cli, api: dict[str, Any]
) -> None:
    key = cli("keys", "create", "--api", api["apiId"], "--credits", "1",
              "--permission", "read")["key"]
    valid = cli("keys", "verify", key, "--permissions", "read")
    spent = cli("keys", "verify", key, status=1)
    assert valid["valid"] is True
    assert valid["credits"] == 0
    assert spent["code"] == "USAGE_EXCEEDED"
    assert cli("keys", "verify", key, "--permissions", "write", "--cost", "0",
               status=1)["code"] == "INSUFFICIENT_PERMISSIONS"


def test_if_key_verified_from_stdin_then_it_is_not_on_the_command_line(
    cli: Cli, api: dict[str, Any], monkeypatch: pytest.MonkeyPatch
) -> None:
    key = cli("keys", "create", "--api", api["apiId"])["key"]
    monkeypatch.setattr(sys, "stdin", __import__("io").StringIO(key + "\n"))
    assert cli("keys", "verify", "-")["valid"] is True


def test_if_named_ratelimit_verified_then_it_applies_only_when_named(
    cli: Cli, api: dict[str, Any]
) -> None:
    key = cli("keys", "create", "--api", api["apiId"], "--ratelimit", "burst:1:60000:named")["key"]
    assert cli("keys", "verify", key)["valid"] is True
    assert cli("keys", "verify", key)["valid"] is True
    assert cli("keys", "verify", key, "--ratelimit", "burst")["valid"] is True
    assert cli("keys", "verify", key, "--ratelimit", "burst", status=1)["code"] == "RATE_LIMITED"


def test_if_keys_listed_updated_and_deleted_then_each_change_shows(
    cli: Cli, api: dict[str, Any]
) -> None:
    ids = [cli("keys", "create", "--api", api["apiId"])["keyId"] for _ in range(3)]
    first = cli("keys", "list", "--api", api["apiId"], "--limit", "2")
    rest = cli("keys", "list", "--api", api["apiId"], "--cursor", first["cursor"])
    assert first["hasMore"] is True
    assert [k["keyId"] for k in first["keys"] + rest["keys"]] == sorted(ids)
    assert cli("keys", "update", ids[0], "--disable")["enabled"] is False
    assert cli("keys", "update", ids[0], "--enable", "--name", "x")["name"] == "x"
    assert cli("keys", "credits", ids[0], "set", "5") == {"remaining": 5}
    assert cli("keys", "credits", ids[0], "decrement", "9") == {"remaining": 0}
    assert cli("keys", "delete", ids[1])["deleted"] == ids[1]
    assert len(cli("keys", "list", "--api", api["apiId"])["keys"]) == 2


def test_if_a_key_is_rerolled_with_a_grace_period_then_both_keys_share_its_credits_until_then(
    cli: Cli, api: dict[str, Any]
) -> None:
    old = cli("keys", "create", "--api", api["apiId"], "--credits", "3")
    before = cli("keys", "get", old["keyId"])

    new = cli("keys", "reroll", old["keyId"], "--grace", "24h")

    assert set(new) == {"keyId", "key", "oldKeyExpires"}
    assert new["key"].startswith("sk_live_") and new["keyId"] != old["keyId"]
    assert new["oldKeyExpires"] - before["createdAt"] >= 86_400_000
    assert [cli("keys", "verify", k)["credits"] for k in (old["key"], new["key"], old["key"])] == [2, 1, 0]
    assert cli("keys", "verify", new["key"], status=1)["code"] == "USAGE_EXCEEDED"
    again = cli("keys", "reroll", new["keyId"], "--grace", "0")
    assert cli("keys", "verify", new["key"], status=1)["code"] == "EXPIRED"
    assert cli("keys", "get", again["keyId"])["credits"] == {"remaining": 0}


@pytest.mark.parametrize(("grace", "ms"), [("0", 0), ("500ms", 500), ("90s", 90_000),
                                           ("30m", 1_800_000), ("1h30m", 5_400_000),
                                           ("7d", 604_800_000)])
def test_if_a_grace_period_has_units_then_it_is_read_as_milliseconds(grace: str, ms: int) -> None:
    assert duration_spec(grace) == ms


@pytest.mark.parametrize("grace", ["", "24", "3600", "24 h", "1.5h", "h", "-1h", "24hours", "1h30"])
def test_if_a_grace_period_has_no_unit_or_a_wrong_one_then_exit_2_and_no_new_key(
    cli: Cli, api: dict[str, Any], grace: str, capsys: pytest.CaptureFixture[str],
) -> None:
    old = cli("keys", "create", "--api", api["apiId"])

    with pytest.raises(SystemExit) as exited:
        main(["keys", "reroll", old["keyId"], f"--grace={grace}", "--store", cli.store])

    assert exited.value.code == 2 and "24h" in capsys.readouterr().err
    assert [k["keyId"] for k in cli("keys", "list", "--api", api["apiId"])["keys"]] == [old["keyId"]]


def test_if_a_grace_period_is_too_long_then_exit_2_and_a_json_error(
    cli: Cli, api: dict[str, Any]
) -> None:
    old = cli("keys", "create", "--api", api["apiId"])

    error = cli("keys", "reroll", old["keyId"], "--grace", "365000d", status=2)["error"]

    assert error["type"] == "ValidationError" and "expiration" in error["message"]


def test_if_apis_listed_got_and_deleted_then_json_describes_them(
    cli: Cli, api: dict[str, Any]
) -> None:
    listed = cli("apis", "list")
    assert [a["id"] for a in listed] == [api["apiId"]]
    assert cli("apis", "get", api["apiId"])["keyspace"]["prefix"] == "sk_live"
    cli("apis", "delete", api["apiId"])
    assert cli("apis", "list") == []


def test_if_roles_identities_and_permissions_created_then_keys_can_use_them(
    cli: Cli, api: dict[str, Any]
) -> None:
    cli("permissions", "create", "billing.read")
    cli("roles", "create", "billing", "--permission", "billing.read", "--permission", "billing.write")
    cli("identities", "create", "acme", "--ratelimit", "shared:1:60000")
    key = cli("keys", "create", "--api", api["apiId"], "--role", "billing",
              "--external-id", "acme")["key"]
    result = cli("keys", "verify", key, "--permissions", "billing.read AND billing.write")
    assert result["roles"] == ["billing"]
    assert cli("keys", "verify", key, status=1)["code"] == "RATE_LIMITED"


@pytest.mark.parametrize("argv", [
    ["apis", "create", "x", "--prefix", "bad-prefix!"],
    ["keys", "get", "key_nope"],
    ["keys", "verify", "sk_live_x", "--permissions", "read AND"],
])
def test_if_command_fails_then_exit_2_with_a_json_error(cli: Cli, argv: list[str]) -> None:
    error = cli(*argv, status=2)["error"]
    assert error["type"].endswith("Error")
    assert error["message"]


def test_if_error_without_json_then_message_goes_to_stderr(
    sqlite_url: str, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["keys", "get", "key_nope", "--store", sqlite_url]) == 2
    assert "keystile: error: no key 'key_nope'" in capsys.readouterr().err


def test_if_demo_checked_then_every_answer_is_as_expected(
    capsys: pytest.CaptureFixture[str],
) -> None:
    assert main(["demo", "--check"]) == 0
    out = capsys.readouterr().out
    assert "all answers as expected" in out
    assert "WRONG" not in out


def test_if_console_script_runs_then_help_lists_the_commands() -> None:
    script = Path(sys.executable).parent / "keystile"
    out = subprocess.run([str(script), "--help"], capture_output=True, text=True, check=True).stdout
    for command in ("apis", "keys", "demo"):
        assert command in out


def test_if_update_gets_a_refill_without_credits_then_it_is_refused(
    cli: Cli, api: dict[str, Any]
) -> None:
    key_id = cli("keys", "create", "--api", api["apiId"], "--credits", "5")["keyId"]
    error = cli("keys", "update", key_id, "--refill", "daily:5", status=2)["error"]
    assert "--refill needs --credits" in error["message"]


# -- root keys (for keystile serve) ---------------------------------------------------------------


def test_if_a_root_key_is_created_then_it_is_printed_once_and_listed_without_it(cli: Cli) -> None:
    created = cli("rootkeys", "create", "--permission", "api.*.verify_key",
                  "--permission", "api.*.create_key", "--name", "ci")

    listed = cli("rootkeys", "list")

    assert set(created) == {"key", "keyId"} and created["key"].startswith("ks-root_")
    assert [(k["keyId"], k["name"], k["permissions"]) for k in listed] == [
        (created["keyId"], "ci", ["api.*.create_key", "api.*.verify_key"])]
    assert created["key"] not in json.dumps(listed)


def test_if_a_root_key_is_deleted_then_it_is_no_longer_listed(cli: Cli) -> None:
    created = cli("rootkeys", "create", "--permission", "api.*.verify_key")

    assert cli("rootkeys", "delete", created["keyId"]) == {"deleted": created["keyId"]}
    assert cli("rootkeys", "list") == []


def test_if_a_root_key_permission_is_unknown_then_exit_2_naming_the_valid_ones(cli: Cli) -> None:
    out = cli("rootkeys", "create", "--permission", "api.*.verfy_key", status=2)

    assert out["error"]["type"] == "ValidationError"
    assert "api.*.verfy_key" in out["error"]["message"] and "verify_key" in out["error"]["message"]


def test_if_a_user_key_id_is_given_to_rootkeys_delete_then_exit_2_and_the_key_stays(
    cli: Cli, api: dict[str, Any],
) -> None:
    created = cli("keys", "create", "--api", api["apiId"])

    cli("rootkeys", "delete", created["keyId"], status=2)

    assert cli("keys", "get", created["keyId"])["keyId"] == created["keyId"]


def test_if_serve_is_asked_for_help_then_it_names_host_port_and_store(
    capsys: pytest.CaptureFixture[str],
) -> None:
    with pytest.raises(SystemExit) as exited:
        main(["serve", "--help"])

    out = capsys.readouterr().out
    assert exited.value.code == 0
    assert "--host" in out and "--port" in out and "--store" in out


# -- analytics -------------------------------------------------------------------------------


def verified(cli: Cli, api: dict[str, Any]) -> dict[str, Any]:
    """A key with 3 credits verified 5 times (3 VALID, 2 USAGE_EXCEEDED) and an unknown key once."""
    created: dict[str, Any] = cli("keys", "create", "--api", api["apiId"], "--credits", "3")
    for _ in range(5):
        main(["keys", "verify", created["key"], "--store", cli.store, "--json"])
    main(["keys", "verify", "sk_live_unknown0000000000000", "--store", cli.store, "--json"])
    cli.capsys.readouterr()
    return created


def test_if_analytics_is_asked_for_json_then_buckets_totals_and_top_keys_are_exact(
    cli: Cli, api: dict[str, Any],
) -> None:
    created = verified(cli, api)

    report = cli("analytics", "--since", "1h", "--by", "minute", "--top", "keys")
    only_api = cli("analytics", "--api", api["apiId"], "--code", "VALID", "--since", "2h")

    assert report["by"] == "minute" and report["until"] - report["since"] == 3_600_001
    assert report["totals"] == {"VALID": 3, "USAGE_EXCEEDED": 2, "NOT_FOUND": 1}
    assert sum(b["total"] for b in report["buckets"]) == 6 and len(report["buckets"]) in (60, 61)
    assert report["top"]["entries"] == [{"id": created["keyId"], "total": 5, "valid": 3, "spent": 3,
                                         "credits": 0, "counts": {"VALID": 3, "USAGE_EXCEEDED": 2}}]
    assert only_api["totals"] == {"VALID": 3}


def test_if_analytics_is_printed_then_a_table_with_a_sparkline_shows(
    cli: Cli, api: dict[str, Any], capsys: pytest.CaptureFixture[str], tmp_path: Path,
) -> None:
    verified(cli, api)
    plot = tmp_path / "usage.png"

    status = main(["analytics", "--store", cli.store, "--since", "30m", "--by", "minute",
                   "--top", "identities", "--plot", str(plot)])
    out = capsys.readouterr().out

    assert status == 0
    assert "total 6  (VALID 3 · USAGE_EXCEEDED 2 · NOT_FOUND 1)" in out
    assert any(ch in out for ch in "▁▂▃▄▅▆▇█")
    assert "bucket (UTC)" in out and "spent" in out and "sk_live_" not in out
    assert plot.read_bytes().startswith(b"\x89PNG") and f"plot written to {plot}" in out


@pytest.mark.parametrize(("argv", "message"), [
    (["--since", "yesterday"], "expected a duration ago"),
    (["--by", "week"], "invalid choice: 'week'"),
    (["--code", "NOPE"], "unknown outcome code: NOPE"),
    (["--since", "1m", "--until", "2m"], "must come after its start"),
])
def test_if_analytics_gets_a_bad_option_then_it_says_so_without_a_traceback(
    cli: Cli, capsys: pytest.CaptureFixture[str], argv: list[str], message: str,
) -> None:
    try:
        status = main(["analytics", "--store", cli.store, *argv])
    except SystemExit as exc:  # argparse's own errors
        status = int(exc.code or 0)
    captured = capsys.readouterr()

    assert status == 2
    assert message in captured.err + captured.out and "Traceback" not in captured.err


def test_if_matplotlib_is_missing_then_plot_says_which_extra_to_install(
    cli: Cli, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch, tmp_path: Path,
) -> None:
    monkeypatch.setitem(sys.modules, "matplotlib", None)  # as if not installed: import fails

    status = main(["analytics", "--store", cli.store, "--plot", str(tmp_path / "u.png")])
    captured = capsys.readouterr()

    assert status == 2 and "pip install 'keystile[plot]'" in captured.err + captured.out
    assert not (tmp_path / "u.png").exists()


def test_if_a_management_command_is_pointed_at_the_remote_backend_then_it_says_where_keys_live(
    capsys: pytest.CaptureFixture[str],
) -> None:
    status = main(["analytics", "--store", "unkey+http://127.0.0.1:1?prefixes=sk_live"])
    captured = capsys.readouterr()

    assert status == 2
    assert "is the remote backend" in captured.err and "Traceback" not in captured.err
