"""The management API (Keystile and AsyncKeystile) on every store."""

from __future__ import annotations

import base64
import datetime as dt
import hashlib
import json
import re
from pathlib import Path
from typing import TYPE_CHECKING, Any

import base58
import pytest

from keystile import (
    UNSET,
    AsyncKeystile,
    Code,
    ConflictError,
    Credits,
    Keystile,
    NotFoundError,
    ProtectedError,
    RatelimitConfig,
    Refill,
    ValidationError,
    open_store,
)
from keystile.stores import Store

if TYPE_CHECKING:
    from conftest import Clock

DAY = 86_400_000
B58 = re.compile(r"[1-9A-HJ-NP-Za-km-z]+")


def sha256_b64(text: str) -> str:
    return base64.b64encode(hashlib.sha256(text.encode()).digest()).decode()


@pytest.fixture
def api_id(ks: Keystile) -> str:
    return ks.create_api("payments", prefix="sk_live").id


# -- APIs ------------------------------------------------------------------------------


def test_if_an_api_is_created_then_it_and_its_keyspace_can_be_read_back(ks: Keystile, clock: Clock) -> None:
    api = ks.create_api("payments", prefix="sk_live", default_bytes=24,
                        ip_whitelist=["10.0.0.0/8", "192.168.1.7"], delete_protection=True)

    keyspace = ks.get_keyspace(api.keyspace_id)

    assert api.id.startswith("api_") and api.keyspace_id.startswith("ks_")
    assert ks.get_api(api.id) == api
    assert api.name == "payments" and api.created_at == clock.ms
    assert (keyspace.api_id, keyspace.prefix, keyspace.default_bytes) == (api.id, "sk_live", 24)
    assert keyspace.ip_whitelist == ("10.0.0.0/8", "192.168.1.7/32")
    assert keyspace.delete_protection is True
    assert ks.list_apis() == [api]


@pytest.mark.parametrize("prefix", ["a", "sk", "sk_live", "ABCdef12", "12345678", "a_b_c_d"])
def test_if_a_prefix_is_letters_digits_or_underscore_up_to_8_then_it_is_accepted(
    ks: Keystile, prefix: str,
) -> None:
    api = ks.create_api("x", prefix=prefix)

    assert ks.get_keyspace(api.keyspace_id).prefix == prefix
    assert ks.create_key(api.id).key.startswith(prefix + "_")


@pytest.mark.parametrize("prefix", ["", "sk_live_1", "sk-live", "sk live", "sk.live", "ключ", "sk\n"])
def test_if_a_prefix_is_not_1_to_8_letters_digits_or_underscore_then_validation_error(
    ks: Keystile, prefix: str,
) -> None:
    with pytest.raises(ValidationError, match="prefix must be 1 to 8 letters, digits or '_'"):
        ks.create_api("x", prefix=prefix)

    assert ks.list_apis() == []


def test_if_a_prefix_is_used_by_another_api_then_conflict_error(ks: Keystile) -> None:
    first = ks.create_api("one", prefix="sk_live")

    with pytest.raises(ConflictError, match="sk_live"):
        ks.create_api("two", prefix="sk_live")

    assert ks.list_apis() == [first]


@pytest.mark.parametrize("nbytes", [15, 33, 0, -1, True, 16.0])
def test_if_default_bytes_are_outside_16_to_32_then_validation_error(ks: Keystile, nbytes: Any) -> None:
    with pytest.raises(ValidationError, match="key bytes must be an integer from 16 to 32"):
        ks.create_api("x", prefix="sk", default_bytes=nbytes)


@pytest.mark.parametrize("nbytes", [16, 32])
def test_if_default_bytes_are_at_the_bounds_then_keys_have_that_many_random_bytes(
    ks: Keystile, nbytes: int,
) -> None:
    api = ks.create_api("x", prefix="sk", default_bytes=nbytes)

    key = ks.create_key(api.id).key

    assert len(base58.b58decode(key.split("_", 1)[1])) == nbytes


@pytest.mark.parametrize("cidr", ["10.0.0.0/33", "not-an-ip", "300.1.1.1", "10.0.0.0/8x"])
def test_if_an_ip_whitelist_entry_is_not_an_ip_or_cidr_then_validation_error(ks: Keystile, cidr: str) -> None:
    with pytest.raises(ValidationError, match="is not an IP or CIDR"):
        ks.create_api("x", prefix="sk", ip_whitelist=[cidr])


def test_if_an_api_is_updated_then_only_the_given_fields_change(ks: Keystile, api_id: str) -> None:
    keyspace_id = ks.get_api(api_id).keyspace_id

    ks.update_api(api_id, name="renamed")
    ks.update_api(api_id, ip_whitelist=["::1"])

    keyspace = ks.get_keyspace(keyspace_id)
    assert ks.get_api(api_id).name == "renamed"
    assert keyspace.ip_whitelist == ("::1/128",)
    assert keyspace.prefix == "sk_live" and keyspace.delete_protection is False


def test_if_an_unknown_api_is_read_updated_or_deleted_then_not_found(ks: Keystile) -> None:
    for call in (lambda: ks.get_api("api_nope"), lambda: ks.update_api("api_nope", name="x"),
                 lambda: ks.delete_api("api_nope"), lambda: ks.create_key("api_nope"),
                 lambda: ks.list_keys("api_nope")):
        with pytest.raises(NotFoundError, match="api_nope"):
            call()


def test_if_an_api_has_delete_protection_then_delete_raises_protected_until_it_is_turned_off(
    ks: Keystile,
) -> None:
    api = ks.create_api("guarded", prefix="sk", delete_protection=True)
    key = ks.create_key(api.id).key

    with pytest.raises(ProtectedError, match="delete protection"):
        ks.delete_api(api.id)
    assert ks.verify(key).code is Code.VALID

    ks.update_api(api.id, delete_protection=False)
    ks.delete_api(api.id)
    assert ks.verify(key).code is Code.NOT_FOUND


def test_if_an_api_is_deleted_then_its_keys_verify_not_found_and_it_is_gone(
    ks: Keystile, api_id: str,
) -> None:
    created = ks.create_key(api_id)
    assert ks.verify(created.key).valid

    ks.delete_api(api_id)

    assert ks.verify(created.key).code is Code.NOT_FOUND
    assert ks.list_apis() == []
    with pytest.raises(NotFoundError):
        ks.get_api(api_id)


