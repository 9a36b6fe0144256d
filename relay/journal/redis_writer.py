"""The shared journal's writing side: every resumable stream this instance runs is
mirrored into a Redis stream, so that a resume landing on another instance finds it.

Writes are batched: a stream's new bytes wait for the next flush, which runs every
`FLUSH_SECONDS` (sooner once a stream has `BATCH_BYTES` waiting) and sends every stream's
batch in one pipeline, never a command per event. Each entry has an id of its own
(1-0 the head, then one per batch, the last the ending), so a flush retried after a
failure writes nothing twice. While a stream runs, a liveness key that expires in
`ALIVE_MS` is renewed every second: a reader that finds it gone and no ending knows the
instance died. The same tick reads what other instances ask of the stream: a resume
attached there (`:r`), which keeps the stream from ending at its grace period like a
client here would, and a cancel (`:c`).

If Redis cannot be reached, streams relay as before and stay resumable on this instance;
the batches wait (they hold the bytes objects the client was written) and are
sent when Redis is back, or dropped with the mirror once it has waited `max_bytes`.
"""

from __future__ import annotations

import asyncio
import logging
import math
from typing import Any

from redis.asyncio import Redis
from redis.exceptions import RedisError

from relay.core.exchange import ClientSide, Headers
from relay.core.journal import Ending
from relay.core.resumable import ResumableClient
from relay.core.stream import RelayStream
from relay.journal.redis_scripts import APPEND, POLL
from relay.journal.sealing import END, RESET, StreamSeal, encode_head, key_of
from relay.ops.metrics import RelayMetrics

log = logging.getLogger("sse_relay")

FLUSH_SECONDS = 0.05
BATCH_BYTES = 16 * 1024
#: How long a liveness key outlives its last renewal (renewed every TICK_SECONDS).
ALIVE_MS = 3000
TICK_SECONDS = 1.0


class RemoteClient:
    """Stands for a client that resumed the stream through another instance: it reads
    the stream from Redis, so nothing is written here; attached, it keeps the stream
    from ending at its grace period, and its keepalives go into the journal."""

    __slots__ = ()

    def send_head(self, status: int, headers: Headers) -> None:
        pass

    def send_body(self, data: bytes) -> None:
        pass

    def send_end(self) -> None:
        pass

    def abort(self) -> None:
        pass

    def pause_request_body(self) -> None:
        pass

    def resume_request_body(self) -> None:
        pass


