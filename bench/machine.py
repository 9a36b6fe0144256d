"""What the figures were measured on: machine, versions, git revision."""

from __future__ import annotations

import os
import platform
import subprocess
import sys
from importlib.metadata import version
from pathlib import Path
from typing import Any

from bench.contenders import NGINX
from bench.procs import REPO
from relay import __version__
from relay.sse.scanner import IMPLEMENTATION


def _run(*args: str) -> str:
    try:
        done = subprocess.run(args, capture_output=True, text=True, cwd=REPO, timeout=10)
    except (OSError, subprocess.TimeoutExpired):
        return "unknown"
    return (done.stdout or done.stderr).strip()


def _cpu_model() -> str:
    for line in Path("/proc/cpuinfo").read_text().splitlines():
        if line.startswith("model name"):
            return line.split(":", 1)[1].strip()
    return platform.processor() or "unknown CPU"


def describe() -> dict[str, Any]:
    revision = _run("git", "rev-parse", "--short", "HEAD")
    dirty = _run("git", "status", "--porcelain", "--untracked-files=no")
    memory_kib = next(
        int(line.split()[1])
        for line in Path("/proc/meminfo").read_text().splitlines()
        if line.startswith("MemTotal:")
    )
    return {
        "cpu": _cpu_model(),
        "cores": os.cpu_count(),
        "memory_gib": round(memory_kib / 2**20, 1),
        "kernel": platform.release(),
        "python": platform.python_version(),
        "open_files_limit": _run("sh", "-c", "ulimit -n"),
        "git": revision + ("+dirty" if dirty else ""),
        "versions": {
            "sse-relay": f"sse-relay {__version__} ({IMPLEMENTATION} scanner built)",
            "nginx": _run(NGINX, "-v").replace("nginx version: nginx/", ""),
            "aiohttp": f"aiohttp {version('aiohttp')}",
            "h2": version("h2"),
            "uvloop": version("uvloop"),
            "python_executable": sys.executable,
        },
    }