def test_if_an_api_is_deleted_then_its_prefix_can_be_reused_and_old_keys_stay_not_found(
    ks: Keystile, api_id: str,
) -> None:
    old = ks.create_key(api_id, credits=5)
    ks.delete_api(api_id)

    new_api = ks.create_api("payments v2", prefix="sk_live")
    new = ks.create_key(new_api.id)

    assert ks.verify(old.key).code is Code.NOT_FOUND
    assert ks.verify(new.key).code is Code.VALID
    assert [api.id for api in ks.list_apis()] == [new_api.id]


# -- keys: creation and storage ---------------------------------------------------------------


def test_if_a_key_is_created_then_the_plaintext_is_returned_once_and_never_stored(
    ks: Keystile, api_id: str, store_url: str,
) -> None:
    created = ks.create_key(api_id, name="ci", meta={"team": "infra"})
    random_part = created.key.split("sk_live_", 1)[1]

    doc = ks.store.get("key", created.key_id)
    assert doc is not None
    raw = json.dumps(doc)

    assert created.key_id.startswith("key_") and B58.fullmatch(random_part)
    assert doc["hash"] == sha256_b64(created.key) and len(doc["hash"]) == 44
    assert random_part not in raw and created.key not in raw
    assert doc["start"] == "sk_live_" + random_part[:4]
    assert random_part not in repr(created) and random_part not in repr(ks.get_key(created.key_id))
    assert random_part not in json.dumps(ks.get_key(created.key_id).to_dict())
    if store_url.startswith("sqlite"):
        ks.close()
        db = Path(store_url[len("sqlite:///"):])
        files = [p for p in db.parent.iterdir() if p.name.startswith(db.name)]
        assert files and all(random_part.encode() not in p.read_bytes() for p in files)


def test_if_two_keys_are_created_then_they_differ(ks: Keystile, api_id: str) -> None:
    keys = {ks.create_key(api_id).key for _ in range(20)}

    assert len(keys) == 20


def test_if_a_key_is_created_with_every_field_then_get_key_returns_them(
    ks: Keystile, api_id: str, clock: Clock,
) -> None:
    ks.create_role("reader", permissions=["docs.read"])
    created = ks.create_key(
        api_id, name="ci", meta={"plan": "pro"}, expires=clock.ms + DAY,
        credits=Credits(10, Refill("daily", 10)), external_id="acme",
        ratelimits=[{"name": "requests", "limit": 5, "duration": 60_000, "autoApply": True}],
        permissions=["docs.write", "docs.delete"], roles=["reader"], enabled=True,
    )

    info = ks.get_key(created.key_id)

    assert (info.id, info.api_id, info.name, info.meta) == (created.key_id, api_id, "ci", {"plan": "pro"})
    assert info.expires == clock.ms + DAY and info.created_at == clock.ms and info.enabled
    assert info.credits == Credits(10, Refill("daily", 10))
    assert info.identity is not None and info.identity.external_id == "acme"
    assert [(r.name, r.limit, r.duration, r.auto_apply) for r in info.ratelimits] == [
        ("requests", 5, 60_000, True)]
    assert info.ratelimits[0].id.startswith("rl_")
    assert info.permissions == ("docs.delete", "docs.write") and info.roles == ("reader",)


def test_if_a_key_is_created_with_byte_length_outside_16_to_32_then_validation_error(
    ks: Keystile, api_id: str,
) -> None:
    for nbytes in (15, 33):
        with pytest.raises(ValidationError, match="from 16 to 32"):
            ks.create_key(api_id, byte_length=nbytes)

    assert ks.list_keys(api_id).keys == []


def test_if_a_key_names_a_role_that_does_not_exist_then_not_found_and_no_key(
    ks: Keystile, api_id: str,
) -> None:
    ks.create_role("reader")

    with pytest.raises(NotFoundError, match="ghost"):
        ks.create_key(api_id, roles=["reader", "ghost"])

    assert ks.list_keys(api_id).keys == []


def test_if_a_key_has_new_permissions_then_they_are_created(ks: Keystile, api_id: str) -> None:
    ks.create_permission("docs.read", description="read documents")

    ks.create_key(api_id, permissions=["docs.read", "docs.write"])
    ks.create_key(api_id, permissions=["docs.write", "admin:*"])

    perms = {p.slug: p for p in ks.list_permissions()}
    assert sorted(perms) == ["admin:*", "docs.read", "docs.write"]
    assert perms["docs.read"].description == "read documents"
    assert perms["docs.write"].id.startswith("perm_")


# -- keys: reading, listing -----------------------------------------------------------


def test_if_keys_are_listed_then_pages_follow_the_cursor_to_the_end(ks: Keystile, api_id: str) -> None:
    ids = sorted(ks.create_key(api_id, name=f"k{i}").key_id for i in range(7))
    other = ks.create_api("other", prefix="other")
    ks.create_key(other.id)

    pages, cursor = [], None
    while True:
        page = ks.list_keys(api_id, limit=3, cursor=cursor)
        pages.append([info.id for info in page.keys])
        if not page.has_more:
            break
        cursor = page.cursor

    assert pages == [ids[0:3], ids[3:6], ids[6:7]]
    assert ks.list_keys(api_id).cursor is None
    assert [info.id for info in ks.list_keys(api_id).keys] == ids


def test_if_keys_are_listed_by_external_id_then_only_that_identitys_keys_of_this_api_come(
    ks: Keystile, api_id: str,
) -> None:
    mine = sorted(ks.create_key(api_id, external_id="acme").key_id for _ in range(3))
    ks.create_key(api_id, external_id="globex")
    ks.create_key(api_id)
    other = ks.create_api("other", prefix="other")
    ks.create_key(other.id, external_id="acme")

    listed = ks.list_keys(api_id, external_id="acme")

    assert [info.id for info in listed.keys] == mine
    assert ks.list_keys(api_id, external_id="nobody").keys == []


def test_if_deleted_keys_are_among_a_page_then_they_are_left_out(ks: Keystile, api_id: str) -> None:
    ids = sorted(ks.create_key(api_id).key_id for _ in range(4))
    ks.delete_key(ids[1])

    assert [info.id for info in ks.list_keys(api_id).keys] == [ids[0], ids[2], ids[3]]


