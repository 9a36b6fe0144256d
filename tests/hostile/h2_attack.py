"""Hostile HTTP/2 clients for tests: raw frames over a plain socket, and the probes that
judge the relay afterwards (fds, memory, stderr, a byte-exact normal stream, keepalive
fairness on another connection).

Frames are built by hand, so anything can be sent: wrong lengths, unknown types, stream
ids the protocol forbids, header blocks no library would encode. `H2Attack` speaks h2c
with prior knowledge and reads in a thread of its own, so a flood can be written flat out
while whatever the relay answers (GOAWAY, RST_STREAM, responses) is still recorded.
"""

from __future__ import annotations

import contextlib
import errno
import itertools
import json
import os
import socket
import struct
import threading
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import hpack

from tests.clients import KEEPALIVE, STREAM_BODY, raw_stream, wait_for
from tests.h2client import RawH2Client
from tests.relayproc import RelayProcess
from tests.simserver import SimServer

PREFACE = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n"

# Frame types (RFC 9113 6).
DATA = 0x0
HEADERS = 0x1
PRIORITY = 0x2
RST_STREAM = 0x3
SETTINGS = 0x4
PUSH_PROMISE = 0x5
PING = 0x6
GOAWAY = 0x7
WINDOW_UPDATE = 0x8
CONTINUATION = 0x9

# Flags.
END_STREAM = 0x1
ACK = 0x1
END_HEADERS = 0x4
PADDED = 0x8
PRIORITY_FLAG = 0x20

# Error codes (RFC 9113 7).
NO_ERROR = 0x0
PROTOCOL_ERROR = 0x1
FLOW_CONTROL_ERROR = 0x3
FRAME_SIZE_ERROR = 0x6
CANCEL = 0x8
ENHANCE_YOUR_CALM = 0xB

# SETTINGS identifiers.
SETTINGS_HEADER_TABLE_SIZE = 0x1
SETTINGS_ENABLE_PUSH = 0x2
SETTINGS_MAX_CONCURRENT_STREAMS = 0x3
SETTINGS_INITIAL_WINDOW_SIZE = 0x4
SETTINGS_MAX_FRAME_SIZE = 0x5
SETTINGS_MAX_HEADER_LIST_SIZE = 0x6

MAX_FRAME = 16_384  # the relay never raises SETTINGS_MAX_FRAME_SIZE
# Windows a well-behaved attack client opens so responses never wait for WINDOW_UPDATEs
# (the reader thread never writes: only the test's thread does, so frames never interleave).
BIG_WINDOW = (1 << 31) - 1 - 65_535


# -- frames ---------------------------------------------------------------------------


def frame(
    kind: int, flags: int, stream_id: int, payload: bytes = b"", length: int | None = None
) -> bytes:
    """One frame; `length` overrides the header's length field (a lie, for fuzzing)."""
    size = len(payload) if length is None else length
    return (
        struct.pack(">I", size)[1:]
        + bytes([kind & 0xFF, flags & 0xFF])
        + struct.pack(">I", stream_id & 0xFFFFFFFF)
        + payload
    )


def settings(values: Iterable[tuple[int, int]] = ()) -> bytes:
    return frame(SETTINGS, 0, 0, b"".join(struct.pack(">HI", k, v) for k, v in values))


def settings_ack() -> bytes:
    return frame(SETTINGS, ACK, 0)


def ping(opaque: bytes = bytes(8), ack: bool = False) -> bytes:
    return frame(PING, ACK if ack else 0, 0, opaque)


def window_update(stream_id: int, increment: int) -> bytes:
    return frame(WINDOW_UPDATE, 0, stream_id, struct.pack(">I", increment & 0xFFFFFFFF))


def rst_stream(stream_id: int, code: int = CANCEL) -> bytes:
    return frame(RST_STREAM, 0, stream_id, struct.pack(">I", code))


def goaway(last_stream_id: int, code: int = NO_ERROR, debug: bytes = b"") -> bytes:
    return frame(GOAWAY, 0, 0, struct.pack(">II", last_stream_id, code) + debug)


def data(stream_id: int, payload: bytes, end_stream: bool = False) -> bytes:
    return frame(DATA, END_STREAM if end_stream else 0, stream_id, payload)


def headers_frames(
    stream_id: int, block: bytes, *, end_stream: bool = False, end_headers: bool = True
) -> bytes:
    """A header block as HEADERS plus as many CONTINUATIONs as the frame size needs."""
    chunks = [block[i : i + MAX_FRAME] for i in range(0, len(block), MAX_FRAME)] or [b""]
    out = []
    for index, chunk in enumerate(chunks):
        last = index == len(chunks) - 1
        flags = END_HEADERS if last and end_headers else 0
        if index == 0:
            out.append(frame(HEADERS, flags | (END_STREAM if end_stream else 0), stream_id, chunk))
        else:
            out.append(frame(CONTINUATION, flags, stream_id, chunk))
    return b"".join(out)


