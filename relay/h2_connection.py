"""`h2`'s connection as the relay's HTTP/2 endpoints use it.

Two things `h2` leaves to its user, done once: streams outlive a GOAWAY, as RFC 9113
section 6.8 allows (`h2` moves the whole connection to CLOSED on sending or receiving
one and then refuses every frame, python-hyper/h2#1181), and queued DATA goes out as
far as a stream's flow-control window allows.
"""

from __future__ import annotations

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


#: DATA waiting for a stream's window; a chunk split by the window waits as a view.
SendQueue = deque[bytes | memoryview]


def send_queued(conn: H2Connection, stream_id: int, queue: SendQueue) -> None:
    """Send DATA from `queue` as far as the stream's window allows; the rest stays.

    A chunk larger than the window is split through a memoryview, so its remainder is
    not copied again for every frame.
    """
    while queue:
        size = min(conn.local_flow_control_window(stream_id), conn.max_outbound_frame_size)
        if size <= 0:
            return
        data = queue[0]
        if len(data) > size:
            view = memoryview(data)
            conn.send_data(stream_id, view[:size])
            queue[0] = view[size:]
        else:
            conn.send_data(stream_id, queue.popleft())


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
