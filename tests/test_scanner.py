"""FrameScanner: both implementations, against the SSE rules and against the official SDK.

The keepalive tests drive the relay's own insertion code (`StreamMachine`, with each
scanner in turn) and compare what the SDK's decoder reads with and without it.
Every test runs on the pure-Python twin and on the Cython extension. A missing extension
fails these tests unless SSE_RELAY_NO_EXTENSIONS=1 says it is meant to be missing.
"""

from __future__ import annotations

import itertools
import math
import os
import subprocess
import sys
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any
from unittest import mock

import pytest
from anthropic._streaming import SSEDecoder
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import relay.sse.scanner
from relay.core import stream_state
from relay.core.body_policy import BodyPolicy
from relay.core.exchange import RequestHead, StreamSettings
from relay.core.keepalive import COMMENT_FRAME
from relay.core.keepalive import FRAMES as KEEPALIVE_FRAMES
from relay.core.retry import RetryPolicy
from relay.core.stream_actions import Action, ArmTimer, OpenUpstream, SendHead, SendKeepalive
from relay.core.stream_machine import StreamMachine
from relay.sse import marks
from relay.sse.scanner_pure import FrameScanner as PureScanner

FastScanner: Any
try:
    from relay.sse._fastsse import FrameScanner as FastScanner

    FAST_IMPORT_ERROR = ""
except ImportError as exc:
    FastScanner = None
    FAST_IMPORT_ERROR = repr(exc)

NO_EXTENSIONS = os.environ.get("SSE_RELAY_NO_EXTENSIONS") == "1"
BOM = b"\xef\xbb\xbf"
PING_FRAME = b'event: ping\ndata: {"type": "ping"}\n\n'

Snapshot = tuple[bool, bool, int, int, bool, bool, bool]
EVENT_MARKS = {
    b"message_start": marks.MESSAGE_START,
    b"message_stop": marks.MESSAGE_STOP,
    b"error": marks.ERROR_EVENT,
    b"response.completed": marks.RESPONSE_END,
    b"response.failed": marks.RESPONSE_END,
    b"response.incomplete": marks.RESPONSE_END,
}


def fast_scanner_class() -> Any:
    if FastScanner is None:
        if NO_EXTENSIONS:
            pytest.skip("SSE_RELAY_NO_EXTENSIONS=1: the Cython extension is not built")
        pytest.fail(
            f"relay.sse._fastsse is not built ({FAST_IMPORT_ERROR}); run "
            "`python setup.py build_ext --inplace` or set SSE_RELAY_NO_EXTENSIONS=1"
        )
    return FastScanner


@pytest.fixture(params=["python", "cython"], scope="module")
def scanner_class(request: pytest.FixtureRequest) -> Any:
    return PureScanner if request.param == "python" else fast_scanner_class()


@pytest.fixture(scope="module")
def fast_class() -> Any:
    return fast_scanner_class()


def snapshot(scanner: Any) -> Snapshot:
    return (
        scanner.at_boundary,
        scanner.at_line_start,
        scanner.frames,
        scanner.pings,
        scanner.saw_message_start,
        scanner.saw_message_stop,
        scanner.saw_error,
    )


def fed(scanner_class: Any, *chunks: bytes | bytearray | memoryview) -> Any:
    scanner = scanner_class()
    for chunk in chunks:
        scanner.feed(chunk)
    return scanner


