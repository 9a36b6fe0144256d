"""Type stub for the Cython extension built from relay/core/_journal.pyx."""

from typing_extensions import disjoint_base

from relay.core.journal_pure import Ending

@disjoint_base  # a C type with its own instance layout
class JournalTotal:
    """The bytes a set of journals holds, kept as they change."""

    bytes: int

@disjoint_base
class Journal:
    """The body bytes one stream sent its client, up to `limit` bytes."""

    ending: Ending
    def __init__(self, limit: int, total: JournalTotal | None = None) -> None: ...
    @property
    def limit(self) -> int: ...
    @property
    def size(self) -> int: ...
    @property
    def overflowed(self) -> bool: ...
    def append(self, data: bytes) -> None: ...
    def since(self, offset: int) -> bytes | None: ...
    def release(self) -> None: ...
