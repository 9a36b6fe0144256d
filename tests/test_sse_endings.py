"""How the relay ends SSE responses upstream did not end properly: pure functions."""

from __future__ import annotations

from relay.core.endings import (
    close_partial_frame,
    ended_by_upstream,
    ending_frames,
    needs_truncation_error,
)
from relay.sse.scanner import FrameScanner

START = b'event: message_start\ndata: {"type":"message_start"}\n\n'
STOP = b'event: message_stop\ndata: {"type":"message_stop"}\n\n'
ERROR = b'event: error\ndata: {"type":"error"}\n\n'


def _scanned(data: bytes) -> FrameScanner:
    scanner = FrameScanner()
    scanner.feed(data)
    return scanner


def test_only_a_started_messages_stream_can_be_truncated() -> None:
    assert not needs_truncation_error(_scanned(b"event: update\ndata: 1\n\n"))
    assert needs_truncation_error(_scanned(START))
    assert not needs_truncation_error(_scanned(START + STOP))
    assert not needs_truncation_error(_scanned(START + ERROR))


def test_ended_by_upstream_needs_its_last_word_in_whole_frames() -> None:
    assert ended_by_upstream(_scanned(START + STOP))
    assert ended_by_upstream(_scanned(START + ERROR))
    assert not ended_by_upstream(_scanned(START))
    assert not ended_by_upstream(_scanned(START + STOP + b"event: ping\n"))


def test_a_partial_frame_is_closed_as_a_ping_before_the_error() -> None:
    assert close_partial_frame(_scanned(START)) == b""
    assert close_partial_frame(_scanned(START + b"event: content_block_delta\n")) == (
        b"event: ping\n\n"
    )
    assert close_partial_frame(_scanned(START + b'data: {"ty')) == b"\nevent: ping\n\n"
    frames = ending_frames(_scanned(START + b"data: {"), "api_error", "lost")
    assert frames.startswith(b"\nevent: ping\n\nevent: error\ndata: ")
    assert frames.endswith(b"\n\n") and b'"api_error"' in frames