class Reference:
    """The spec, written the obvious way: byte by byte, whole lines buffered."""

    def __init__(self, watch: int = 0) -> None:
        self.watch = watch  # the data-line marks looked for
        self.marks = self.frame_marks = 0
        self.bom_pending: bytes | None = b""  # None once past the stream start
        self.line = bytearray()
        self.after_cr = False
        self.has_field = False
        self.event: bytes | None = None
        self.frames = self.pings = 0
        self.saw_message_start = self.saw_message_stop = self.saw_error = False

    def byte(self, b: int) -> None:
        if self.bom_pending is not None:
            pending = self.bom_pending + bytes([b])
            if BOM.startswith(pending):
                self.bom_pending = pending if len(pending) < 3 else None
                return
            self.bom_pending = None
            for x in pending:
                self.byte(x)
            return
        if b == 0x0A and self.after_cr:
            self.after_cr = False
            return
        self.after_cr = b == 0x0D
        if b in (0x0A, 0x0D):
            self.end_line(bytes(self.line))
            self.line.clear()
        else:
            self.line.append(b)

    def end_line(self, line: bytes) -> None:
        if not line:
            if self.has_field:
                self.frames += 1
                self.pings += self.event == b"ping"
                self.saw_message_start |= self.event == b"message_start"
                self.saw_message_stop |= self.event == b"message_stop"
                self.saw_error |= self.event == b"error"
                self.marks |= EVENT_MARKS.get(self.event or b"", 0) | self.frame_marks
            self.has_field, self.event, self.frame_marks = False, None, 0
        elif not line.startswith(b":"):
            self.has_field = True
            name, colon, value = line.partition(b":")
            value = value[1:] if value.startswith(b" ") else value
            if name == b"event":
                self.event = value
            elif name == b"data" and colon:
                self.frame_marks |= self.data_marks(value)

    def data_marks(self, value: bytes) -> int:
        found = 0
        if self.watch & marks.DONE and value.startswith(b"[DONE]"):
            found |= marks.DONE
        if self.watch & marks.DATA_ERROR and value.startswith(b'{"error"'):
            found |= marks.DATA_ERROR
        if self.watch & marks.FINISH_REASON and b'"finishReason"' in value:
            found |= marks.FINISH_REASON
        return found

    @property
    def at_line_start(self) -> bool:
        return not self.line and not self.bom_pending

    @property
    def at_boundary(self) -> bool:
        return self.at_line_start and not self.has_field


def reference_snapshots(stream: bytes, watch: int = 0) -> list[Snapshot]:
    """The reference's snapshot after each prefix of `stream`, from empty to whole."""
    ref = Reference(watch)
    snapshots = [snapshot(ref)]
    for b in stream:
        ref.byte(b)
        snapshots.append(snapshot(ref))
    return snapshots


# -- unit tests ----------------------------------------------------------------------


def test_fresh_scanner(scanner_class: Any) -> None:
    assert snapshot(scanner_class()) == (True, True, 0, 0, False, False, False)


def test_empty_chunk_changes_nothing(scanner_class: Any) -> None:
    for prefix in (b"", b"\xef", b"data: x", b"data: x\r", b"data: x\n"):
        assert snapshot(fed(scanner_class, prefix, b"")) == snapshot(fed(scanner_class, prefix))


def test_counters_are_read_only(scanner_class: Any) -> None:
    scanner = scanner_class()
    for name in ("frames", "pings", "saw_message_start", "saw_message_stop", "saw_error"):
        with pytest.raises(AttributeError):
            setattr(scanner, name, 1)
    for name in ("at_boundary", "at_line_start"):
        with pytest.raises(AttributeError):
            setattr(scanner, name, False)


def test_accepts_bytes_likes(scanner_class: Any) -> None:
    stream = b"event: ping\n\nevent: error\n"
    expected = snapshot(fed(scanner_class, stream))
    assert snapshot(fed(scanner_class, bytearray(stream))) == expected
    assert snapshot(fed(scanner_class, memoryview(stream))) == expected
    with pytest.raises(TypeError):
        scanner_class().feed(5)


@pytest.mark.parametrize("ending", [b"\n", b"\r\n", b"\r"])
def test_frame_dispatch_and_boundaries(scanner_class: Any, ending: bytes) -> None:
    scanner = scanner_class()
    scanner.feed(b"event: x" + ending)
    assert (scanner.at_boundary, scanner.at_line_start, scanner.frames) == (False, True, 0)
    scanner.feed(b"data: {}")
    assert (scanner.at_boundary, scanner.at_line_start) == (False, False)
    scanner.feed(ending)
    assert (scanner.at_boundary, scanner.at_line_start, scanner.frames) == (False, True, 0)
    scanner.feed(ending)
    assert (scanner.at_boundary, scanner.at_line_start, scanner.frames) == (True, True, 1)