@pytest.mark.parametrize("limit", [0, 101, -5])
def test_if_a_list_limit_is_outside_1_to_100_then_validation_error(
    ks: Keystile, api_id: str, limit: int,
) -> None:
    with pytest.raises(ValidationError, match="limit must be from 1 to 100"):
        ks.list_keys(api_id, limit=limit)


def test_if_get_key_is_given_an_unknown_id_then_not_found(ks: Keystile) -> None:
    with pytest.raises(NotFoundError, match="key_nope"):
        ks.get_key("key_nope")


# -- keys: updating ------------------------------------------------------------------------


def test_if_an_update_omits_a_field_then_it_stays_and_if_it_is_none_then_it_is_cleared(
    ks: Keystile, api_id: str, clock: Clock,
) -> None:
    key_id = ks.create_key(api_id, name="ci", meta={"a": 1}, expires=clock.ms + DAY,
                           external_id="acme", credits=5,
                           ratelimits=[RatelimitConfig("requests", 5, 60_000)]).key_id

    unchanged = ks.update_key(key_id)
    renamed = ks.update_key(key_id, name="deploy", meta=UNSET)
    cleared = ks.update_key(key_id, name=None, meta=None, expires=None, external_id=None,
                            ratelimits=None, credits=None)

    assert (unchanged.name, unchanged.meta, unchanged.expires) == ("ci", {"a": 1}, clock.ms + DAY)
    assert unchanged.credits == Credits(5) and unchanged.identity is not None
    assert (renamed.name, renamed.meta) == ("deploy", {"a": 1})
    assert (cleared.name, cleared.meta, cleared.expires, cleared.identity) == (None, None, None, None)
    assert cleared.ratelimits == () and cleared.credits is None
    assert ks.get_key(key_id) == cleared
    assert cleared.updated_at == clock.ms


def test_if_a_key_is_disabled_then_it_verifies_disabled_and_enabling_makes_it_valid(
    ks: Keystile, api_id: str,
) -> None:
    created = ks.create_key(api_id)
    assert ks.verify(created.key).code is Code.VALID

    assert ks.update_key(created.key_id, enabled=False).enabled is False
    assert ks.verify(created.key).code is Code.DISABLED

    ks.update_key(created.key_id, enabled=True)
    assert ks.verify(created.key).code is Code.VALID


def test_if_a_key_is_created_disabled_then_it_verifies_disabled(ks: Keystile, api_id: str) -> None:
    created = ks.create_key(api_id, enabled=False)

    assert ks.get_key(created.key_id).enabled is False
    assert ks.verify(created.key).code is Code.DISABLED


def test_if_a_key_expires_then_it_verifies_expired_after_and_valid_up_to_the_moment(
    ks: Keystile, api_id: str, clock: Clock,
) -> None:
    created = ks.create_key(api_id, expires=clock.ms + 1000)

    clock.advance(1000)
    at_the_moment = ks.verify(created.key)
    clock.advance(1)
    after = ks.verify(created.key)

    assert at_the_moment.code is Code.VALID
    assert after.code is Code.EXPIRED and after.expires == clock.ms - 1


def test_if_expires_is_an_aware_datetime_then_it_is_stored_as_unix_ms(ks: Keystile, api_id: str) -> None:
    moment = dt.datetime(2030, 1, 2, 3, 4, 5, tzinfo=dt.UTC)

    key_id = ks.create_key(api_id, expires=moment).key_id

    assert ks.get_key(key_id).expires == int(moment.timestamp() * 1000)


def test_if_an_expired_key_gets_a_later_expiry_then_it_is_valid_again(
    ks: Keystile, api_id: str, clock: Clock,
) -> None:
    created = ks.create_key(api_id, expires=clock.ms - 1)
    assert ks.verify(created.key).code is Code.EXPIRED

    ks.update_key(created.key_id, expires=clock.ms + 1000)

    assert ks.verify(created.key).code is Code.VALID


def test_if_roles_and_permissions_are_updated_then_they_are_replaced_as_sets(
    ks: Keystile, api_id: str,
) -> None:
    ks.create_role("reader", permissions=["docs.read"])
    ks.create_role("writer", permissions=["docs.write"])
    created = ks.create_key(api_id, permissions=["a", "b"], roles=["reader"])

    info = ks.update_key(created.key_id, permissions=["c", "c", "b"], roles=["writer"])

    assert info.permissions == ("b", "c") and info.roles == ("writer",)
    assert ks.verify(created.key, permissions="docs.write AND c").code is Code.VALID
    assert ks.verify(created.key, permissions="docs.read").code is Code.INSUFFICIENT_PERMISSIONS
    assert ks.verify(created.key, permissions="a").code is Code.INSUFFICIENT_PERMISSIONS


def test_if_an_update_names_an_unknown_role_then_not_found_and_the_key_is_unchanged(
    ks: Keystile, api_id: str,
) -> None:
    ks.create_role("reader")
    key_id = ks.create_key(api_id, roles=["reader"]).key_id

    with pytest.raises(NotFoundError, match="ghost"):
        ks.update_key(key_id, roles=["ghost"], name="changed")

    assert ks.get_key(key_id).roles == ("reader",) and ks.get_key(key_id).name is None


def test_if_a_key_is_soft_deleted_then_it_is_not_found_everywhere_but_its_document_stays(
    ks: Keystile, api_id: str, clock: Clock,
) -> None:
    created = ks.create_key(api_id, credits=5)

    ks.delete_key(created.key_id)

    assert ks.verify(created.key).code is Code.NOT_FOUND
    for call in (lambda: ks.get_key(created.key_id), lambda: ks.whoami(created.key),
                 lambda: ks.update_key(created.key_id, name="x"), lambda: ks.delete_key(created.key_id),
                 lambda: ks.update_credits(created.key_id, "set", 1)):
        with pytest.raises(NotFoundError):
            call()
    doc = ks.store.get("key", created.key_id)
    assert doc is not None and doc["deleted_at"] == clock.ms


def test_if_a_key_is_deleted_permanently_then_its_document_hash_and_credits_are_gone(
    ks: Keystile, api_id: str,
) -> None:
    created = ks.create_key(api_id, credits=5)
    assert ks.store.read_states([f"credits:{created.key_id}"])[f"credits:{created.key_id}"] is not None

    ks.delete_key(created.key_id, permanent=True)

    assert ks.store.get("key", created.key_id) is None
    assert ks.store.find("key", "hash", sha256_b64(created.key)) is None
    assert ks.store.read_states([f"credits:{created.key_id}"]) == {f"credits:{created.key_id}": None}
    assert ks.verify(created.key).code is Code.NOT_FOUND


