"""Transparent retries: only while nothing has reached the client, within a budget."""

from __future__ import annotations

import email.utils
import time
from dataclasses import dataclass, field


@dataclass(frozen=True, slots=True)
class RetryPolicy:
    """How often and how long the relay retries upstream before answering the client.

    Sans-IO: `delay` takes the facts and a random number and says how long to wait
    before the next try, or None when the client must get the failure now.
    """

    attempts: int = 3
    budget: float = 10.0
    base_delay: float = 0.05
    max_delay: float = 2.0
    #: Upstream statuses retried here (opt-in: 429, 503, 529), honouring retry-after.
    statuses: frozenset[int] = field(default_factory=frozenset)

    def delay(
        self, tries: int, elapsed: float, jitter: float, retry_after: float | None = None
    ) -> float | None:
        """Wait before try number `tries + 1`; `jitter` is uniform in [0, 1)."""
        if tries >= self.attempts:
            return None
        # Exponential backoff with jitter so that many streams failing at once spread out.
        backoff = min(self.max_delay, self.base_delay * 2.0 ** (tries - 1)) * (0.5 + jitter / 2)
        wait = max(backoff, retry_after or 0.0)
        if elapsed + wait > self.budget:
            return None
        return wait


def retry_after(headers: list[tuple[bytes, bytes]], now: float | None = None) -> float | None:
    """Seconds upstream asks us to wait: `retry-after-ms`, else `retry-after` (seconds or an
    HTTP date), as the SDKs read them."""
    for name, value in headers:
        if name == b"retry-after-ms":
            try:
                return max(0.0, float(value) / 1000)
            except ValueError:
                break
    for name, value in headers:
        if name == b"retry-after":
            return _seconds(value, now)
    return None


def _seconds(value: bytes, now: float | None) -> float | None:
    text = value.decode("latin-1").strip()
    try:
        return max(0.0, float(text))
    except ValueError:
        pass
    try:
        when = email.utils.parsedate_to_datetime(text).timestamp()
    except (TypeError, ValueError):
        return None
    return max(0.0, when - (time.time() if now is None else now))
