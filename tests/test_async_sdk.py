"""The async Python SDK (`anthropic.AsyncAnthropic`, `.messages.stream`) through the relay.

Its read timeout plays the client's byte watchdog: shorter than the scripted gap, so a
stream survives only if bytes keep coming. Controls without the relay show what the
relay changes.
"""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from typing import Any

import anthropic
import httpx2
import pytest

from tests.accesslog import stream_record
from tests.clients import MESSAGE_PARAMS, script, sdk_stream
from tests.relayproc import RelayProcess
from tests.simserver import SimServer

KA = 0.1
GAP = 2.0  # seconds of upstream silence
READ_TIMEOUT = 1.0  # the longest wait for a byte the client accepts
# The SDK's own events besides these (text, thinking, signature) are derived from them.
_WIRE_EVENTS = {
    "message_start",
    "content_block_start",
    "content_block_delta",
    "content_block_stop",
    "message_delta",
    "message_stop",
}


@pytest.fixture(scope="module")
def relay(sim: SimServer) -> Iterator[RelayProcess]:
    with RelayProcess(sim.url, keepalive=KA) as proc:
        yield proc


def _wire(events: list[Any]) -> list[Any]:
    """The events of `events` that were SSE frames on the wire."""
    return [event for event in events if event["type"] in _WIRE_EVENTS]


async def _stream(base_url: str, headers: dict[str, str], events: list[Any]) -> tuple[Any, str]:
    """Streams one turn with AsyncAnthropic, appending each event to `events` as it
    comes (they stay there when the stream raises): (final message, its request-id)."""
    timeout = httpx2.Timeout(30.0, read=READ_TIMEOUT)
    async with (
        anthropic.AsyncAnthropic(
            base_url=base_url, api_key="sk-test", max_retries=0, timeout=timeout
        ) as client,
        client.messages.stream(**MESSAGE_PARAMS, extra_headers=headers) as stream,
    ):
        async for event in stream:
            events.append(event.model_dump())
        final = await stream.get_final_message()
        return final, stream.response.headers["request-id"]


def test_async_sdk_stream_is_carried_through_a_gap_by_keepalives(
    sim: SimServer, relay: RelayProcess
) -> None:
    """A gap twice the client's read timeout: through the relay the async SDK gets
    the same events and final message as straight from upstream, and the relay logged
    the keepalives that bridged it."""
    events: list[Any] = []
    final, request_id = asyncio.run(_stream(relay.url, script(gaps=[[3, GAP]]), events))
    direct_events, direct_final = sdk_stream(sim.url)  # a gap changes timing, not content
    assert events == direct_events and events[-1]["type"] == "message_stop"
    assert final.model_dump() == direct_final.model_dump()
    record = stream_record(relay, request_id)
    assert record["keepalives"] >= 3 and record["longest_silence_s"] >= GAP * 0.9


def test_without_the_relay_the_gap_trips_the_read_timeout(sim: SimServer) -> None:
    """The control: the same gap straight from upstream fails the async SDK's read, so
    the test above proves the keepalives, not a lenient client."""
    events: list[Any] = []
    with pytest.raises((httpx2.ReadTimeout, anthropic.APITimeoutError)):
        asyncio.run(_stream(sim.url, script(gaps=[[3, GAP]]), events))
    assert len(_wire(events)) == 4  # all that came before the gap


@pytest.mark.parametrize("failure", ["drop_after", "truncate_after"])
def test_async_sdk_raises_api_status_error_when_upstream_dies_mid_stream(
    sim: SimServer, relay: RelayProcess, failure: str
) -> None:
    """Upstream gone after 5 events: the async SDK yields those 5, then raises
    `APIStatusError` with the relay's `api_error`, which a caller can handle as an API
    failure; straight from upstream the same death is a raw transport error."""
    direct_events, _ = sdk_stream(sim.url)
    events: list[Any] = []
    with pytest.raises(anthropic.APIStatusError) as caught:
        asyncio.run(_stream(relay.url, script(**{failure: 5}), events))
    error = caught.value
    assert not isinstance(error, anthropic.APIConnectionError)
    assert _wire(events) == _wire(direct_events)[:5]
    assert error.status_code == 200  # the error arrived inside a 200 stream
    body: dict[str, Any] = error.body  # type: ignore[assignment]
    assert body["error"]["type"] == "api_error"
    assert body["error"]["message"].startswith("upstream connection lost after")
    with pytest.raises(httpx2.TransportError):  # the control: untyped, as documented
        asyncio.run(_stream(sim.url, script(**{failure: 5}), []))