# -- credits -----------------------------------------------------------------------------------


def test_if_credits_are_set_incremented_and_decremented_then_each_answer_is_the_new_balance(
    ks: Keystile, api_id: str,
) -> None:
    key_id = ks.create_key(api_id, credits=10).key_id

    assert ks.update_credits(key_id, "increment", 5) == Credits(15)
    assert ks.update_credits(key_id, "decrement", 3) == Credits(12)
    assert ks.update_credits(key_id, "set", 2) == Credits(2)
    assert ks.update_credits(key_id, "decrement", 7) == Credits(0)
    assert ks.get_key(key_id).credits == Credits(0)


def test_if_credits_are_decremented_below_zero_then_they_stop_at_zero_and_verify_is_exceeded(
    ks: Keystile, api_id: str,
) -> None:
    created = ks.create_key(api_id, credits=3)

    ks.update_credits(created.key_id, "decrement", 100)

    assert ks.verify(created.key).code is Code.USAGE_EXCEEDED
    assert ks.verify(created.key, cost=0).code is Code.VALID


def test_if_credits_are_set_to_none_then_the_key_is_unlimited(ks: Keystile, api_id: str) -> None:
    created = ks.create_key(api_id, credits=1)
    ks.verify(created.key)
    assert ks.verify(created.key).code is Code.USAGE_EXCEEDED

    assert ks.update_credits(created.key_id, "set", None) is None

    results = [ks.verify(created.key) for _ in range(5)]
    assert all(r.code is Code.VALID and r.credits is None for r in results)
    assert ks.get_key(created.key_id).credits is None


def test_if_an_unlimited_key_gets_credits_set_then_verify_spends_them(ks: Keystile, api_id: str) -> None:
    created = ks.create_key(api_id)
    assert ks.verify(created.key).credits is None

    ks.update_credits(created.key_id, "set", 2)

    assert [ks.verify(created.key).code for _ in range(3)] == [
        Code.VALID, Code.VALID, Code.USAGE_EXCEEDED]


def test_if_credits_are_set_then_the_refill_schedule_is_cleared(
    ks: Keystile, api_id: str, clock: Clock,
) -> None:
    created = ks.create_key(api_id, credits=Credits(5, Refill("daily", 100)))

    assert ks.update_credits(created.key_id, "set", 3) == Credits(3)
    clock.advance(DAY)

    assert ks.get_key(created.key_id).credits == Credits(3)
    assert ks.verify(created.key).credits == 2


def test_if_credits_are_incremented_then_the_refill_schedule_stays(
    ks: Keystile, api_id: str, clock: Clock,
) -> None:
    created = ks.create_key(api_id, credits=Credits(5, Refill("daily", 100)))

    assert ks.update_credits(created.key_id, "increment", 1) == Credits(6, Refill("daily", 100))
    clock.advance(DAY)

    assert ks.verify(created.key).credits == 99


def test_if_update_credits_arguments_are_wrong_then_validation_error(ks: Keystile, api_id: str) -> None:
    limited = ks.create_key(api_id, credits=5).key_id
    unlimited = ks.create_key(api_id).key_id

    with pytest.raises(ValidationError, match="operation must be"):
        ks.update_credits(limited, "multiply", 2)  # type: ignore[arg-type]
    with pytest.raises(ValidationError, match="0 or more"):
        ks.update_credits(limited, "set", -1)
    with pytest.raises(ValidationError, match="increment needs a value"):
        ks.update_credits(limited, "increment")
    with pytest.raises(ValidationError, match="unlimited"):
        ks.update_credits(unlimited, "decrement", 1)
    assert ks.get_key(limited).credits == Credits(5)
    assert ks.get_key(unlimited).credits is None


def test_if_update_key_sets_credits_then_verify_spends_from_the_new_balance(
    ks: Keystile, api_id: str,
) -> None:
    created = ks.create_key(api_id, credits=1)
    ks.verify(created.key)

    ks.update_key(created.key_id, credits=Credits(3))

    assert [ks.verify(created.key).credits for _ in range(3)] == [2, 1, 0]


# -- identities ------------------------------------------------------------------------------------


def test_if_keys_name_one_external_id_then_they_share_one_identity_created_on_first_use(
    ks: Keystile, api_id: str,
) -> None:
    first = ks.get_key(ks.create_key(api_id, external_id="acme").key_id)
    second = ks.get_key(ks.create_key(api_id, external_id="acme").key_id)

    assert first.identity is not None and first.identity == second.identity
    assert first.identity.id.startswith("id_")
    assert ks.get_identity("acme") == first.identity == ks.get_identity(first.identity.id)
    assert [i.external_id for i in ks.list_identities()] == ["acme"]


def test_if_an_identity_exists_then_creating_it_again_is_a_conflict(ks: Keystile) -> None:
    ks.create_identity("acme", meta={"tier": "gold"})

    with pytest.raises(ConflictError, match="acme"):
        ks.create_identity("acme")

    assert ks.get_identity("acme").meta == {"tier": "gold"}


def test_if_an_identity_has_rate_limits_then_all_its_keys_share_them(ks: Keystile, api_id: str) -> None:
    ks.create_identity("acme", ratelimits=[{"name": "requests", "limit": 4, "duration": 60_000,
                                             "autoApply": True}])
    keys = [ks.create_key(api_id, external_id="acme").key for _ in range(2)]
    loner = ks.create_key(api_id).key

    codes = [ks.verify(keys[i % 2]).code for i in range(6)]

    assert codes == [Code.VALID] * 4 + [Code.RATE_LIMITED] * 2
    assert ks.verify(loner).code is Code.VALID


def test_if_an_identity_is_updated_then_its_keys_verify_with_the_new_limits_at_once(
    ks: Keystile, api_id: str,
) -> None:
    key = ks.create_key(api_id, external_id="acme").key
    assert all(ks.verify(key).valid for _ in range(3))

    ks.update_identity("acme", ratelimits=[RatelimitConfig("requests", 1, 60_000, auto_apply=True)])

    assert [ks.verify(key).code for _ in range(2)] == [Code.VALID, Code.RATE_LIMITED]


