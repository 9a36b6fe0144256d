"""Issue #13's fault sweep: the connection between the local relay (`--resume-upstream`)
and the remote relay is reset after N bytes, for N at every kind of place a byte stream
can break, and the application (the official Python SDK, then the TypeScript SDK) still
gets the message of the fault-free run while upstream saw one POST. (A cut inside the
response head is the documented exception: with no stream id yet, the local relay
retries the POST, README "Local relay mode".)

The offsets are not guessed: they are found in a recorded fault-free transcript of what
the proxy passed from the remote relay, each is checked to lie where its name says, and
each cut run's own transcript is checked to have matched it up to the cut.
"""

from __future__ import annotations

import codecs
import dataclasses
import json
import re
import socket
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

import h11
import pytest

from relay_sim.script import BOM
from relay_sim.turn import Frame, Turn, render
from tests.clients import KEEPALIVE, STREAM_BODY, raw_stream, script, sdk_stream, wait_for
from tests.idleproxy import IdleKillingProxy
from tests.relayproc import RelayProcess
from tests.simserver import SimServer
from tests.test_metrics import scrape, value
from tests.tsclient import missing_node, ts_stream

# relay_sim escapes non-ASCII (its JSON is ASCII-only) and its only raw multi-byte
# option, a leading BOM, breaks the Python SDK by itself; so this module's upstream
# sends the text as the API does: raw UTF-8 (2-, 3- and 4-byte characters).
TEXT = ["Grüße aus Zürich — ", "日本語で答えます。", "Fertig 🎉"]
FRAME_DELAY = 0.02  # between upstream frames: each reaches the remote relay on its own
REMOTE_KEEPALIVE = 0.4
# After the last text delta: one remote keepalive (at 0.4 s), with 0.2 s of margin
# either side, so the bytes after it stay where the capture has them.
GAP = 0.6
KEEPALIVE_CHUNK = b"d\r\n: keepalive\n\n\r\n"
LAST_CHUNK = b"0\r\n\r\n"


def _frames() -> list[Frame]:
    """The turn's frames, its text deltas rendered with raw UTF-8 as the API sends it."""
    turn = Turn.build(
        STREAM_BODY, json.loads(STREAM_BODY), thinking_deltas=2, text_deltas=0, bulk_bytes=0
    )
    frames = []
    for name, data in dataclasses.replace(turn, text=TEXT).frames("\n"):
        if name == "content_block_delta":
            fields = json.loads(data.split(b"data: ", 1)[1])
            text = json.dumps(fields, separators=(",", ":"), ensure_ascii=False)
            frames.append(render(name, text))
        else:
            frames.append(Frame(name, data))
    return frames


FRAMES = _frames()
GAP_AFTER = max(i for i, f in enumerate(FRAMES) if b"text_delta" in f.data)


def _text_frame(fragment: str) -> bytes:
    return next(f.data for f in FRAMES if fragment.encode() in f.data)


class Utf8Upstream:
    """An HTTP/1.1 Messages upstream answering every POST with FRAMES, one chunk each,
    with GAP seconds of silence after the last text delta; `posts` counts requests."""

    def __init__(self) -> None:
        self._server = socket.create_server(("127.0.0.1", 0))
        self.url = f"http://127.0.0.1:{self._server.getsockname()[1]}"
        self.posts = 0
        self._lock = threading.Lock()  # one thread per connection counts
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self) -> None:
        while True:
            try:
                conn, _ = self._server.accept()
            except OSError:
                return
            threading.Thread(target=self._answer, args=(conn,), daemon=True).start()

    def _answer(self, conn: socket.socket) -> None:
        parser = h11.Connection(h11.SERVER)
        with conn:
            try:
                while not isinstance(event := parser.next_event(), h11.EndOfMessage):
                    if event is h11.NEED_DATA:
                        parser.receive_data(conn.recv(65536))
                    elif isinstance(event, h11.Request):
                        assert event.method == b"POST", event
                    elif isinstance(event, h11.ConnectionClosed):
                        return  # no request came
                with self._lock:
                    self.posts += 1
                conn.sendall(
                    b"HTTP/1.1 200 OK\r\ncontent-type: text/event-stream; charset=utf-8\r\n"
                    b"request-id: req_utf8\r\ntransfer-encoding: chunked\r\n"
                    b"connection: close\r\n\r\n"
                )
                for index, frame in enumerate(FRAMES):
                    conn.sendall(b"%x\r\n%s\r\n" % (len(frame.data), frame.data))
                    time.sleep(GAP if index == GAP_AFTER else FRAME_DELAY)
                conn.sendall(LAST_CHUNK)
            except OSError:
                pass  # the remote relay left: nothing in this module expects it to

    def close(self) -> None:
        self._server.close()


