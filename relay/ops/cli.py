"""`sse-relay`: run the relay (default), `sse-relay check-config` to validate and show the
configuration, `sse-relay sim` for the simulated upstream, or `sse-relay probe URL` to
find a network path's idle timeout."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence

from relay import __version__
from relay.ops.config import ConfigError, add_arguments, load
from relay.ops.worker import worker_id_from_env
from relay.sse.scanner import IMPLEMENTATION


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="sse-relay",
        description="Byte-exact SSE relay for LLM APIs, with keepalives during upstream "
        "silence. `sse-relay check-config [flags]` prints the effective configuration; "
        "`sse-relay sim --help` runs a simulated Messages API upstream; `sse-relay probe "
        "--help` finds how long an idle stream survives on a network path.",
    )
    parser.add_argument(
        "--version",
        action="version",
        version=f"sse-relay {__version__} (scanner: {IMPLEMENTATION})",
    )
    add_arguments(parser)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args_list = list(sys.argv[1:] if argv is None else argv)
    if args_list[:1] == ["sim"]:
        from relay_sim import sim

        return sim.main(args_list[1:])
    if args_list[:1] == ["probe"]:
        from relay.ops import probe

        return probe.main(args_list[1:])
    if args_list[:1] == ["check-config"]:
        from relay.ops import check_config

        return check_config.main(args_list[1:])
    args = _parser().parse_args(args_list)
    try:
        config = load(args)
        worker_id = worker_id_from_env()
    except ConfigError as exc:
        print(f"sse-relay: error: {exc}", file=sys.stderr)
        return 2
    if worker_id is None and config.workers > 1:
        from relay.ops.supervisor import supervise

        return supervise(config, args_list)

    import uvloop

    from relay.ops.server import serve

    try:
        uvloop.run(serve(config, worker_id))
    except ConfigError as exc:  # found only as the listeners start (a bad certificate)
        print(f"sse-relay: error: {exc}", file=sys.stderr)
        return 2
    return 0
