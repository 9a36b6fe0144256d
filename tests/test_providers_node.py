"""The official `openai` npm SDK on node (tests/node/openai_stream.mjs), chat completions
and Responses streams, through a relay process against the scripted upstream of
tests/provider_upstreams.py: a gap bridged by keepalives, a mid-stream death and a clean
end before the terminal marker thrown as the SDK's `APIError`.

`make test` installs the SDK (`npm ci` in tests/node); without node or it these tests
fail and say so, rather than skip.
"""

from __future__ import annotations

import json
import shutil
import subprocess
from collections.abc import Iterator
from typing import Any

import pytest

from tests.provider_upstreams import GAP, TEXT, ScriptedUpstream
from tests.relayproc import RelayProcess
from tests.tsclient import NODE_DIR

WHOLE = "".join(TEXT)
EXPECTED = ["ended .* with an error frame"]
ENDINGS = {"chat": "data: [DONE]", "responses": "response.completed"}


def node_openai(base_url: str, kind: str, script: str, idle_ms: int = 0) -> dict[str, Any]:
    """What openai_stream.mjs printed last: the whole text, or the error thrown."""
    assert shutil.which("node") is not None, "node is not installed: `make test` installs it"
    assert (NODE_DIR / "node_modules" / "openai").is_dir(), "run `make node-install`"
    args = ["node", "openai_stream.mjs", base_url, kind, "--script", script]
    if idle_ms:
        args += ["--idle-timeout", str(idle_ms)]
    done = subprocess.run(args, capture_output=True, text=True, cwd=NODE_DIR, timeout=60)
    assert done.returncode in (0, 1), (done.returncode, done.stderr)
    last: dict[str, Any] = json.loads(done.stdout.splitlines()[-1])
    return last


@pytest.fixture(scope="module")
def upstream() -> Iterator[ScriptedUpstream]:
    server = ScriptedUpstream()
    yield server
    server.close()


@pytest.fixture(scope="module")
def relay(upstream: ScriptedUpstream) -> Iterator[RelayProcess]:
    with RelayProcess(upstream.url, keepalive=0.1, expect_errors=EXPECTED) as process:
        yield process


@pytest.fixture(params=["chat", "responses"])
def kind(request: pytest.FixtureRequest) -> str:
    name: str = request.param
    return name


def test_complete_stream_and_byte_identical_body(
    upstream: ScriptedUpstream, relay: RelayProcess, kind: str
) -> None:
    assert node_openai(upstream.url, kind, "complete") == {"kind": "text", "text": WHOLE}
    assert node_openai(relay.url, kind, "complete") == {"kind": "text", "text": WHOLE}
    (direct_target, direct), (relayed_target, relayed) = upstream.received[-2:]
    assert relayed_target == direct_target and relayed == direct


def test_gap_is_bridged_by_keepalives(
    upstream: ScriptedUpstream, relay: RelayProcess, kind: str
) -> None:
    idle_ms = int(GAP * 1000 / 2)
    direct = node_openai(upstream.url, kind, "gap", idle_ms)
    assert direct["kind"] == "error" and "idle" in direct["message"]
    assert node_openai(relay.url, kind, "gap", idle_ms) == {"kind": "text", "text": WHOLE}


@pytest.mark.parametrize("script", ["die", "clean"])
def test_death_and_clean_end_throw_api_error(
    upstream: ScriptedUpstream, relay: RelayProcess, kind: str, script: str
) -> None:
    direct = node_openai(upstream.url, kind, script)
    # Straight to upstream: a bare `terminated` TypeError, or a silently truncated text.
    assert direct != {"kind": "text", "text": WHOLE} and not direct.get("isAPIError")
    error = node_openai(relay.url, kind, script)
    assert error["kind"] == "error" and error["class"] == "APIError", error
    assert error["isAPIError"] and not error["isConnectionError"]
    reason = "upstream connection lost" if script == "die" else f"without {ENDINGS[kind]}"
    assert reason in error["message"] and error["type"] == "api_error"
