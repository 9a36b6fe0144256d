"""A seeded mutation fuzzer over HTTP/2 frame streams sent to the relay's h2c port.

Each case starts from a valid client conversation (preface, SETTINGS, requests as
HEADERS/CONTINUATION and DATA, WINDOW_UPDATE, PING, PRIORITY, RST_STREAM, GOAWAY) and
mutates it: frame types, flags, length fields, stream ids, payload bytes, frames
duplicated, dropped, swapped or made up, now and then the preface itself. The bytes go
out in random writes, followed by a PING probe aligned on a frame boundary as the relay
parses them.

Invariants: every connection ends with an answer to the probe (PING ACK), a GOAWAY or a
close within 5 s (so the relay neither crashed nor hung on it); the relay process stays
alive; nothing malformed reaches upstream (every request upstream saw is a POST or GET
of a path starting with "/"); and afterwards the relay relays a normal stream byte-exact
with its fd count flat and no Traceback in its stderr.

HOSTILE_SEED picks the run (default fixed; it is printed, and named in failures) and
HOSTILE_FUZZ_SECONDS its length (default 10 s).
"""

from __future__ import annotations

import json
import os
import random
import struct
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, replace

import hpack
import pytest

from tests.clients import STREAM_BODY
from tests.hostile.h2_attack import (
    ACK,
    CANCEL,
    CONTINUATION,
    DATA,
    END_HEADERS,
    END_STREAM,
    GOAWAY,
    HEADERS,
    MAX_FRAME,
    NO_ERROR,
    PADDED,
    PING,
    PREFACE,
    PRIORITY,
    RST_STREAM,
    SETTINGS,
    SETTINGS_ENABLE_PUSH,
    SETTINGS_HEADER_TABLE_SIZE,
    SETTINGS_INITIAL_WINDOW_SIZE,
    SETTINGS_MAX_CONCURRENT_STREAMS,
    SETTINGS_MAX_FRAME_SIZE,
    SETTINGS_MAX_HEADER_LIST_SIZE,
    WINDOW_UPDATE,
    H2Attack,
    assert_relay_healthy,
    frame,
    ping,
    settle_fds,
)
from tests.relayproc import RelayProcess
from tests.simserver import SimServer

SEED = int(os.environ.get("HOSTILE_SEED", "20240607"))
SECONDS = float(os.environ.get("HOSTILE_FUZZ_SECONDS", "10"))
#: How long one connection may take to answer the probe, GOAWAY or close (the relay's
#: head timeout is 1 s: a header block or frame left unfinished must end by then).
CASE_TIMEOUT = 3.0
#: Failures collected before the run stops early.
MAX_FAILURES = 5
QUICK_SCRIPT = json.dumps({"thinking_deltas": 0, "text_deltas": 1})


@pytest.fixture(scope="module")
def fuzz_relay(sim: SimServer) -> Iterator[RelayProcess]:
    # A short head timeout: a case that leaves a header block open ends in 1 s.
    with RelayProcess(sim.url, "--header-timeout", "1") as proc:
        yield proc


@dataclass
class Frame:
    """A frame in the making; `length` is the header's length field when it lies."""

    kind: int
    flags: int
    stream_id: int
    payload: bytes
    length: int | None = None

    def encode(self) -> bytes:
        return frame(self.kind, self.flags, self.stream_id, self.payload, self.length)


# -- valid conversations --------------------------------------------------------------


def _settings_frame(rng: random.Random) -> Frame:
    choices = [
        (SETTINGS_HEADER_TABLE_SIZE, rng.choice([0, 4096, 65536])),
        (SETTINGS_ENABLE_PUSH, 0),
        (SETTINGS_MAX_CONCURRENT_STREAMS, rng.choice([1, 100, 1000])),
        (SETTINGS_INITIAL_WINDOW_SIZE, rng.choice([0, 1, 65535, 1 << 20, (1 << 31) - 1])),
        (SETTINGS_MAX_FRAME_SIZE, rng.choice([16384, 65536, (1 << 24) - 1])),
        (SETTINGS_MAX_HEADER_LIST_SIZE, rng.choice([1024, 65536])),
    ]
    chosen = rng.sample(choices, rng.randint(0, len(choices)))
    return Frame(SETTINGS, 0, 0, b"".join(struct.pack(">HI", k, v) for k, v in chosen))


