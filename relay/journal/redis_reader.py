"""The shared journal's reading side: a resume or cancel for a stream that another
instance runs, or ran, served from Redis.

A resume gets the stream's head and its journal from the requested offset, then the
live tail as the owner flushes it (`XREAD BLOCK`), until the journal's ending. It holds
the stream's `:r` key, renewed every second, which tells the owner a client is attached
here (so the stream outlives its grace period); a newer resumer elsewhere replaces the
key, and this one then resets its client, as a takeover on one instance does. If the
owner's liveness key is gone and no ending came, the owner died: the client gets the
journaled part and then the API's error frame, never a silent clean end.
"""

from __future__ import annotations

import asyncio
import logging
import secrets
from typing import Any, cast

from redis.asyncio import Redis
from redis.exceptions import RedisError

from relay.core.errors import (
    BadRequest,
    RelayError,
    StreamNotFound,
    UpstreamLost,
    UpstreamUnavailable,
    error_frame,
    error_response,
    new_request_id,
)
from relay.core.exchange import ClientSide
from relay.core.resumable import short_id
from relay.journal.redis_writer import ALIVE_MS, TICK_SECONDS
from relay.journal.sealing import END, InvalidTag, StreamSeal, decode_head, key_of
from relay.ops.metrics import RelayMetrics

log = logging.getLogger("sse_relay")

#: A Redis stream entry as the client returns it: its id and fields.
Entry = tuple[bytes, dict[bytes, bytes]]

READ_BLOCK_MS = 500
#: A stream not in Redis yet may be a minute old... or a few milliseconds: its owner
#: writes a new stream's head at once, so this wait covers the flush in flight.
NEW_STREAM_WAIT = 0.25
#: How long a cancel waits for the owner to read it (it reads every TICK_SECONDS).
CANCEL_MS = 10_000