def test_crlf_split_across_chunks_is_one_line_ending(scanner_class: Any) -> None:
    scanner = fed(scanner_class, b"data: x\r")
    assert (scanner.at_boundary, scanner.at_line_start) == (False, True)
    scanner.feed(b"\n")  # completes the `\r\n`: no empty line, no dispatch
    assert (scanner.at_boundary, scanner.at_line_start, scanner.frames) == (False, True, 0)
    scanner.feed(b"\r")
    assert (scanner.at_boundary, scanner.frames) == (True, 1)
    scanner.feed(b"\n")
    scanner.feed(b"data: y\r\n\r")
    scanner.feed(b"\n")
    assert (scanner.at_boundary, scanner.frames) == (True, 2)


def test_frame_ending_cr_is_a_boundary_before_its_lf(scanner_class: Any) -> None:
    scanner = fed(scanner_class, b"event: ping\ndata: {}\n\r")
    assert (scanner.at_boundary, scanner.frames, scanner.pings) == (True, 1, 1)
    scanner.feed(b"\n")  # swallowed: the `\r` ended the line already
    assert (scanner.at_boundary, scanner.frames) == (True, 1)
    scanner.feed(b"\n")  # a real empty line, of an empty frame
    assert (scanner.at_boundary, scanner.frames) == (True, 1)


def test_cr_cr_is_two_line_endings(scanner_class: Any) -> None:
    assert fed(scanner_class, b"data: x\r\r").frames == 1
    assert fed(scanner_class, b"data: x\r", b"\r").frames == 1
    assert fed(scanner_class, b"data: x\r", b"\r", b"\n", b"\r\n").frames == 1


def test_lf_lf_after_cr_is_one_empty_line(scanner_class: Any) -> None:
    # `\r\n` ends the line, the second `\n` is the empty line.
    assert fed(scanner_class, b"data: x\r\n\n").frames == 1
    assert fed(scanner_class, b"data: x\r", b"\n\n").frames == 1
    assert fed(scanner_class, b"data: x\r", b"\n", b"\n").frames == 1


def test_mixed_line_endings(scanner_class: Any) -> None:
    scanner = fed(scanner_class, b"event: ping\r\ndata: a\rdata: b\n\r\nevent: error\n\r")
    assert (scanner.frames, scanner.pings, scanner.saw_error) == (2, 1, True)
    assert scanner.at_boundary


def test_comments_are_not_fields(scanner_class: Any) -> None:
    scanner = fed(scanner_class, b": hello\n")
    assert scanner.at_boundary
    scanner.feed(b":\n\n:x\r\n\r\n")
    assert (scanner.frames, scanner.at_boundary) == (0, True)
    scanner.feed(b": mid")
    assert (scanner.at_boundary, scanner.at_line_start) == (False, False)
    scanner.feed(b"dle\ndata: x\n: after a field\n")
    assert (scanner.at_boundary, scanner.at_line_start) == (False, True)
    scanner.feed(b"\n")
    assert (scanner.frames, scanner.at_boundary) == (1, True)


def test_empty_frames_are_not_counted(scanner_class: Any) -> None:
    assert fed(scanner_class, b"\n\n\r\r\r\n\r\n").frames == 0


@pytest.mark.parametrize(
    "fields", [b"id: 7\n", b"id\n", b"retry: 10\n", b"foo: bar\n", b"foo\n", b"data\n", b"event\n"]
)
def test_any_field_makes_a_frame(scanner_class: Any, fields: bytes) -> None:
    scanner = fed(scanner_class, fields)
    assert (scanner.at_boundary, scanner.at_line_start) == (False, True)
    scanner.feed(b"\n")
    assert (scanner.frames, scanner.at_boundary, scanner.pings) == (1, True, 0)


def test_whole_bom_is_skipped(scanner_class: Any) -> None:
    scanner = fed(scanner_class, BOM)
    assert (scanner.at_boundary, scanner.at_line_start) == (True, True)
    scanner.feed(b"event: ping\n\n")
    assert (scanner.frames, scanner.pings) == (1, 1)
    assert fed(scanner_class, BOM + b"event: message_start\n\n").saw_message_start
    assert fed(scanner_class, BOM + b": comment\n\n").frames == 0