def literal(name: bytes, value: bytes) -> bytes:
    """A literal field without indexing, new name, no Huffman (RFC 7541 6.2.2): whatever
    the bytes are, they reach the decoder as given."""
    return b"\x00" + hpack_string(name) + hpack_string(value)


def hpack_string(raw: bytes) -> bytes:
    """An HPACK string literal, no Huffman (RFC 7541 5.2)."""
    return hpack_int(len(raw), 7, 0x00) + raw


def hpack_int(value: int, prefix_bits: int, first: int) -> bytes:
    """An HPACK integer with an N-bit prefix, `first` holding the bits above it (5.1)."""
    limit = (1 << prefix_bits) - 1
    if value < limit:
        return bytes([first | value])
    out = bytearray([first | limit])
    value -= limit
    while value >= 128:
        out.append((value & 0x7F) | 0x80)
        value >>= 7
    out.append(value)
    return bytes(out)


def raw_block(fields: Iterable[tuple[bytes, bytes]]) -> bytes:
    """A header block of literal fields exactly as given: order, case, bytes, duplicates."""
    return b"".join(literal(name, value) for name, value in fields)


def request_fields(
    script: dict[str, object] | None = None,
    *,
    method: bytes = b"POST",
    path: bytes = b"/v1/messages",
    authority: bytes = b"relay",
    extra: Iterable[tuple[bytes, bytes]] = (),
) -> list[tuple[bytes, bytes]]:
    """A streaming Messages request's fields, as `RawH2Client.stream` sends them."""
    return [
        (b":method", method),
        (b":path", path),
        (b":scheme", b"http"),
        (b":authority", authority),
        (b"content-type", b"application/json"),
        (b"x-sim-script", json.dumps(script or {}).encode()),
        *extra,
    ]


def request_frames(
    stream_id: int,
    fields: Iterable[tuple[bytes, bytes]],
    body: bytes | None = STREAM_BODY,
) -> bytes:
    """HEADERS (literal block) and, with a body, one DATA frame ending the stream."""
    block = raw_block(fields)
    if body is None:
        return headers_frames(stream_id, block, end_stream=True)
    return headers_frames(stream_id, block) + data(stream_id, body, end_stream=True)


# -- reading what the relay sends ------------------------------------------------------


@dataclass
class Frame:
    kind: int
    flags: int
    stream_id: int
    payload: bytes


class FrameParser:
    """Incremental frame parser: feed bytes, get whole frames."""

    def __init__(self) -> None:
        self._buffer = bytearray()

    def feed(self, chunk: bytes) -> list[Frame]:
        self._buffer += chunk
        frames = []
        while len(self._buffer) >= 9:
            size = int.from_bytes(self._buffer[:3], "big")
            if len(self._buffer) < 9 + size:
                break
            kind, flags = self._buffer[3], self._buffer[4]
            stream_id = int.from_bytes(self._buffer[5:9], "big") & 0x7FFFFFFF
            frames.append(Frame(kind, flags, stream_id, bytes(self._buffer[9 : 9 + size])))
            del self._buffer[: 9 + size]
        return frames


@dataclass
class Received:
    """Everything the relay sent on one connection, as the reader thread saw it."""

    settings: dict[int, int] = field(default_factory=dict)
    settings_frames: int = 0
    #: The relay's GOAWAY, once it came: (last stream id, error code, debug data).
    goaway: tuple[int, int, bytes] | None = None
    resets: dict[int, int] = field(default_factory=dict)
    headers: dict[int, list[tuple[bytes, bytes]]] = field(default_factory=dict)
    data: dict[int, bytearray] = field(default_factory=dict)
    ended: set[int] = field(default_factory=set)
    ping_acks: list[bytes] = field(default_factory=list)
    counts: dict[int, int] = field(default_factory=dict)
    closed: bool = False
    #: The close came as a TCP reset (ECONNRESET), not a FIN.
    reset_by_peer: bool = False
    closed_at: float | None = None
    hpack_error: str | None = None
    #: What the reader thread could not make sense of (e.g. an HTTP/1.1 answer).
    parse_error: str | None = None

    def __repr__(self) -> str:
        statuses = {sid: self.status(sid) for sid in list(self.headers)[:8]}
        return (
            f"Received(goaway={self.goaway}, closed={self.closed}, "
            f"reset_by_peer={self.reset_by_peer}, statuses={statuses}, "
            f"resets={dict(list(self.resets.items())[:8])}, frames_by_type={self.counts})"
        )

    def status(self, stream_id: int) -> int | None:
        for name, value in self.headers.get(stream_id, ()):
            if name == b":status":
                return int(value)
        return None

    def answered(self, stream_id: int) -> bool:
        """The stream got a whole response or a reset."""
        return stream_id in self.ended or stream_id in self.resets

    def error(self, stream_id: int) -> dict[str, Any]:
        """The relay's JSON error body on `stream_id`: {"type": T, "message": M}."""
        body = json.loads(bytes(self.data.get(stream_id, b"")))
        assert body["type"] == "error", body
        error: dict[str, Any] = body["error"]
        return error


