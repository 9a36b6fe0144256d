"""A request body as the stream machine keeps it: sans-IO rules, no bytes copied.

The body is kept (as the chunks that came) until the response head reaches the client,
so a transparent retry can send it again; its size is held to `--max-body-bytes` and
to the Content-Length the client declared, so that upstream never gets a request whose
framing disagrees with its body.
"""

from __future__ import annotations

import logging
from dataclasses import replace

from relay.core.body_policy import BodyPolicy
from relay.core.errors import BadRequest, BodyTooLarge, RelayError
from relay.core.exchange import RequestHead
from relay.core.request_rules import declared_length

log = logging.getLogger("sse_relay")


class RequestBody:
    """The body of one request: how much came, whether it is whole, what to keep."""

    __slots__ = ("_chunks", "_declared", "_limit", "dropped_params", "ended", "size")

    def __init__(self, limit: int) -> None:
        self._limit = limit
        self._declared: int | None = None
        # None once nothing needs keeping (the response started).
        self._chunks: list[bytes] | None = []
        self.size = 0
        self.ended = False
        #: Params the body policy removed, for the response header that says so.
        self.dropped_params: tuple[str, ...] = ()

    def declare(self, head: RequestHead) -> RelayError | None:
        """Take the length `head` declares; refuse one over the limit before any byte."""
        self._declared = declared_length(head)
        if self._declared is not None and self._declared > self._limit:
            return self.too_large()
        return None

    def add(self, data: bytes) -> RelayError | None:
        """Count (and keep) a chunk; the error if it breaks a rule."""
        self.size += len(data)
        if self.size > self._limit:
            return self.too_large()
        if self._declared is not None and self.size > self._declared:
            return BadRequest("the request body is longer than its content-length")
        if self._chunks is not None:
            self._chunks.append(data)
        return None

    def end(self) -> RelayError | None:
        """The client says the body is whole; the error if it is not what it declared."""
        self.ended = True
        if self._declared is not None and self.size != self._declared:
            return BadRequest("the request body is shorter than its content-length")
        return None

    @property
    def kept(self) -> list[bytes] | None:
        """The chunks so far, while a retry may still need them; else None."""
        return self._chunks

    def release(self) -> None:
        """The response started: no retry will need the body again."""
        self._chunks = None

    def apply_policy(self, policy: BodyPolicy, head: RequestHead) -> RequestHead:
        """Run the body policy on the whole body (raises its refusal); the head to send,
        with a Content-Length of the rewritten body if the policy changed it."""
        body = b"".join(self._chunks or ())
        result = policy.apply(body)
        if result.kept:
            log.warning("kept denied params %s: params in the body depend on them", result.kept)
        if result.body is body:
            return head
        self._chunks = [result.body]
        self.dropped_params = result.dropped
        headers = [(k, v) for k, v in head.headers if k != b"content-length"]
        headers.append((b"content-length", str(len(result.body)).encode()))
        return replace(head, headers=headers)

    def too_large(self) -> BodyTooLarge:
        return BodyTooLarge(f"request body exceeds the relay's limit of {self._limit} bytes")