# -- where a byte offset of the remote relay's chunked response falls ------------------


@dataclass(frozen=True)
class Position:
    """The state of an HTTP/1.1 chunked response after a prefix of it."""

    where: str  # "head", "size-line", "data", "data-crlf", "between-chunks", "end"
    partial: bytes  # of the head, size line or CRLF: what the prefix has of it
    body: bytes  # the de-chunked body so far


def position(prefix: bytes) -> Position:
    head_end = prefix.find(b"\r\n\r\n")
    if head_end < 0:
        return Position("head", prefix, b"")
    body, at = b"", head_end + 4
    while at < len(prefix):
        line_end = prefix.find(b"\r\n", at)
        if line_end < 0:
            return Position("size-line", prefix[at:], body)
        size = int(prefix[at:line_end], 16)
        if size == 0:
            return Position("end", prefix[at:], body)
        data = prefix[line_end + 2 : line_end + 2 + size]
        body += data
        if len(data) < size:
            return Position("data", b"", body)
        crlf = prefix[line_end + 2 + size : line_end + 4 + size]
        if len(crlf) < 2:
            return Position("data-crlf", crlf, body)
        at = line_end + 4 + size
    return Position("between-chunks", b"", body)


def _pending_utf8(body: bytes) -> bytes:
    """The bytes of an unfinished UTF-8 character `body` ends with (b"" if none)."""
    decoder = codecs.getincrementaldecoder("utf-8")()
    decoder.decode(body, final=False)
    return decoder.getstate()[0]


# name -> (how to find the offset in the capture, what must hold of the prefix there)
Locate = Callable[[bytes], int]
Holds = Callable[[Position], bool]


def _chunk(frame: bytes) -> bytes:
    return b"%x\r\n%s\r\n" % (len(frame), frame)


def _in(frame: bytes, after: bytes) -> Locate:
    """The offset just after `after` inside the chunk that carries `frame`."""
    return lambda capture: capture.index(_chunk(frame)) + _chunk(frame).index(after) + len(after)


_TEXT_1, _TEXT_2, _TEXT_3 = (_text_frame(t) for t in TEXT)
_SIGNATURE = next(f.data for f in FRAMES if b"signature_delta" in f.data)
_EVENT_LINE = b"event: content_block_delta\n"