def test_split_bom_is_skipped(scanner_class: Any) -> None:
    scanner = scanner_class()
    for byte in (b"\xef", b"\xbb"):
        scanner.feed(byte)
        assert (scanner.at_boundary, scanner.at_line_start) == (False, False)
    scanner.feed(b"\xbf")
    assert (scanner.at_boundary, scanner.at_line_start) == (True, True)
    scanner.feed(b"event: message_stop\n\n")
    assert scanner.saw_message_stop
    assert fed(scanner_class, b"\xef\xbb", b"\xbfevent: ping\n\n").pings == 1


@pytest.mark.parametrize(
    "chunks",
    [
        (b"\xef\xbbevent: ping\n\n",),
        (b"\xef", b"event: ping\n\n"),
        (b"\xef\xbb", b"event: ping\n", b"\n"),
        (b"\xef\xbb\xbf\xef\xbb\xbfevent: ping\n\n",),  # only the first BOM is skipped
        (b"\n\xef\xbb\xbfevent: ping\n\n",),  # a BOM only counts at the stream start
    ],
)
def test_partial_or_late_bom_is_line_content(scanner_class: Any, chunks: tuple[bytes]) -> None:
    scanner = fed(scanner_class, *chunks)
    assert (scanner.frames, scanner.pings) == (1, 0)


def test_partial_bom_then_line_ending_is_a_field_line(scanner_class: Any) -> None:
    scanner = fed(scanner_class, b"\xef\xbb", b"\r")
    assert (scanner.at_boundary, scanner.at_line_start) == (False, True)
    scanner.feed(b"\n\n")
    assert (scanner.frames, scanner.at_boundary) == (1, True)


@pytest.mark.parametrize(
    ("line", "expected"),
    [
        (b"event: ping", "ping"),
        (b"event:ping", "ping"),
        (b"event: message_start", "message_start"),
        (b"event:message_start", "message_start"),
        (b"event: message_stop", "message_stop"),
        (b"event: error", "error"),
        (b"event:  message_start", None),
        (b"event: message_start ", None),
        (b"event: Ping", None),
        (b"Event: ping", None),
        (b"event : ping", None),
        (b"events: ping", None),
        (b" event: ping", None),
        (b"event", None),
        (b"event:", None),
        (b"event: ", None),
        (b"event: pings", None),
        (b"event: message_", None),
        (b"event: ping" + b" " * 40, None),
        (b"event: " + b"p" * 10_000, None),
        (b"data: ping", None),
        (b": event: ping", None),
    ],
)
def test_event_names(scanner_class: Any, line: bytes, expected: str | None) -> None:
    stream = line + b"\ndata: {}\n\n"
    for cut in range(len(stream) + 1):
        scanner = fed(scanner_class, stream[:cut], stream[cut:])
        assert scanner.frames == 1
        assert scanner.pings == (expected == "ping")
        assert scanner.saw_message_start == (expected == "message_start")
        assert scanner.saw_message_stop == (expected == "message_stop")
        assert scanner.saw_error == (expected == "error")


def test_last_event_field_wins(scanner_class: Any) -> None:
    assert fed(scanner_class, b"event: ping\nevent: x\n\n").pings == 0
    assert fed(scanner_class, b"event: x\nevent: ping\n\n").pings == 1
    assert fed(scanner_class, b"event: ping\nevent\n\n").pings == 0
    long_name = b"event: " + b"x" * 100
    assert fed(scanner_class, b"event: error\n" + long_name + b"\n\n").saw_error is False


def test_event_name_does_not_leak_into_next_frame(scanner_class: Any) -> None:
    scanner = fed(scanner_class, b"event: ping\n\ndata: x\n\n")
    assert (scanner.frames, scanner.pings) == (2, 1)
    scanner.feed(b"event: ping\n: c\n\n\n\nid: 1\n\n")
    assert (scanner.frames, scanner.pings) == (4, 2)


def test_ping_counting(scanner_class: Any) -> None:
    scanner = fed(scanner_class, PING_FRAME * 5, b"event: message_start\ndata: {}\n\n", PING_FRAME)
    assert (scanner.frames, scanner.pings, scanner.saw_message_start) == (7, 6, True)
    assert not (scanner.saw_message_stop or scanner.saw_error)


