"""Type stub for the Cython extension built from relay/edge/_h2data.pyx."""

from collections.abc import Callable, Sized

import h2.connection
from typing_extensions import disjoint_base

from relay.upstream._bodypump import PieceSink

@disjoint_base  # a C type with its own instance layout
class H2DataOut(PieceSink):
    """One server stream's DATA frames, written beside h2's bookkeeping."""

    def __init__(
        self,
        conn: h2.connection.H2Connection,
        stream_id: int,
        pending: Sized,
        queue: Callable[[bytes], None],
        flushed: Callable[[int], None],
    ) -> None: ...
    def __call__(self, data: bytes) -> None: ...