CASES: dict[str, tuple[Locate, Holds]] = {
    # Mid stream id: the local relay cannot know the id yet.
    "head-mid-stream-id": (
        lambda c: c.index(b"relay-stream-id: ") + len(b"relay-stream-id: ") + 16,
        lambda p: (
            p.where == "head" and re.search(rb"relay-stream-id: [\w-]{16}$", p.partial) is not None
        ),
    ),
    "inside-chunk-size-line": (
        lambda c: c.index(_chunk(_TEXT_2)) + 1,
        lambda p: (
            p.where == "size-line" and len(p.partial) == 1 and p.partial in b"0123456789abcdef"
        ),
    ),
    "between-event-and-data": (
        _in(_TEXT_1, _EVENT_LINE),
        lambda p: p.where == "data" and p.body.endswith(b"\n\n" + _EVENT_LINE),
    ),
    "inside-2-byte-char": (
        _in(_TEXT_1, b"Gr" + "ü".encode()[:1]),
        lambda p: p.where == "data" and _pending_utf8(p.body) == "ü".encode()[:1],
    ),
    "inside-3-byte-char": (
        _in(_TEXT_2, "日".encode()[:2]),
        lambda p: p.where == "data" and _pending_utf8(p.body) == "日".encode()[:2],
    ),
    "inside-4-byte-char": (
        _in(_TEXT_3, "🎉".encode()[:3]),
        lambda p: p.where == "data" and _pending_utf8(p.body) == "🎉".encode()[:3],
    ),
    "frame-boundary": (
        lambda c: c.index(_chunk(_SIGNATURE)) + len(_chunk(_SIGNATURE)),
        lambda p: p.where == "between-chunks" and p.body.endswith(_SIGNATURE),
    ),
    "frame-end-before-chunk-crlf": (
        lambda c: c.index(_chunk(_SIGNATURE)) + len(_chunk(_SIGNATURE)) - 2,
        lambda p: p.where == "data-crlf" and p.partial == b"" and p.body.endswith(_SIGNATURE),
    ),
    "inside-keepalive-in-gap": (
        lambda c: c.index(KEEPALIVE_CHUNK) + len(b"d\r\n: keep"),
        lambda p: p.where == "data" and p.body.endswith(_TEXT_3 + b": keep"),
    ),
    "after-message-stop-before-last-chunk": (
        lambda c: len(c) - len(LAST_CHUNK),
        lambda p: p.where == "between-chunks" and p.body.endswith(FRAMES[-1].data),
    ),
}


def _masked(data: bytes) -> bytes:
    """`data` with the stream id blanked: the one byte run that differs per stream."""
    return re.sub(rb"(relay-stream-id: )[\w-]*", rb"\1ID", data)


# -- the chain: SDK -> local relay -> cutting proxy -> remote relay -> upstream ---------


@dataclass
class Chain:
    upstream: Utf8Upstream
    proxy: IdleKillingProxy
    local: RelayProcess


@pytest.fixture(scope="module")
def chain() -> Iterator[Chain]:
    upstream = Utf8Upstream()
    try:
        with (
            RelayProcess(
                upstream.url, "--resume-grace", "10", keepalive=REMOTE_KEEPALIVE
            ) as remote,
            IdleKillingProxy(remote.port) as proxy,
            # Its own keepalives go only to the SDK (never through the proxy): kept rare.
            RelayProcess(proxy.url, "--resume-upstream", keepalive=5.0) as local,
        ):
            yield Chain(upstream, proxy, local)
    finally:
        upstream.close()


@dataclass(frozen=True)
class Outcome:
    final: dict[str, Any]
    text: str
    transcript: bytes  # what the proxy passed from the remote relay
    posts: int  # POSTs upstream got
    log: bytes  # what the local relay logged


def _finished(relay: RelayProcess) -> float:
    return value(scrape(relay), "sse_relay_streams_total")


def _run(chain: Chain, sdk: str, cut_after: int | None) -> Outcome:
    # The log is read only while the local relay is quiet (its previous stream over):
    # a read while it writes can lose that line (the file offset is shared with it).
    finished, log = _finished(chain.local), len(chain.local.stderr_text)
    posts = chain.upstream.posts
    transcript = chain.proxy.watch(cut_after)
    if sdk == "python":
        final: dict[str, Any] = sdk_stream(chain.local.url)[1].model_dump()
    else:
        run = ts_stream(chain.local.url)
        assert run.error is None and run.final is not None, (run.error, run.stderr)
        final = run.final
    # The SDK may be done before the proxy has passed the terminating chunk on, and
    # before the local relay has logged the stream's end.
    wait_for(lambda: transcript.endswith(LAST_CHUNK))
    wait_for(lambda: _finished(chain.local) == finished + 1)
    text = final["content"][-1]["text"]
    new_log = chain.local.stderr_text[log:]
    return Outcome(final, text, bytes(transcript), chain.upstream.posts - posts, new_log)