def test_very_long_data_line_in_many_chunks(scanner_class: Any) -> None:
    line = b"data: " + b"ev:ent\x00\xff" * 300_000
    scanner = fed(scanner_class, b"event: message_stop\n")
    for start in range(0, len(line), 997):
        scanner.feed(line[start : start + 997])
        assert (scanner.at_boundary, scanner.at_line_start) == (False, False)
    scanner.feed(b"\r")
    assert (scanner.at_boundary, scanner.at_line_start, scanner.frames) == (False, True, 0)
    scanner.feed(b"\n\r\n")
    assert (scanner.frames, scanner.saw_message_stop, scanner.at_boundary) == (1, True, True)


def test_long_event_line_split_bytewise(scanner_class: Any) -> None:
    stream = b"event: " + b"message_start" * 10 + b"\n\nevent:message_start\n\n"
    scanner = fed(scanner_class, *(stream[i : i + 1] for i in range(len(stream))))
    assert (scanner.frames, scanner.saw_message_start) == (2, True)


# -- which implementation is used ----------------------------------------------------


def test_extension_is_built_unless_disabled() -> None:
    if NO_EXTENSIONS:
        assert relay.sse.scanner.IMPLEMENTATION == "python"
        assert relay.sse.scanner.FrameScanner is PureScanner
    else:
        assert FastScanner is not None, (
            f"relay.sse._fastsse is not built ({FAST_IMPORT_ERROR}); run "
            "`python setup.py build_ext --inplace` or set SSE_RELAY_NO_EXTENSIONS=1"
        )
        assert relay.sse.scanner.IMPLEMENTATION == "cython"
        assert relay.sse.scanner.FrameScanner is FastScanner


@pytest.mark.parametrize(
    ("env", "setup", "expected"),
    [
        ({"SSE_RELAY_NO_EXTENSIONS": "1"}, "", "python"),
        ({}, "sys.modules['relay.sse._fastsse'] = None", "python"),  # import fails: fall back
    ],
)
def test_implementation_choice(env: dict[str, str], setup: str, expected: str) -> None:
    code = f"import sys\n{setup}\nimport relay.sse.scanner as s\nprint(s.IMPLEMENTATION)"
    environ = {k: v for k, v in os.environ.items() if k != "SSE_RELAY_NO_EXTENSIONS"} | env
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    out = subprocess.run(
        [sys.executable, "-c", code], env=environ, cwd=root, capture_output=True, check=True
    )
    assert out.stdout.decode().strip() == expected


# -- property tests ------------------------------------------------------------------

TEXT = st.text(
    st.characters(exclude_characters="\r\n", exclude_categories=["Cs"]), max_size=12
).map(str.encode)
RECOGNISED = st.sampled_from(
    [b"ping", b"message_start", b"message_stop", b"error", *list(EVENT_MARKS)[3:]]
)
# Data values that set a watched mark, near misses, and ones long enough to be searched
# past the scanner's kept head (`"finishReason"` anywhere, also straddling chunks).
DATA_VALUES = st.one_of(
    st.sampled_from([b"[DONE]", b"[DONE] ", b"[DON", b" [DONE]", b'{"error"', b'{"error":{}}']),
    st.sampled_from([b'{ "error"', b'"finishReason"', b'\\"finishReason\\"', b"finishReason"]),
    st.tuples(st.integers(0, 80), st.sampled_from([b'"finishReason"', b'"finishReaso'])).map(
        lambda parts: b"x" * parts[0] + parts[1] + b"}"
    ),
)
NEAR_MISSES = st.sampled_from(
    [b"", b" ping", b"  message_start", b"error ", b"pin", b"content_block_delta", b"x" * 40]
)
LONG_NAMES = st.integers(26, 200).map(lambda k: b"e" * k)
NAMES = st.one_of(RECOGNISED, RECOGNISED, RECOGNISED, NEAR_MISSES, LONG_NAMES, TEXT)
EVENT_FIELDS = st.sampled_from([b"event:", b"event: ", b"event: ", b"event"])
EVENT_LINES = st.tuples(EVENT_FIELDS, NAMES).map(b"".join)
LINES = st.one_of(
    EVENT_LINES,
    EVENT_LINES,
    st.tuples(st.sampled_from([b"data:", b"data: ", b"data"]), TEXT).map(b"".join),
    st.tuples(st.sampled_from([b"data:", b"data: ", b"data", b"dat: "]), DATA_VALUES).map(b"".join),
    st.integers(100, 5_000).map(lambda k: b"data: " + b"x" * k),
    TEXT.map(lambda t: b":" + t),
    TEXT.map(lambda t: b"id: " + t.replace(b"\x00", b"")),
    st.integers(0, 10**6).map(lambda k: b"retry: %d" % k),
    st.sampled_from([b"foo: bar", b"eventx: ping", b"Event: ping", b"e", b"ev", b"id"]),
)
EOLS = st.sampled_from([b"\n", b"\r\n", b"\r"])
FRAMES = st.tuples(st.lists(st.tuples(LINES, EOLS).map(b"".join), max_size=5), EOLS).map(
    lambda parts: b"".join(parts[0]) + parts[1]
)


