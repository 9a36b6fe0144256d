"""The provider table (relay/core/providers.py) by itself, and the stream machine using
it: recognition, endings, error shapes, keepalives. No sockets: the SDK-level checks are
in tests/test_providers_sdk.py and tests/test_providers_node.py.
"""

from __future__ import annotations

import argparse
import asyncio
import json
from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest

from relay.core.body_policy import BodyPolicy
from relay.core.errors import Overloaded, UpstreamLost
from relay.core.exchange import RequestHead
from relay.core.keepalive import COMMENT_FRAME, PING_FRAME
from relay.core.providers import (
    ANTHROPIC,
    GEMINI,
    OPENAI_CHAT,
    OPENAI_RESPONSES,
    PROVIDER_NAMES,
    UNKNOWN,
    Provider,
    parse_provider,
    provider_for,
)
from relay.core.stream_actions import Action, Finish, SendBody, SendHead, SendKeepalive
from relay.core.stream_machine import StreamMachine
from relay.core.stream_record import Outcome
from relay.ops.config import ConfigError, RelayConfig, add_arguments, load
from relay.sse import marks
from relay.upstream.routes import UpstreamRoutes
from tests.provider_upstreams import chat_frames, gemini_frames, responses_frames
from tests.test_stream_machine import SETTINGS, SSE_HEAD, finish, messages_stream, opened


@pytest.mark.parametrize(
    ("target", "name"),
    [
        (b"/v1/messages", "anthropic"),
        (b"/v1/messages?beta=true", "anthropic"),
        (b"/v1/messages/count_tokens", "unknown"),
        (b"/v1/chat/completions", "openai-chat"),
        (b"/openai/deployments/gpt/chat/completions?api-version=1", "openai-chat"),
        (b"/v1/completions", "openai-completions"),
        (b"/v1/responses", "openai-responses"),
        (b"/v1beta/models/gemini-2.0-flash:streamGenerateContent?alt=sse", "gemini"),
        (b"/v1beta/models/gemini-2.0-flash:generateContent", "gemini"),
        (b"/v1/models", "unknown"),
        (b"/gateway/stream", "unknown"),
        (b"/", "unknown"),
    ],
)
def test_recognised_by_path(target: bytes, name: str) -> None:
    assert provider_for(target).name == name


def test_a_route_forces_its_provider() -> None:
    assert provider_for(b"/gateway/stream", OPENAI_CHAT) is OPENAI_CHAT
    assert provider_for(b"/v1/messages", GEMINI) is GEMINI
    assert parse_provider("openai-responses") is OPENAI_RESPONSES
    assert parse_provider("unknown") is UNKNOWN  # turns the guard off
    with pytest.raises(ValueError, match="expected one of anthropic, openai-chat"):
        parse_provider("openai")
    assert PROVIDER_NAMES[-1] == "unknown" and len(set(PROVIDER_NAMES)) == len(PROVIDER_NAMES)


def test_what_ends_each_stream() -> None:
    assert ANTHROPIC.truncated(marks.MESSAGE_START)
    assert not ANTHROPIC.truncated(0)  # never started: no Messages stream to guard
    assert not ANTHROPIC.truncated(marks.MESSAGE_START | marks.MESSAGE_STOP)
    assert OPENAI_CHAT.truncated(0) and not OPENAI_CHAT.truncated(marks.DONE)
    assert not OPENAI_CHAT.truncated(marks.DATA_ERROR)
    assert OPENAI_RESPONSES.truncated(0) and not OPENAI_RESPONSES.truncated(marks.RESPONSE_END)
    assert not OPENAI_RESPONSES.truncated(marks.ERROR_EVENT)
    assert GEMINI.truncated(0) and not GEMINI.truncated(marks.FINISH_REASON)
    assert not any(UNKNOWN.truncated(m) for m in (0, marks.MESSAGE_START, 127))


def _data(frame: bytes) -> dict[str, Any]:
    lines = [line for line in frame.decode().splitlines() if line.startswith("data: ")]
    assert len(lines) == 1 and frame.endswith(b"\n\n"), frame
    payload: dict[str, Any] = json.loads(lines[0][len("data: ") :])
    return payload


def test_error_shapes() -> None:
    assert json.loads(OPENAI_CHAT.render_body("overloaded_error", "m", 503)) == {
        "error": {"message": "m", "type": "overloaded_error", "param": None, "code": None}
    }
    assert _data(OPENAI_CHAT.render_frame("api_error", "m", 502))["error"]["message"] == "m"
    responses = OPENAI_RESPONSES.render_frame("api_error", "m", 502)
    assert responses.startswith(b"event: error\n")
    assert _data(responses)["type"] == "error" and _data(responses)["error"]["type"] == "api_error"
    assert json.loads(GEMINI.render_body("invalid_request_error", "m", 400)) == {
        "error": {"code": 400, "message": "m", "status": "INVALID_ARGUMENT"}
    }
    # google-genai raises on chunks whose JSON starts with `{"error":`.
    assert GEMINI.render_frame("api_error", "m", 502).startswith(b'data: {"error":{"code":502')
    assert ANTHROPIC.render_frame("api_error", "m", 502).startswith(b"event: error\ndata: ")
    assert UNKNOWN.render_body("api_error", "m", 502) == ANTHROPIC.render_body("api_error", "m", 0)


def test_keepalives_each_sdk_takes() -> None:
    assert ANTHROPIC.keepalive_frame(PING_FRAME) == PING_FRAME
    assert UNKNOWN.keepalive_frame(PING_FRAME) == PING_FRAME
    # OpenAI's parsers would decode a ping event as a chunk; Gemini's reads any line but
    # `data: ` ones as raw JSON.
    assert OPENAI_CHAT.keepalive_frame(PING_FRAME) == COMMENT_FRAME
    assert GEMINI.keepalive_frame(COMMENT_FRAME) == b"\n"


