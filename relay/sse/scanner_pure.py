"""Pure-Python twin of the Cython `relay.sse._fastsse.FrameScanner`.

Both follow one state machine (keep them in step): the position within the current
line, whether the current frame already has a field line, and the `event` name of the
frame as far as it matters here. Only the first `_HEAD_MAX` bytes of a line that might
be an `event` field are ever kept, so megabyte data lines cost no memory. Work per chunk
is per line (`bytes.find`), never per byte.
"""

from __future__ import annotations

_BOM = b"\xef\xbb\xbf"
_BOM_DONE = 3  # `_bom` value once the stream start (where a BOM may sit) is behind us

# Line states.
_START = 0  # at a line start: nothing of the current line seen yet
_OTHER = 1  # inside a line that can teach nothing more (comment, data, long value, ...)
_HEAD = 2  # inside a field line starting with `e`: maybe `event`, head being kept
_PARTIAL_BOM = 3  # inside what may still become the stream's BOM

# Event names of the current frame that the relay cares about.
_NO_EVENT = 0
_PING = 1
_MESSAGE_START = 2
_MESSAGE_STOP = 3
_ERROR = 4
_EVENTS = {
    b"ping": _PING,
    b"message_start": _MESSAGE_START,
    b"message_stop": _MESSAGE_STOP,
    b"error": _ERROR,
}

# `event: ` plus a 32-byte name: a longer line is no `event` field we could recognise.
_HEAD_MAX = 39


def _event_of(head: bytes, current: int) -> int:
    """The frame's event after field line `head` (current if it is no `event` field)."""
    name, _, value = head.partition(b":")
    if name != b"event":
        return current
    if value[:1] == b" ":
        value = value[1:]
    return _EVENTS.get(value, _NO_EVENT)


class FrameScanner:
    """Follows an SSE byte stream chunk by chunk and tells where a frame may be inserted.

    Implements WHATWG event-stream line and frame rules: `\\n`, `\\r\\n` or `\\r` line
    endings (a `\\r\\n` may be split across chunks), a leading BOM, comments, and frames
    dispatched by an empty line when they hold at least one field line.
    """

    __slots__ = (
        "_after_cr",
        "_bom",
        "_event",
        "_frames",
        "_has_field",
        "_head",
        "_pings",
        "_saw_error",
        "_saw_message_start",
        "_saw_message_stop",
        "_state",
    )

    def __init__(self) -> None:
        self._frames = 0
        self._pings = 0
        self._saw_message_start = False
        self._saw_message_stop = False
        self._saw_error = False
        self._state = _START
        self._bom = 0  # BOM bytes matched so far at the stream start
        self._after_cr = False  # last byte was a `\r`: a `\n` now is part of its ending
        self._has_field = False
        self._event = _NO_EVENT
        self._head = b""

    @property
    def frames(self) -> int:
        """Frames dispatched so far (comment-only and empty frames excluded)."""
        return self._frames

    @property
    def pings(self) -> int:
        """Dispatched frames whose event name is `ping`."""
        return self._pings

    @property
    def saw_message_start(self) -> bool:
        """A dispatched frame was a `message_start` event."""
        return self._saw_message_start

    @property
    def saw_message_stop(self) -> bool:
        """A dispatched frame was a `message_stop` event."""
        return self._saw_message_stop

    @property
    def saw_error(self) -> bool:
        """A dispatched frame was an `error` event."""
        return self._saw_error

    @property
    def at_boundary(self) -> bool:
        """A whole frame inserted here changes nothing any SSE parser sees."""
        return self._state == _START and not self._has_field

    @property
    def at_line_start(self) -> bool:
        """No partial line is pending."""
        return self._state == _START

    def feed(self, data: bytes) -> None:
        """Account for the next chunk of the stream."""
        self._scan(data, 0, False)

    def feed_to_dispatch(self, data: bytes, start: int) -> int:
        """Account for `data[start:]` as far as the next line ending that dispatches a
        frame, and return that ending's index: exactly as `feed(data[start : k + 1])`
        for the `k` returned (a `\\r\\n` ending is fed up to its `\\r`, the `\\n` is left
        to the next call). `len(data)` when no frame is dispatched (all of it fed)."""
        if not isinstance(data, bytes | bytearray):
            data = bytes(memoryview(data))
        if not 0 <= start <= len(data):
            raise ValueError(f"start {start} is outside the chunk's {len(data)} bytes")
        return self._scan(data, start, True)

    def _scan(self, data: bytes, i: int, stop: bool) -> int:
        """`feed` from index `i` (within `data`); with `stop`, only as far as the next
        dispatch."""
        if not isinstance(data, bytes | bytearray):
            data = bytes(memoryview(data))
        n = len(data)
        if self._bom != _BOM_DONE:
            i = self._skip_bom(data, i)
        if i < n and self._after_cr:
            self._after_cr = False
            if data[i] == 10:
                i += 1
        state = self._state
        has_field = self._has_field
        event = self._event
        head = self._head
        find = data.find
        dispatched = n  # where `stop` ended the scan: the dispatching line ending
        lf = cr = -1  # next `\n` / `\r` at or after i (n: none); refreshed once passed
        while i < n:
            if lf < i:
                lf = find(b"\n", i)
                if lf < 0:
                    lf = n
            if cr < i:
                cr = find(b"\r", i)
                if cr < 0:
                    cr = n
            end = lf if lf < cr else cr
            if end > i:  # line content data[i:end]
                if state == _START:
                    first = data[i]
                    if first == 58:  # `:` starts a comment
                        state = _OTHER
                    else:
                        has_field = True
                        state = _HEAD if first == 101 else _OTHER  # `e`: maybe `event`
                        head = b""
                if state == _HEAD:
                    # One byte more than a name needs tells the line is too long.
                    head += data[i : min(end, i + _HEAD_MAX + 1 - len(head))]
                    if len(head) > _HEAD_MAX:
                        # Too long to name a recognised event, yet it replaces the name.
                        if head.startswith(b"event:"):
                            event = _NO_EVENT
                        state = _OTHER
                if end == n:
                    break
            # Line ending at `end`.
            if state == _START:
                if has_field:
                    self._dispatch(event)
                    has_field = False
                    if stop:  # as if the chunk ended right after this byte
                        self._after_cr = end == cr
                        event = _NO_EVENT
                        dispatched = end
                        break
                event = _NO_EVENT
            elif state == _HEAD:
                event = _event_of(head, event)
            state = _START
            i = end + 1
            if end == cr:
                if i == n:
                    self._after_cr = True
                elif data[i] == 10:
                    i += 1
        self._state = state
        self._has_field = has_field
        self._event = event
        self._head = head
        return dispatched

    def _skip_bom(self, data: bytes, i: int) -> int:
        """Consume what belongs to a leading BOM from index `i`; return where line
        content starts."""
        bom = self._bom
        while bom < 3 and i < len(data):
            if data[i] != _BOM[bom]:
                if bom:  # a partial BOM is just the start of a (field) line
                    self._state = _OTHER
                    self._has_field = True
                self._bom = _BOM_DONE
                return i
            bom += 1
            i += 1
        self._bom = bom
        if bom:
            self._state = _START if bom == 3 else _PARTIAL_BOM
        return i

    def _dispatch(self, event: int) -> None:
        self._frames += 1
        if event == _PING:
            self._pings += 1
        elif event == _MESSAGE_START:
            self._saw_message_start = True
        elif event == _MESSAGE_STOP:
            self._saw_message_stop = True
        elif event == _ERROR:
            self._saw_error = True
