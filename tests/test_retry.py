"""The retry policy and retry-after parsing: sans-IO, so no sockets."""

from __future__ import annotations

import email.utils

import pytest

from relay.core.retry import RetryPolicy, retry_after

POLICY = RetryPolicy(attempts=3, budget=10.0, base_delay=0.1, max_delay=1.0)


def test_backoff_doubles_with_jitter_and_caps() -> None:
    assert POLICY.delay(1, 0.0, jitter=0.0) == pytest.approx(0.05)  # half of base
    assert POLICY.delay(1, 0.0, jitter=0.999) == pytest.approx(0.1, rel=1e-3)
    assert POLICY.delay(2, 0.0, jitter=0.0) == pytest.approx(0.1)
    capped = RetryPolicy(attempts=20, base_delay=0.1, max_delay=1.0)
    assert capped.delay(10, 0.0, jitter=0.999) == pytest.approx(1.0, rel=1e-3)


def test_attempts_and_budget_end_the_retries() -> None:
    assert POLICY.delay(3, 0.0, jitter=0.5) is None  # the third try was the last
    assert POLICY.delay(1, 9.99, jitter=0.5) is None  # the wait would pass the budget
    assert POLICY.delay(1, 9.0, jitter=0.5) is not None


def test_retry_after_is_honoured_within_the_budget() -> None:
    assert POLICY.delay(1, 0.0, jitter=0.0, retry_after=2.0) == 2.0
    assert POLICY.delay(1, 0.0, jitter=0.0, retry_after=30.0) is None


def test_retry_after_headers_as_the_sdks_read_them() -> None:
    assert retry_after([(b"retry-after-ms", b"1500"), (b"retry-after", b"9")]) == 1.5
    assert retry_after([(b"retry-after", b"3")]) == 3.0
    date = email.utils.formatdate(1_000_030.0, usegmt=True).encode()
    assert retry_after([(b"retry-after", date)], now=1_000_000.0) == pytest.approx(30.0)
    assert retry_after([(b"retry-after", b"soon")]) is None
    assert retry_after([(b"retry-after-ms", b"x"), (b"retry-after", b"2")]) == 2.0
    assert retry_after([]) is None
