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
def test_never_more_than_one_keepalive_per_interval(interval: float, gaps: list[float]) -> None:
    clock = KeepaliveClock(now=0.0)
    now, last_write = 0.0, -interval
    for gap in gaps:
        now += gap
        if clock.decide(now, last_upstream_byte=0.0, at_boundary=True, interval=interval).write:
            assert now - last_write >= interval - 0.001
            last_write = now
