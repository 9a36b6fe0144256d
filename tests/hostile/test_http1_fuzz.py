"""A seeded mutation fuzzer over HTTP/1.1 request heads, against the relay.

Valid requests (a GET, a POST with a Content-Length body, a chunked POST) are mutated:
bytes flipped, inserted and deleted, header lines duplicated and dropped, CR, LF, NUL,
SP and TAB injected, methods, targets, versions and framing headers swapped, requests
pipelined and cut short; each input goes out in random write sizes.

For every input: the relay answers with responses a strict (h11) client parses, or
closes the connection, within the exchange timeout; it stays alive; the recording
upstream parses everything it receives strictly; and every request head upstream gets
is one the input itself holds as a request, by a strict reading (`reference_parse`:
h11 plus the refusals tests/hostile/test_http1_smuggling.py lists). Each input's target
carries its number (`?fz=N`), so a request upstream can be traced to its input. At the
end the relay still relays a stream byte for byte, holds no more descriptors than at
the start, and logged no traceback.

HOSTILE_SEED picks the inputs (printed on failure, to replay them) and
HOSTILE_FUZZ_SECONDS how long the fuzzer runs (10 s by default).
"""

from __future__ import annotations

import os
import random
import re
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from urllib.parse import urlsplit

import h11

from tests.hostile.harness import (
    Exchange,
    assert_no_traceback,
    assert_still_serves,
    exchange,
    fd_count,
    wait_for_fds,
)
from tests.hostile.recording_upstream import RecordingUpstream
from tests.relayproc import RelayProcess

SEED = int(os.environ.get("HOSTILE_SEED", "20260611"))
SECONDS = float(os.environ.get("HOSTILE_FUZZ_SECONDS", "10"))
MAX_HEADER_BYTES = 16384  # as tests/hostile/conftest.py starts the relay

Head = tuple[bytes, bytes]  # (method, origin-form target) of one request

INJECTED = [
    b"\r",
    b"\n",
    b"\r\n",
    b"\x00",
    b" ",
    b"\t",
    b":",
    b";",
    b",",
    b"\x7f",
    b"\xff",
    b"\r\n ",
    b"\r\n\t",
    b"\r\n\r\n",
    b"0\r\n\r\n",
]
METHODS = [
    b"GET",
    b"POST",
    b"HEAD",
    b"PUT",
    b"DELETE",
    b"OPTIONS",
    b"CONNECT",
    b"TRACE",
    b"GPOST",
    b"post",
    b"G\x00ET",
    b"",
]
VERSIONS = [
    b"HTTP/1.1",
    b"HTTP/1.0",
    b"HTTP/2.0",
    b"HTTP/0.9",
    b"HTTP/1.2",
    b"HTTP/11",
    b"http/1.1",
    b"HTTP/1.1 ",
    b"HTTP/1",
    b"",
]
TARGETS = [
    b"*",
    b"v1/messages",
    b"http://evil.example/v1/messages",
    b"HTTPS://evil.example",
    b"http://evil.example?q=1",
    b"ftp://evil.example/v1/messages",
    b"/v1/messages y",
    b"//v1/messages",
    b"/v1/%00",
    b"/v1/\xff",
    b"evil.example:443",
    b"",
]
FIELDS = [
    b"Content-Length: 0",
    b"Content-Length: 5",
    b"Content-Length: 7",
    b"Content-Length: -1",
    b"Content-Length: 5, 5",
    b"Content-Length: 99999999999999999999",
    b"Transfer-Encoding: chunked",
    b"Transfer-Encoding: Chunked",
    b"Transfer-Encoding: gzip, chunked",
    b"Transfer-Encoding : chunked",
    b"Transfer-Encoding: chunked\t",
    b"Transfer-Encoding:\r\n chunked",
    b"Content-Length:\r\n 5",
    b"X-Note: a\r\n b",
    b"Expect: 100-continue",
    b"Connection: close",
    b"Connection: keep-alive, Transfer-Encoding",
    b"Upgrade: h2c",
    b"Host: evil.example",
    b"Host:",
]


def base_requests(tag: int) -> list[bytes]:
    """The valid requests mutations start from; `tag` goes into the target."""
    target = b"/v1/messages?fz=%d" % tag
    body = b'{"fz":%d}' % tag
    return [
        b"GET %s HTTP/1.1\r\nHost: relay.test\r\nAccept: */*\r\n\r\n" % target,
        b"POST %s HTTP/1.1\r\nHost: relay.test\r\ncontent-type: application/json\r\n"
        b"Content-Length: %d\r\n\r\n%s" % (target, len(body), body),
        b"POST %s HTTP/1.1\r\nHost: relay.test\r\nTransfer-Encoding: chunked\r\n\r\n"
        b"%x\r\n%s\r\n0\r\n\r\n" % (target, len(body), body),
    ]


