"""FrameScanner.feed_to_dispatch, which tells where each frame is dispatched (for the
`id:` lines of relay/core/event_ids.py): both implementations, against the whole-stream
reference parser of tests/test_scanner.py and against each other, however the stream is
split. A missing extension fails here as it does there.
"""

from __future__ import annotations

from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from relay.sse.scanner_pure import FrameScanner as PureScanner
from tests.test_scanner import (
    ANY_PREFIX,
    BOM,
    PROPERTIES,
    Reference,
    Snapshot,
    fast_scanner_class,
    fed,
    reference_snapshots,
    snapshot,
    streams_and_chunks,
)

Dispatch = tuple[int, Snapshot]


@pytest.fixture(params=["python", "cython"], scope="module")
def scanner_class(request: pytest.FixtureRequest) -> Any:
    return PureScanner if request.param == "python" else fast_scanner_class()


@pytest.fixture(scope="module")
def fast_class() -> Any:
    return fast_scanner_class()


def dispatches(scanner: Any, chunks: list[bytes]) -> list[Dispatch]:
    """Where `scanner` says each frame is dispatched, as stream offsets, each with its
    state right then."""
    found: list[Dispatch] = []
    offset = 0
    for chunk in chunks:
        at = scanner.feed_to_dispatch(chunk, 0)
        while at < len(chunk):
            found.append((offset + at, snapshot(scanner)))
            at = scanner.feed_to_dispatch(chunk, at + 1)
        offset += len(chunk)
    return found


def reference_dispatches(stream: bytes) -> list[Dispatch]:
    """The bytes at which the reference, fed the whole stream byte by byte, dispatches a
    frame, each with the reference's state right after it."""
    ref = Reference()
    found: list[Dispatch] = []
    for index, byte in enumerate(stream):
        frames = ref.frames
        ref.byte(byte)
        if ref.frames > frames:
            found.append((index, snapshot(ref)))
    return found


# -- unit tests ----------------------------------------------------------------------


@pytest.mark.parametrize(
    ("stream", "expected"),
    [
        (b"data: x\n\n", [8]),
        (b"data: x\r\n\r\n", [9]),  # the `\r` of the dispatching `\r\n`
        (b"data: x\r\r", [8]),
        (b"data: x\r\n\n", [9]),
        (b"event: a\ndata: 1\n\nevent: b\r\rdata: 2\r\n\r\n", [17, 27, 37]),
        (b": keepalive\n\n:\r\r\n\n", []),  # comment-only and empty frames dispatch none
        (b"data: x\n", []),
        (BOM + b"id: 1\n\n", [9]),
        (b"\xef\xbb\n\n", [3]),  # a BOM's start and an ending: a field line
    ],
)
def test_dispatch_positions(scanner_class: Any, stream: bytes, expected: list[int]) -> None:
    assert [at for at, _ in dispatches(scanner_class(), [stream])] == expected


def test_it_is_feed_up_to_the_dispatching_byte(scanner_class: Any) -> None:
    stream = b"data: a\r\n\r\ndata: b\n\n: c\n\n"
    scanner, start, calls = scanner_class(), 5, []
    scanner.feed(stream[:start])
    while start < len(stream):
        at = scanner.feed_to_dispatch(stream, start)
        calls.append(stream[start : at + 1])
        start = at + 1
    assert calls == [b" a\r\n\r", b"\ndata: b\n\n", b": c\n\n"]
    fresh = fed(scanner_class, stream[:5], *calls[:1])
    assert snapshot(fresh) == snapshot(fed(scanner_class, stream[:10]))
    assert snapshot(scanner) == snapshot(fed(scanner_class, stream))


def test_a_crlf_split_by_the_return_leaves_its_lf_to_the_next_call(scanner_class: Any) -> None:
    scanner = scanner_class()
    assert scanner.feed_to_dispatch(b"data: x\r\n\r", 0) == 9
    assert (scanner.frames, scanner.at_boundary) == (1, True)
    # The `\n` completes that ending; the next empty line is the next `\n` (index 9).
    assert scanner.feed_to_dispatch(b"\ndata: y\n\n", 0) == 9
    assert scanner.frames == 2


def test_empty_and_exhausted_chunks(scanner_class: Any) -> None:
    scanner = fed(scanner_class, b"data: x\r")
    assert scanner.feed_to_dispatch(b"", 0) == 0
    assert scanner.feed_to_dispatch(b"ab", 2) == 2
    assert scanner.feed_to_dispatch(b"\r", 0) == 0  # the `\r` was one ending, this one more
    assert scanner.frames == 1


def test_bytes_likes_and_bad_starts(scanner_class: Any) -> None:
    stream = b"data: x\n\n"
    for data in (bytearray(stream), memoryview(stream)):
        assert scanner_class().feed_to_dispatch(data, 0) == 8
    for start in (-1, len(stream) + 1):
        with pytest.raises(ValueError, match="start"):
            scanner_class().feed_to_dispatch(stream, start)
    with pytest.raises(TypeError):
        scanner_class().feed_to_dispatch(5, 0)


# -- property tests ------------------------------------------------------------------


@PROPERTIES
@given(case=streams_and_chunks(ANY_PREFIX))
def test_dispatches_match_the_reference_however_split(
    scanner_class: Any, case: tuple[bytes, list[bytes]]
) -> None:
    stream, chunks = case
    scanner = scanner_class()
    assert dispatches(scanner, chunks) == reference_dispatches(stream)
    assert snapshot(scanner) == reference_snapshots(stream)[-1]


@PROPERTIES
@given(case=streams_and_chunks(ANY_PREFIX), whole=st.lists(st.booleans()))
def test_implementations_agree_on_dispatches(
    fast_class: Any, case: tuple[bytes, list[bytes]], whole: list[bool]
) -> None:
    """The same random splits to both, some chunks through `feed` (chosen by `whole`),
    the rest through `feed_to_dispatch`: the same positions, the same states."""
    stream, chunks = case
    pure, fast = PureScanner(), fast_class()
    expected = reference_snapshots(stream)
    offset = 0
    for index, chunk in enumerate(chunks):
        if index < len(whole) and whole[index]:
            pure.feed(chunk)
            fast.feed(chunk)
        else:
            assert dispatches(pure, [chunk]) == dispatches(fast, [chunk]), offset
        offset += len(chunk)
        assert snapshot(pure) == snapshot(fast) == expected[offset]