class H2Attack:
    """h2c by prior knowledge over a raw socket: the test's thread writes whatever it
    likes, a reader thread records what the relay answers (see `Received`).

    With `reading=False` nothing is read until `start_reading()`: a client that lets the
    relay's answers pile up in the socket buffers.
    """

    def __init__(
        self,
        port: int,
        *,
        client_settings: Iterable[tuple[int, int]] = ((SETTINGS_INITIAL_WINDOW_SIZE, 1 << 24),),
        handshake: bool = True,
        reading: bool = True,
        connection_window: int = BIG_WINDOW,
        timeout: float = 10.0,
    ) -> None:
        self.sock = socket.create_connection(("127.0.0.1", port), timeout=timeout)
        self.sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        self.received = Received()
        self.bytes_received = 0
        self._parser = FrameParser()
        self._decoder = hpack.Decoder()
        self._decoder.max_header_list_size = 1 << 24
        self._block: tuple[int, bytearray] | None = None
        self._changed = threading.Condition()
        self._reader: threading.Thread | None = None
        #: The relay stopped taking bytes: a send failed with EPIPE/ECONNRESET.
        self.send_failed = False
        self._closing = False  # our own close: not the relay's doing
        if handshake:
            opening = PREFACE + settings(client_settings)
            if connection_window:
                opening += window_update(0, connection_window)
            self.sock.sendall(opening)
        if reading:
            self.start_reading()
            if handshake:
                self.wait(lambda r: r.settings_frames > 0 or r.closed, 10)
                self.send(settings_ack())

    # -- writing ----------------------------------------------------------------------

    def send(self, payload: bytes) -> bool:
        """Writes `payload`; False (and `send_failed`) once the relay no longer takes bytes."""
        if self.send_failed:
            return False
        try:
            self.sock.sendall(payload)
        except (BrokenPipeError, ConnectionResetError):
            self.send_failed = True
            return False
        except TimeoutError:
            self.send_failed = True  # the relay stopped reading us altogether
            return False
        return True

    def send_all(self, payload: bytes, chunk: int = 1 << 16) -> int:
        """Writes `payload` in chunks until done or refused; returns bytes written."""
        view = memoryview(payload)
        sent = 0
        while sent < len(view):
            if not self.send(bytes(view[sent : sent + chunk])):
                break
            sent += min(chunk, len(view) - sent)
        return sent

    # -- reading ----------------------------------------------------------------------

    def start_reading(self) -> None:
        if self._reader is None:
            self._reader = threading.Thread(target=self._read_loop, daemon=True)
            self._reader.start()

    def wait(self, done: Callable[[Received], object], timeout: float) -> bool:
        """Waits until `done(received)` holds; False after `timeout` s."""
        deadline = time.monotonic() + timeout
        with self._changed:
            while not done(self.received):
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    return False
                self._changed.wait(min(remaining, 0.1))
        return True

    def wait_closed(self, timeout: float, idle: float | None = None) -> bool:
        """Waits for the relay to close; with `idle`, also gives up once nothing at all
        arrived for `idle` s (a relay that never closes need not cost the whole timeout)."""
        deadline = time.monotonic() + timeout
        last_seen, last_count = time.monotonic(), self.bytes_received
        while not self.received.closed:
            now = time.monotonic()
            if now > deadline:
                return False
            if self.bytes_received != last_count:
                last_seen, last_count = now, self.bytes_received
            elif idle is not None and now - last_seen > idle:
                return False
            self.wait(lambda r: r.closed, 0.1)
        return True

    def _read_loop(self) -> None:
        self.sock.settimeout(None)
        while True:
            try:
                chunk = self.sock.recv(1 << 18)
            except OSError as exc:
                chunk = b""
                self.received.reset_by_peer = exc.errno == errno.ECONNRESET
            with self._changed:
                if not chunk and self._closing:
                    return
                if not chunk:
                    self.received.closed = True
                    self.received.closed_at = time.monotonic()
                    self._changed.notify_all()
                    return
                self.bytes_received += len(chunk)
                try:
                    for item in self._parser.feed(chunk):
                        self._on_frame(item)
                except Exception as exc:  # garbage in: keep reading, say so
                    self.received.parse_error = repr(exc)
                self._changed.notify_all()

    def _on_frame(self, item: Frame) -> None:
        got = self.received
        got.counts[item.kind] = got.counts.get(item.kind, 0) + 1
        if item.kind == SETTINGS and not item.flags & ACK:
            got.settings_frames += 1
            for offset in range(0, len(item.payload) - 5, 6):
                key, value = struct.unpack(">HI", item.payload[offset : offset + 6])
                got.settings[key] = value
        elif item.kind == GOAWAY and len(item.payload) >= 8:
            last, code = struct.unpack(">II", item.payload[:8])
            got.goaway = (last & 0x7FFFFFFF, code, item.payload[8:])
        elif item.kind == RST_STREAM and len(item.payload) == 4:
            got.resets[item.stream_id] = struct.unpack(">I", item.payload)[0]
        elif item.kind == PING and item.flags & ACK:
            got.ping_acks.append(item.payload)
        elif item.kind in (HEADERS, CONTINUATION):
            self._on_header_fragment(item)
        elif item.kind == DATA:
            got.data.setdefault(item.stream_id, bytearray()).extend(_unpad(item))
            if item.flags & END_STREAM:
                got.ended.add(item.stream_id)

    def _on_header_fragment(self, item: Frame) -> None:
        if item.kind == HEADERS:
            fragment = _unpad(item)
            if item.flags & PRIORITY_FLAG:
                fragment = fragment[5:]
            self._block = (item.stream_id, bytearray(fragment))
            if item.flags & END_STREAM:
                self.received.ended.add(item.stream_id)
        elif self._block is not None:
            self._block[1].extend(item.payload)
        if item.flags & END_HEADERS and self._block is not None:
            stream_id, block = self._block
            self._block = None
            try:
                fields = [
                    (bytes(k), bytes(v)) for k, v in self._decoder.decode(bytes(block), raw=True)
                ]
            except hpack.HPACKError as exc:
                self.received.hpack_error = repr(exc)
                return
            self.received.headers.setdefault(stream_id, []).extend(fields)

    def close(self) -> None:
        self._closing = True
        with contextlib.suppress(OSError):
            self.sock.shutdown(socket.SHUT_RDWR)  # wakes the reader out of recv()
        with contextlib.suppress(OSError):
            self.sock.close()
        if self._reader is not None:
            self._reader.join(5)

    def __enter__(self) -> H2Attack:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def _unpad(item: Frame) -> bytes:
    payload = item.payload
    if item.flags & PADDED and payload:
        pad = payload[0]
        return payload[1 : len(payload) - pad] if pad < len(payload) else b""
    return payload


