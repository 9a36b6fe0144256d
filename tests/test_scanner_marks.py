"""FrameScanner.marks, the terminal markers of every provider's stream (relay/sse/marks.py):
both implementations, against the byte-by-byte reference of tests/test_scanner.py and
against each other, for every `watch` and however the stream is split. A missing
extension fails here as it does there.
"""

from __future__ import annotations

from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from relay.sse import marks
from relay.sse.scanner_pure import FrameScanner as PureScanner
from tests.test_scanner import (
    ANY_PREFIX,
    PROPERTIES,
    Reference,
    Snapshot,
    fast_scanner_class,
    reference_snapshots,
    snapshot,
    streams_and_chunks,
)

WATCHES = st.sampled_from(
    [0, marks.DATA_MARKS, marks.DONE | marks.DATA_ERROR, marks.FINISH_REASON, marks.DONE]
)
FINISH_CHUNK = b'data: {"candidates": [{"content": {}, "finishReason": "STOP"}]}\r\n\r\n'
LONG_FINISH_CHUNK = FINISH_CHUNK.replace(b"{}", b'{"x": "' + b"y" * 300 + b'"}')


@pytest.fixture(params=["python", "cython"], scope="module")
def scanner_class(request: pytest.FixtureRequest) -> Any:
    return PureScanner if request.param == "python" else fast_scanner_class()


@pytest.fixture(scope="module")
def fast_class() -> Any:
    return fast_scanner_class()


def marked(scanner: Any) -> tuple[Snapshot, int]:
    return snapshot(scanner), scanner.marks


def every_split(scanner_class: Any, stream: bytes, watch: int) -> set[int]:
    """The marks after `stream` fed in two pieces, cut at every byte, and byte by byte."""
    found = set()
    for cut in range(len(stream) + 1):
        scanner = scanner_class(watch)
        scanner.feed(stream[:cut])
        scanner.feed(stream[cut:])
        found.add(scanner.marks)
    bytewise = scanner_class(watch)
    for i in range(len(stream)):
        bytewise.feed(stream[i : i + 1])
    found.add(bytewise.marks)
    return found


@pytest.mark.parametrize(
    ("stream", "watch", "expected"),
    [
        (b"data: {}\n\ndata: [DONE]\n\n", marks.DONE, marks.DONE),
        (b"data:[DONE]\n\n", marks.DONE, marks.DONE),
        (b"data: [DONE]\n\n", 0, 0),  # not watched: not looked for
        (b"data: [DONE]\n", marks.DONE, 0),  # not dispatched yet
        (b'data: {"error": {"message": "x"}}\n\n', marks.DATA_ERROR, marks.DATA_ERROR),
        (b'data: {"id": 1, "error": null}\n\n', marks.DATA_ERROR, 0),
        (b"event: response.completed\ndata: {}\n\n", 0, marks.RESPONSE_END),
        (b"event: response.failed\ndata: {}\n\n", 0, marks.RESPONSE_END),
        (b"event: response.incomplete\ndata: {}\n\n", 0, marks.RESPONSE_END),
        (b"event: response.created\ndata: {}\n\n", 0, 0),
        (b"event: error\ndata: {}\n\n", 0, marks.ERROR_EVENT),
        (FINISH_CHUNK, marks.FINISH_REASON, marks.FINISH_REASON),
        (LONG_FINISH_CHUNK, marks.FINISH_REASON, marks.FINISH_REASON),
        # Quoted inside model text, the quotes are escaped: no finishReason key.
        (b'data: {"text": "say \\"finishReason\\" ' + b"z" * 50 + b'"}\n\n', marks.DATA_MARKS, 0),
        (b'data: {"finishReason": "STOP"}\n\n', marks.FINISH_REASON, marks.FINISH_REASON),
        (b'datum: {"finishReason": "STOP"}\n\n', marks.DATA_MARKS, 0),
    ],
)
def test_marks(scanner_class: Any, stream: bytes, watch: int, expected: int) -> None:
    assert every_split(scanner_class, stream, watch) == {expected}


def test_marks_is_read_only_and_starts_empty(scanner_class: Any) -> None:
    scanner = scanner_class(marks.DATA_MARKS)
    assert scanner.marks == 0
    with pytest.raises(AttributeError):
        scanner.marks = 1


@PROPERTIES
@given(case=streams_and_chunks(ANY_PREFIX), watch=WATCHES)
def test_marks_match_reference_however_split(
    scanner_class: Any, case: tuple[bytes, list[bytes]], watch: int
) -> None:
    stream, chunks = case
    expected = reference_snapshots(stream, watch)
    reference = _reference_marks(stream, watch)
    scanner, offset = scanner_class(watch), 0
    for chunk in chunks:
        scanner.feed(chunk)
        offset += len(chunk)
        assert marked(scanner) == (expected[offset], reference[offset]), (chunk, offset)


@PROPERTIES
@given(case=streams_and_chunks(ANY_PREFIX), watch=WATCHES)
def test_implementations_agree_on_marks(
    fast_class: Any, case: tuple[bytes, list[bytes]], watch: int
) -> None:
    stream, chunks = case
    pure, fast, bytewise = PureScanner(watch), fast_class(watch), fast_class(watch)
    offset = 0
    for chunk in chunks:
        pure.feed(chunk)
        fast.feed(chunk)
        for i in range(offset, offset + len(chunk)):
            bytewise.feed(stream[i : i + 1])
        offset += len(chunk)
        assert marked(pure) == marked(fast) == marked(bytewise), offset


@PROPERTIES
@given(case=streams_and_chunks(ANY_PREFIX), watch=WATCHES)
def test_feeding_to_each_dispatch_keeps_the_marks(
    scanner_class: Any, case: tuple[bytes, list[bytes]], watch: int
) -> None:
    stream, chunks = case
    reference = _reference_marks(stream, watch)
    scanner, offset = scanner_class(watch), 0
    for chunk in chunks:
        at = scanner.feed_to_dispatch(chunk, 0)
        while at < len(chunk):
            assert scanner.marks == reference[offset + at + 1]
            at = scanner.feed_to_dispatch(chunk, at + 1)
        offset += len(chunk)
        assert scanner.marks == reference[offset]


def _reference_marks(stream: bytes, watch: int) -> list[int]:
    ref = Reference(watch)
    found = [ref.marks]
    for b in stream:
        ref.byte(b)
        found.append(ref.marks)
    return found
