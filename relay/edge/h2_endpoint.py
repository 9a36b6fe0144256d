"""`h2`'s connection as the relay's HTTP/2 endpoints use it.

What `h2` leaves to its user, done once: the protocol plumbing every endpoint needs
(`H2Endpoint`), streams that outlive a GOAWAY, as RFC 9113
section 6.8 allows (`h2` moves the whole connection to CLOSED on sending or receiving
one and then refuses every frame, python-hyper/h2#1181), and queued DATA goes out as
far as a stream's flow-control window allows.
"""

from __future__ import annotations

import asyncio
from collections import deque

from h2.config import H2Configuration
from h2.connection import (
    ConnectionInputs,
    ConnectionState,
    H2Connection,
    H2ConnectionStateMachine,
)

# What an h2c client sends first (RFC 9113 3.4): how a shared port tells HTTP/2 apart.
H2_PREFACE = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n"
_OPEN = (ConnectionState.CLIENT_OPEN, ConnectionState.SERVER_OPEN)
_GOAWAY = (ConnectionInputs.SEND_GOAWAY, ConnectionInputs.RECV_GOAWAY)
_GRACEFUL_TRANSITIONS = {
    **H2ConnectionStateMachine._transitions,
    **{(state, goaway): (None, state) for state in _OPEN for goaway in _GOAWAY},
}


# DATA held by `h2` unwritten, at most (see `H2Endpoint.schedule_flush`).
FLUSH_AT = 256 * 1024

#: DATA waiting for a stream's window; a chunk split by the window waits as a view.
SendQueue = deque[bytes | memoryview]


def send_queued(conn: H2Connection, stream_id: int, queue: SendQueue) -> int:
    """Send DATA from `queue` as far as the stream's window allows; the rest stays.
    Returns how many bytes went to `conn`.

    A chunk larger than the window is split through a memoryview, so its remainder is
    not copied again for every frame.
    """
    sent = 0
    while queue:
        size = min(conn.local_flow_control_window(stream_id), conn.max_outbound_frame_size)
        if size <= 0:
            break
        data = queue[0]
        if len(data) > size:
            view = memoryview(data)
            conn.send_data(stream_id, view[:size])
            queue[0] = view[size:]
        else:
            conn.send_data(stream_id, queue.popleft())
            size = len(data)
        sent += size
    return sent


class GracefulH2Connection(H2Connection):
    """An `H2Connection` whose open streams keep working after a GOAWAY either way.

    Whoever holds it stops opening (or accepting) new streams itself.
    """

    def __init__(self, config: H2Configuration) -> None:
        super().__init__(config)
        self.state_machine._transitions = _GRACEFUL_TRANSITIONS

    def clear_outbound_data_buffer(self) -> None:
        # h2 drops unsent frames on receiving GOAWAY; on a connection that stays up,
        # WINDOW_UPDATEs and RST_STREAMs already queued must still go out.
        return


class H2Endpoint(asyncio.Protocol):
    """One h2 connection over one transport, as every HTTP/2 side here runs it: frames
    of many streams coalesced into one write per loop pass, and the streams told when
    the socket's send buffer fills or drains (`write_pause_changed`)."""

    def __init__(self, conn: H2Connection) -> None:
        self.conn = conn
        self._transport: asyncio.Transport | None = None
        self._loop = asyncio.get_running_loop()
        self._flush_scheduled = False
        # DATA bytes handed to `conn` since the last flush.
        self._unflushed = 0
        #: The socket's send buffer is over its high-water mark: every stream waits.
        self.write_paused = False

    def pause_writing(self) -> None:
        self.write_paused = True
        self.write_pause_changed()

    def resume_writing(self) -> None:
        self.write_paused = False
        self.write_pause_changed()

    def write_pause_changed(self) -> None:
        """Every stream re-checks whether it may send, and pauses or resumes its source."""
        raise NotImplementedError

    def schedule_flush(self, queued: int = 0) -> None:
        """Coalesce frames from many streams (and many chunks) into one write, after
        this pass of the loop; `queued` DATA bytes were just handed to `conn`.

        Once a write buffer's worth is waiting, it goes out now: a full socket pauses
        the streams only when written to, and one loop pass may bring many upstream
        reads (libuv reads a ready socket up to 32 times), all of which h2 would hold.
        """
        self._unflushed += queued
        if self._unflushed >= FLUSH_AT:
            self.flush()
        elif not self._flush_scheduled:
            self._flush_scheduled = True
            self._loop.call_soon(self.flush)

    def flush(self) -> None:
        self._flush_scheduled = False
        self._unflushed = 0
        data = self.conn.data_to_send()
        if data and self._transport is not None and not self._transport.is_closing():
            self._transport.write(data)