# -- judging the relay ----------------------------------------------------------------


def fd_count(pid: int) -> int:
    return len(os.listdir(f"/proc/{pid}/fd"))


def pooled_upstream_sockets(pid: int, upstream_port: int) -> int:
    """The process's ESTABLISHED TCP connections to `upstream_port` on 127.0.0.1: its
    upstream pool, which keeps idle connections on purpose (a socket upstream closed
    and the relay did not, CLOSE_WAIT, is not counted here: that is a leak)."""
    inodes = set()
    for fd in os.listdir(f"/proc/{pid}/fd"):
        with contextlib.suppress(OSError):
            link = os.readlink(f"/proc/{pid}/fd/{fd}")
            if link.startswith("socket:["):
                inodes.add(link[8:-1])
    count = 0
    for line in Path(f"/proc/{pid}/net/tcp").read_text().splitlines()[1:]:
        fields = line.split()
        remote, state, inode = fields[2], fields[3], fields[9]
        if state == "01" and int(remote.split(":")[1], 16) == upstream_port and inode in inodes:
            count += 1
    return count


def relay_fds(relay: RelayProcess, sim: SimServer) -> int:
    """The relay's open fds, not counting idle pooled upstream connections: what must
    come back flat after any attack (slack 2)."""
    pid = relay.proc.pid
    return fd_count(pid) - pooled_upstream_sockets(pid, sim.port)