@st.composite
def sse_streams(draw: st.DrawFn, prefixes: Sequence[bytes]) -> bytes:
    """Whole frames, then maybe an unterminated frame and a partial line."""
    prefix = draw(st.sampled_from(prefixes))
    frames = draw(st.lists(FRAMES, max_size=8))
    tail_lines = draw(st.lists(st.tuples(LINES, EOLS).map(b"".join), max_size=2))
    partial = draw(st.one_of(st.just(b""), LINES))
    return prefix + b"".join(frames) + b"".join(tail_lines) + partial


@st.composite
def chunked(draw: st.DrawFn, stream: bytes) -> list[bytes]:
    """`stream` cut into chunks, some of them empty, some cut right after each `\\r`."""
    how = draw(st.sampled_from(["random", "single bytes", "after each CR", "whole"]))
    if how == "single bytes":
        return [stream[i : i + 1] for i in range(len(stream))]
    if how == "whole":
        return [stream]
    cuts = draw(st.lists(st.integers(0, len(stream)), max_size=30))
    if how == "after each CR":
        cuts += [i + 1 for i, b in enumerate(stream) if b == 0x0D]
    bounds = [0, *sorted(cuts), len(stream)]
    return [stream[a:b] for a, b in itertools.pairwise(bounds)]


ANY_PREFIX = [b"", b"", BOM, b"\xef", b"\xef\xbb", BOM + BOM, BOM[:2] + b"\n"]
PROPERTIES = settings(
    max_examples=300,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)


@st.composite
def streams_and_chunks(draw: st.DrawFn, prefixes: Sequence[bytes]) -> tuple[bytes, list[bytes]]:
    stream = draw(sse_streams(prefixes))
    return stream, draw(chunked(stream))


@PROPERTIES
@given(case=streams_and_chunks(ANY_PREFIX))
def test_matches_reference_however_split(
    scanner_class: Any, case: tuple[bytes, list[bytes]]
) -> None:
    stream, chunks = case
    expected = reference_snapshots(stream)
    scanner, offset = scanner_class(), 0
    for chunk in chunks:
        scanner.feed(chunk)
        offset += len(chunk)
        assert snapshot(scanner) == expected[offset], (chunk, offset)
    bytewise = scanner_class()
    for i in range(len(stream)):
        bytewise.feed(stream[i : i + 1])
        assert snapshot(bytewise) == expected[i + 1], i


@PROPERTIES
@given(case=streams_and_chunks(ANY_PREFIX))
def test_implementations_agree(fast_class: Any, case: tuple[bytes, list[bytes]]) -> None:
    stream, chunks = case
    pure, fast, bytewise = PureScanner(), fast_class(), fast_class()
    offset = 0
    for chunk in chunks:
        pure.feed(chunk)
        fast.feed(chunk)
        for i in range(offset, offset + len(chunk)):
            bytewise.feed(stream[i : i + 1])
        offset += len(chunk)
        assert snapshot(pure) == snapshot(fast) == snapshot(bytewise), offset


SdkEvent = tuple[str | None, str, str | None, int | None]


def sdk_stream(chunks: Iterable[bytes]) -> Iterator[SdkEvent]:
    """The SDK decoder's events, but pings (the relay's ping keepalives among them; the
    SDK skips pings) and events without data. The decoder dispatches those where the
    SSE spec dispatches nothing: on every blank line once an `id:` was seen, so after
    each comment keepalive too. Unnamed events stay (a frame the relay broke shows
    there), though the SDK skips them as well."""
    for sse in SSEDecoder().iter_bytes(iter(chunks)):
        if sse.event != "ping" and sse.data:
            yield (sse.event, sse.data, sse.id, sse.retry)


