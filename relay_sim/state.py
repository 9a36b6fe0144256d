"""What every connection of one sim server shares, and what tests read back from it.

Its own module so that both transports (`relay_sim.sim` for HTTP/1.1,
`relay_sim.h2` for HTTP/2) can depend on it without depending on each other.
"""

from __future__ import annotations

import itertools
from dataclasses import dataclass, field
from typing import Protocol, runtime_checkable

from relay_sim.script import RecordedRequest, SimScript


class SimConnection(Protocol):
    """Any live connection of the sim, whatever its HTTP version."""

    def abort(self) -> None:
        """Drops the connection at once."""


@runtime_checkable
class GracefulConnection(SimConnection, Protocol):
    """A connection that can stop taking requests without cutting those it answers
    (HTTP/2's GOAWAY); HTTP/1.1 has no such frame."""

    def goaway(self) -> None:
        """Finishes the responses already begun, refuses the rest, then closes."""


@dataclass(frozen=True)
class CloseRecord:
    """A connection's end, timed when the server noticed it; over HTTP/2 also a client's
    RST_STREAM of a response in progress (then `reset_code` is its error code)."""

    time: float  # time.monotonic()
    client_aborted_midstream: bool  # the peer left while a request was being answered
    connection: int  # 1-based accept order
    reset_code: int | None = None


@dataclass
class SimState:
    """What all connections of one sim server share; tests read it from another thread."""

    script: SimScript = field(default_factory=SimScript)
    requests: list[RecordedRequest] = field(default_factory=list)
    closes: list[CloseRecord] = field(default_factory=list)
    connections: int = 0  # accepted so far
    h2_max_streams: int = 100  # MAX_CONCURRENT_STREAMS an HTTP/2 connection advertises
    live: set[SimConnection] = field(default_factory=set, init=False, repr=False)
    _request_ids: itertools.count[int] = field(
        default_factory=lambda: itertools.count(1), init=False, repr=False
    )

    def next_request_id(self) -> str:
        return f"req_sim_{next(self._request_ids)}"

    def record_close(
        self, at: float, midstream: bool, connection: int, reset_code: int | None = None
    ) -> None:
        self.closes.append(CloseRecord(at, midstream, connection, reset_code))

    def abort_all(self) -> None:
        for connection in list(self.live):
            connection.abort()

    def goaway_all(self) -> None:
        """Every HTTP/2 connection finishes the responses it began, refuses the rest."""
        for connection in list(self.live):
            if isinstance(connection, GracefulConnection):
                connection.goaway()
