"""What the relay makes of a command line: `sse-relay check-config`, run for real.

The deploy/ examples are checked through it, so a flag, a config key or a value the
relay does not accept fails their tests the way it would fail the container.
"""

from __future__ import annotations

import os
import subprocess
import sys
import tomllib
from collections.abc import Sequence
from typing import Any

from relay.ops.setting_table import SETTINGS, parse_listen
from tests.relayproc import REPO


def effective_config(args: Sequence[str]) -> dict[str, Any]:
    """The settings `check-config ARGS` resolves (its TOML output, parsed), with none of
    this machine's `SSE_RELAY_*` variables in the way. Fails on a command line the relay
    rejects, and on a flag not spelled in full."""
    env = {name: value for name, value in os.environ.items() if not name.startswith("SSE_RELAY_")}
    done = subprocess.run(
        [sys.executable, "-m", "relay", "check-config", *args],
        capture_output=True,
        text=True,
        cwd=REPO,
        env=env,
        timeout=30,
    )
    assert done.returncode == 0, f"sse-relay check-config {' '.join(args)}:\n{done.stderr}"
    # argparse also takes unambiguous prefixes (`--admin`): examples spell flags in full.
    flags = {f"--{setting.flag}" for setting in SETTINGS} | {"--config"}
    for arg in args:
        name = arg.split("=", 1)[0]
        assert not name.startswith("--") or name in flags, f"{name} is not a flag's full name"
    return tomllib.loads(done.stdout)


def listen_address(config: dict[str, Any], setting: str) -> tuple[str, int]:
    """HOST and PORT of a `listen`-style setting in an effective config."""
    value = config[setting]
    assert isinstance(value, str), f"{setting} is {value!r}"
    return parse_listen(value)
