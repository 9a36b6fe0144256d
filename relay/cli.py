"""`sse-relay`: run the relay (default), or `sse-relay sim` for the simulated upstream."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence

from relay import __version__
from relay.config import ConfigError, add_arguments, load
from relay.sse_scanner import IMPLEMENTATION


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="sse-relay",
        description="Byte-exact SSE relay for LLM APIs, with keepalives during upstream "
        "silence. `sse-relay sim --help` runs a simulated Messages API upstream.",
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
        from relay import sim

        return sim.main(args_list[1:])
    args = _parser().parse_args(args_list)
    try:
        config = load(args)
    except ConfigError as exc:
        print(f"sse-relay: error: {exc}", file=sys.stderr)
        return 2

    import uvloop

    from relay.server import serve

    uvloop.run(serve(config))
    return 0
