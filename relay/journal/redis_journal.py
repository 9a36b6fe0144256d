"""The shared journal on Redis Streams (`--journal redis://...`): a `SharedJournal`
that mirrors this instance's resumable streams (relay/journal/redis_writer.py) and
serves resumes of other instances' streams (relay/journal/redis_reader.py)."""

from __future__ import annotations

from redis.asyncio import Redis

from relay.core.exchange import ClientSide
from relay.core.resumable import ResumableClient
from relay.core.stream import RelayStream
from relay.journal.redis_reader import JournalReader
from relay.journal.redis_writer import JournalWriter, StreamMirror
from relay.ops.metrics import RelayMetrics

#: Redis answers within this or counts as unreachable (a blocking read waits less).
_SOCKET_TIMEOUT = 2.0


class RedisJournal:
    """This process's connection to the shared journal."""

    def __init__(self, url: str, retain: float, max_bytes: int, metrics: RelayMetrics) -> None:
        # hiredis parses the replies when it is installed (a dependency of ours).
        self._redis = Redis.from_url(
            url, socket_timeout=_SOCKET_TIMEOUT, socket_connect_timeout=_SOCKET_TIMEOUT
        )
        self._metrics = metrics
        self._writer = JournalWriter(self._redis, retain, max_bytes, metrics)

    def mirror(
        self, stream_id: str, credential: bytes, stream: RelayStream, side: ResumableClient
    ) -> StreamMirror:
        mirror = StreamMirror(self._writer, stream_id, credential, stream, side)
        self._writer.add(mirror)
        return mirror

    def remote_resume(
        self, client: ClientSide, stream_id: str, credential: bytes, offset: int | None
    ) -> JournalReader:
        return JournalReader(self._redis, self._metrics, client, stream_id, credential, offset)

    async def close(self) -> None:
        """After the drain: the streams' last batches and endings go out first."""
        try:
            await self._writer.close()
        finally:
            await self._redis.aclose()
