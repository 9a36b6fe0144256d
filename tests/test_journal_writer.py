"""The shared journal's sealing and batching, in process, against a real redis-server:
entries open only with the stream's id and credential and only in their place, and a
flush that failed while Redis was down is sent whole once it is back, nothing twice."""

from __future__ import annotations

import asyncio
from typing import cast

import pytest
from redis.asyncio import Redis

from relay.core.journal import Ending
from relay.core.resumable import ResumableClient
from relay.core.stream import RelayStream
from relay.journal.redis_writer import BATCH_BYTES, JournalWriter, StreamMirror
from relay.journal.sealing import END, InvalidTag, StreamSeal, decode_head, key_of
from relay.ops.metrics import RelayMetrics
from tests.redisproc import RedisServer

Entry = tuple[bytes, dict[bytes, bytes]]


def test_entries_open_only_with_the_id_and_credential_and_in_their_place() -> None:
    seal = StreamSeal("stream-id", b"sk-owner")
    sealed = seal.seal_data(100, b"event: ping\n\n")
    assert seal.open_data(100, sealed) == b"event: ping\n\n"
    for other in (StreamSeal("stream-id", b"sk-other"), StreamSeal("stream-iD", b"sk-owner")):
        with pytest.raises(InvalidTag):
            other.open_data(100, sealed)
    with pytest.raises(InvalidTag):  # moved to another offset: a gap or a repeat
        seal.open_data(99, sealed)
    with pytest.raises(InvalidTag):  # a data entry passed off as the ending
        seal.open_ending(100, sealed)


def mirror_of(writer: JournalWriter, stream_id: str) -> StreamMirror:
    # The stream and its client side are only used when another instance asks for the
    # stream, which these tests never do.
    return StreamMirror(
        writer, stream_id, b"sk", cast(RelayStream, None), cast(ResumableClient, None)
    )


async def entries(redis: Redis, stream_id: str) -> list[Entry]:
    return cast(list[Entry], await redis.xrange(key_of(stream_id)))


def read_back(found: list[Entry], stream_id: str) -> tuple[int, bytes, bytes | None]:
    """(status, body, ending) as a reader opens them, failing on any gap or repeat."""
    seal = StreamSeal(stream_id, b"sk")
    status, _ = decode_head(seal.open_head(found[0][1][b"h"]))
    body = b""
    ending = None
    for _, fields in found[1:]:
        if b"d" in fields:
            body += seal.open_data(len(body), fields[b"d"])
        else:
            ending = seal.open_ending(len(body), fields[b"e"])
    return status, body, ending


def test_a_flush_that_failed_is_sent_whole_when_redis_is_back() -> None:
    async def run(server: RedisServer) -> None:
        redis = Redis.from_url(server.url, socket_timeout=0.5, socket_connect_timeout=0.5)
        metrics = RelayMetrics()
        writer = JournalWriter(redis, retain=60, max_bytes=1 << 20, metrics=metrics)
        mirror = mirror_of(writer, "outage")
        writer.add(mirror)
        mirror.head(200, [(b"content-type", b"text/event-stream")])
        mirror.body(b"data: 1\n\n")
        await writer.flush()
        server.freeze()
        mirror.body(b"data: 2\n\n")
        await writer.flush()  # times out: the batch waits (Redis may still run it later)
        # (The writer's own loop may have failed a flush of its own meanwhile.)
        assert metrics.value("sse_relay_journal_errors_total", op="write") >= 1
        server.thaw()
        mirror.body(b"data: 3\n\n")
        mirror.end(Ending.END)
        await writer.flush()
        await writer.flush()  # nothing left: writes nothing more
        found = await entries(redis, "outage")
        assert read_back(found, "outage") == (200, b"data: 1\n\ndata: 2\n\ndata: 3\n\n", END)
        assert len(found) == 5  # head, a batch before, during, after the outage, ending
        await writer.close()
        await redis.aclose()

    with RedisServer() as server:
        asyncio.run(run(server))


def test_writes_are_batched_and_a_big_batch_wakes_the_writer() -> None:
    async def run(server: RedisServer) -> None:
        redis = Redis.from_url(server.url)
        writer = JournalWriter(redis, retain=60, max_bytes=1 << 20, metrics=RelayMetrics())
        mirror = mirror_of(writer, "batched")
        writer.add(mirror)
        mirror.head(200, [])
        await asyncio.sleep(0.2)  # the head is written at once
        assert len(await entries(redis, "batched")) == 1
        event = b"data: " + b"x" * 100 + b"\n\n"
        for _ in range(1000):  # one loop turn: no flush can run in between
            mirror.body(event)
        assert 1000 * len(event) > BATCH_BYTES
        await asyncio.sleep(0.2)
        found = await entries(redis, "batched")
        assert len(found) == 2  # one entry for a thousand events
        assert read_back(found, "batched")[1] == event * 1000
        await writer.close()
        await redis.aclose()

    with RedisServer() as server:
        asyncio.run(run(server))


def test_a_stream_past_max_bytes_is_deleted_from_redis() -> None:
    async def run(server: RedisServer) -> None:
        redis = Redis.from_url(server.url)
        writer = JournalWriter(redis, retain=60, max_bytes=1000, metrics=RelayMetrics())
        mirror = mirror_of(writer, "big")
        writer.add(mirror)
        mirror.head(200, [])
        mirror.body(b"x" * 600)
        await writer.flush()
        assert len(await entries(redis, "big")) == 2
        mirror.body(b"x" * 600)
        await writer.flush()
        assert await entries(redis, "big") == []  # a resume elsewhere: 404, no gap
        assert mirror.done
        await writer.close()
        await redis.aclose()

    with RedisServer() as server:
        asyncio.run(run(server))


def test_streams_that_never_became_resumable_leave_the_writer() -> None:
    """A non-2xx head, or an end before any head: nothing goes to Redis, and the writer
    lets the mirror go (else its timer would run on for it forever)."""

    async def run(server: RedisServer) -> None:
        redis = Redis.from_url(server.url)
        writer = JournalWriter(redis, retain=60, max_bytes=1 << 20, metrics=RelayMetrics())
        refused, failed = mirror_of(writer, "refused"), mirror_of(writer, "failed")
        writer.add(refused)
        writer.add(failed)
        refused.head(529, [(b"content-type", b"application/json")])
        refused.body(b'{"type": "error"}')
        refused.end(Ending.END)
        failed.end(Ending.RESET)
        await writer.flush()
        assert writer.streams == 0
        assert await redis.keys("*") == []
        await writer.close()
        await redis.aclose()

    with RedisServer() as server:
        asyncio.run(run(server))