class StreamMirror:
    """One stream's journal as it goes to Redis; fed by its `ResumableClient`."""

    __slots__ = (
        "_ending",
        "_head",
        "_pending",
        "_pending_size",
        "_queued",
        "_unsent",
        "_writer",
        "claimed_here",
        "done",
        "entries",
        "key",
        "remote",
        "remote_token",
        "seal",
        "side",
        "size",
        "stream",
    )

    def __init__(
        self,
        writer: JournalWriter,
        stream_id: str,
        credential: bytes,
        stream: RelayStream,
        side: ResumableClient,
    ) -> None:
        self._writer = writer
        self.key = key_of(stream_id)
        self.seal = StreamSeal(stream_id, credential)
        self.stream = stream
        self.side = side
        self._head: bytes | None = None
        self._pending: list[bytes] = []  # the journal's own bytes objects: no copy
        self._pending_size = 0
        self._ending: Ending | None = None
        self._queued = False
        #: Entries built but not yet acknowledged by Redis: (id, field, value).
        self._unsent: list[tuple[str, str, bytes]] = []
        #: Entries numbered so far, and body bytes put in entries so far.
        self.entries = 0
        self.size = 0
        #: The client attached through another instance, if one is, and the claim
        #: (`:r`) of the newest resumer seen there.
        self.remote: RemoteClient | None = None
        self.remote_token: bytes | None = None
        #: A resumer here took the stream: a resumer elsewhere must be told to stop.
        self.claimed_here = False
        #: Nothing more goes to Redis (ended and written, or given up).
        self.done = False

    # -- JournalMirror: called on the stream's path; no IO here ------------------------

    def head(self, status: int, headers: Headers) -> None:
        if not 200 <= status < 300:
            self._never()  # not resumable: nothing of it goes to Redis
            return
        self._head = self.seal.seal_head(encode_head(status, headers))
        self._queue()
        self._writer.wake()  # at once: a resume elsewhere needs the head to find it

    def body(self, data: bytes) -> None:
        if self.done:
            return
        self._pending.append(data)
        self._pending_size += len(data)
        if not self._queued:
            self._queue()
        if self._pending_size >= BATCH_BYTES:
            self._writer.wake()

    def end(self, ending: Ending) -> None:
        if not self.done and self.entries == 0 and self._head is None:
            self._never()  # ended before any head: it never was resumable
        elif not self.done:
            self._ending = ending
            self._queue()
            self._writer.wake()

    def attached(self, client: ClientSide) -> None:
        if client is not self.remote and not self.done:
            self.claimed_here = True
            self._writer.wake()

    def _never(self) -> None:
        self.done = True
        self._writer.drop(self)

    def _queue(self) -> None:
        if not self._queued:
            self._queued = True
            self._writer.queue(self)

    # -- the writer's side ------------------------------------------------------------

    def build(self, max_bytes: int) -> bool:
        """Turn what waits into entries; False if the stream outgrew `max_bytes` (then
        it is no longer resumable from Redis: the caller deletes its key)."""
        self._queued = False
        if self._head is not None:
            self._add("h", self._head)
            self._head = None
        if self._pending:
            data = b"".join(self._pending)  # the one copy, per batch
            self._pending.clear()
            self._pending_size = 0
            if self.size + len(data) > max_bytes:
                self.done = True
                return False
            self._add("d", self.seal.seal_data(self.size, data))
            self.size += len(data)
        if self._ending is not None:
            ending = END if self._ending is Ending.END else RESET
            self._add("e", self.seal.seal_ending(self.size, ending))
            self._ending = None
            self.done = True
        return True

    def _add(self, field: str, value: bytes) -> None:
        self.entries += 1
        self._unsent.append((f"{self.entries}-0", field, value))

    def append_args(self, args: list[bytes | str | int]) -> None:
        """This stream's part of an APPEND script call (relay/journal/redis_scripts.py)."""
        args += (len(self._unsent), 1 if self.done else 0)
        for entry in self._unsent:
            args += entry

    def written(self) -> None:
        self._unsent.clear()

    def has_unsent(self) -> bool:
        return bool(self._unsent)

    def unsent_bytes(self) -> int:
        return sum(len(value) for _, _, value in self._unsent)


