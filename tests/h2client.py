"""A raw HTTP/2 client on `h2` for tests that need control over windows and resets."""

from __future__ import annotations

import json
import socket
import time
from collections.abc import Callable, Mapping

import h2.config
import h2.connection
import h2.events
import h2.settings

from tests.clients import STREAM_BODY


class RawH2Client:
    """h2c with prior knowledge; per-stream control of WINDOW_UPDATE and RST_STREAM."""

    def __init__(
        self, port: int, stream_window: int | None = None, receive_buffer: int | None = None
    ) -> None:
        self.sock = socket.socket()
        if receive_buffer is not None:  # set before connecting: it caps the TCP window
            self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, receive_buffer)
        self.sock.settimeout(10)
        self.sock.connect(("127.0.0.1", port))
        config = h2.config.H2Configuration(client_side=True, header_encoding=None)
        self.conn = h2.connection.H2Connection(config)
        self.conn.initiate_connection()
        if stream_window is not None:
            self.conn.update_settings({h2.settings.SettingCodes.INITIAL_WINDOW_SIZE: stream_window})
        # A large connection window, so one stalled stream cannot starve the others.
        self.conn.increment_flow_control_window(1 << 30)
        self.data: dict[int, bytearray] = {}
        self.ended: set[int] = set()
        self.status: dict[int, int] = {}
        #: RST_STREAM error codes the relay sent, by stream.
        self.reset_codes: dict[int, int] = {}
        #: The relay's GOAWAY, once it came: (last stream id, error code).
        self.goaway: tuple[int | None, int | None] | None = None
        #: Streams whose received data is never acknowledged (their window stays shut).
        self.withhold: set[int] = set()
        self._send()

    @property
    def local_port(self) -> int:
        """This client's end of the TCP connection, as the relay sees its peer."""
        port: int = self.sock.getsockname()[1]
        return port

    def stream(
        self,
        script: Mapping[str, object] | None = None,
        extra_headers: list[tuple[bytes, bytes]] | None = None,
    ) -> int:
        stream_id: int = self.conn.get_next_available_stream_id()
        headers = [
            (b":method", b"POST"),
            (b":path", b"/v1/messages"),
            (b":scheme", b"http"),
            (b":authority", b"relay"),
            (b"content-type", b"application/json"),
            (b"x-sim-script", json.dumps(script or {}).encode()),
            *(extra_headers or ()),
        ]
        self.conn.send_headers(stream_id, headers)
        self.conn.send_data(stream_id, STREAM_BODY, end_stream=True)
        self.data[stream_id] = bytearray()
        self._send()
        return stream_id

    def reset(self, stream_id: int) -> None:
        self.conn.reset_stream(stream_id)
        self._send()

    def pump_until(self, done: Callable[[], bool], timeout: float = 20.0) -> None:
        deadline = time.monotonic() + timeout
        while not done():
            if time.monotonic() > deadline:
                raise TimeoutError("condition not reached")
            self.sock.settimeout(max(0.01, deadline - time.monotonic()))
            chunk = self.sock.recv(1 << 16)
            if not chunk:
                raise ConnectionError("relay closed the connection")
            for event in self.conn.receive_data(chunk):
                if isinstance(event, h2.events.DataReceived):
                    self.data[event.stream_id] += event.data
                    if event.stream_id not in self.withhold:
                        self.conn.acknowledge_received_data(
                            event.flow_controlled_length, event.stream_id
                        )
                elif isinstance(event, h2.events.ResponseReceived):
                    self.status[event.stream_id] = int(dict(event.headers)[b":status"])
                elif isinstance(event, h2.events.StreamEnded):
                    self.ended.add(event.stream_id)
                elif isinstance(event, h2.events.StreamReset):
                    self.ended.add(event.stream_id)
                    self.reset_codes[event.stream_id] = event.error_code
                elif isinstance(event, h2.events.ConnectionTerminated):
                    self.goaway = (event.last_stream_id, event.error_code)
            self._send()

    def _send(self) -> None:
        self.sock.sendall(self.conn.data_to_send())

    def close(self) -> None:
        self.sock.close()