# -- the machine, by provider --------------------------------------------------------


def _machine(target: bytes, has_body: bool = False, **settings: Any) -> StreamMachine:
    head = RequestHead(b"POST", target, [], None, has_body=has_body)
    return StreamMachine(head, replace(SETTINGS, **settings), now=0.0, jitter=lambda: 0.5)


def _relayed(target: bytes, body: bytes, **settings: Any) -> StreamMachine:
    stream = _machine(target, **settings)
    opened(stream)
    stream.response_head(200, SSE_HEAD, 0.1)
    assert stream.response_body(body, 0.2) == body
    return stream


def _ending(actions: list[Action]) -> bytes:
    return b"".join(action.data for action in actions if isinstance(action, SendBody))


CHAT = b"/v1/chat/completions"
GEMINI_PATH = b"/v1beta/models/g:streamGenerateContent?alt=sse"


@pytest.mark.parametrize(
    ("target", "frames", "reason"),
    [
        (CHAT, chat_frames(), "data: [DONE]"),
        (b"/v1/responses", responses_frames(), "response.completed"),
        (GEMINI_PATH, gemini_frames(), "finishReason"),
    ],
)
def test_a_clean_end_before_the_terminal_marker_is_truncated(
    target: bytes, frames: list[bytes], reason: str
) -> None:
    whole = _relayed(target, b"".join(frames)).response_end(0.3)
    assert finish(whole).record.outcome is Outcome.COMPLETED and not _ending(whole)
    cut = _relayed(target, b"".join(frames[:-1])).response_end(0.3)
    record = finish(cut).record
    assert record.outcome is Outcome.TRUNCATED and record.provider == provider_for(target).name
    assert reason in _ending(cut).decode() and b"upstream connection lost" in _ending(cut)


def test_an_unknown_stream_has_no_truncation_guard_unless_a_route_forces_one() -> None:
    body = messages_stream(ending="none")
    unknown = _relayed(b"/gateway/stream", body).response_end(0.3)
    assert finish(unknown).record.outcome is Outcome.COMPLETED
    assert finish(unknown).record.provider == "unknown"
    forced = _relayed(b"/gateway/stream", body, provider=ANTHROPIC).response_end(0.3)
    assert finish(forced).record.outcome is Outcome.TRUNCATED


def test_death_after_the_terminal_marker_adds_nothing() -> None:
    stream = _relayed(CHAT, b"".join(chat_frames()))
    actions = stream.upstream_failed(UpstreamLost("closed"), 0.3)
    assert not _ending(actions) and finish(actions).record.outcome is Outcome.COMPLETED


def test_a_partial_openai_frame_is_ended_before_the_error_frame() -> None:
    stream = _relayed(CHAT, chat_frames()[0] + b'data: {"id"')
    ending = _ending(stream.upstream_failed(UpstreamLost("closed"), 0.3))
    assert ending.startswith(b'\n\ndata: {"error":')


def test_drain_frames_are_in_the_providers_shape() -> None:
    stream = _relayed(b"/v1/responses", responses_frames()[0])
    frame = _ending(stream.drain(0.3))
    assert frame.startswith(b"event: error\n")
    assert _data(frame)["error"]["type"] == Overloaded.error_type
    gemini = _ending(_relayed(GEMINI_PATH, gemini_frames()[0]).drain(0.3))
    assert _data(gemini)["error"]["code"] == 503


def test_answers_before_the_first_byte_are_in_the_providers_shape() -> None:
    policy = BodyPolicy(frozenset({"store"}), "reject")  # --deny-param store
    for target, key in ((CHAT, "type"), (GEMINI_PATH, "status"), (b"/v1/messages", "type")):
        stream = _machine(target, has_body=True, body_policy=policy)
        stream.start(0.0)
        stream.request_body(b'{"store": true}', 0.0)
        actions = stream.request_end(0.0)
        head = actions[0]
        assert isinstance(head, SendHead) and head.status == 400
        body = json.loads(_ending(actions))
        assert key in body["error"], body
        assert isinstance(actions[-1], Finish)


def test_keepalive_frames_by_provider() -> None:
    for target, configured, sent in (
        (GEMINI_PATH, COMMENT_FRAME, b"\n"),
        (CHAT, PING_FRAME, COMMENT_FRAME),
        (b"/v1/messages", PING_FRAME, PING_FRAME),
    ):
        stream = _relayed(target, b"", keepalive_frame=configured)
        assert SendKeepalive(sent) in stream.tick(2.0)


# -- the route setting ---------------------------------------------------------------


def _config(tmp_path: Path, route: str) -> RelayConfig:
    path = tmp_path / "relay.toml"
    path.write_text('[[route]]\nprefix = "/gw"\n' + route)
    parser = argparse.ArgumentParser()
    add_arguments(parser)
    return load(parser.parse_args(["--config", str(path)]), {})


def test_a_route_names_its_provider(tmp_path: Path) -> None:
    config = _config(tmp_path, 'provider = "openai-chat"\n')
    assert config.routes[0].provider == "openai-chat"

    async def forced() -> tuple[Provider | None, Provider | None]:
        routes = UpstreamRoutes(config)  # its pools want a running loop
        try:
            return (
                routes.match(b"/gw/stream").settings.provider,
                routes.match(b"/v1/chat/completions").settings.provider,
            )
        finally:
            routes.close()

    assert asyncio.run(forced()) == (OPENAI_CHAT, None)
    assert _config(tmp_path, "").routes[0].provider is None
    with pytest.raises(ConfigError, match=r"route\[1\]\.provider: expected one of anthropic"):
        _config(tmp_path, 'provider = "openai"\n')