class JournalWriter:
    """Flushes every mirror of this process to Redis, batched, from one task."""

    def __init__(self, redis: Redis, retain: float, max_bytes: int, metrics: RelayMetrics) -> None:
        self._redis = redis
        self._append = redis.register_script(APPEND)
        self._poll = redis.register_script(POLL)
        self._ttl_ms = max(1000, int(retain * 1000))
        self._max_bytes = max_bytes
        self._metrics = metrics
        self._queued: list[StreamMirror] = []
        self._unsent: list[StreamMirror] = []  # waiting for Redis to come back
        self._live: set[StreamMirror] = set()
        self._forget: list[str] = []  # keys of mirrors given up, to delete
        self._wake = asyncio.Event()
        self._next_tick = 0.0
        self._down = False
        self._task: asyncio.Task[None] | None = None
        self._closing = False
        # One flush at a time: entries go out in order, and a flush that failed hands
        # its batch to the next one whole.
        self._flushing = asyncio.Lock()

    def add(self, mirror: StreamMirror) -> None:
        self._live.add(mirror)
        if self._task is None:
            self._task = asyncio.get_running_loop().create_task(self._run())

    def drop(self, mirror: StreamMirror) -> None:
        """A mirror that never wrote anything and never will."""
        self._live.discard(mirror)

    @property
    def streams(self) -> int:
        """Streams being mirrored: they keep the writer's timer running."""
        return len(self._live)

    def queue(self, mirror: StreamMirror) -> None:
        self._queued.append(mirror)

    def wake(self) -> None:
        self._wake.set()

    async def _run(self) -> None:
        loop = asyncio.get_running_loop()
        while not self._closing:
            if self._live or self._queued or self._unsent:
                try:
                    async with asyncio.timeout(FLUSH_SECONDS):
                        await self._wake.wait()
                except TimeoutError:
                    pass
            else:
                await self._wake.wait()  # idle: no timer at all
            self._wake.clear()
            await self.flush(loop.time())

    async def flush(self, now: float = math.inf) -> None:
        """Send what waits; every second also renew liveness and read requests from
        other instances. `now=inf` (the final flush) sends without the tick."""
        async with self._flushing:
            await self._flush(now)

    async def _flush(self, now: float) -> None:
        batch = [*self._unsent]
        for mirror in self._queued:
            if mirror.build(self._max_bytes):
                batch.append(mirror)
            else:
                self._give_up(mirror, "it outgrew --resume-max-bytes")
        self._queued.clear()
        batch = list(dict.fromkeys(batch))
        tick = now != math.inf and now >= self._next_tick
        polled = [m for m in self._live if not m.done and (tick or m.claimed_here)]
        if not batch and not polled and not self._forget:
            return
        try:
            if batch:
                args: list[bytes | str | int] = [self._ttl_ms, ALIVE_MS]
                for mirror in batch:
                    mirror.append_args(args)
                await self._append(keys=[mirror.key for mirror in batch], args=args)
            if self._forget:
                await self._redis.delete(*self._forget, *(key + ":a" for key in self._forget))
            answers: list[Any] = []
            if polled:
                claims = [1 if mirror.claimed_here else 0 for mirror in polled]
                keys = [mirror.key for mirror in polled]
                answers = await self._poll(keys=keys, args=[ALIVE_MS, *claims])
        except (RedisError, OSError) as error:
            self._failed(batch, error)
            return
        if tick:
            self._next_tick = now + TICK_SECONDS
        self._recovered()
        self._forget.clear()
        for mirror in batch:
            mirror.written()
            if mirror.done:
                self._live.discard(mirror)
        self._unsent = []
        for mirror in polled:
            mirror.claimed_here = False
        self._apply_requests(polled, answers)

    def _apply_requests(self, polled: list[StreamMirror], results: list[Any]) -> None:
        """What other instances asked of the streams: cancel, or a resume there."""
        for i, mirror in enumerate(polled):
            remote, cancel = results[2 * i], results[2 * i + 1]
            if cancel:
                mirror.stream.cancel()
                continue
            here = mirror.remote is not None and mirror.stream.is_attached(mirror.remote)
            if remote not in (None, b"taken"):
                if remote != mirror.remote_token:  # a newer resumer elsewhere: it wins
                    mirror.remote_token = remote
                    mirror.remote = RemoteClient()
                    mirror.stream.attach(mirror.remote, mirror.side.journal.size)
            elif here:
                mirror.remote = None
                mirror.stream.on_client_gone()  # the remote resumer left: grace again

    def _failed(self, batch: list[StreamMirror], error: BaseException) -> None:
        self._metrics.journal_failed("write")
        if not self._down:
            self._down = True
            log.warning(
                "the shared journal is unreachable (%s): streams are relayed and resumable "
                "on this instance only until it is back",
                error,
            )
        for mirror in batch:
            if mirror.unsent_bytes() > self._max_bytes:
                self._give_up(mirror, "Redis was unreachable too long")
        self._unsent = [mirror for mirror in batch if mirror.has_unsent()]

    def _recovered(self) -> None:
        if self._down:
            self._down = False
            log.info("the shared journal is reachable again")

    def _give_up(self, mirror: StreamMirror, why: str) -> None:
        mirror.done = True
        mirror.written()
        self._live.discard(mirror)
        log.info("stream no longer resumable on other instances: %s", why)
        self._forget.append(mirror.key)

    async def close(self) -> None:
        """The final flush (streams drained: their endings go out), then stop. The
        loop ends after the flush it is in: a flush cut short could lose its batch."""
        if self._task is not None:
            self._closing = True
            self._wake.set()
            await self._task
            self._task = None
        await self.flush()
