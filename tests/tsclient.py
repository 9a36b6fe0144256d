"""The official TypeScript SDK (`@anthropic-ai/sdk` on node), run by tests/node/stream.mjs.

`make test` installs it (`npm ci` in tests/node); without node or those packages the
tests that use it fail and say so, rather than skip.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

NODE_DIR = Path(__file__).resolve().parent / "node"
SCRIPT = NODE_DIR / "stream.mjs"


def missing_node() -> str | None:
    """Why the TypeScript SDK cannot run here, or None when it can."""
    if shutil.which("node") is None:
        return "node is not installed: `make test` installs nodejs and npm"
    if not (NODE_DIR / "node_modules" / "@anthropic-ai" / "sdk").is_dir():
        return "tests/node has no node_modules: `make test` runs `npm ci` there"
    return None


@dataclass
class TsRun:
    """What the TypeScript SDK produced for one streamed request, from stream.mjs."""

    exit_code: int
    stderr: str
    events: list[str] = field(default_factory=list)  # raw event types, pings excluded
    text: list[str] = field(default_factory=list)
    thinking: list[str] = field(default_factory=list)
    signatures: list[str] = field(default_factory=list)
    response: dict[str, Any] | None = None  # status and request-id of the response head
    final: dict[str, Any] | None = None  # the accumulated message
    error: dict[str, Any] | None = None  # class, isAPIError, status, type, body, message

    @property
    def request_id(self) -> str:
        assert self.response is not None, self.stderr
        request_id: str = self.response["request_id"]
        return request_id


def ts_stream(
    base_url: str,
    *,
    fields: dict[str, object] | None = None,
    http2: bool = False,
    ca_file: Path | None = None,
    idle_timeout: float | None = None,
    timeout: float = 60.0,
) -> TsRun:
    """Streams one Messages request with the TypeScript SDK (scripted by `fields` for
    the sim) over undici: HTTP/2 by ALPN when `http2`, trusting `ca_file` for TLS,
    with a byte watchdog of `idle_timeout` s when given."""
    args = ["node", str(SCRIPT), base_url]
    if http2:
        args.append("--http2")
    if fields is not None:
        args += ["--script", json.dumps(fields)]
    if idle_timeout is not None:
        args += ["--idle-timeout", str(round(idle_timeout * 1000))]
    env = dict(os.environ)
    if ca_file is not None:
        env["NODE_EXTRA_CA_CERTS"] = str(ca_file)
    done = subprocess.run(
        args, capture_output=True, text=True, env=env, cwd=NODE_DIR, timeout=timeout
    )
    assert done.returncode in (0, 1), (done.returncode, done.stderr)
    run = TsRun(done.returncode, done.stderr)
    for line in done.stdout.splitlines():
        item = json.loads(line)
        kind = item["kind"]
        if kind == "event":
            run.events.append(item["type"])
        elif kind == "text":
            run.text.append(item["text"])
        elif kind == "thinking":
            run.thinking.append(item["thinking"])
        elif kind == "signature":
            run.signatures.append(item["signature"])
        elif kind == "response":
            run.response = item
        elif kind == "final":
            run.final = item["message"]
        elif kind == "error":
            run.error = item
    return run