def sdk_events(chunks: Iterable[bytes]) -> list[SdkEvent]:
    return list(sdk_stream(chunks))


def sdk_reading(chunks: Iterable[bytes]) -> tuple[list[SdkEvent], bool]:
    """`sdk_events` as far as the decoder gets, and whether it then gave up: it raises
    on a line that is not UTF-8 (a lone piece of a BOM at the start, say)."""
    events: list[SdkEvent] = []
    try:
        for event in sdk_stream(chunks):
            events.append(event)
    except UnicodeDecodeError:
        return events, True
    return events, False


def drop_prefix(chunks: list[bytes], count: int) -> list[bytes]:
    """`chunks` without their first `count` bytes, chunking otherwise kept."""
    out = []
    for chunk in chunks:
        cut = min(count, len(chunk))
        count -= cut
        out.append(chunk[cut:])
    return out


# -- keepalives as the relay inserts them ----------------------------------------------

INTERVAL = 1.0
SSE_HEAD = [(b"content-type", b"text/event-stream")]
#: Upstream silences: (before chunk i, or after the last, wrapped; seconds). The first
#: chunks are favoured: a keepalive before upstream's first byte meets a BOM.
PAUSES = st.lists(
    st.tuples(st.one_of(st.integers(0, 3), st.integers(0, 10_000)), st.floats(0.0, 3.5 * INTERVAL)),
    min_size=1,
    max_size=8,
)


def stream_settings(frame: bytes) -> StreamSettings:
    return StreamSettings(
        keepalive_interval=INTERVAL,
        keepalive_frame=frame,
        read_timeout=30 * INTERVAL,
        send_timeout=10 * INTERVAL,
        body_timeout=5 * INTERVAL,
        max_body_bytes=1000,
        retry=RetryPolicy(attempts=1, budget=0.0),
        body_policy=BodyPolicy(),
    )


@dataclass
class Relayed:
    """What the relay wrote to the client for one upstream body, write by write."""

    writes: list[bytes] = field(default_factory=list)
    keepalives: set[int] = field(default_factory=set)  # indexes into `writes`

    def upstream_part(self) -> bytes:
        return b"".join(w for i, w in enumerate(self.writes) if i not in self.keepalives)

    def first_write(self) -> int | None:
        """The index of the first write with bytes in it."""
        return next((i for i, data in enumerate(self.writes) if data), None)


def first(chunks: list[bytes]) -> bytes:
    """The first chunk with bytes in it."""
    return next((chunk for chunk in chunks if chunk), b"")


def relay_through_machine(
    scanner_class: Any, chunks: list[bytes], pauses: dict[int, float], frame: bytes
) -> Relayed:
    """Upstream's body through the relay's own `StreamMachine`, as `RelayStream` runs
    it: the head at t=0, chunk i after a silence of `pauses.get(i, 0)` seconds (and
    `pauses[len(chunks)]` after the last), the timer woken whenever the machine armed
    it, and every keepalive it asks for written where it asks. The machine's scanner
    is `scanner_class`, so both implementations are driven."""
    relayed = Relayed()
    timer, now = math.inf, 0.0

    def apply(actions: list[Action]) -> None:
        nonlocal timer
        for action in actions:
            if isinstance(action, ArmTimer):
                timer = action.at
            elif isinstance(action, SendKeepalive):
                relayed.keepalives.add(len(relayed.writes))
                relayed.writes.append(action.data)
            else:  # a clean stream: nothing else may reach the client before its end
                assert isinstance(action, OpenUpstream | SendHead), action

    def wait(seconds: float) -> None:
        nonlocal timer, now
        until = now + seconds
        while timer <= until:
            now, timer = max(now, timer), math.inf
            apply(machine.tick(now))
        now = until

    head = RequestHead(b"POST", b"/v1/messages", [], None)
    with mock.patch.object(stream_state, "FrameScanner", scanner_class):
        machine = StreamMachine(head, stream_settings(frame), now=0.0, jitter=lambda: 0.5)
        apply(machine.start(now))
        apply(machine.upstream_opened(now))
        apply(machine.response_head(200, SSE_HEAD, now))
        for index, chunk in enumerate(chunks):
            wait(pauses.get(index, 0.0))
            relayed.writes.append(machine.response_body(chunk, now))
        wait(pauses.get(len(chunks), 0.0))
    return relayed


