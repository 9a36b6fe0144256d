"""The official Python SDKs of OpenAI (chat completions, completions, Responses) and Gemini
(`google-genai`, alt=sse), through a relay process, against scripted upstreams that speak
each API's real wire format (tests/provider_upstreams.py).

For each: a silent gap is bridged by keepalives (the SDK's read timeout is shorter than
the gap; straight to upstream it times out); a mid-stream death and a clean end before
the terminal marker raise the SDK's typed API error (straight to upstream the clean end
is a silently truncated answer). Bodies reach upstream byte-identical to what the same
call sends straight to it.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator

import httpx2
import openai
import pytest
from google import genai
from google.genai import errors as genai_errors
from google.genai import types as genai_types

from tests.clients import closed_port
from tests.provider_upstreams import GAP, TEXT, ScriptedUpstream
from tests.relayproc import RelayProcess
from tests.test_metrics import scrape, value

WHOLE = "".join(TEXT)
# Shorter than the upstream's gap, longer than the relay's keepalive interval (0.1 s).
READ_TIMEOUT = GAP / 2
# What the relay logs as it ends a stream with an error frame (a warning, declared).
EXPECTED = ["ended .* with an error frame"]


@pytest.fixture(scope="module")
def upstream() -> Iterator[ScriptedUpstream]:
    server = ScriptedUpstream()
    yield server
    server.close()


@pytest.fixture(scope="module")
def relay(upstream: ScriptedUpstream) -> Iterator[RelayProcess]:
    with RelayProcess(upstream.url, keepalive=0.1, expect_errors=EXPECTED) as process:
        yield process


def _openai(base: str, script: str, timeout: float = 30.0) -> openai.OpenAI:
    return openai.OpenAI(
        base_url=base + "/v1",
        api_key="sk-test",
        max_retries=0,
        timeout=timeout,
        default_headers={"x-upstream-script": script},
    )


def _chat(client: openai.OpenAI) -> str:
    stream = client.chat.completions.create(
        model="gpt-4o-mini", messages=[{"role": "user", "content": "hi"}], stream=True
    )
    return "".join(chunk.choices[0].delta.content or "" for chunk in stream if chunk.choices)


def _responses(client: openai.OpenAI) -> str:
    stream = client.responses.create(model="gpt-4o-mini", input="hi", stream=True)
    return "".join(event.delta for event in stream if event.type == "response.output_text.delta")


def _completions(client: openai.OpenAI) -> str:
    stream = client.completions.create(model="gpt-3.5-turbo-instruct", prompt="hi", stream=True)
    return "".join(chunk.choices[0].text for chunk in stream if chunk.choices)


OPENAI_CALLS: dict[str, Callable[[openai.OpenAI], str]] = {
    "chat": _chat,
    "completions": _completions,
    "responses": _responses,
}
ENDINGS = {"chat": "data: [DONE]", "completions": "data: [DONE]", "responses": "response.completed"}


@pytest.fixture(params=list(OPENAI_CALLS))
def kind(request: pytest.FixtureRequest) -> str:
    name: str = request.param
    return name


def test_openai_complete_stream_and_byte_identical_body(
    upstream: ScriptedUpstream, relay: RelayProcess, kind: str
) -> None:
    call = OPENAI_CALLS[kind]
    assert call(_openai(upstream.url, "complete")) == WHOLE
    assert call(_openai(relay.url, "complete")) == WHOLE
    (direct_target, direct), (relayed_target, relayed) = upstream.received[-2:]
    assert relayed_target == direct_target and relayed == direct


def test_openai_gap_is_bridged_by_keepalives(
    upstream: ScriptedUpstream, relay: RelayProcess, kind: str
) -> None:
    call = OPENAI_CALLS[kind]
    with pytest.raises(openai.APITimeoutError):
        call(_openai(upstream.url, "gap", timeout=READ_TIMEOUT))
    assert call(_openai(relay.url, "gap", timeout=READ_TIMEOUT)) == WHOLE


def test_openai_mid_stream_death_raises_api_error(relay: RelayProcess, kind: str) -> None:
    with pytest.raises(openai.APIError) as raised:
        OPENAI_CALLS[kind](_openai(relay.url, "die"))
    # The typed API error from the relay's error frame, not a connection error.
    assert type(raised.value) is openai.APIError
    assert "upstream connection lost" in raised.value.message
    assert raised.value.type == "api_error"


def test_openai_clean_end_before_the_terminal_marker_raises_api_error(
    upstream: ScriptedUpstream, relay: RelayProcess, kind: str
) -> None:
    call = OPENAI_CALLS[kind]
    # Straight to upstream: a truncated answer and no error at all.
    assert call(_openai(upstream.url, "clean")) != WHOLE
    with pytest.raises(openai.APIError) as raised:
        call(_openai(relay.url, "clean"))
    assert type(raised.value) is openai.APIError
    assert f"the stream ended without {ENDINGS[kind]}" in raised.value.message


def _gemini(base: str, script: str, timeout: float = 30.0) -> str:
    client = genai.Client(
        api_key="test-key",
        http_options=genai_types.HttpOptions(
            base_url=base, headers={"x-upstream-script": script}, timeout=int(timeout * 1000)
        ),
    )
    chunks = client.models.generate_content_stream(model="gemini-2.0-flash", contents="hi")
    return "".join(chunk.text or "" for chunk in chunks)


def test_gemini_complete_stream_and_byte_identical_body(
    upstream: ScriptedUpstream, relay: RelayProcess
) -> None:
    assert _gemini(upstream.url, "complete") == WHOLE
    assert _gemini(relay.url, "complete") == WHOLE
    (direct_target, direct), (relayed_target, relayed) = upstream.received[-2:]
    assert relayed_target == direct_target and relayed == direct
    assert relayed_target.endswith(":streamGenerateContent?alt=sse")


def test_gemini_gap_is_bridged_by_keepalives(
    upstream: ScriptedUpstream, relay: RelayProcess
) -> None:
    with pytest.raises(httpx2.ReadTimeout):
        _gemini(upstream.url, "gap", timeout=READ_TIMEOUT)
    assert _gemini(relay.url, "gap", timeout=READ_TIMEOUT) == WHOLE


@pytest.mark.parametrize("script", ["die", "clean"])
def test_gemini_death_and_clean_end_raise_server_error(
    upstream: ScriptedUpstream, relay: RelayProcess, script: str
) -> None:
    if script == "clean":
        assert _gemini(upstream.url, script) != WHOLE  # straight to upstream: silent
    with pytest.raises(genai_errors.ServerError) as raised:
        _gemini(relay.url, script)
    assert raised.value.code == 502 and raised.value.status == "UNAVAILABLE"
    reason = "upstream connection lost" if script == "die" else "without a candidate with"
    assert reason in str(raised.value.message)


def test_streams_are_counted_by_provider(upstream: ScriptedUpstream) -> None:
    with RelayProcess(upstream.url, keepalive=0.1, expect_errors=EXPECTED) as relay:
        _chat(_openai(relay.url, "complete"))
        with pytest.raises(openai.APIError):
            _chat(_openai(relay.url, "clean"))
        _gemini(relay.url, "complete")
        samples = scrape(relay)
        relay.stop()
        log = relay.stderr_text
    assert value(samples, "sse_relay_provider_streams_total", provider="openai-chat") == 2
    truncated = {"provider": "openai-chat", "outcome": "truncated"}
    assert value(samples, "sse_relay_provider_streams_total", **truncated) == 1
    assert value(samples, "sse_relay_provider_streams_total", provider="gemini") == 1
    assert value(samples, "sse_relay_upstream_errors_total", kind="truncated") == 1
    assert log.count(b'"provider": "openai-chat"') == 2 and log.count(b'"provider": "gemini"') == 1


def test_answers_before_the_first_byte_are_each_sdks_typed_errors(
    upstream: ScriptedUpstream,
) -> None:
    # Upstream refuses the connection: 502 in each provider's shape.
    with RelayProcess(f"http://127.0.0.1:{closed_port()}", "--retry-attempts", "1") as down:
        with pytest.raises(openai.InternalServerError) as openai_raised:
            _chat(_openai(down.url, "complete"))
        with pytest.raises(genai_errors.ServerError) as gemini_raised:
            _gemini(down.url, "complete")
    assert openai_raised.value.status_code == 502 and openai_raised.value.type == "api_error"
    assert gemini_raised.value.code == 502 and gemini_raised.value.status == "UNAVAILABLE"
    # --deny-param: the SDKs' typed 400s, and nothing reached upstream.
    received = len(upstream.received)
    with RelayProcess(upstream.url, "--deny-param", "store", "--deny-param", "contents") as relay:
        with pytest.raises(openai.BadRequestError) as denied:
            _openai(relay.url, "complete").chat.completions.create(
                model="gpt-4o-mini", messages=[], stream=True, store=True
            )
        with pytest.raises(genai_errors.ClientError) as gemini_denied:
            _gemini(relay.url, "complete")
    assert denied.value.type == "invalid_request_error" and "store" in denied.value.message
    assert gemini_denied.value.code == 400 and gemini_denied.value.status == "INVALID_ARGUMENT"
    assert len(upstream.received) == received
