"""The local relay mode (`--resume-upstream`): an unmodified client (the official SDK)
talks to a relay on its own machine, whose connection to the remote relay is cut
mid-stream; the local relay resumes from the exact byte, the client sees one
continuous stream, and upstream saw one request."""

from __future__ import annotations

from collections.abc import Iterator

import anthropic
import pytest

from tests.clients import script, sdk_stream
from tests.idleproxy import IdleKillingProxy
from tests.relayproc import RelayProcess
from tests.simserver import SimServer

# A gap, so that the cut can also land while the remote relay sends keepalives.
FIELDS = script(gaps=[[4, 0.5]])


@pytest.fixture(scope="module")
def remote(sim: SimServer) -> Iterator[RelayProcess]:
    with RelayProcess(sim.url, "--resume-grace", "10") as relay:
        yield relay


@pytest.mark.parametrize("cut_after", [400, 700, 1100, 1600])
def test_a_cut_between_the_relays_is_invisible_to_the_sdk(
    sim: SimServer, remote: RelayProcess, cut_after: int
) -> None:
    events, final = sdk_stream(sim.url, FIELDS)
    before = len(sim.requests)
    with (
        IdleKillingProxy(remote.port, cut_after=cut_after) as cut,
        RelayProcess(cut.url, "--resume-upstream", keepalive=5.0) as local,
    ):
        relayed_events, relayed_final = sdk_stream(local.url, FIELDS)
        assert cut.kills == 1 and cut.connections >= 2  # cut, then resumed through it
        assert b"resuming POST /v1/messages from byte" in local.stderr_text
    assert relayed_final.model_dump() == final.model_dump()
    assert [e["type"] for e in relayed_events] == [e["type"] for e in events]
    assert len(sim.requests) - before == 1  # one request upstream, not a retry


def test_without_resume_upstream_the_cut_is_the_usual_error_frame(
    sim: SimServer, remote: RelayProcess
) -> None:
    """The control: the same cut without --resume-upstream ends the SDK's stream with
    the relay's typed error."""
    with (
        IdleKillingProxy(remote.port, cut_after=700) as cut,
        RelayProcess(cut.url, keepalive=5.0) as local,
        pytest.raises(anthropic.APIStatusError, match="upstream connection lost"),
    ):
        sdk_stream(local.url, FIELDS)


def test_against_a_remote_without_resume_it_is_a_plain_relay_and_says_so_once(
    sim: SimServer,
) -> None:
    """The sim names no stream id: the local relay relays as a plain one, two streams
    get the same answer as directly, and its log says why once, not per stream."""
    _, final = sdk_stream(sim.url, FIELDS)
    with RelayProcess(sim.url, "--resume-upstream", keepalive=5.0) as local:
        for _ in range(2):
            _, relayed = sdk_stream(local.url, FIELDS)
            assert relayed.model_dump() == final.model_dump()
        assert local.stderr_text.count(b"does not resume streams") == 1