def test_if_an_identity_is_deleted_then_its_keys_lose_it_but_still_verify(ks: Keystile, api_id: str) -> None:
    created = ks.create_key(api_id, external_id="acme")

    ks.delete_identity("acme")

    assert ks.get_key(created.key_id).identity is None
    assert ks.verify(created.key).code is Code.VALID and ks.verify(created.key).identity is None
    with pytest.raises(NotFoundError):
        ks.get_identity("acme")


# -- roles and permissions -------------------------------------------------------------------


def test_if_a_key_has_a_role_then_verify_sees_the_roles_permissions(ks: Keystile, api_id: str) -> None:
    ks.create_role("editor", permissions=["docs.read", "docs.write"])
    created = ks.create_key(api_id, roles=["editor"], permissions=["billing.read"])

    result = ks.verify(created.key, permissions="docs.write AND billing.read")

    assert result.code is Code.VALID
    assert result.roles == ("editor",)
    assert result.permissions == ("billing.read", "docs.read", "docs.write")


def test_if_a_roles_permissions_change_then_its_keys_see_the_change_at_once(
    ks: Keystile, api_id: str,
) -> None:
    ks.create_role("editor", permissions=["docs.read"])
    created = ks.create_key(api_id, roles=["editor"])
    assert ks.verify(created.key, permissions="docs.read").valid

    ks.update_role("editor", permissions=["docs.write"])

    assert ks.verify(created.key, permissions="docs.read").code is Code.INSUFFICIENT_PERMISSIONS
    assert ks.verify(created.key, permissions="docs.write").code is Code.VALID


def test_if_a_role_is_deleted_then_keys_lose_it_and_its_permissions(ks: Keystile, api_id: str) -> None:
    ks.create_role("editor", permissions=["docs.read"])
    created = ks.create_key(api_id, roles=["editor"])

    ks.delete_role("editor")

    assert ks.get_key(created.key_id).roles == ()
    assert ks.verify(created.key, permissions="docs.read").code is Code.INSUFFICIENT_PERMISSIONS


def test_if_a_permission_is_deleted_then_keys_and_roles_lose_it(ks: Keystile, api_id: str) -> None:
    ks.create_role("editor", permissions=["docs.read", "docs.write"])
    created = ks.create_key(api_id, roles=["editor"], permissions=["docs.read"])

    ks.delete_permission("docs.read")

    assert ks.get_role("editor").permissions == ("docs.write",)
    assert ks.get_key(created.key_id).permissions == ()
    assert ks.verify(created.key, permissions="docs.read").code is Code.INSUFFICIENT_PERMISSIONS


def test_if_a_role_or_permission_exists_then_creating_it_again_is_a_conflict(ks: Keystile) -> None:
    ks.create_role("editor")
    ks.create_permission("docs.read")

    with pytest.raises(ConflictError, match="editor"):
        ks.create_role("editor")
    with pytest.raises(ConflictError, match=r"docs\.read"):
        ks.create_permission("docs.read")


# -- whoami ------------------------------------------------------------------------------------


def test_if_whoami_is_given_a_key_then_it_returns_the_key_without_spending(ks: Keystile, api_id: str) -> None:
    created = ks.create_key(api_id, name="ci", credits=2,
                           ratelimits=[RatelimitConfig("requests", 1, 60_000, auto_apply=True)])

    info = ks.whoami(created.key)
    ks.whoami(created.key)

    assert info.id == created.key_id and info.name == "ci" and info.credits == Credits(2)
    assert ks.verify(created.key).code is Code.VALID
    assert ks.get_key(created.key_id).credits == Credits(1)


@pytest.mark.parametrize(
    "key", ["sk_live_3yZe7d8Vq2PjK9hWbG4xT1", "garbage", "", "sk_live_0OIl0OIl0OIl0OIl0OIl"],
)
def test_if_whoami_is_given_an_unknown_or_malformed_key_then_not_found(
    ks: Keystile, api_id: str, key: str,
) -> None:
    with pytest.raises(NotFoundError):
        ks.whoami(key)


# -- validation ------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("fields", "message"),
    [
        ({"name": ""}, "key name must be a string of 1 to 255 characters"),
        ({"name": "x" * 256}, "key name must be a string of 1 to 255 characters"),
        ({"meta": ["a"]}, "meta must be a JSON object"),
        ({"meta": {"a": {1, 2}}}, "meta must be JSON-serialisable"),
        ({"meta": {"a": float("nan")}}, "meta must be JSON-serialisable"),
        ({"expires": -1}, "expires must be Unix milliseconds"),
        ({"expires": 4_102_444_800_001}, "expires must be Unix milliseconds"),
        ({"expires": 1.5}, "expires must be Unix milliseconds"),
        ({"expires": dt.datetime(2030, 1, 1)}, "timezone-aware"),
        ({"credits": -1}, "credits remaining must be 0 or more"),
        ({"credits": "10"}, "credits must be an int, a Credits object or None"),
        ({"credits": Credits(None, Refill("daily", 5))}, "a refill needs limited credits"),
        ({"credits": Credits(5, Refill("weekly", 5))}, "refill interval must be"),  # type: ignore[arg-type]
        ({"credits": Credits(5, Refill("daily", 0))}, "refill amount must be 1 or more"),
        ({"credits": Credits(5, Refill("daily", 5, 3))}, "refill day only applies to a monthly"),
        ({"credits": Credits(5, Refill("monthly", 5, 32))}, "refill day must be from 1 to 31"),
        ({"ratelimits": [{"name": "r", "limit": 0, "duration": 1000}]}, "limit must be 1 or more"),
        ({"ratelimits": [{"name": "r", "limit": 1, "duration": 999}]}, "duration must be 1000 ms"),
        ({"ratelimits": [{"name": "r", "limit": 1}]}, "needs name, limit and duration"),
        ({"ratelimits": [RatelimitConfig("r", 1, 1000), RatelimitConfig("r", 2, 1000)]}, "given twice"),
        ({"permissions": "docs.read"}, "permissions must be a list of names"),
        ({"permissions": ["has space"]}, "permission 'has space' must be 1 to 128"),
        ({"permissions": ["x" * 129]}, "must be 1 to 128"),
        ({"roles": ["bad role"]}, "role 'bad role' must be 1 to 128"),
        ({"external_id": "has space"}, "externalId must be 1 to 255"),
    ],
)
def test_if_a_key_argument_is_invalid_then_validation_error_says_what_is_allowed(
    ks: Keystile, api_id: str, fields: dict[str, Any], message: str,
) -> None:
    with pytest.raises(ValidationError, match=re.escape(message)):
        ks.create_key(api_id, **fields)

    assert ks.list_keys(api_id).keys == []


