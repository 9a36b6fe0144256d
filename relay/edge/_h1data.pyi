"""Type stub for the Cython extension built from relay/edge/_h1data.pyx."""

import asyncio

from typing_extensions import disjoint_base

from relay.upstream._bodypump import PieceSink

@disjoint_base  # a C type with its own instance layout
class ChunkOut(PieceSink):
    """One HTTP/1.1 response's body chunks, sent on the client's socket from C."""

    def __init__(self, transport: asyncio.WriteTransport) -> None: ...
    def __call__(self, data: bytes) -> None: ...