# -- mutations ------------------------------------------------------------------------


def _head_lines(data: bytes) -> tuple[list[bytes], bytes]:
    """The head's lines (CRLF removed) and everything after the blank line."""
    end = data.find(b"\r\n\r\n")
    if end == -1:
        return data.split(b"\r\n"), b""
    return data[:end].split(b"\r\n"), data[end + 4 :]


def _join(lines: list[bytes], rest: bytes) -> bytes:
    return b"\r\n".join(lines) + b"\r\n\r\n" + rest


def flip_bit(data: bytes, rng: random.Random, tag: int) -> bytes:
    if not data:
        return data
    at = rng.randrange(len(data))
    return data[:at] + bytes([data[at] ^ (1 << rng.randrange(8))]) + data[at + 1 :]


def insert_byte(data: bytes, rng: random.Random, tag: int) -> bytes:
    at = rng.randrange(len(data) + 1)
    extra = rng.choice([*INJECTED, bytes([rng.randrange(256)])])
    return data[:at] + extra + data[at:]


def delete_bytes(data: bytes, rng: random.Random, tag: int) -> bytes:
    if not data:
        return data
    at = rng.randrange(len(data))
    return data[:at] + data[at + rng.randint(1, 4) :]


def inject_at_line_end(data: bytes, rng: random.Random, tag: int) -> bytes:
    ends = [m.start() for m in re.finditer(rb"\r\n", data)]
    if not ends:
        return insert_byte(data, rng, tag)
    at = rng.choice(ends) + rng.choice([0, 0, 1, 2])
    return data[:at] + rng.choice(INJECTED) + data[at:]


def duplicate_line(data: bytes, rng: random.Random, tag: int) -> bytes:
    lines, rest = _head_lines(data)
    if len(lines) < 2:
        return data
    at = rng.randrange(1, len(lines))
    lines.insert(rng.randrange(1, len(lines) + 1), lines[at])
    return _join(lines, rest)


def drop_line(data: bytes, rng: random.Random, tag: int) -> bytes:
    lines, rest = _head_lines(data)
    if len(lines) < 2:
        return data
    del lines[rng.randrange(1, len(lines))]
    return _join(lines, rest)


def replace_field_line(data: bytes, rng: random.Random, tag: int) -> bytes:
    lines, rest = _head_lines(data)
    at = rng.randrange(1, len(lines) + 1)
    if at < len(lines) and rng.random() < 0.5:
        lines[at] = rng.choice(FIELDS)
    else:
        lines.insert(at, rng.choice(FIELDS))
    return _join(lines, rest)


def _replace_request_line_part(
    data: bytes, rng: random.Random, index: int, choices: list[bytes]
) -> bytes:
    lines, rest = _head_lines(data)
    parts = lines[0].split(b" ")
    if len(parts) != 3:
        return data
    parts[index] = rng.choice(choices)
    lines[0] = b" ".join(parts)
    return _join(lines, rest)


def replace_method(data: bytes, rng: random.Random, tag: int) -> bytes:
    return _replace_request_line_part(data, rng, 0, METHODS)


def replace_target(data: bytes, rng: random.Random, tag: int) -> bytes:
    # Most replacements keep the tag, so upstream's requests stay traceable.
    targets = [t + (b"?fz=%d" % tag if rng.random() < 0.7 else b"") for t in TARGETS]
    return _replace_request_line_part(data, rng, 1, targets)


def replace_version(data: bytes, rng: random.Random, tag: int) -> bytes:
    return _replace_request_line_part(data, rng, 2, VERSIONS)


def pipeline(data: bytes, rng: random.Random, tag: int) -> bytes:
    return data + rng.choice(base_requests(tag))


def truncate(data: bytes, rng: random.Random, tag: int) -> bytes:
    return data[: rng.randrange(len(data) + 1)]


def swap_case(data: bytes, rng: random.Random, tag: int) -> bytes:
    lines, rest = _head_lines(data)
    if len(lines) < 2:
        return data
    at = rng.randrange(1, len(lines))
    lines[at] = lines[at].swapcase()
    return _join(lines, rest)


Mutation = Callable[[bytes, random.Random, int], bytes]
MUTATIONS: list[tuple[Mutation, int]] = [
    (flip_bit, 3),
    (insert_byte, 3),
    (delete_bytes, 3),
    (inject_at_line_end, 4),
    (duplicate_line, 3),
    (drop_line, 2),
    (replace_field_line, 4),
    (replace_method, 2),
    (replace_target, 2),
    (replace_version, 2),
    (pipeline, 2),
    (truncate, 1),
    (swap_case, 1),
]