def vm_hwm_kib(pid: int) -> int:
    """Peak resident memory of the process so far (VmHWM), in KiB."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1])
    raise RuntimeError("no VmHWM")


def direct(sim: SimServer, fields: dict[str, object]) -> bytes:
    """The stream as upstream sends it, for byte-exact comparison."""
    return raw_stream(sim.url, headers={"x-sim-script": json.dumps(fields)})[2]


NORMAL_SCRIPT: dict[str, object] = {"text_deltas": 4}


def normal_stream_over_h2(relay: RelayProcess) -> tuple[int, bytes]:
    """One ordinary streaming request on a fresh h2c connection: (status, body)."""
    client = RawH2Client(relay.port)
    try:
        stream = client.stream(NORMAL_SCRIPT)
        client.pump_until(lambda: stream in client.ended, timeout=15)
    finally:
        client.close()
    return client.status.get(stream, 0), bytes(client.data[stream])


def settle_fds(relay: RelayProcess, sim: SimServer) -> int:
    """`relay_fds` once a normal stream has run (upstream pool warm)."""
    status, _ = normal_stream_over_h2(relay)
    assert status == 200
    return relay_fds(relay, sim)


def assert_relay_healthy(relay: RelayProcess, sim: SimServer, fds_before: int) -> None:
    """After an attack: alive, no Traceback logged, a normal stream byte-exact, fds flat."""
    assert relay.proc.poll() is None, relay.stderr_text.decode(errors="replace")[-3000:]
    status, body = normal_stream_over_h2(relay)
    assert status == 200, body[:500]
    assert body.replace(KEEPALIVE, b"") == direct(sim, NORMAL_SCRIPT)
    try:
        wait_for(lambda: relay_fds(relay, sim) <= fds_before + 2, timeout=5)
    except TimeoutError:
        now = relay_fds(relay, sim)
        raise AssertionError(
            f"fds (idle upstream excluded) grew from {fds_before} to {now}"
        ) from None
    stderr = relay.stderr_text
    assert b"Traceback" not in stderr, stderr.decode(errors="replace")[-4000:]
    assert relay.proc.poll() is None


# -- fairness: a normal stream on another connection, timed ----------------------------


class KeepaliveWatch:
    """A normal HTTP/1.1 streaming request on its own connection and thread, in a silent
    upstream gap, recording when each byte arrives. With the relay's keepalive interval
    at K seconds, keepalives should arrive every K s however busy another connection is.

    `start()` returns once the gap has begun; `stop()` ends the watch (and the request).
    """

    def __init__(self, port: int, gap: float = 10.0) -> None:
        self._port = port
        self._gap = gap
        self._stop = threading.Event()
        self._ready = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self.arrivals: list[float] = []
        self.data = bytearray()
        self.ready_at = 0.0
        self.stopped_at = 0.0
        self.ended_at: float | None = None
        self.failure: BaseException | None = None

    def start(self) -> KeepaliveWatch:
        self._thread.start()
        if not self._ready.wait(15):
            raise AssertionError(f"the watched stream never began: {bytes(self.data)[:300]!r}")
        if self.failure is not None:
            raise AssertionError("the watched stream failed") from self.failure
        return self

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(10)

    def _run(self) -> None:
        script = json.dumps({"gaps": [[1, self._gap]]})
        request = (
            b"POST /v1/messages HTTP/1.1\r\nhost: relay\r\ncontent-type: application/json\r\n"
            + f"x-sim-script: {script}\r\ncontent-length: {len(STREAM_BODY)}\r\n\r\n".encode()
            + STREAM_BODY
        )
        try:
            with socket.create_connection(("127.0.0.1", self._port), timeout=10) as sock:
                sock.sendall(request)
                sock.settimeout(0.02)
                while not self._stop.is_set():
                    try:
                        chunk = sock.recv(65536)
                    except TimeoutError:
                        continue
                    now = time.monotonic()
                    if not chunk:
                        self.ended_at = now
                        break
                    self.data += chunk
                    if self._ready.is_set():
                        self.arrivals.append(now)
                    elif b"content_block_start" in self.data:
                        self.ready_at = now
                        self._ready.set()
                    if self.data.endswith(b"0\r\n\r\n"):
                        self.ended_at = now
                        break
        except BaseException as exc:  # reported by start() or longest_silence()
            self.failure = exc
        finally:
            self.stopped_at = time.monotonic()
            self._ready.set()

    def longest_silence(self) -> float:
        """The longest time without a byte between the gap's start and the watch's end."""
        assert self.failure is None, repr(self.failure)
        assert self.ended_at is None, "the watched stream ended before the watch did"
        times = [self.ready_at, *self.arrivals, self.stopped_at]
        return max(b - a for a, b in itertools.pairwise(times))

    def keepalives(self) -> int:
        return bytes(self.data).count(KEEPALIVE)