def test_if_an_update_argument_is_invalid_then_validation_error_and_the_key_is_unchanged(
    ks: Keystile, api_id: str,
) -> None:
    key_id = ks.create_key(api_id, name="ci", credits=5).key_id
    before = ks.get_key(key_id)

    with pytest.raises(ValidationError):
        ks.update_key(key_id, name="x" * 300)
    with pytest.raises(ValidationError):
        ks.update_key(key_id, credits=Credits(-3))
    with pytest.raises(ValidationError):
        ks.update_key(key_id, name="fine", expires=-5)

    assert ks.get_key(key_id) == before


def test_if_an_api_name_is_empty_or_too_long_then_validation_error(ks: Keystile) -> None:
    for name in ("", "x" * 257):
        with pytest.raises(ValidationError, match="API name must be a string of 1 to 256"):
            ks.create_api(name, prefix="sk")


def test_if_validation_fails_then_the_error_is_also_a_value_error(ks: Keystile) -> None:
    with pytest.raises(ValueError):
        ks.create_api("x", prefix="bad-prefix")


# -- AsyncKeystile -----------------------------------------------------------------------------


@pytest.fixture
async def aks(store_url: str, clock: Clock) -> Any:
    keystile = AsyncKeystile(store_url, now=clock)
    yield keystile
    await keystile.close()


async def test_if_the_async_face_creates_verifies_and_updates_then_it_matches_the_sync_one(
    aks: AsyncKeystile,
) -> None:
    api = await aks.create_api("async", prefix="sk_async")
    created = await aks.create_key(api.id, credits=2, name="a", permissions=["docs.read"])

    first = await aks.verify(created.key, permissions="docs.read")
    await aks.update_key(created.key_id, enabled=False)
    disabled = await aks.verify(created.key)
    await aks.update_key(created.key_id, enabled=True, name=None)
    info = await aks.get_key(created.key_id)

    assert first.code is Code.VALID and first.credits == 1
    assert disabled.code is Code.DISABLED
    assert info.name is None and info.credits == Credits(1) and info.enabled
    assert (await aks.get_api(api.id)) == api and (await aks.list_apis()) == [api]
    assert aks.sync.get_key(created.key_id) == info


async def test_if_the_async_face_lists_updates_credits_and_deletes_then_the_store_reflects_it(
    aks: AsyncKeystile,
) -> None:
    api = await aks.create_api("async", prefix="sk_async")
    ids = sorted([(await aks.create_key(api.id, external_id="acme")).key_id for _ in range(3)])

    page = await aks.list_keys(api.id, limit=2)
    rest = await aks.list_keys(api.id, limit=2, cursor=page.cursor)
    credits = await aks.update_credits(ids[0], "set", 7)
    await aks.delete_key(ids[1])

    assert [k.id for k in page.keys] == ids[:2] and [k.id for k in rest.keys] == ids[2:]
    assert credits == Credits(7)
    assert [k.id for k in (await aks.list_keys(api.id, external_id="acme")).keys] == [ids[0], ids[2]]
    assert (await aks.get_identity("acme")).external_id == "acme"


async def test_if_an_async_call_is_invalid_then_the_same_errors_are_raised(aks: AsyncKeystile) -> None:
    api = await aks.create_api("async", prefix="sk_async")

    with pytest.raises(ConflictError):
        await aks.create_api("again", prefix="sk_async")
    with pytest.raises(ValidationError, match="prefix"):
        await aks.create_api("bad", prefix="sk-async")
    with pytest.raises(NotFoundError):
        await aks.create_key(api.id, roles=["ghost"])
    with pytest.raises(NotFoundError):
        await aks.whoami("sk_async_3yZe7d8Vq2PjK9hWbG4xT1")
    await aks.update_api(api.id, delete_protection=True)
    with pytest.raises(ProtectedError):
        await aks.delete_api(api.id)


async def test_if_async_keystile_is_used_as_a_context_manager_then_it_works_and_closes(
    store_url: str, clock: Clock,
) -> None:
    async with AsyncKeystile(store_url, now=clock) as aks:
        api = await aks.create_api("ctx", prefix="ctx")
        created = await aks.create_key(api.id)
        assert (await aks.verify(created.key)).valid
        assert (await aks.whoami(created.key)).id == created.key_id


def test_if_keystile_wraps_an_existing_store_then_it_uses_that_object(store_url: str, clock: Clock) -> None:
    store: Store = open_store(store_url)
    with Keystile(store, now=clock) as ks:
        api = ks.create_api("x", prefix="sk")
        assert ks.store is store
        assert store.get("api", api.id) is not None


@pytest.mark.parametrize("field", ["permissions", "roles"])
def test_if_update_key_gets_none_for_a_list_then_validation_error(ks: Keystile, field: str) -> None:
    created = ks.create_key(ks.create_api("a", prefix="sk_a").id)
    with pytest.raises(ValidationError, match="list of names"):
        ks.update_key(created.key_id, **{field: None})


def test_if_two_updates_of_one_key_race_then_neither_change_is_lost(
    store_url: str, clock: Clock
) -> None:
    import threading

    from keystile import MemoryStore, SQLiteStore

    reached, resume = threading.Event(), threading.Event()
    base = SQLiteStore if store_url.startswith("sqlite") else MemoryStore

    class PausingStore(base):  # type: ignore[misc, valid-type]
        """A real store whose next key read in a worker thread waits for the test."""

        armed = False

        def get(self, kind: str, id: str) -> Any:
            doc = super().get(kind, id)
            if kind == "key" and self.armed and threading.current_thread() is not threading.main_thread():
                self.armed = False
                reached.set()
                resume.wait(10)
            return doc

    store = PausingStore(store_url)
    ks = Keystile(store, now=clock)
    key_id = ks.create_key(ks.create_api("a", prefix="sk_a").id, name="before").key_id
    store.armed = True
    racer = threading.Thread(target=lambda: ks.update_key(key_id, meta={"plan": "pro"}))
    racer.start()
    assert reached.wait(10)
    ks.update_key(key_id, enabled=False)  # lands while the racer holds an old copy
    resume.set()
    racer.join(10)

    info = ks.get_key(key_id)
    assert (info.meta, info.enabled, info.name) == ({"plan": "pro"}, False, "before")
    ks.close()