def _request(rng: random.Random, encoder: hpack.Encoder, stream_id: int) -> list[Frame]:
    post = rng.random() < 0.75
    fields = [
        (b":method", b"POST" if post else b"GET"),
        (b":scheme", b"http"),
        (b":path", b"/v1/messages" if post else b"/v1/models"),
        (b":authority", b"relay"),
        (b"content-type", b"application/json"),
        (b"x-sim-script", QUICK_SCRIPT.encode()),
    ]
    if rng.random() < 0.3:
        fields.append((b"x-note", rng.randbytes(rng.randint(1, 40)).hex().encode()))
    block = encoder.encode(fields, huffman=rng.random() < 0.5)
    cuts = sorted(rng.sample(range(1, len(block)), min(rng.randint(0, 2), len(block) - 1)))
    pieces = [block[a:b] for a, b in zip([0, *cuts], [*cuts, len(block)], strict=True)]
    frames = []
    for index, piece in enumerate(pieces):
        flags = END_HEADERS if index == len(pieces) - 1 else 0
        if index == 0:
            frames.append(Frame(HEADERS, flags | (0 if post else END_STREAM), stream_id, piece))
        else:
            frames.append(Frame(CONTINUATION, flags, stream_id, piece))
    if post:
        body = STREAM_BODY
        split = sorted(rng.sample(range(1, len(body)), rng.randint(0, 2)))
        parts = [body[a:b] for a, b in zip([0, *split], [*split, len(body)], strict=True)]
        for index, part in enumerate(parts):
            flags = END_STREAM if index == len(parts) - 1 else 0
            if rng.random() < 0.2:
                pad = rng.randint(0, 20)
                frames.append(
                    Frame(DATA, flags | PADDED, stream_id, bytes([pad]) + part + bytes(pad))
                )
            else:
                frames.append(Frame(DATA, flags, stream_id, part))
    return frames


def _extra(rng: random.Random, stream_id: int) -> Frame:
    kind = rng.choice(["ping", "window", "stream-window", "priority", "reset"])
    if kind == "ping":
        return Frame(PING, 0, 0, rng.randbytes(8))
    if kind == "window":
        return Frame(WINDOW_UPDATE, 0, 0, struct.pack(">I", rng.randint(1, 1 << 20)))
    if kind == "stream-window":
        return Frame(WINDOW_UPDATE, 0, stream_id, struct.pack(">I", rng.randint(1, 1 << 20)))
    if kind == "priority":
        return Frame(PRIORITY, 0, stream_id, struct.pack(">IB", rng.randrange(1 << 31), 15))
    return Frame(RST_STREAM, 0, stream_id, struct.pack(">I", CANCEL))


def valid_conversation(rng: random.Random) -> list[Frame]:
    """A conversation a correct client could have: settings, requests, extras."""
    encoder = hpack.Encoder()
    frames = [_settings_frame(rng)]
    if rng.random() < 0.5:
        frames.append(Frame(SETTINGS, ACK, 0, b""))
    if rng.random() < 0.5:
        frames.append(Frame(WINDOW_UPDATE, 0, 0, struct.pack(">I", rng.randint(1, 1 << 24))))
    stream_id = 1
    for _ in range(rng.randint(1, 3)):
        frames += _request(rng, encoder, stream_id)
        for _ in range(rng.randint(0, 2)):
            frames.append(_extra(rng, stream_id))
        stream_id += 2
    if rng.random() < 0.1:
        frames.append(Frame(GOAWAY, 0, 0, struct.pack(">II", 0, NO_ERROR)))
    return frames


# -- mutations ------------------------------------------------------------------------


def _pick(rng: random.Random, frames: list[Frame]) -> Frame | None:
    return rng.choice(frames) if frames else None


def _mutate_type(rng: random.Random, frames: list[Frame]) -> None:
    if (f := _pick(rng, frames)) is not None:
        f.kind = rng.choice([*range(10), 0x0A, 0x10, 0xFF, rng.randrange(256)])


def _mutate_flags(rng: random.Random, frames: list[Frame]) -> None:
    if (f := _pick(rng, frames)) is not None:
        f.flags = f.flags ^ (1 << rng.randrange(8)) if rng.random() < 0.7 else rng.randrange(256)