def mutate(rng: random.Random, tag: int) -> bytes:
    """One fuzz input: a base request with one to four mutations."""
    data = rng.choice(base_requests(tag))
    functions = [f for f, _ in MUTATIONS]
    weights = [w for _, w in MUTATIONS]
    for function in rng.choices(functions, weights, k=rng.randint(1, 4)):
        data = function(data, rng, tag)
    return data


def split_writes(data: bytes, rng: random.Random) -> list[bytes]:
    """`data` cut into one to eight writes at random places."""
    pieces = rng.choice([1, 1, 1, 2, 3, 5, 8])
    if pieces == 1 or len(data) < 2:
        return [data]
    cuts = sorted(rng.sample(range(1, len(data)), min(pieces - 1, len(data) - 1)))
    return [data[a:b] for a, b in zip([0, *cuts], [*cuts, len(data)], strict=True)]


# -- the strict reading of an input ---------------------------------------------------

_ABSOLUTE = re.compile(rb"(?i)https?://")
_VISIBLE = re.compile(rb"[\x21-\x7e]+")
_LINE_END = re.compile(rb"\r?\n")


def origin_form(target: bytes) -> bytes:
    """What upstream must see for `target`: an absolute-form target's path and query,
    read by urllib (not the relay's own code, so that the two can disagree)."""
    if not _ABSOLUTE.match(target):
        return target
    parts = urlsplit(target)
    path = parts.path or b"/"
    return path + (b"?" + parts.query if parts.query or target.endswith(b"?") else b"")


def refused_head(request: h11.Request, raw_head: bytes) -> bool:
    """Whether the checklist refuses a head h11 accepted."""
    target = bytes(request.target)
    names = {bytes(name) for name, _ in request.headers}
    if request.http_version not in (b"1.0", b"1.1") or request.method == b"CONNECT":
        return True
    if not _VISIBLE.fullmatch(target) or not (target.startswith(b"/") or _ABSOLUTE.match(target)):
        return True
    if b"#" in target:
        return True  # a request target has no fragment (RFC 9112 3.2)
    if b"transfer-encoding" in names and (
        request.http_version == b"1.0" or b"content-length" in names
    ):
        return True
    lines = _LINE_END.split(raw_head)
    for line, following in zip(lines[1:], [*lines[2:], b""], strict=True):
        name = line.partition(b":")[0]
        framing = name.lower() in (b"transfer-encoding", b"content-length")
        if framing and following[:1] in (b" ", b"\t"):
            return True  # obs-fold in a framing header
    # Whitespace after a value is not part of it (RFC 9110 5.5): `chunked\t` is chunked.
    return False


@dataclass
class Reference:
    """An input as a strict server reads it."""

    heads: list[Head] = field(default_factory=list)  # every request head it accepts
    methods: list[bytes] = field(default_factory=list)  # of every complete request
    # What follows the last complete request: "clean" (nothing), "closes" (that request
    # ends the connection), "refused" (a malformed request), "incomplete" (a part).
    tail: str = "clean"


def reference_parse(data: bytes) -> Reference:
    """The requests a strict server finds in `data`, up to the first it would refuse."""
    found = Reference()
    if not data:
        return found  # (an empty receive_data would tell h11 the peer closed)
    conn = h11.Connection(h11.SERVER, max_incomplete_event_size=MAX_HEADER_BYTES)
    conn.receive_data(data)
    method = b""
    while True:
        start = len(data) - len(conn.trailing_data[0])
        try:
            event = conn.next_event()
        except h11.RemoteProtocolError:
            found.tail = "refused"
            return found
        if event is h11.NEED_DATA or event is h11.PAUSED or type(event) is h11.ConnectionClosed:
            idle = conn.their_state is h11.IDLE and not conn.trailing_data[0]
            found.tail = "clean" if idle else "incomplete"
            return found
        if isinstance(event, h11.Request):
            raw_head = data[start : len(data) - len(conn.trailing_data[0])]
            if refused_head(event, raw_head):
                found.tail = "refused"
                return found
            method = bytes(event.method)
            found.heads.append((method, origin_form(bytes(event.target))))
        elif isinstance(event, h11.EndOfMessage):
            found.methods.append(method)
            conn.send(h11.Response(status_code=200, headers=[(b"content-length", b"0")]))
            conn.send(h11.EndOfMessage())
            if conn.our_state is not h11.DONE:
                found.tail = "closes"
                return found
            conn.start_next_cycle()


