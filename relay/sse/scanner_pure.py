"""Pure-Python twin of the Cython `relay.sse._fastsse.FrameScanner`.

Both follow one state machine (keep them in step): the position within the current
line, whether the current frame already has a field line, and the `event` name of the
frame as far as it matters here. Only the first `_HEAD_MAX` bytes of a line that might
be an `event` field (or a watched `data` field) are ever kept, so megabyte data lines
cost no memory. Work per chunk is per line (`bytes.find`), never per byte.
"""

from __future__ import annotations

from relay.sse.marks import (
    DATA_ERROR,
    DONE,
    ERROR_EVENT,
    FINISH_REASON,
    MESSAGE_START,
    MESSAGE_STOP,
    RESPONSE_END,
)

_BOM = b"\xef\xbb\xbf"
_BOM_DONE = 3  # `_bom` value once the stream start (where a BOM may sit) is behind us

# Line states.
_START = 0  # at a line start: nothing of the current line seen yet
_OTHER = 1  # inside a line that can teach nothing more (comment, data, long value, ...)
_HEAD = 2  # inside a field line starting with `e` (or a watched `d`), head being kept
_PARTIAL_BOM = 3  # inside what may still become the stream's BOM
_DATA = 4  # inside a long data line searched for `"finishReason"` (watched)

# Event names of the current frame that the relay cares about.
_NO_EVENT = 0
_PING = 1
_MESSAGE_START = 2
_MESSAGE_STOP = 3
_ERROR = 4
_RESPONSE_END = 5
_EVENTS = {
    b"ping": _PING,
    b"message_start": _MESSAGE_START,
    b"message_stop": _MESSAGE_STOP,
    b"error": _ERROR,
    b"response.completed": _RESPONSE_END,
    b"response.failed": _RESPONSE_END,
    b"response.incomplete": _RESPONSE_END,
}
# The mark each event sets when its frame is dispatched, by event number.
_EVENT_MARKS = (0, 0, MESSAGE_START, MESSAGE_STOP, ERROR_EVENT, RESPONSE_END)
_FINISH = b'"finishReason"'
# Bytes of a long data line kept between chunks: a `"finishReason"` may straddle them.
_TAIL = len(_FINISH) - 1

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


def _line_marks(data: bytes, i: int, end: int, watch: int) -> int:
    """`_data_marks` of the whole field line `data[i:end]`, without copying it."""
    if not data.startswith(b"data:", i, end):
        return 0
    i += 6 if data.startswith(b" ", i + 5, end) else 5
    marks = 0
    if watch & DONE and data.startswith(b"[DONE]", i, end):
        marks |= DONE
    if watch & DATA_ERROR and data.startswith(b'{"error"', i, end):
        marks |= DATA_ERROR
    if watch & FINISH_REASON and data.find(_FINISH, i, end) >= 0:
        marks |= FINISH_REASON
    return marks


def _data_marks(head: bytes, watch: int) -> int:
    """The watched marks that field line `head` (maybe cut at its first bytes) sets."""
    name, colon, value = head.partition(b":")
    if name != b"data" or not colon:
        return 0
    if value[:1] == b" ":
        value = value[1:]
    marks = 0
    if watch & DONE and value.startswith(b"[DONE]"):
        marks |= DONE
    if watch & DATA_ERROR and value.startswith(b'{"error"'):
        marks |= DATA_ERROR
    if watch & FINISH_REASON and _FINISH in value:
        marks |= FINISH_REASON
    return marks


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
        "_frame_marks",
        "_frames",
        "_has_field",
        "_head",
        "_marks",
        "_pings",
        "_state",
        "_tail",
        "_watch",
    )

    def __init__(self, watch: int = 0) -> None:
        """`watch`: the data-line marks (relay.sse.marks.DATA_MARKS) to look for."""
        self._watch = watch
        self._frames = 0
        self._pings = 0
        self._marks = 0
        self._frame_marks = 0  # data-line marks of the frame being read
        self._tail = b""  # a long watched data line's last bytes so far
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
    def marks(self) -> int:
        """What the dispatched frames showed, as relay.sse.marks bits."""
        return self._marks

    @property
    def saw_message_start(self) -> bool:
        """A dispatched frame was a `message_start` event."""
        return bool(self._marks & MESSAGE_START)

    @property
    def saw_message_stop(self) -> bool:
        """A dispatched frame was a `message_stop` event."""
        return bool(self._marks & MESSAGE_STOP)

    @property
    def saw_error(self) -> bool:
        """A dispatched frame was an `error` event."""
        return bool(self._marks & ERROR_EVENT)

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
        frame_marks = self._frame_marks
        watch = self._watch
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
                    elif first == 100 and watch and end < n:
                        # A watched data line whole in this chunk: read in place.
                        has_field = True
                        frame_marks |= _line_marks(data, i, end, watch)
                        state = _OTHER
                    else:
                        has_field = True
                        # `e`: maybe `event`; `d`: a watched `data` line cut by the chunk.
                        head_line = first == 101 or (first == 100 and watch)
                        state = _HEAD if head_line else _OTHER
                        head = b""
                if state == _HEAD:
                    # One byte more than a name needs tells the line is too long.
                    taken = min(end, i + _HEAD_MAX + 1 - len(head))
                    head += data[i:taken]
                    if len(head) > _HEAD_MAX:
                        state = _OTHER
                        if head[0] == 101:
                            # Too long to name a recognised event, yet it replaces the name.
                            if head.startswith(b"event:"):
                                event = _NO_EVENT
                        else:
                            frame_marks |= _data_marks(head, watch)
                            searched = watch & FINISH_REASON and not frame_marks & FINISH_REASON
                            if searched and head.startswith(b"data:"):
                                state = _DATA
                                self._tail = head[-_TAIL:]
                                i = taken
                if state == _DATA and self._found_finish(data, i, end):
                    frame_marks |= FINISH_REASON
                    state = _OTHER
                if end == n:
                    break
            # Line ending at `end`.
            if state == _START:
                if has_field:
                    self._dispatch(event, frame_marks)
                    has_field = False
                    frame_marks = 0
                    if stop:  # as if the chunk ended right after this byte
                        self._after_cr = end == cr
                        event = _NO_EVENT
                        dispatched = end
                        break
                event = _NO_EVENT
            elif state == _HEAD:
                if head[0] == 101:
                    event = _event_of(head, event)
                else:
                    frame_marks |= _data_marks(head, watch)
            elif state == _DATA:
                self._tail = b""
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
        self._frame_marks = frame_marks
        self._head = head
        return dispatched

    def _found_finish(self, data: bytes, i: int, end: int) -> bool:
        """`"finishReason"` is in the long data line's content `data[i:end]`, or straddles
        what came of it before; else keep the bytes it could start in."""
        tail = self._tail
        straddling = tail and (tail + data[i : min(end, i + _TAIL)]).find(_FINISH) >= 0
        if straddling or data.find(_FINISH, i, end) >= 0:
            self._tail = b""
            return True
        if end - i >= _TAIL:
            self._tail = data[end - _TAIL : end]
        else:
            self._tail = (tail + data[i:end])[-_TAIL:]
        return False

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

    def _dispatch(self, event: int, frame_marks: int) -> None:
        self._frames += 1
        if event == _PING:
            self._pings += 1
        self._marks |= _EVENT_MARKS[event] | frame_marks
