"""Operator-chosen request body rules: the only place the relay ever parses a body.

The default is to pass bodies untouched (never parsed). With `--deny-param` the body
is parsed as JSON and a denied top-level param is either refused (`reject`: 400,
nothing forwarded) or removed (`strip`: the body is re-serialized without it).
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field

from relay.core.errors import ParamDenied

#: Params that must not be removed while a param that needs them stays in the body:
#: context_management's clear_thinking edits only make sense with thinking on.
REQUIRED_BY: dict[str, tuple[str, ...]] = {"thinking": ("context_management",)}


@dataclass(frozen=True, slots=True)
class PolicyResult:
    body: bytes
    dropped: tuple[str, ...] = ()
    kept: tuple[str, ...] = ()  # denied, but kept because a remaining param needs them


@dataclass(frozen=True, slots=True)
class BodyPolicy:
    """`deny` names top-level params; `mode` is "reject" or "strip"."""

    deny: frozenset[str] = field(default_factory=frozenset)
    mode: str = "reject"

    @property
    def active(self) -> bool:
        return bool(self.deny)

    def apply(self, body: bytes) -> PolicyResult:
        """Check (and for strip, rewrite) a whole request body."""
        try:
            document = json.loads(body)
        except (UnicodeDecodeError, json.JSONDecodeError):
            return PolicyResult(body)  # not JSON: nothing a param rule can match
        if not isinstance(document, dict):
            return PolicyResult(body)
        present = sorted(self.deny.intersection(document))
        if not present:
            return PolicyResult(body)
        if self.mode == "reject":
            raise ParamDenied(f"request param {present[0]!r} is not allowed by this relay")
        dropped = [name for name in present if not self._needed(name, document, present)]
        kept = tuple(name for name in present if name not in dropped)
        for name in dropped:
            del document[name]
        rewritten = json.dumps(document, ensure_ascii=False, separators=(",", ":")).encode()
        return PolicyResult(rewritten, tuple(dropped), kept)

    @staticmethod
    def _needed(name: str, document: dict[str, object], removing: list[str]) -> bool:
        return any(user in document and user not in removing for user in REQUIRED_BY.get(name, ()))