class JournalReader:
    """Serves one resume (or cancel) from the shared journal; a `RemoteResume`."""

    def __init__(
        self,
        redis: Redis,
        metrics: RelayMetrics,
        client: ClientSide,
        stream_id: str,
        credential: bytes,
        offset: int | None,
    ) -> None:
        self._redis = redis
        self._metrics = metrics
        self._client = client
        self._short = short_id(stream_id)
        self._key = key_of(stream_id)
        self._seal = StreamSeal(stream_id, credential)
        self._offset = offset
        self._token = secrets.token_hex(8).encode()
        self._flowing = asyncio.Event()
        self._flowing.set()
        self._task: asyncio.Task[None] | None = None
        self._head: tuple[int, list[tuple[bytes, bytes]]] | None = None
        self._head_sent = False
        self._size = 0  # journal bytes read so far
        self._last = "0-0"
        self._ending: bytes | None = None

    # -- RemoteResume -----------------------------------------------------------------

    def start(self) -> None:
        self._task = asyncio.get_running_loop().create_task(self._run())

    def stop(self) -> None:
        """The client left: its claim on the stream lapses within ALIVE_MS."""
        if self._task is not None:
            self._task.cancel()

    def pause(self) -> None:
        self._flowing.clear()

    def resume(self) -> None:
        self._flowing.set()

    # -- serving ----------------------------------------------------------------------

    async def _run(self) -> None:
        try:
            await self._serve()
        except RelayError as error:
            self._fail(error)
        except InvalidTag:
            self._fail(UpstreamLost("the shared journal of this stream is damaged"))
        except (RedisError, OSError) as error:
            self._metrics.journal_failed("read")
            log.warning("the shared journal is unreachable for a resume: %s", error)
            message = "the shared journal of resumable streams is unreachable"
            self._fail(UpstreamUnavailable(message, str(error)))

    async def _serve(self) -> None:
        entries = cast(list[Entry], await self._redis.xrange(self._key))
        if not entries:
            # A resume can outrun the owner's first flush: look again once it is due.
            await asyncio.sleep(NEW_STREAM_WAIT)
            entries = cast(list[Entry], await self._redis.xrange(self._key))
        if not entries:
            raise StreamNotFound("no resumable stream by that id")
        first_id, fields = entries[0]
        try:
            self._head = decode_head(self._seal.open_head(fields[b"h"]))
        except (KeyError, InvalidTag):  # not this caller's: the same answer as unknown
            raise StreamNotFound("no resumable stream by that id") from None
        self._last = first_id.decode()
        if self._offset is None:
            await self._cancel()
            return
        # Claimed before anything is answered: a resumer anywhere after this one wins.
        await self._redis.set(self._key + ":r", self._token, px=ALIVE_MS)
        self._take(entries[1:])
        loop = asyncio.get_running_loop()
        next_check = 0.0
        while self._ending is None:
            if loop.time() >= next_check:
                if not await self._check():
                    return
                next_check = loop.time() + TICK_SECONDS
            await self._flowing.wait()
            self._take(await self._read(READ_BLOCK_MS))
        self._finish(self._ending)

    async def _cancel(self) -> None:
        await self._redis.set(self._key + ":c", b"1", px=CANCEL_MS)
        log.info("passed on the cancel of stream %s to the instance running it", self._short)
        self._metrics.resumed("cancelled")
        self._client.send_head(204, [(b"content-length", b"0")])
        self._client.send_end()

    async def _read(self, block_ms: int | None) -> list[Entry]:
        """The entries after the last one taken (waiting up to `block_ms` for one)."""
        reply = await self._redis.xread({self._key: self._last}, count=256, block=block_ms)
        return [
            entry
            for _, entries in cast(list[tuple[bytes, list[Entry]]], reply)
            for entry in entries
        ]

    def _take(self, items: list[Entry]) -> None:
        offset = self._offset or 0
        pieces: list[bytes] = []
        for entry_id, fields in items:
            self._last = entry_id.decode()
            if b"d" in fields:
                data = self._seal.open_data(self._size, fields[b"d"])
                start = self._size
                self._size += len(data)
                if self._size > offset:
                    pieces.append(data if start >= offset else data[offset - start :])
            elif b"e" in fields:
                self._ending = self._seal.open_ending(self._size, fields[b"e"])
        self._send_head(sum(len(piece) for piece in pieces))
        for piece in pieces:
            self._client.send_body(piece)

    def _send_head(self, replayed: int) -> None:
        """Once the journal reaches the client's offset (it may be ahead of Redis by
        the owner's last unflushed batch): until then nothing is answered."""
        if self._head_sent or self._head is None or self._size < (self._offset or 0):
            return
        self._head_sent = True
        self._metrics.resumed("resumed", replayed)
        log.info("resumed stream %s at byte %d from the shared journal", self._short, self._offset)
        self._client.send_head(*self._head)

    async def _check(self) -> bool:
        """Renew this resumer's claim; False once the stream is no longer ours to serve
        (a newer resumer took it, or its owner died: both answered here)."""
        pipe: Any = self._redis.pipeline(transaction=False)
        pipe.get(self._key + ":r")
        pipe.exists(self._key + ":a")
        holder, alive = await pipe.execute()
        if holder not in (None, self._token):  # None: lapsed, and nobody else claimed
            log.info("stream %s was taken over by a newer resume", self._short)
            self._client.abort()
            return False
        await self._redis.set(self._key + ":r", self._token, px=ALIVE_MS)
        if alive:
            return True
        # The owner's liveness lapsed: whatever it flushed last is in the stream now.
        self._take(await self._read(None))
        if self._ending is not None:
            self._finish(self._ending)
        else:
            log.warning("stream %s lost the instance that ran it", self._short)
            self._fail(UpstreamLost("the sse-relay instance running this stream stopped"))
        return False

    def _finish(self, ending: bytes) -> None:
        if not self._head_sent:
            offset = self._offset or 0
            self._fail(
                BadRequest(
                    f"offset {offset} is not in the stream's journal ({self._size} bytes written)"
                )
            )
        elif ending == END:
            self._client.send_end()
        else:
            self._client.abort()

    def _fail(self, error: RelayError) -> None:
        """Before the head: the error as an answer. After: the API's error frame."""
        if self._head_sent:
            self._client.send_body(error_frame(error.error_type, error.message))
            self._client.send_end()
            return
        self._metrics.resumed(error.error_type)
        headers, body = error_response(error, new_request_id())
        self._client.send_head(error.status, headers)
        self._client.send_body(body)
        self._client.send_end()
