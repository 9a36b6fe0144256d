"""What the stream machine asks its shell to do: small immutable values, as h11's events.

`StreamMachine` (relay/core/stream_machine.py) returns a list of these from every input but
the per-chunk one; `RelayStream` (relay/core/stream.py) carries them out in order. Actions
without fields are singletons, so pausing and resuming allocate nothing.
"""

from __future__ import annotations

from dataclasses import dataclass

from relay.core.exchange import Headers, RequestHead
from relay.core.stream_record import StreamRecord


@dataclass(frozen=True, slots=True)
class SendHead:
    """Send the response head to the client."""

    status: int
    headers: Headers


@dataclass(frozen=True, slots=True)
class SendBody:
    """Write bytes the relay made (an error body, ending frames) to the client."""

    data: bytes


@dataclass(frozen=True, slots=True)
class SendKeepalive:
    """Write a keepalive to the client (counted as one)."""

    data: bytes


@dataclass(frozen=True, slots=True)
class EndResponse:
    """End the response cleanly."""


@dataclass(frozen=True, slots=True)
class ResetClient:
    """Reset the client's stream or connection: the only way left to say "incomplete"."""


@dataclass(frozen=True, slots=True)
class OpenUpstream:
    """Open upstream try number `attempt` (from 0) at loop time `at` (now, or a retry's
    backoff later), and send the request head on it."""

    attempt: int
    at: float
    #: The request to send, when not the stream's own (a resume from a remote relay).
    head: RequestHead | None = None


@dataclass(frozen=True, slots=True)
class UpstreamBody:
    """Forward a piece of the request body to the open upstream try."""

    data: bytes


@dataclass(frozen=True, slots=True)
class UpstreamEnd:
    """The request body is complete: end it upstream."""


@dataclass(frozen=True, slots=True)
class AbortUpstream:
    """Abandon the upstream try being opened or open; the client's body may flow again."""


@dataclass(frozen=True, slots=True)
class PauseUpstream:
    """Stop reading upstream's response (the client is not taking bytes)."""


@dataclass(frozen=True, slots=True)
class ResumeUpstream:
    """Read upstream's response again."""


@dataclass(frozen=True, slots=True)
class ArmTimer:
    """Call `tick` at loop time `at` (replacing any earlier timer)."""

    at: float


@dataclass(frozen=True, slots=True)
class Finish:
    """The stream is over (always the last action): count and log its record.

    `refused` is the status of a refusal to count, if the relay refused the request.
    """

    record: StreamRecord
    refused: int | None


END_RESPONSE = EndResponse()
RESET_CLIENT = ResetClient()
UPSTREAM_END = UpstreamEnd()
ABORT_UPSTREAM = AbortUpstream()
PAUSE_UPSTREAM = PauseUpstream()
RESUME_UPSTREAM = ResumeUpstream()

Action = (
    SendHead
    | SendBody
    | SendKeepalive
    | EndResponse
    | ResetClient
    | OpenUpstream
    | UpstreamBody
    | UpstreamEnd
    | AbortUpstream
    | PauseUpstream
    | ResumeUpstream
    | ArmTimer
    | Finish
)
