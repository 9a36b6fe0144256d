"""How an SSE response ends when upstream did not end it properly.

Everything here is bytes appended after what upstream sent: a partial frame is closed
so that no parser can glue it to what follows, then one error frame in the provider's
own format (relay/core/providers.py) tells its SDKs to raise their typed API error.
"""

from __future__ import annotations

from relay.core.errors import RelayError
from relay.core.providers import ANTHROPIC, Provider
from relay.sse.scanner import FrameScanner


def close_partial_frame(scanner: FrameScanner, provider: Provider = ANTHROPIC) -> bytes:
    """Bytes that end a frame upstream left unfinished (nothing if none is open)."""
    if scanner.at_boundary:
        return b""
    return (b"" if scanner.at_line_start else b"\n") + provider.discard_partial


def needs_truncation_error(scanner: FrameScanner, provider: Provider = ANTHROPIC) -> bool:
    """A stream upstream ended cleanly without its terminal marker or an error of its own:
    the SDKs would return a silently truncated answer, so the relay must add an error."""
    return provider.truncated(scanner.marks)


def ended_by_upstream(scanner: FrameScanner, provider: Provider = ANTHROPIC) -> bool:
    """Upstream already sent its last word (its terminal marker or its own error) in whole
    frames: nothing the relay could add would be news, only a contradiction."""
    return provider.ended(scanner.marks) and scanner.at_boundary


def ending_frames(
    scanner: FrameScanner,
    error_type: str,
    message: str,
    provider: Provider = ANTHROPIC,
    status: int = RelayError.status,
) -> bytes:
    """Close any partial frame, then one well-formed error frame (`status`: the HTTP
    status the error would have had as an answer; Gemini's frames carry it)."""
    return close_partial_frame(scanner, provider) + provider.render_frame(
        error_type, message, status
    )
