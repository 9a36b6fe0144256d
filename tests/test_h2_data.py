"""HTTP/2 DATA towards clients written in C (relay/edge/_h2data.pyx) against `h2`'s own
`send_data` path, byte for byte.

Two servers get the same client input and the same pieces of body, one through the C
writer (from Python and from the body pump's buffer), the other through `h2` only, as
with `SSE_RELAY_NO_EXTENSIONS=1`. Windows open and shut, the peer's frame size and
initial window change, the stream ends or is reset: the bytes on the wire, what waits
for the window, the pauses and the flush accounting must stay the same.
"""

from __future__ import annotations

import os
import struct
from dataclasses import dataclass, field

import h2.config
import h2.connection
import h2.settings
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from relay.edge import native_out
from relay.edge.h2_endpoint import GracefulH2Connection
from relay.edge.h2_stream import H2ClientStream

if os.environ.get("SSE_RELAY_NO_EXTENSIONS") == "1":
    pytest.skip("SSE_RELAY_NO_EXTENSIONS=1: no Cython writer", allow_module_level=True)

from relay.edge._h2data import H2DataOut
from relay.sse._fastsse import FrameScanner
from relay.upstream._bodypump import FRAMINGS, BodyPump

CODES = h2.settings.SettingCodes
REQUEST = [(":method", "POST"), (":path", "/v1/messages"), (":scheme", "http"), (":authority", "a")]


@dataclass
class Owner:
    """What a stream asks of its connection (`StreamOwner`), recorded."""

    conn: h2.connection.H2Connection
    write_paused: bool = False
    alt_svc: bytes | None = None
    queued: int = 0
    forgotten: list[int] = field(default_factory=list)

    def schedule_flush(self, queued: int = 0) -> None:
        self.queued += queued

    def forget(self, stream_id: int) -> None:
        self.forgotten.append(stream_id)

    def reset(self, stream_id: int, code: object) -> None:
        raise AssertionError("streams here are never reset by the relay")

    def acknowledge(self, stream_id: int, size: int) -> None:
        raise AssertionError("no request body here")


@dataclass
class Pauses:
    """The stream's relay, as far as pauses go."""

    seen: list[bool] = field(default_factory=list)

    def on_client_paused(self) -> None:
        self.seen.append(True)

    def on_client_resumed(self) -> None:
        self.seen.append(False)


class Side:
    """One client and one server connection with one response stream open."""

    def __init__(self, window: int, max_frame: int, native: bool) -> None:
        self.wire = b""  # all the server sent, its preface and the response head included
        self.received = 0  # DATA bytes the client got
        self.client = h2.connection.H2Connection()
        self.client.local_settings = h2.settings.Settings(
            client=True,
            initial_values={CODES.INITIAL_WINDOW_SIZE: window, CODES.MAX_FRAME_SIZE: max_frame},
        )
        self.client.initiate_connection()
        config = h2.config.H2Configuration(client_side=False, header_encoding=None)
        self.server = GracefulH2Connection(config)
        self.server.initiate_connection()
        self.server.receive_data(self.client.data_to_send())
        self.client.receive_data(self.server.data_to_send())  # SETTINGS both ways
        self.client.send_headers(1, REQUEST, end_stream=True)
        self._exchange()
        self.owner = Owner(self.server)
        self.stream = H2ClientStream(self.owner, 1)
        self.pauses = Pauses()
        self.stream.relay = self.pauses  # type: ignore[assignment]
        with pytest.MonkeyPatch.context() as patch:
            if not native:
                patch.setattr(native_out, "H2DataOut", None)
            self.stream.send_head(200, [(b"content-type", b"text/event-stream")])
        assert isinstance(self.stream.body_writer().write, H2DataOut) is native
        self.pump = BodyPump(FRAMINGS["CLOSE"], 0, lambda piece: None)
        self.pump.express(self.stream.body_writer().write, False, FrameScanner(), 0.0)
        self._exchange()

    def _exchange(self) -> None:
        """The client's frames to the server; the server's onto the wire, read by
        `count_data` (an `h2` client would reject some legal sequences here: it applies
        its own settings only once they are acknowledged)."""
        self.server.receive_data(self.client.data_to_send())
        out = self.server.data_to_send()
        self.wire += out
        self.received += count_data(out)

    def apply(self, op: tuple[str, int]) -> None:
        kind, n = op
        if kind == "send":
            self.stream.send_body(piece(n))
        elif kind == "pump":
            self.pump.feed(piece(n))
        elif kind in ("window", "connection window"):
            on_stream = kind == "window" and not self.client.streams[1].closed
            self.client.increment_flow_control_window(n, 1 if on_stream else None)
            self.server_input()
        elif kind == "frame size":
            self.client.update_settings({CODES.MAX_FRAME_SIZE: n})
            self.server_input()
        elif kind == "initial window":
            self.client.update_settings({CODES.INITIAL_WINDOW_SIZE: n})
            self.server_input()
        elif kind == "end":
            self.stream.send_end()
        elif kind == "reset" and not self.client.streams[1].closed:
            self.client.reset_stream(1)
            self.server.receive_data(self.client.data_to_send())
        self._exchange()

    def server_input(self) -> None:
        """As `H2Protocol` reacts: every window or settings change pushes the stream."""
        self.server.receive_data(self.client.data_to_send())
        self.stream.push()

    def state(self) -> tuple[object, ...]:
        return (
            self.wire,
            self.received,
            b"".join(self.stream._pending),
            self.owner.queued,
            self.owner.forgotten,
            self.pauses.seen,
            self.server.outbound_flow_control_window,
        )


