"""Credits with lazy refill: daily at 00:00 UTC, monthly on a day, a refill sets, never adds."""

from __future__ import annotations

import datetime as dt

import pytest

from keystile._credits import (
    apply_refill,
    last_refill_moment,
    new_credit_state,
    next_refill_moment,
)

DAILY = {"interval": "daily", "amount": 10}


def ms(year: int, month: int, day: int, hour: int = 0, minute: int = 0, second: int = 0,
       millis: int = 0) -> int:
    """Unix ms of a UTC wall-clock time."""
    moment = dt.datetime(year, month, day, hour, minute, second, tzinfo=dt.UTC)
    return int(moment.timestamp()) * 1000 + millis


def monthly(day: int | None = None, amount: int = 100) -> dict[str, object]:
    refill: dict[str, object] = {"interval": "monthly", "amount": amount}
    if day is not None:
        refill["refillDay"] = day
    return refill


T0 = ms(2026, 3, 15, 12)  # the tests' usual "now": mid-day, mid-month


def test_if_a_credit_state_is_created_then_it_was_refilled_at_creation() -> None:
    assert new_credit_state(5, DAILY, T0) == {"remaining": 5, "refill": DAILY, "refilledAt": T0}
    assert new_credit_state(None, None, T0) == {"remaining": None, "refill": None, "refilledAt": T0}


# -- daily ---------------------------------------------------------------------------------


def test_if_midnight_has_not_come_then_a_daily_refill_does_nothing() -> None:
    state = new_credit_state(3, DAILY, T0)
    assert apply_refill(state, ms(2026, 3, 15, 23, 59, 59, 999)) is state


def test_if_midnight_utc_has_come_then_a_daily_refill_sets_remaining_to_the_amount() -> None:
    state = new_credit_state(3, DAILY, T0)
    refilled = apply_refill(state, ms(2026, 3, 16))
    assert refilled == {"remaining": 10, "refill": DAILY, "refilledAt": ms(2026, 3, 16)}


def test_if_a_refill_is_applied_then_the_state_passed_in_is_not_changed() -> None:
    state = new_credit_state(3, DAILY, T0)
    apply_refill(state, ms(2026, 3, 16))
    assert state == {"remaining": 3, "refill": DAILY, "refilledAt": T0}


def test_if_remaining_is_above_the_amount_then_a_refill_lowers_it_to_the_amount() -> None:
    state = new_credit_state(50, DAILY, T0)
    assert apply_refill(state, ms(2026, 3, 16, 8))["remaining"] == 10


def test_if_several_days_were_missed_then_one_refill_sets_the_amount_without_adding_them_up() -> None:
    state = new_credit_state(0, DAILY, T0)
    assert apply_refill(state, ms(2026, 3, 20, 9))["remaining"] == 10


def test_if_already_refilled_since_the_last_midnight_then_no_second_refill_happens() -> None:
    state = apply_refill(new_credit_state(3, DAILY, T0), ms(2026, 3, 16, 0, 0, 5))
    spent = {**state, "remaining": 2}
    assert apply_refill(spent, ms(2026, 3, 16, 23, 59, 59, 999)) is spent
    assert apply_refill(spent, ms(2026, 3, 17))["remaining"] == 10


def test_if_refilled_at_is_exactly_the_refill_moment_then_it_counts_as_refilled() -> None:
    state = new_credit_state(1, DAILY, ms(2026, 3, 16))
    assert apply_refill(state, ms(2026, 3, 16, 18)) is state


def test_if_the_daily_refill_moment_is_asked_then_it_is_00_00_utc() -> None:
    assert last_refill_moment(DAILY, T0) == ms(2026, 3, 15)
    assert last_refill_moment(DAILY, ms(2026, 3, 16)) == ms(2026, 3, 16)
    assert next_refill_moment(DAILY, T0) == ms(2026, 3, 16)


def test_if_it_is_exactly_midnight_then_the_next_daily_refill_is_the_following_midnight() -> None:
    assert next_refill_moment(DAILY, ms(2026, 3, 16)) == ms(2026, 3, 17)


def test_if_it_is_new_years_eve_then_the_next_daily_refill_is_in_the_new_year() -> None:
    assert next_refill_moment(DAILY, ms(2026, 12, 31, 23, 59)) == ms(2027, 1, 1)