# -- APIs without a prefix (as Unkey creates them) -------------------------------------------


def test_if_an_api_is_created_without_a_prefix_then_keystile_picks_an_unused_one(ks: Keystile) -> None:
    first, second = ks.create_api("one"), ks.create_api("two")

    prefixes = {ks.get_keyspace(api.keyspace_id).prefix for api in (first, second)}

    assert len(prefixes) == 2
    assert all(re.fullmatch(r"k[a-z0-9]{7}", prefix) for prefix in prefixes)


def test_if_the_first_key_of_an_auto_prefixed_api_names_a_prefix_then_the_api_takes_it(
    ks: Keystile,
) -> None:
    api = ks.create_api("payments")

    created = ks.create_key(api.id, prefix="sk_test")

    assert created.key.startswith("sk_test_")
    assert ks.get_keyspace(api.keyspace_id).prefix == "sk_test"
    assert ks.verify(created.key).code is Code.VALID
    assert ks.create_key(api.id, prefix="sk_test").key.startswith("sk_test_")


def test_if_the_first_key_of_an_auto_prefixed_api_names_none_then_the_picked_prefix_stays(
    ks: Keystile,
) -> None:
    api = ks.create_api("payments")
    picked = ks.get_keyspace(api.keyspace_id).prefix

    first = ks.create_key(api.id)

    with pytest.raises(ValidationError, match="prefix"):
        ks.create_key(api.id, prefix="sk_other")
    assert first.key.startswith(picked + "_")
    assert ks.verify(first.key).code is Code.VALID


def test_if_a_key_names_another_prefix_than_its_apis_then_validation_error(
    ks: Keystile, api_id: str,
) -> None:
    with pytest.raises(ValidationError, match="'sk_live', not 'sk_test'"):
        ks.create_key(api_id, prefix="sk_test")

    assert ks.create_key(api_id, prefix="sk_live").key.startswith("sk_live_")
    assert ks.list_keys(api_id).keys[0].start.startswith("sk_live_")


def test_if_the_first_key_claims_a_prefix_of_another_api_then_conflict_and_nothing_changes(
    ks: Keystile, api_id: str,
) -> None:
    api = ks.create_api("other")
    picked = ks.get_keyspace(api.keyspace_id).prefix

    with pytest.raises(ConflictError, match="sk_live"):
        ks.create_key(api.id, prefix="sk_live")

    assert ks.get_keyspace(api.keyspace_id).prefix == picked
    assert ks.list_keys(api.id).keys == []
    assert ks.create_key(api.id, prefix="sk_free").key.startswith("sk_free_")


def test_if_a_key_prefix_is_malformed_then_validation_error_before_anything_is_written(
    ks: Keystile,
) -> None:
    api = ks.create_api("payments")

    with pytest.raises(ValidationError, match="prefix"):
        ks.create_key(api.id, prefix="has-dash")

    assert ks.list_identities() == [] and ks.list_keys(api.id).keys == []


# -- reroll -------------------------------------------------------------------------------


def test_if_a_key_is_rerolled_then_the_new_key_has_its_settings_and_a_new_secret(
    ks: Keystile, api_id: str, clock: Clock,
) -> None:
    ks.create_role("admin", permissions=["docs.write"])
    old = ks.create_key(api_id, name="prod", external_id="acme", meta={"plan": "pro"},
                        expires=clock.ms + 10 * DAY, credits=Credits(7, Refill("daily", 7)),
                        ratelimits=[RatelimitConfig("requests", 5, 60_000, auto_apply=True)],
                        permissions=["docs.read"], roles=["admin"], lease=0)
    ks.verify(old.key)  # spends a credit and a rate-limit token, which the new key shares

    new = ks.reroll_key(old.key_id, expiration_ms=DAY)

    before, after = ks.get_key(old.key_id), ks.get_key(new.key_id)
    assert new.key != old.key and new.key.startswith("sk_live_") and new.key_id != old.key_id
    same = ("api_id", "name", "meta", "enabled", "identity", "permissions", "roles", "credits")
    assert {f: getattr(after, f) for f in same} == {f: getattr(before, f) for f in same}
    assert (after.expires, before.expires) == (clock.ms + 10 * DAY, clock.ms + DAY)
    assert after.credits == Credits(6, Refill("daily", 7))
    assert [(rl.name, rl.limit, rl.duration, rl.auto_apply) for rl in after.ratelimits] == [
        ("requests", 5, 60_000, True)]
    assert after.ratelimits[0].id != before.ratelimits[0].id
    result = ks.verify(new.key)
    assert result.code is Code.VALID and result.ratelimits[0].remaining == 3  # the shared counter
    assert ks.store.find("key", "hash", sha256_b64(new.key))["id"] == new.key_id


def test_if_a_key_is_rerolled_with_a_grace_period_then_the_old_key_works_until_it_ends(
    ks: Keystile, api_id: str, clock: Clock,
) -> None:
    old = ks.create_key(api_id)
    ks.verify(old.key)  # cached

    ks.reroll_key(old.key_id, expiration_ms=60_000)

    assert ks.get_key(old.key_id).expires == clock.ms + 60_000
    assert ks.verify(old.key).code is Code.VALID
    clock.advance(60_001)
    assert ks.verify(old.key).code is Code.EXPIRED


def test_if_a_key_is_rerolled_with_expiration_zero_then_the_old_key_expires_now(
    ks: Keystile, api_id: str, clock: Clock,
) -> None:
    old = ks.create_key(api_id)
    assert ks.verify(old.key).code is Code.VALID

    new = ks.reroll_key(old.key_id, expiration_ms=0)
    clock.advance(1)

    assert ks.verify(old.key).code is Code.EXPIRED
    assert ks.verify(new.key).code is Code.VALID


def test_if_a_reroll_grace_period_outlasts_the_old_expiry_then_the_old_expiry_stays(
    ks: Keystile, api_id: str, clock: Clock,
) -> None:
    old = ks.create_key(api_id, expires=clock.ms + 1000)

    ks.reroll_key(old.key_id, expiration_ms=DAY)

    assert ks.get_key(old.key_id).expires == clock.ms + 1000


