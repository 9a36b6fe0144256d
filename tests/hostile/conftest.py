"""Fixtures of the HTTP/1.1 hostile tests: the recording upstream and a relay in front
of it. Nothing here is autouse: other hostile modules bring relays of their own."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

# The shared checks live in a helper module: let pytest explain its failed asserts.
pytest.register_assert_rewrite("tests.hostile.harness")

from tests.hostile.harness import GroupStart  # noqa: E402
from tests.hostile.recording_upstream import RecordingUpstream  # noqa: E402
from tests.relayproc import RelayProcess  # noqa: E402

#: Flags of the shared relay: a small head limit and a short head timeout, so that the
#: 431 and 408 checks need no relay of their own.
RELAY_FLAGS = ("--max-header-bytes", "16384", "--header-timeout", "1")


@pytest.fixture(scope="module")
def upstream() -> Iterator[RecordingUpstream]:
    """The recording upstream, fresh for each test module."""
    with RecordingUpstream() as server:
        yield server


@pytest.fixture(scope="module")
def relay(upstream: RecordingUpstream) -> Iterator[RelayProcess]:
    """A relay (HTTP/1.1 listener) in front of the recording upstream."""
    with RelayProcess(upstream.url, *RELAY_FLAGS) as proc:
        yield proc


@pytest.fixture(scope="class")
def group_start(relay: RelayProcess, upstream: RecordingUpstream) -> GroupStart:
    """The relay's open descriptors, upstream's byte counts and the log's length as a
    group (a test class) starts; its last test checks against these. A module that
    uses groups requests it for every test (`pytest.mark.usefixtures`), so that it is
    taken before the group's first test."""
    return GroupStart.of(relay, upstream)
