"""Per-route choices by request path: the longest matching prefix wins.

Sans-IO and generic: the table maps path prefixes to whatever a route carries (the
relay context keeps per-route stream settings and upstream pools in it).
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Generic, TypeVar

T = TypeVar("T")


class RouteTable(Generic[T]):
    """Path prefix -> value; a target no prefix matches gets the default.

    Prefixes match bytes, as nginx's prefix locations do: `/v1/messages` also matches
    `/v1/messages?beta=true` and `/v1/messages/count_tokens`.
    """

    __slots__ = ("_default", "_routes")

    def __init__(self, default: T, routes: Iterable[tuple[bytes, T]] = ()) -> None:
        self._default = default
        # Longest first, so the first match is the longest one.
        self._routes = tuple(sorted(routes, key=lambda route: len(route[0]), reverse=True))

    def match(self, target: bytes) -> T:
        """The value of the longest prefix `target` starts with, else the default."""
        for prefix, value in self._routes:
            if target.startswith(prefix):
                return value
        return self._default