@pytest.fixture(scope="module")
def fault_free(chain: Chain) -> dict[str, Outcome]:
    """Each SDK's run with no cut: its message, and the capture the offsets come from."""
    if (reason := missing_node()) is not None:
        pytest.fail(reason)
    runs = {sdk: _run(chain, sdk, None) for sdk in ("python", "typescript")}
    for run in runs.values():
        assert run.posts == 1 and run.text == "".join(TEXT)
    # Both SDKs' requests got the same bytes: one capture serves both.
    assert _masked(runs["python"].transcript) == _masked(runs["typescript"].transcript)
    return runs


@pytest.fixture(scope="module")
def offsets(fault_free: dict[str, Outcome]) -> dict[str, int]:
    """Each case's offset in the capture, checked to lie where the case's name says."""
    capture = fault_free["python"].transcript
    assert capture.count(KEEPALIVE_CHUNK) == 1, capture  # the one keepalive of the gap
    found = {}
    for name, (locate, holds) in CASES.items():
        offset = locate(capture)
        assert 0 < offset < len(capture) and holds(position(capture[:offset])), name
        found[name] = offset
    assert len(set(found.values())) == len(found)  # no two cases are the same cut
    return found


@pytest.mark.parametrize("sdk", ["python", "typescript"])
@pytest.mark.parametrize("case", list(CASES))
def test_a_cut_anywhere_is_invisible_to_the_sdk(
    chain: Chain, fault_free: dict[str, Outcome], offsets: dict[str, int], case: str, sdk: str
) -> None:
    """The proxy resets the connection after `case`'s offset: the SDK's final message
    is the fault-free run's, upstream got one POST, and the local relay resumed from
    exactly the body bytes it had."""
    offset = offsets[case]
    kills = chain.proxy.kills
    run = _run(chain, sdk, offset)
    assert chain.proxy.kills == kills + 1  # the cut happened
    capture = fault_free["python"].transcript
    # Up to the cut this run's bytes were the capture's, so the cut hit that place.
    cut, after = run.transcript[:offset], run.transcript[offset:]
    assert _masked(cut) == _masked(capture[:offset]), "the stream's layout moved"
    assert CASES[case][1](position(cut))
    assert after.startswith(b"HTTP/1.1 200 OK\r\n")  # the local relay came back
    assert run.final == fault_free[sdk].final
    assert run.text == "".join(TEXT)
    if case.startswith("head"):
        # No stream id yet, so nothing to resume: the local relay retries the POST
        # (README "Local relay mode"), and upstream runs the turn twice.
        assert run.posts == 2
        assert b"retrying POST /v1/messages" in run.log
    else:
        # From exactly the body bytes it had: the cut's offset less head and framing.
        assert run.posts == 1
        resumed = b"resuming POST /v1/messages from byte %d:" % len(position(cut).body)
        assert resumed in run.log, run.log


def test_a_bom_the_local_relay_dropped_does_not_shift_its_resume_offset(sim: SimServer) -> None:
    """The remote relay forwards the BOM (none of its keepalives went first); the local
    relay, whose keepalives did, drops it, as README "Leading BOM" says. A cut later
    must still resume from the byte the remote's journal means."""
    fields = script(bom=True, body_delay=0.5)
    direct = raw_stream(sim.url, headers=fields)[2]
    with (
        RelayProcess(sim.url, "--resume-grace", "10", keepalive=5.0) as remote,
        IdleKillingProxy(remote.port, cut_after=900) as proxy,
        RelayProcess(proxy.url, "--resume-upstream", keepalive=0.05) as local,
    ):
        status, _, body = raw_stream(local.url, headers=fields)
    resumed = b"resuming POST /v1/messages from byte" in local.stderr_text  # stopped: all in
    if not (status == 200 and proxy.kills == 1 and resumed and direct.startswith(BOM)):
        pytest.fail(f"no cut and resume to check: {status} {proxy.kills} {resumed}")
    if not (body.startswith(KEEPALIVE) and BOM not in body):
        pytest.fail("the local relay did not drop the BOM: the case did not arise")
    assert body.replace(KEEPALIVE, b"") == direct[len(BOM) :]  # today: 3 bytes twice