def as_a_conforming_client_reads(chunks: list[bytes]) -> list[bytes]:
    """Without a leading BOM: the SDK's decoder keeps it, a WHATWG client drops it."""
    return drop_prefix(chunks, len(BOM)) if b"".join(chunks).startswith(BOM) else chunks


@st.composite
def relay_cases(draw: st.DrawFn) -> tuple[bytes, list[bytes], dict[int, float]]:
    stream, chunks = draw(streams_and_chunks(ANY_PREFIX))
    pauses = {index % (len(chunks) + 1): gap for index, gap in draw(PAUSES)}
    return stream, chunks, pauses


@PROPERTIES
@given(case=relay_cases())
@pytest.mark.parametrize("frame", list(KEEPALIVE_FRAMES.values()), ids=list(KEEPALIVE_FRAMES))
def test_the_relays_keepalives_are_invisible_to_the_sdk(
    scanner_class: Any, frame: bytes, case: tuple[bytes, list[bytes], dict[int, float]]
) -> None:
    stream, chunks, pauses = case
    relayed = relay_through_machine(scanner_class, chunks, pauses, frame)
    assert all(relayed.writes[i] == frame for i in relayed.keepalives)
    keepalive_first = relayed.first_write() in relayed.keepalives
    # Upstream's bytes go out untouched, but for a BOM the relay must drop when a
    # keepalive went first (after one, it would no longer be at the stream's start).
    upstream = relayed.upstream_part()
    if upstream != stream:
        # Or, when the stream so far is only a BOM's start, it waits for the rest.
        waiting = len(stream) < len(BOM) and BOM.startswith(stream) and upstream == b""
        assert keepalive_first
        assert waiting or (stream.startswith(BOM) and upstream == stream[3:])
        if waiting:
            return  # nothing of upstream's is out yet: nothing for a client to read
    sent = as_a_conforming_client_reads(relayed.writes)
    assert sdk_reading(sent) == sdk_reading(as_a_conforming_client_reads(chunks))


def test_keepalives_go_in_at_frame_boundaries_only() -> None:
    """A silence mid-frame gets no keepalive; one between frames gets one per interval;
    the SDK sees upstream's events."""
    chunks = [b"event: message_start\n", b'data: {"a": 1}\n\n', b"event: message_stop\n\n"]
    relayed = relay_through_machine(PureScanner, chunks, {1: 1.5, 2: 2.2}, COMMENT_FRAME)
    assert relayed.writes == [chunks[0], chunks[1], COMMENT_FRAME, COMMENT_FRAME, chunks[2]]
    assert sdk_events(relayed.writes) == sdk_events(chunks)


def test_negative_control_a_keepalive_inside_a_frame_changes_events() -> None:
    """The SDK comparison above can fail: a keepalive after a field line is visible
    (its blank line dispatches the frame early)."""
    chunks = [b"event: message_start\n", b'data: {"a": 1}\n\n']
    assert sdk_events(chunks) == [("message_start", '{"a": 1}', None, None)]
    assert sdk_events([chunks[0], COMMENT_FRAME, chunks[1]]) != sdk_events(chunks)


def test_a_bom_split_across_reads_after_a_keepalive_is_dropped() -> None:
    """A keepalive before upstream's first byte, then a BOM split across reads: the
    relay holds the BOM's start until it is whole, and drops it (after a keepalive a
    client would read it as part of the first line)."""
    stream = BOM + b'event: message_start\ndata: {"a": 1}\n\n'
    chunks = [stream[:1], stream[1:]]
    relayed = relay_through_machine(PureScanner, chunks, {0: 1.5}, COMMENT_FRAME)
    assert relayed.writes[0] == COMMENT_FRAME
    assert sdk_events(relayed.writes) == sdk_events(as_a_conforming_client_reads(chunks))
