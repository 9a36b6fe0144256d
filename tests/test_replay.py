"""Identical-retry replay (`--replay-retries`): an unmodified client whose connection is
cut mid-stream sends the same request again and gets the whole stream, byte for byte,
from the dropped stream's journal, while upstream saw one request. Anything else (a
different request, a first client still there, a stream already delivered or too old,
the flag off) goes upstream as ever.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import anthropic
import httpx2
import pytest

from tests.clients import MESSAGE_PARAMS, STREAM_BODY, raw_stream, script, sdk_stream, wait_for
from tests.idleproxy import IdleKillingProxy
from tests.relayproc import RelayProcess, run_cli
from tests.simserver import SimServer
from tests.test_resume import PartialStream, direct
from tests.test_resume import _metric as metric

# The cut lands before the gap; the stream goes on without its client, and its tail is
# still to come when the retry arrives. No keepalive fits in it: every byte is upstream's,
# and a gap changes when bytes come, never which: the gapless stream is the reference.
FIELDS = script(gaps=[[3, 0.5]])
KEY = {"x-api-key": "sk-owner"}
REPLAYED = "sse_relay_replayed_retries_total"
DETACHED = "sse_relay_streams_detached"
JOURNALS = "sse_relay_journal_bytes"
# Well past the response head, well before the gap (event 3 ends at body byte 743).
CUT_AFTER = 500


@pytest.fixture
def relay(sim: SimServer) -> Iterator[RelayProcess]:
    flags = ("--replay-retries", "--resume-grace", "10", "--resume-retain", "5")
    with RelayProcess(sim.url, *flags, keepalive=30) as process:
        yield process


def sdk_raw(base_url: str) -> tuple[dict[str, str], bytes]:
    """One streaming Messages call as the SDK makes it; its head and undecoded body."""
    client = anthropic.Anthropic(base_url=base_url, api_key="sk-test", max_retries=0)
    with (
        client,
        client.messages.with_streaming_response.create(
            **MESSAGE_PARAMS, stream=True, extra_headers=FIELDS
        ) as response,
    ):
        return dict(response.headers), b"".join(response.iter_bytes())


def dropped(relay: RelayProcess, headers: dict[str, str]) -> PartialStream:
    """A stream cut after its client got some bytes, once the relay has seen it go."""
    first = PartialStream(relay.port, headers)
    first.read_until(300)
    first.cut()
    wait_for(lambda: metric(relay, DETACHED) == 1)
    return first


def test_the_sdk_re_sending_after_a_cut_gets_the_same_bytes_from_one_upstream_request(
    sim: SimServer, relay: RelayProcess
) -> None:
    _, expected = sdk_raw(sim.url)
    before = len(sim.requests)
    with IdleKillingProxy(relay.port, cut_after=CUT_AFTER) as cut:
        with pytest.raises(httpx2.TransportError):
            sdk_raw(cut.url)
        assert cut.kills == 1
        wait_for(lambda: metric(relay, DETACHED) == 1)
        head, again = sdk_raw(cut.url)
    assert again == expected
    assert len(sim.requests) - before == 1
    assert metric(relay, REPLAYED) == 1
    assert "relay-stream-id" not in head


def test_the_sdk_stream_helper_re_sent_after_a_cut_gets_the_whole_message(
    sim: SimServer, relay: RelayProcess
) -> None:
    events, final = sdk_stream(sim.url, FIELDS)
    before = len(sim.requests)
    with IdleKillingProxy(relay.port, cut_after=CUT_AFTER) as cut:
        with pytest.raises(httpx2.TransportError):
            sdk_stream(cut.url, FIELDS)
        wait_for(lambda: metric(relay, DETACHED) == 1)
        relayed_events, relayed_final = sdk_stream(cut.url, FIELDS)
    assert relayed_final.model_dump() == final.model_dump()
    assert relayed_events == events
    assert len(sim.requests) - before == 1


def test_a_replayed_retry_gets_the_original_head_and_bytes_and_may_drop_and_retry_too(
    sim: SimServer, relay: RelayProcess
) -> None:
    """The head is the one the first client got (upstream's request-id in it, no
    relay-stream-id), the body all of it from byte 0. That retry drops too; the next one,
    over HTTP/2, takes the stream over again and gets it whole."""
    expected = direct(sim, {})
    before = len(sim.requests)
    first = dropped(relay, {**KEY, **FIELDS})
    second = dropped(relay, {**KEY, **FIELDS})
    assert second.headers == first.headers and b"relay-stream-id" not in first.headers
    assert expected.startswith(bytes(first.body)) and expected.startswith(bytes(second.body))
    with httpx2.Client(http1=False, http2=True, timeout=30) as client:
        answer = client.post(relay.url + "/v1/messages", content=STREAM_BODY, headers=KEY | FIELDS)
    assert answer.http_version == "HTTP/2" and answer.content == expected
    h1_framing = {b"transfer-encoding": b"chunked"}.items()
    assert set(answer.headers.raw) == set(first.headers.items()) - h1_framing
    assert len(sim.requests) - before == 1 and metric(relay, REPLAYED) == 2


@pytest.mark.parametrize(
    ("change", "body"),
    [
        ({}, json.dumps({**MESSAGE_PARAMS, "stream": True, "max_tokens": 1000}).encode()),
        ({"anthropic-beta": "interleaved-thinking-2025-05-14"}, STREAM_BODY),
        ({"anthropic-version": "2023-06-01"}, STREAM_BODY),
        ({"x-api-key": "sk-someone-else"}, STREAM_BODY),
    ],
    ids=["body", "beta", "version", "credential"],
)
def test_a_different_request_goes_upstream_with_its_body_as_sent(
    sim: SimServer, relay: RelayProcess, change: dict[str, str], body: bytes
) -> None:
    expected = direct(sim, {})
    dropped(relay, {**KEY, **FIELDS})
    before = len(sim.requests)
    status, _, data = raw_stream(relay.url, body, {**KEY, **FIELDS, **change})
    assert status == 200 and b"event: message_stop" in data
    assert len(sim.requests) - before == 1 and sim.requests[-1].body == body
    assert metric(relay, REPLAYED) == 0
    # The dropped stream is still there for the request it really repeats.
    status, _, data = raw_stream(relay.url, headers={**KEY, **FIELDS})
    assert data == expected and len(sim.requests) - before == 1
    assert metric(relay, REPLAYED) == 1


def test_a_chunked_or_framed_body_reaches_upstream_byte_identical(
    sim: SimServer, relay: RelayProcess
) -> None:
    """Read whole before anything goes upstream, a large body still goes as it came."""
    body = json.dumps({**MESSAGE_PARAMS, "stream": True, "metadata": {"pad": "x" * 300_000}})
    data = body.encode()

    def pieces() -> Iterator[bytes]:
        for start in range(0, len(data), 7000):
            yield data[start : start + 7000]

    before = len(sim.requests)
    with httpx2.Client(timeout=30) as client:
        chunked = client.post(relay.url + "/v1/messages", content=pieces())
    with httpx2.Client(http1=False, http2=True, timeout=30) as client:
        framed = client.post(relay.url + "/v1/messages", content=data)
    assert chunked.status_code == framed.status_code == 200
    assert [r.body for r in sim.requests[before:]] == [data, data]
    assert sim.requests[before].header(b"transfer-encoding") == b"chunked"


def test_a_re_send_while_the_first_client_is_still_there_goes_upstream(
    sim: SimServer, relay: RelayProcess
) -> None:
    expected = direct(sim, {})
    before = len(sim.requests)
    first = PartialStream(relay.port, {**KEY, **FIELDS})
    first.read_until(300)
    status, _, data = raw_stream(relay.url, headers={**KEY, **FIELDS})
    assert status == 200 and data == expected
    first.read_until(10**6)  # the first client still gets its own stream, whole
    assert bytes(first.body) == expected
    assert len(sim.requests) - before == 2 and metric(relay, REPLAYED) == 0


def test_a_stream_that_ended_with_its_client_there_is_not_replayed(
    sim: SimServer, relay: RelayProcess
) -> None:
    """Its client got the whole answer: a re-send is a new question, and the journal
    is let go at once rather than kept for --resume-retain."""
    before = len(sim.requests)
    assert raw_stream(relay.url, headers=KEY)[0] == 200
    assert metric(relay, JOURNALS) == 0
    assert raw_stream(relay.url, headers=KEY)[0] == 200
    assert len(sim.requests) - before == 2 and metric(relay, REPLAYED) == 0


def test_after_the_retain_window_a_re_send_goes_upstream(sim: SimServer) -> None:
    fields = script(gaps=[[3, 0.3]])
    with RelayProcess(sim.url, "--replay-retries", "--resume-retain", "0.5", keepalive=30) as relay:
        expected = direct(sim, {})
        before = len(sim.requests)
        dropped(relay, {**KEY, **fields})
        wait_for(lambda: b'"outcome": "completed"' in relay.stderr_text, timeout=10)
        wait_for(lambda: metric(relay, JOURNALS) == 0, timeout=10)
        status, _, data = raw_stream(relay.url, headers={**KEY, **fields})
        assert status == 200 and data == expected
        assert len(sim.requests) - before == 2 and metric(relay, REPLAYED) == 0


def test_without_the_flag_a_drop_aborts_upstream_at_once_and_a_re_send_goes_upstream(
    sim: SimServer,
) -> None:
    fields = script(gaps=[[3, 1.0]])
    with RelayProcess(sim.url, keepalive=30) as relay:
        before, closes = len(sim.requests), len(sim.closes)
        first = PartialStream(relay.port, {**KEY, **fields})
        first.read_until(300)
        first.cut()
        wait_for(lambda: any(c.client_aborted_midstream for c in sim.closes[closes:]), timeout=2)
        assert b"relay-stream-id" not in first.headers
        assert raw_stream(relay.url, headers={**KEY, **fields})[0] == 200
        assert len(sim.requests) - before == 2 and metric(relay, REPLAYED) == 0


def test_the_flag_comes_from_the_command_line_the_environment_or_a_config_file(
    tmp_path: Path,
) -> None:
    path = tmp_path / "relay.toml"
    path.write_text("replay-retries = true\n")
    shown = {
        source: run_cli(["check-config", *args], env=env)
        for source, args, env in [
            ("default", [], {}),
            ("flag --replay-retries", ["--replay-retries"], {}),
            ("env SSE_RELAY_REPLAY_RETRIES", [], {"SSE_RELAY_REPLAY_RETRIES": "true"}),
            (f"file {path}", ["--config", str(path)], {}),
        ]
    }
    for source, done in shown.items():
        lines = {" ".join(line.split()) for line in done.stdout.splitlines()}
        value = "false" if source == "default" else "true"
        assert f"replay-retries = {value} # {source}" in lines, done.stdout
    bad = run_cli(["check-config"], env={"SSE_RELAY_REPLAY_RETRIES": "maybe"})
    assert bad.returncode == 2 and "SSE_RELAY_REPLAY_RETRIES: expected true or false" in bad.stderr
