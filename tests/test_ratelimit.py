"""Unkey's sliding window as a pure function; every expected value is worked out by hand."""

from __future__ import annotations

from keystile._ratelimit import WindowOutcome, check_window

D = 10_000  # a 10 s window
SEQ = 177_357_600  # the window holding 2026-03-15 12:00:00 UTC
START = SEQ * D  # 1_773_576_000_000, where that window starts
LIMIT = 10


def check(state: dict[str, int] | None, *, at: int, cost: int = 1, limit: int = LIMIT,
          duration: int = D) -> WindowOutcome:
    return check_window(state, limit=limit, duration=duration, cost=cost, now=at)


def test_if_there_is_no_state_then_the_request_is_allowed_and_counted() -> None:
    outcome = check(None, at=START + 1234)
    assert outcome.allowed
    assert outcome.remaining == 9
    assert outcome.reset == START + D
    assert outcome.new_state == {"seq": SEQ, "cur": 1, "prev": 0}


def test_if_the_state_is_in_this_window_then_the_count_grows_and_prev_is_kept() -> None:
    # prev 6 weighted by (10000 - 5000) / 10000 = 3; used = 2 + 3 = 5; 5 + 1 <= 10.
    outcome = check({"seq": SEQ, "cur": 2, "prev": 6}, at=START + 5000)
    assert outcome.allowed
    assert outcome.remaining == 4
    assert outcome.new_state == {"seq": SEQ, "cur": 3, "prev": 6}


def test_if_the_state_is_from_the_previous_window_then_its_count_becomes_prev() -> None:
    # The old "prev" (two windows back) is dropped; the old "cur" 8 is now prev.
    # Elapsed 2500 of 10000: prev weight 0.75, 8 * 0.75 = 6; used 6; remaining 10 - 6 - 1 = 3.
    outcome = check({"seq": SEQ - 1, "cur": 8, "prev": 10}, at=START + 2500)
    assert outcome.allowed
    assert outcome.remaining == 3
    assert outcome.new_state == {"seq": SEQ, "cur": 1, "prev": 8}


def test_if_the_weighted_previous_count_is_fractional_then_it_is_truncated() -> None:
    # prev 7 at half the window: 3.5 -> 3; remaining 10 - 3 - 1 = 6.
    outcome = check({"seq": SEQ - 1, "cur": 7, "prev": 0}, at=START + 5000)
    assert outcome.remaining == 6


def test_if_one_ms_of_the_window_has_passed_then_a_full_previous_window_counts_one_less() -> None:
    # prev 10 * 9999 / 10000 = 9.999 -> 9; 9 + 1 <= 10 is allowed, and nothing is left.
    outcome = check({"seq": SEQ - 1, "cur": 10, "prev": 0}, at=START + 1)
    assert outcome.allowed
    assert outcome.remaining == 0


def test_if_the_window_has_just_started_then_the_previous_window_counts_in_full() -> None:
    # At the window's first ms the weight is 1: used 10, 10 + 1 > 10.
    outcome = check({"seq": SEQ - 1, "cur": 10, "prev": 0}, at=START)
    assert not outcome.allowed
    assert outcome.remaining == 0
    assert outcome.reset == START + D
    assert outcome.new_state is None


def test_if_it_is_the_last_ms_of_a_window_then_reset_is_the_next_ms() -> None:
    outcome = check({"seq": SEQ - 1, "cur": 10, "prev": 0}, at=START - 1)
    assert not outcome.allowed
    assert outcome.reset == START


def test_if_the_cost_reaches_the_limit_exactly_then_it_is_allowed_with_nothing_left() -> None:
    outcome = check({"seq": SEQ, "cur": 7, "prev": 0}, at=START + 10, cost=3)
    assert outcome.allowed
    assert outcome.remaining == 0
    assert outcome.new_state == {"seq": SEQ, "cur": 10, "prev": 0}


def test_if_the_cost_exceeds_the_limit_by_one_then_it_is_denied() -> None:
    outcome = check({"seq": SEQ, "cur": 8, "prev": 0}, at=START + 10, cost=3)
    assert not outcome.allowed


def test_if_a_request_is_denied_then_it_takes_nothing() -> None:
    state = {"seq": SEQ, "cur": 10, "prev": 4}
    outcome = check(state, at=START + 9000)
    assert not outcome.allowed
    assert outcome.new_state is None
    assert state == {"seq": SEQ, "cur": 10, "prev": 4}