# -- monthly -------------------------------------------------------------------------------


def test_if_no_refill_day_is_given_then_a_monthly_refill_happens_on_the_first() -> None:
    state = new_credit_state(7, monthly(), T0)
    assert apply_refill(state, ms(2026, 3, 31, 23, 59, 59, 999)) is state
    assert apply_refill(state, ms(2026, 4, 1))["remaining"] == 100
    assert next_refill_moment(monthly(), T0) == ms(2026, 4, 1)


def test_if_the_refill_day_has_passed_this_month_then_the_next_refill_is_next_month() -> None:
    # Created 12:00 on the 15th: 00:00 on the 15th is already behind it.
    state = new_credit_state(7, monthly(15), T0)
    assert apply_refill(state, ms(2026, 4, 14, 23, 59, 59, 999)) is state
    assert apply_refill(state, ms(2026, 4, 15))["remaining"] == 100
    assert next_refill_moment(monthly(15), T0) == ms(2026, 4, 15)


def test_if_the_refill_day_is_later_this_month_then_the_next_refill_is_this_month() -> None:
    assert next_refill_moment(monthly(20), T0) == ms(2026, 3, 20)
    assert last_refill_moment(monthly(20), T0) == ms(2026, 2, 20)


@pytest.mark.parametrize(
    ("year", "last_day"), [(2026, 28), (2027, 28), (2028, 29), (2024, 29), (2100, 28), (2000, 29)]
)
def test_if_the_refill_day_is_31_in_february_then_it_falls_on_its_last_day(
    year: int, last_day: int
) -> None:
    assert next_refill_moment(monthly(31), ms(year, 2, 10)) == ms(year, 2, last_day)
    assert last_refill_moment(monthly(31), ms(year, 3, 1)) == ms(year, 2, last_day)


@pytest.mark.parametrize("day", [29, 30, 31])
def test_if_the_refill_day_is_past_the_end_of_a_leap_february_then_it_is_the_29th(day: int) -> None:
    assert next_refill_moment(monthly(day), ms(2028, 2, 1)) == ms(2028, 2, 29)


def test_if_the_refill_day_is_31_then_30_day_months_refill_on_the_30th() -> None:
    assert next_refill_moment(monthly(31), ms(2026, 4, 1)) == ms(2026, 4, 30)
    assert next_refill_moment(monthly(31), ms(2026, 4, 30)) == ms(2026, 5, 31)


def test_if_the_refill_day_is_31_then_a_key_refills_on_the_last_day_of_february() -> None:
    state = new_credit_state(0, monthly(31), ms(2026, 1, 31, 12))
    assert apply_refill(state, ms(2026, 2, 27, 23, 59, 59, 999)) is state
    refilled = apply_refill(state, ms(2026, 2, 28))
    assert refilled["remaining"] == 100
    assert apply_refill(refilled, ms(2026, 3, 30)) is refilled
    assert apply_refill(refilled, ms(2026, 3, 31))["remaining"] == 100


def test_if_it_is_exactly_the_monthly_moment_then_last_is_now_and_next_is_next_month() -> None:
    assert last_refill_moment(monthly(15), ms(2026, 3, 15)) == ms(2026, 3, 15)
    assert next_refill_moment(monthly(15), ms(2026, 3, 15)) == ms(2026, 4, 15)


def test_if_the_refill_day_is_still_ahead_in_january_then_the_last_refill_was_in_december() -> None:
    assert last_refill_moment(monthly(15), ms(2026, 1, 10)) == ms(2025, 12, 15)


def test_if_the_refill_day_has_passed_in_december_then_the_next_refill_is_in_january() -> None:
    assert next_refill_moment(monthly(15), ms(2025, 12, 20)) == ms(2026, 1, 15)


# -- no refill ------------------------------------------------------------------------------


def test_if_credits_are_unlimited_then_they_never_refill() -> None:
    state = new_credit_state(None, DAILY, T0)
    assert apply_refill(state, ms(2027, 1, 1)) is state


def test_if_there_is_no_refill_then_remaining_never_changes() -> None:
    state = new_credit_state(0, None, T0)
    assert apply_refill(state, ms(2030, 1, 1)) is state
