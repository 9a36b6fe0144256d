"""The single-file build that tests/test_dist.py uses, started with the session.

PyInstaller takes half a minute or more of one core. Started as soon as the session's
tests are collected (tests/conftest.py), it runs beside the tests before test_dist.py,
which mostly wait on sockets, and test_dist.py then waits for it.
"""

from __future__ import annotations

import shutil
import subprocess
import tempfile
from pathlib import Path

from tests.relayproc import REPO


class DistBuild:
    """`scripts/build-dist.sh` running into a folder of its own."""

    def __init__(self) -> None:
        self.folder = Path(tempfile.mkdtemp(prefix="sse-relay-dist-"))
        self._log_path = self.folder / "build.log"
        with self._log_path.open("wb") as log:
            self._process = subprocess.Popen(
                [str(REPO / "scripts" / "build-dist.sh"), str(self.folder / "dist")],
                stdout=log,
                stderr=subprocess.STDOUT,
            )

    def executable(self, timeout: float = 600) -> Path:
        """The built executable, once the build is done; the build's output if it failed."""
        code = self._process.wait(timeout)
        if code != 0:
            output = self._log_path.read_text(errors="replace")[-4000:]
            raise AssertionError(f"scripts/build-dist.sh exited {code}:\n{output}")
        return self.folder / "dist" / "sse-relay"

    def stop(self) -> None:
        if self._process.poll() is None:
            self._process.kill()
            self._process.wait()
        shutil.rmtree(self.folder, ignore_errors=True)


_started: DistBuild | None = None


def start() -> None:
    global _started
    if _started is None:
        _started = DistBuild()


def started() -> DistBuild:
    """The session's build (started now if the session did not start it)."""
    start()
    assert _started is not None
    return _started


def stop() -> None:
    global _started
    if _started is not None:
        _started.stop()
        _started = None