def test_if_a_costly_request_is_denied_then_remaining_is_what_is_left_without_it() -> None:
    # used 8; 8 + 5 > 10 is denied, but 2 are still left for cheaper requests (as Unkey reports).
    outcome = check({"seq": SEQ, "cur": 8, "prev": 0}, at=START + 10, cost=5)
    assert not outcome.allowed
    assert outcome.remaining == 2


def test_if_the_count_is_above_the_limit_then_remaining_is_zero_not_negative() -> None:
    outcome = check({"seq": SEQ, "cur": 12, "prev": 0}, at=START + 10)
    assert not outcome.allowed
    assert outcome.remaining == 0


def test_if_the_cost_is_zero_then_nothing_is_written() -> None:
    outcome = check({"seq": SEQ, "cur": 4, "prev": 0}, at=START + 10, cost=0)
    assert outcome.allowed
    assert outcome.remaining == 6
    assert outcome.new_state is None


def test_if_the_cost_is_zero_and_the_window_is_full_then_it_is_allowed_and_writes_nothing() -> None:
    outcome = check({"seq": SEQ, "cur": 10, "prev": 0}, at=START + 10, cost=0)
    assert outcome.allowed
    assert outcome.remaining == 0
    assert outcome.new_state is None


def test_if_the_cost_is_zero_and_there_is_no_state_then_nothing_is_written() -> None:
    outcome = check(None, at=START, cost=0)
    assert outcome.allowed
    assert outcome.remaining == 10
    assert outcome.new_state is None


def test_if_the_state_is_two_windows_old_then_the_count_starts_from_zero() -> None:
    outcome = check({"seq": SEQ - 2, "cur": 10, "prev": 10}, at=START)
    assert outcome.allowed
    assert outcome.remaining == 9
    assert outcome.new_state == {"seq": SEQ, "cur": 1, "prev": 0}


def test_if_the_state_is_a_year_old_then_the_count_starts_from_zero() -> None:
    outcome = check({"seq": SEQ - 3_153_600, "cur": 10, "prev": 10}, at=START + 42)
    assert outcome.remaining == 9
    assert outcome.new_state == {"seq": SEQ, "cur": 1, "prev": 0}


def test_if_requests_are_fed_their_own_state_then_the_eleventh_of_ten_is_denied() -> None:
    state: dict[str, int] | None = None
    remainings = []
    for i in range(10):
        outcome = check(state, at=START + 100 * i)
        assert outcome.allowed
        remainings.append(outcome.remaining)
        state = outcome.new_state
    assert remainings == [9, 8, 7, 6, 5, 4, 3, 2, 1, 0]
    assert state == {"seq": SEQ, "cur": 10, "prev": 0}
    assert not check(state, at=START + 9999).allowed


def test_if_the_next_window_starts_after_a_full_one_then_capacity_returns_as_it_slides() -> None:
    full = {"seq": SEQ, "cur": 10, "prev": 0}
    # Next window, 10 % in: 10 * 0.9 = 9 used -> one request; 50 % in: 5 used -> remaining 4.
    assert check(full, at=START + D + 1000).remaining == 0
    assert check(full, at=START + D + 1000).allowed
    assert check(full, at=START + D + 5000).remaining == 4
    assert check(full, at=START + D + 9999).remaining == 9  # 10 * 1 / 10000 = 0.001 -> 0


def test_if_the_duration_does_not_divide_a_round_number_then_windows_still_align_to_the_epoch() -> None:
    # 7 s windows: 7_001_750 ms is window 1000 (starting 7_000_000), 1750 ms in;
    # prev 4 weighted by (7000 - 1750) / 7000 = 0.75 -> 3.
    outcome = check({"seq": 999, "cur": 4, "prev": 0}, at=7_001_750, duration=7000, limit=5)
    assert outcome.allowed
    assert outcome.remaining == 1
    assert outcome.reset == 7_007_000
    assert outcome.new_state == {"seq": 1000, "cur": 1, "prev": 4}


def test_if_the_limit_is_large_then_the_weighted_count_is_exact_integer_arithmetic() -> None:
    # prev 999_999 weighted by 3333 / 10000 = 333_299.6667, truncated to 333_299.
    outcome = check({"seq": SEQ - 1, "cur": 999_999, "prev": 0}, at=START + 6667,
                    limit=1_000_000)
    assert outcome.remaining == 1_000_000 - 333_299 - 1