def count_data(wire: bytes) -> int:
    """DATA payload bytes in whole frames (the server writes only whole frames)."""
    total = at = 0
    while at < len(wire):
        high, low, kind = struct.unpack_from("!BHB", wire, at)
        size = high << 16 | low
        total += size if kind == 0 else 0
        at += 9 + size
    assert at == len(wire)
    return total


_PATTERN = bytes(range(251)) * 300


def piece(n: int) -> bytes:
    """`n` bytes that differ from the pieces of other sizes."""
    return _PATTERN[n % 251 : n % 251 + n]


SIZES = st.integers(0, 70_000)
assert len(piece(70_000)) == 70_000
OPS = st.one_of(
    st.tuples(st.sampled_from(["send", "pump"]), SIZES),
    st.tuples(st.sampled_from(["window", "connection window"]), st.integers(1, 100_000)),
    st.tuples(st.just("frame size"), st.integers(16_384, 40_000)),
    st.tuples(st.just("initial window"), st.integers(0, 200_000)),
    st.tuples(st.sampled_from(["end", "reset"]), st.just(0)),
)


@settings(max_examples=150, deadline=None)
@given(
    window=st.integers(0, 150_000),
    max_frame=st.integers(16_384, 40_000),
    ops=st.lists(OPS, max_size=25),
)
def test_the_c_writer_puts_the_same_bytes_on_the_wire_as_h2(
    window: int, max_frame: int, ops: list[tuple[str, int]]
) -> None:
    native, reference = Side(window, max_frame, True), Side(window, max_frame, False)
    assert native.state() == reference.state()
    for op in ops:
        native.apply(op)
        reference.apply(op)
        assert native.state() == reference.state(), op


def test_what_the_window_cannot_take_waits_and_pauses_the_stream() -> None:
    side = Side(window=20_000, max_frame=16_384, native=True)
    side.apply(("pump", 30_000))
    # Two frames (16,384 and 3,616 bytes) fill the window; 10,000 bytes wait.
    assert side.received == 20_000 and len(b"".join(side.stream._pending)) == 10_000
    assert side.pauses.seen == [True] and side.owner.queued == 20_000
    side.apply(("window", 50_000))
    assert side.received == 30_000 and not side.stream._pending
    assert side.pauses.seen == [True, False]


def test_the_connection_window_holds_back_a_stream_whose_own_window_is_wider() -> None:
    side = Side(window=100_000, max_frame=16_384, native=True)
    side.apply(("pump", 70_000))  # the connection's window is still the default 65,535
    assert side.received == 65_535 and side.server.outbound_flow_control_window == 0
    side.apply(("connection window", 10_000))
    assert side.received == 70_000 and not side.stream._pending


def test_a_reset_stream_is_forgotten_through_h2() -> None:
    side = Side(window=65_535, max_frame=16_384, native=True)
    side.apply(("send", 10))
    side.apply(("reset", 0))
    side.apply(("pump", 10))
    assert side.received == 10 and side.owner.forgotten == [1]