# -- the fuzzer -----------------------------------------------------------------------

_TAG = re.compile(rb"fz=(\d+)")


@dataclass
class Fuzzer:
    relay: RelayProcess
    upstream: RecordingUpstream
    rng: random.Random
    inputs: dict[int, bytes] = field(default_factory=dict)
    expected: Counter[Head] = field(default_factory=Counter)
    got: Counter[Head] = field(default_factory=Counter)
    heads_seen: int = 0

    def fail(self, tag: int, data: bytes, writes: list[bytes], reason: str) -> None:
        sizes = [len(w) for w in writes]
        raise AssertionError(
            f"HOSTILE_SEED={SEED} input {tag}: {reason}\n  input: {data!r}\n  writes: {sizes}"
        )

    def run_one(self, tag: int) -> None:
        data = mutate(self.rng, tag)
        writes = split_writes(data, self.rng)
        self.inputs[tag] = data
        reference = reference_parse(data)
        self.expected.update(reference.heads)
        answers = len(reference.methods)
        if reference.tail == "clean" and answers:
            result = exchange(self.relay.port, writes, responses=answers, methods=reference.methods)
        elif reference.tail == "closes":
            result = exchange(self.relay.port, writes, methods=reference.methods)
        else:
            result = exchange(self.relay.port, writes, methods=reference.methods, half_close=True)
        self.check(tag, data, writes, reference, result)

    def check(
        self,
        tag: int,
        data: bytes,
        writes: list[bytes],
        reference: Reference,
        result: Exchange,
    ) -> None:
        answers = len(reference.methods)
        if result.parse_error is not None:
            self.fail(
                tag, data, writes, f"unparsable answer ({result.parse_error}): {result.data!r}"
            )
        if not result.closed and len(result.complete) < answers:
            self.fail(
                tag,
                data,
                writes,
                f"no answer and no close in {result.seconds:.1f} s "
                f"({len(result.complete)} of {answers} answers): {result.data[:300]!r}",
            )
        if len(result.complete) > answers + 1:
            statuses = [r.status for r in result.complete]
            self.fail(tag, data, writes, f"{statuses} answers to {answers} requests")
        if self.relay.proc.poll() is not None:
            self.fail(tag, data, writes, "the relay exited")
        if self.upstream.errors:
            self.fail(
                tag, data, writes, f"upstream parsed non-strict bytes: {self.upstream.errors}"
            )
        self.check_upstream_heads(tag, data, writes)

    def check_upstream_heads(self, tag: int, data: bytes, writes: list[bytes]) -> None:
        """Every head upstream got so far is one of the inputs' strict requests (counted:
        a request appearing twice upstream must be in the inputs twice)."""
        heads = self.upstream.heads
        for head in heads[self.heads_seen :]:
            key = (head.method, head.target)
            self.got[key] += 1
            if self.got[key] > self.expected[key]:
                match = _TAG.search(head.target)
                source = int(match.group(1)) if match else tag
                self.fail(
                    source,
                    self.inputs.get(source, data),
                    writes if source == tag else [],
                    f"upstream got {key!r} ({self.got[key]}x), which the input holds "
                    f"{self.expected[key]}x as a strict request",
                )
        self.heads_seen = len(heads)


def test_mutated_heads_never_smuggle_hang_or_leak(
    relay: RelayProcess, upstream: RecordingUpstream
) -> None:
    """For HOSTILE_FUZZ_SECONDS of seeded mutated inputs: every answer parses strictly or
    the relay closes, nothing hangs, the relay lives, upstream parses all it gets and
    gets no request the input does not strictly hold; afterwards the relay relays a
    stream byte for byte, its descriptors are flat, and it logged no traceback."""
    print(f"fuzzing HTTP/1.1 heads with HOSTILE_SEED={SEED} for {SECONDS:g} s")
    baseline = fd_count(relay.proc.pid)
    log_offset = len(relay.stderr_text)
    fuzzer = Fuzzer(relay, upstream, random.Random(SEED))
    deadline = time.monotonic() + SECONDS
    tag = 0
    while time.monotonic() < deadline:
        fuzzer.run_one(tag)
        tag += 1
    print(f"{tag} inputs, {len(upstream.heads)} request heads reached upstream")
    assert_still_serves(relay, upstream)
    fuzzer.expected[(b"POST", b"/v1/messages")] += 1  # assert_still_serves' own request
    fuzzer.check_upstream_heads(tag, b"", [])
    wait_for_fds(relay, baseline)
    assert_no_traceback(relay, log_offset)