def test_if_a_key_is_rerolled_with_expiration_none_then_the_old_key_keeps_its_expiry(
    ks: Keystile, api_id: str, clock: Clock,
) -> None:
    forever, dated = ks.create_key(api_id), ks.create_key(api_id, expires=clock.ms + DAY)

    ks.reroll_key(forever.key_id, expiration_ms=None)
    ks.reroll_key(dated.key_id, expiration_ms=None)

    assert ks.get_key(forever.key_id).expires is None
    assert ks.get_key(dated.key_id).expires == clock.ms + DAY


def test_if_a_key_with_unlimited_credits_is_rerolled_then_the_new_one_is_unlimited_too(
    ks: Keystile, api_id: str,
) -> None:
    new = ks.reroll_key(ks.create_key(api_id).key_id, expiration_ms=0)

    assert ks.get_key(new.key_id).credits is None
    assert ks.verify(new.key).credits is None


@pytest.mark.parametrize("expiration", [-1, 4_102_444_800_001, 1.5, True, "60000"])
def test_if_a_reroll_expiration_is_out_of_range_then_validation_error_and_no_new_key(
    ks: Keystile, api_id: str, expiration: Any,
) -> None:
    old = ks.create_key(api_id)

    with pytest.raises(ValidationError, match="expiration"):
        ks.reroll_key(old.key_id, expiration_ms=expiration)

    assert [k.id for k in ks.list_keys(api_id).keys] == [old.key_id]


def test_if_an_unknown_or_deleted_key_is_rerolled_then_not_found(ks: Keystile, api_id: str) -> None:
    gone = ks.create_key(api_id)
    ks.delete_key(gone.key_id)

    for key_id in ("key_nope", gone.key_id):
        with pytest.raises(NotFoundError):
            ks.reroll_key(key_id, expiration_ms=0)


async def test_if_the_async_face_rerolls_then_the_new_key_verifies(aks: AsyncKeystile) -> None:
    api = await aks.create_api("a", prefix="sk_a")
    old = await aks.create_key(api.id)

    new = await aks.reroll_key(old.key_id, expiration_ms=0)

    assert (await aks.verify(new.key)).valid


# -- get_permission ------------------------------------------------------------------------


def test_if_a_permission_is_read_by_slug_or_id_then_it_is_found(ks: Keystile) -> None:
    created = ks.create_permission("docs.read", name="Read docs", description="reads")

    assert ks.get_permission("docs.read") == created
    assert ks.get_permission(created.id) == created
    with pytest.raises(NotFoundError):
        ks.get_permission("docs.none")


# -- changes that must not lose a concurrent one -----------------------------------------------


def test_if_permissions_and_roles_are_added_and_removed_then_the_others_stay(ks: Keystile) -> None:
    ks.create_role("reader", permissions=["docs.read"])
    ks.create_role("writer", permissions=["docs.write"])
    key_id = ks.create_key(ks.create_api("a", prefix="sk_a").id, permissions=["a", "b"],
                           roles=["reader"]).key_id

    ks.add_permissions(key_id, ["c", "a"])
    ks.remove_permissions(key_id, ["b", "never.had"])
    ks.add_roles(key_id, ["writer"])
    info = ks.remove_roles(key_id, ["reader"])

    assert info.permissions == ("a", "c") and info.roles == ("writer",)
    assert ks.get_key(key_id).permissions == ("a", "c")
    assert {p.slug for p in ks.list_permissions()} >= {"a", "b", "c"}  # "c" was created
    with pytest.raises(NotFoundError, match="no such role: ghost"):
        ks.add_roles(key_id, ["ghost"])
    with pytest.raises(ValidationError):
        ks.add_permissions(key_id, ["bad slug!"])
    with pytest.raises(NotFoundError):
        ks.add_permissions("key_missing", ["a"])


def test_if_threads_grant_permissions_to_one_key_at_once_then_every_grant_stands(ks: Keystile) -> None:
    import threading

    key_id = ks.create_key(ks.create_api("a", prefix="sk_a").id, permissions=["base"]).key_id
    for n in range(16):
        ks.create_permission(f"p.{n}")
    start = threading.Barrier(8)

    def grant(worker: int) -> None:
        start.wait(10)
        for n in range(worker, 16, 8):
            ks.add_permissions(key_id, [f"p.{n}"])

    threads = [threading.Thread(target=grant, args=(w,)) for w in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(30)

    assert set(ks.get_key(key_id).permissions) == {"base", *(f"p.{n}" for n in range(16))}


def test_if_only_the_refill_changes_then_what_remains_stays(ks: Keystile, clock: Clock) -> None:
    created = ks.create_key(ks.create_api("a", prefix="sk_a").id, credits=Credits(10))
    for _ in range(3):
        assert ks.verify(created.key).valid

    after = ks.update_refill(created.key_id, Refill("daily", 50))
    clock.advance(86_400_000)
    refilled = ks.get_key(created.key_id).credits
    stopped = ks.update_refill(created.key_id, None)

    assert after == Credits(7, Refill("daily", 50))  # no refill at once: it counts from now
    assert refilled is not None and refilled.remaining == 50
    assert stopped == Credits(50)
    unlimited = ks.create_key(ks.create_api("b", prefix="sk_b").id).key_id
    with pytest.raises(ValidationError, match="needs limited credits"):
        ks.update_refill(unlimited, Refill("daily", 5))
    with pytest.raises(ValidationError, match="amount"):
        ks.update_refill(created.key_id, Refill("daily", 0))


def test_if_the_refill_changes_while_keys_spend_then_no_spend_is_undone(ks: Keystile) -> None:
    import threading

    created = ks.create_key(ks.create_api("a", prefix="sk_a").id, credits=Credits(1000))
    spent: list[bool] = []
    done = threading.Event()

    def spend() -> None:
        for _ in range(60):
            spent.append(ks.verify(created.key).valid)
        done.set()

    spender = threading.Thread(target=spend)
    spender.start()
    changes = 0
    while not done.is_set() or changes < 5:
        ks.update_refill(created.key_id, Refill("monthly", 1000 + changes, refill_day=1))
        changes += 1
    spender.join(30)

    credits = ks.get_key(created.key_id).credits
    assert all(spent) and len(spent) == 60
    assert credits is not None and credits.remaining == 1000 - 60
