"""The streams alive in one relay process: how a new one opens and starts, and the drain.

The one owner of the live-stream set and of the drain state that every adapter and the
admin listener read.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable

from relay.core.errors import Overloaded, RelayError
from relay.core.event_ids import wants_event_ids
from relay.core.exchange import ClientSide, EdgeStream, RequestHead
from relay.core.replay import ReplayCandidate, ReplayContext
from relay.core.request_rules import check_request
from relay.core.resumable import RESUME_PREFIX, ResumableClient
from relay.core.resume_request import ResumeRequest
from relay.core.resume_store import ResumableEntry, ResumeStore, wants_resume
from relay.core.shared_journal import credential_of
from relay.core.stream import RelayStream
from relay.ops.metrics import RelayMetrics
from relay.upstream.routes import UpstreamRoutes


class StreamRegistry:
    """Opens relay streams for the adapters, counts them, and drains them."""

    def __init__(
        self,
        routes: UpstreamRoutes,
        metrics: RelayMetrics,
        max_streams: int,
        resume: ResumeStore | None = None,
        replay_retries: bool = False,
    ) -> None:
        self._routes = routes
        self._resume = resume
        self._metrics = metrics
        self._max_streams = max_streams
        self.active: set[RelayStream] = set()
        #: POSTs reading their body before they relay or replay (--replay-retries); they
        #: count towards the limit and drain as streams do.
        self.waiting: set[ReplayCandidate] = set()
        self._replay = (
            ReplayContext(resume, metrics, self.active, self.waiting)
            if resume is not None and replay_retries
            else None
        )
        self.draining = False
        #: Called when a drain starts (HTTP/2 connections send GOAWAY).
        self.on_drain: set[Callable[[], None]] = set()

    def open(self, client: ClientSide, head: RequestHead) -> EdgeStream:
        """A stream for the adapter to keep, its route resolved once; `start` it once the
        adapter holds it. A request under RESUME_PREFIX is one for a resumable stream; with
        --replay-retries a POST first reads its body, to see whether it repeats one."""
        resume = self._resume
        if resume is not None and head.target.startswith(RESUME_PREFIX):
            return ResumeRequest(client, head, resume, self._metrics)
        route = self._routes.match(head.target)
        resumable = route.settings.resumable or wants_resume(head.headers)
        if self._replay is not None and head.method == b"POST" and not resumable:
            return ReplayCandidate(client, head, route.settings, route.open_upstream, self._replay)
        made = resume.new_journal() if resume is not None and resumable else None
        if resume is None or made is None:
            return RelayStream(
                client, head, route.settings, route.open_upstream, self._metrics, self.active
            )
        stream_id, journal = made
        side = ResumableClient(client, journal, stream_id, wants_event_ids(head.headers))
        stream = RelayStream(
            side,
            head,
            route.settings,
            route.open_upstream,
            self._metrics,
            self.active,
            on_finish=lambda outcome: resume.finished(stream_id, outcome),
        )
        if resume.shared is not None:
            credential = credential_of(head.headers)
            side.mirror = resume.shared.mirror(stream_id, credential, stream, side)
        resume.add(stream_id, ResumableEntry(stream, side, resume.owner_of(head.headers)))
        self._metrics.resumable_started()
        return stream

    def start(self, stream: EdgeStream) -> None:
        """Relay the stream, or refuse it at once (a request upstream must not get as it
        is, draining, over the stream limit)."""
        try:
            check_request(stream.head)
        except RelayError as error:
            stream.refuse(error)
            return
        if isinstance(stream, ResumeRequest):
            stream.start()  # takes no stream slot: the stream it resumes has one
        elif self.draining:
            stream.refuse(Overloaded("sse-relay is restarting; retry the request"))
        elif len(self.active) + len(self.waiting) > self._max_streams:
            stream.refuse(Overloaded(f"sse-relay is at its limit of {self._max_streams} streams"))
        else:
            stream.start()

    async def drain(self, timeout: float) -> None:
        """Let live streams finish for up to `timeout` s, then end the rest cleanly."""
        self.draining = True
        for notify in list(self.on_drain):
            notify()
        resume = self._resume
        if resume is not None and resume.shared is None:
            # No new connection reaches a detached stream now, and its journal ends with
            # this process: stop paying for it. (With a shared journal it runs on: a
            # resume on another instance is served from there.)
            for stream in resume.detached_streams():
                stream.end_for_drain()
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        while (self.active or self.waiting) and loop.time() < deadline:
            await asyncio.sleep(0.05)
        for stream in list(self.active):
            stream.end_for_drain()
        for candidate in list(self.waiting):
            candidate.end_for_drain()