def _mutate_length(rng: random.Random, frames: list[Frame]) -> None:
    if (f := _pick(rng, frames)) is not None:
        size = len(f.payload)
        lies = [0, max(0, size - 1), size + 1, size + rng.randint(2, 64), MAX_FRAME + 1]
        f.length = rng.choice([*lies, rng.randint(0, MAX_FRAME), (1 << 24) - 1])


def _mutate_stream(rng: random.Random, frames: list[Frame]) -> None:
    if (f := _pick(rng, frames)) is not None:
        odd_ones = [0, 1, 2, 4, f.stream_id + 2, f.stream_id | (1 << 31), (1 << 31) - 1]
        f.stream_id = rng.choice([*odd_ones, rng.randrange(1 << 31)])


def _mutate_payload(rng: random.Random, frames: list[Frame]) -> None:
    f = _pick(rng, frames)
    if f is None:
        return
    payload = bytearray(f.payload)
    how = rng.randrange(4)
    if how == 0 and payload:  # flip bits
        for _ in range(rng.randint(1, 4)):
            payload[rng.randrange(len(payload))] ^= 1 << rng.randrange(8)
    elif how == 1:  # insert bytes
        at = rng.randint(0, len(payload))
        payload[at:at] = rng.randbytes(rng.randint(1, 16))
    elif how == 2 and payload:  # delete a slice
        at = rng.randrange(len(payload))
        del payload[at : at + rng.randint(1, 16)]
    elif payload:  # truncate
        del payload[rng.randrange(len(payload)) :]
    f.payload = bytes(payload)


def _duplicate(rng: random.Random, frames: list[Frame]) -> None:
    if frames:
        index = rng.randrange(len(frames))
        frames.insert(index, replace(frames[index]))


def _drop(rng: random.Random, frames: list[Frame]) -> None:
    if frames:
        del frames[rng.randrange(len(frames))]


def _swap(rng: random.Random, frames: list[Frame]) -> None:
    if len(frames) > 1:
        i = rng.randrange(len(frames) - 1)
        frames[i], frames[i + 1] = frames[i + 1], frames[i]


def _invent(rng: random.Random, frames: list[Frame]) -> None:
    made_up = Frame(
        rng.randrange(16), rng.randrange(256), rng.randrange(8), rng.randbytes(rng.randint(0, 64))
    )
    frames.insert(rng.randint(0, len(frames)), made_up)


MUTATIONS: tuple[Callable[[random.Random, list[Frame]], None], ...] = (
    _mutate_type,
    _mutate_flags,
    _mutate_length,
    _mutate_stream,
    _mutate_payload,
    _mutate_payload,
    _duplicate,
    _drop,
    _swap,
    _invent,
)


def aligned(stream: bytes) -> bytes:
    """`stream` zero-padded to end on a frame boundary as the relay parses it (length
    fields as they are, lies included), so that a probe after it is a frame of its own.
    A length past the frame size limit is a connection error at once: left as it is."""
    out = bytearray(stream)
    pos = 0
    while pos < len(out):
        if len(out) - pos < 9:
            out += bytes(9 - (len(out) - pos))
            continue
        size = int.from_bytes(out[pos : pos + 3], "big")
        if size > MAX_FRAME:
            break
        out += bytes(max(0, pos + 9 + size - len(out)))
        pos += 9 + size
    return bytes(out)


def oversize_note(conversation: bytes) -> str:
    """What the relay should reject from a frame header alone, if the case has one."""
    pos = 0
    while pos + 9 <= len(conversation):
        size = int.from_bytes(conversation[pos : pos + 3], "big")
        if size > MAX_FRAME:
            return f" (a frame header declares {size} bytes, past {MAX_FRAME}, RFC 9113 4.2)"
        pos += 9 + size
    return ""


@dataclass
class Case:
    number: int
    seed: int
    #: The bytes to send, in writes.
    writes: list[bytes]
    #: The probe PING's opaque data; None when the preface was mutated (not HTTP/2).
    probe: bytes | None
    #: What is special about the case, for failure messages.
    note: str = ""


