"""KeepaliveClock decisions, without sockets or timers."""

from __future__ import annotations

from hypothesis import given
from hypothesis import strategies as st

from relay.core.keepalive import KeepaliveClock


def test_writes_once_per_interval_of_silence() -> None:
    clock = KeepaliveClock(now=0.0)
    assert not clock.decide(0.5, last_upstream_byte=0.0, at_boundary=True, interval=1.0).write
    first = clock.decide(1.0, last_upstream_byte=0.0, at_boundary=True, interval=1.0)
    assert first.write and first.next_check == 2.0
    assert not clock.decide(1.5, last_upstream_byte=0.0, at_boundary=True, interval=1.0).write
    assert clock.decide(2.0, last_upstream_byte=0.0, at_boundary=True, interval=1.0).write


def test_upstream_bytes_push_the_keepalive_back() -> None:
    clock = KeepaliveClock(now=0.0)
    decision = clock.decide(1.0, last_upstream_byte=0.7, at_boundary=True, interval=1.0)
    assert not decision.write and decision.next_check == 1.7


def test_mid_frame_stall_defers_and_rechecks() -> None:
    clock = KeepaliveClock(now=0.0)
    decision = clock.decide(1.0, last_upstream_byte=0.0, at_boundary=False, interval=1.0)
    assert not decision.write and decision.next_check == 2.0
    assert clock.decide(2.0, last_upstream_byte=0.0, at_boundary=True, interval=1.0).write


def test_a_timer_firing_a_hair_early_still_counts_as_due() -> None:
    clock = KeepaliveClock(now=0.0)
    assert clock.decide(0.9995, last_upstream_byte=0.0, at_boundary=True, interval=1.0).write


@given(
    interval=st.floats(0.01, 100),
    gaps=st.lists(st.floats(0, 300), min_size=1, max_size=30),
)
def test_one_keepalive_per_interval_of_silence_never_more_never_skipped(
    interval: float, gaps: list[float]
) -> None:
    """Woken at any times during a silence, the clock writes when a whole interval has
    passed since the last keepalive (or the start), and never sooner."""
    clock = KeepaliveClock(now=0.0)
    now, last_write = 0.0, 0.0
    for gap in gaps:
        now += gap
        write = clock.decide(now, last_upstream_byte=0.0, at_boundary=True, interval=interval).write
        if write:
            assert now - last_write >= interval - 0.001
            last_write = now
        else:
            assert now - last_write < interval  # due, and not written: a skipped one


@given(
    interval=st.floats(0.01, 100),
    lateness=st.lists(st.floats(0, 0.5), min_size=1, max_size=30),
)
def test_a_timer_that_follows_next_check_gets_a_keepalive_each_interval(
    interval: float, lateness: list[float]
) -> None:
    """Keepalives arrive at about the interval: the relay's timer wakes at each
    `next_check` (late by up to half an interval) and writes every time, so the spacing
    is the interval plus that wake-up's lateness, never less and never a multiple."""
    clock = KeepaliveClock(now=0.0)
    wake = clock.decide(0.0, last_upstream_byte=0.0, at_boundary=True, interval=interval).next_check
    last_write = 0.0
    for late in lateness:
        now = wake + late * interval
        decision = clock.decide(now, last_upstream_byte=0.0, at_boundary=True, interval=interval)
        assert decision.write
        assert interval - 0.001 <= now - last_write <= interval * (1 + late) * (1 + 1e-9)
        wake, last_write = decision.next_check, now
