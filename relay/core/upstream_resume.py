"""The local relay mode (`--resume-upstream`): when the connection to a remote sse-relay
drops mid-stream, resume the stream from there instead of failing it.

The relay runs on the client's machine (as `ANTHROPIC_BASE_URL`), asks the remote relay
for resumable streams, and on a drop sends `GET /relay/v1/streams/ID?offset=N` with N
the body bytes it got so far: the application's connection never sees the break, and
upstream saw one request. Sans-IO: this only builds the requests.
"""

from __future__ import annotations

import logging
from dataclasses import replace

from relay.core.exchange import Headers, RequestHead
from relay.core.resumable import RESUME_PREFIX, STREAM_ID_HEADER

#: Resumes of one stream at most: past them a drop fails the stream as it would without.
MAX_RESUMES = 10
_CREDENTIALS = (b"x-api-key", b"authorization")

log = logging.getLogger("sse_relay")
# Said once per process: a remote without resume is a setup fact, not a per-stream event.
_told_no_resume = False


class UpstreamResume:
    """What it takes to resume one stream from the remote relay."""

    __slots__ = ("resumes", "stream_id")

    def __init__(self) -> None:
        #: The remote's id for the stream, once its response head named one.
        self.stream_id: bytes | None = None
        self.resumes = 0

    def learn(self, status: int, headers: Headers) -> Headers:
        """The remote's response headers without its stream id, which is kept: the
        application did not ask for a resumable stream and has no use for the id."""
        global _told_no_resume
        kept: Headers = []
        for name, value in headers:
            if name == STREAM_ID_HEADER:
                self.stream_id = value
            else:
                kept.append((name, value))
        if self.stream_id is None and 200 <= status < 300 and not _told_no_resume:
            _told_no_resume = True
            log.warning(
                "--resume-upstream: the upstream named no relay-stream-id, so it does not "
                "resume streams; relaying as a plain relay"
            )
        return kept

    def next_head(self, original: RequestHead, offset: int) -> RequestHead | None:
        """The resume request for a drop after `offset` body bytes, or None when the
        stream cannot be resumed (the remote named no id, or too many resumes)."""
        if self.stream_id is None or self.resumes >= MAX_RESUMES:
            return None
        self.resumes += 1
        return replace(
            original,
            method=b"GET",
            target=RESUME_PREFIX + self.stream_id + b"?offset=%d" % offset,
            headers=[(k, v) for k, v in original.headers if k in _CREDENTIALS],
            has_body=False,
        )