def make_case(number: int, seed: int) -> Case:
    rng = random.Random(seed)
    frames = valid_conversation(rng)
    for _ in range(rng.choice([0, 1, 1, 1, 2, 2, 3, 4, 6])):
        rng.choice(MUTATIONS)(rng, frames)
    preface = PREFACE
    if rng.random() < 0.03:
        broken = bytearray(preface)
        broken[rng.randrange(len(broken))] ^= 1 << rng.randrange(8)
        preface = bytes(broken)
    conversation = b"".join(f.encode() for f in frames)
    probe: bytes | None = None
    note = ""
    if preface == PREFACE:
        probe = b"probe" + struct.pack(">I", number)[1:]
        conversation = aligned(conversation) + ping(probe)
        note = oversize_note(conversation)
    wire = preface + conversation
    if rng.random() < 0.3:
        writes = [wire]
    else:
        writes, at = [], 0
        while at < len(wire):
            step = rng.randint(1, 2048) if len(writes) < 64 else len(wire)
            writes.append(wire[at : at + step])
            at += step
    return Case(number, seed, writes, probe, note)


class LogTail:
    """The relay's stderr from now on, read as it grows (through /proc, so the whole
    log is not read again after each of thousands of cases)."""

    def __init__(self, relay: RelayProcess) -> None:
        self._file = open(f"/proc/{relay.proc.pid}/fd/2", "rb")  # noqa: SIM115 (closed in close)
        self._file.seek(0, os.SEEK_END)
        self._partial = b""

    def tracebacks(self) -> int:
        """Tracebacks in the lines logged since the last call."""
        lines = self._partial + self._file.read()
        whole, _, self._partial = lines.rpartition(b"\n")
        return whole.count(b"Traceback")

    def close(self) -> None:
        self._file.close()


def run_case(relay: RelayProcess, log: LogTail, case: Case) -> str | None:
    """Plays `case` on a fresh connection; what went wrong, or None."""
    attack = H2Attack(relay.port, handshake=False, timeout=CASE_TIMEOUT)
    try:
        for chunk in case.writes:
            if not attack.send(chunk):
                break

        def ended(got: object) -> bool:
            r = attack.received
            if case.probe is None:  # HTTP/1.1 by now: any answer or a close will do
                return attack.bytes_received > 0 or r.closed
            return case.probe in r.ping_acks or r.goaway is not None or r.closed

        hung = not attack.wait(ended, CASE_TIMEOUT)
    finally:
        attack.close()
    if relay.proc.poll() is not None:
        return f"the relay exited with {relay.proc.returncode}"
    problems = []
    if hung:
        problems.append(f"no PING ACK, GOAWAY, answer or close within {CASE_TIMEOUT} s")
    if log.tracebacks():
        problems.append("the relay logged a Traceback (during this case or the one before)")
    return " and ".join(problems) + case.note if problems else None


def test_h2_mutation_fuzz_never_crashes_hangs_or_leaks_upstream(
    sim: SimServer, fuzz_relay: RelayProcess
) -> None:
    """Mutated HTTP/2 conversations for HOSTILE_FUZZ_SECONDS: every connection ends with
    a PING ACK, GOAWAY or close within 3 s, the relay never dies nor logs a Traceback,
    only well-formed requests (POST/GET of a "/" path) reach upstream, and afterwards a
    normal stream is byte-exact and fds are flat."""
    print(f"HOSTILE_SEED={SEED} HOSTILE_FUZZ_SECONDS={SECONDS:g}")
    fds = settle_fds(fuzz_relay, sim)
    requests_before = len(sim.requests)
    master = random.Random(SEED)
    failures: list[str] = []
    cases = 0
    log = LogTail(fuzz_relay)
    started = time.monotonic()
    try:
        while time.monotonic() - started < SECONDS and len(failures) < MAX_FAILURES:
            case = make_case(cases, master.getrandbits(32))
            cases += 1
            problem = run_case(fuzz_relay, log, case)
            if problem is not None:
                wire = b"".join(case.writes)
                failures.append(
                    f"case {case.number} (case seed {case.seed}): {problem}; "
                    f"bytes[:200]={wire[:200].hex()}"
                )
                if fuzz_relay.proc.poll() is not None:
                    break
    finally:
        log.close()
    upstream = sim.requests[requests_before:]
    failures += [
        f"reached upstream: {r.method} {r.target!r}"
        for r in upstream
        if r.method not in ("POST", "GET") or not r.target.startswith("/")
    ][:MAX_FAILURES]
    print(f"HOSTILE_SEED={SEED}: {cases} cases, {len(upstream)} requests upstream")
    assert not failures, f"HOSTILE_SEED={SEED}, {cases} cases:\n" + "\n".join(failures)
    assert_relay_healthy(fuzz_relay, sim, fds)
