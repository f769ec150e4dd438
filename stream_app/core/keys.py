"""Redis key names for a session.

A session's keys are ``{prefix}:{<tag>}:<part>`` where ``<tag>`` is the first 32 hex digits
of SHA-1 over the session id's UTF-8 bytes. Hashing means no session id (braces, colons,
newlines, 10 kB of text) can change the key structure or pick its Cluster slot, and the
``{...}`` hash tag keeps all of one session's keys in the same slot, which a Lua script
touching them all requires. SHA-1 is used as a spreading function here, not for security.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass

_TAG_HEX_DIGITS = 32


def session_tag(session_id: str) -> str:
    """The hex digest that stands for ``session_id`` in key names."""
    # surrogatepass: any Python str maps to some bytes, so no id can make this raise.
    raw = session_id.encode("utf-8", "surrogatepass")
    return hashlib.sha1(raw, usedforsecurity=False).hexdigest()[:_TAG_HEX_DIGITS]


@dataclass(frozen=True, slots=True)
class SessionKeys:
    """The keys of one session, in the order ``window.lua`` expects them as KEYS."""

    window: str  # ZSET: kept events, score = event time, member = hex(id) + " " + json
    seen: str  # SET: every accepted event id
    aggregates: str  # HASH: integer tallies and the user id
    products: str  # SET: distinct product ids
    categories: str  # SET: distinct categories

    def all(self) -> tuple[str, str, str, str, str]:
        return (self.window, self.seen, self.aggregates, self.products, self.categories)


def session_keys(prefix: str, session_id: str) -> SessionKeys:
    """All keys of ``session_id`` under ``prefix`` (a validated ``REDIS_KEY_PREFIX``)."""
    base = f"{prefix}:{{{session_tag(session_id)}}}"
    return SessionKeys(f"{base}:w", f"{base}:s", f"{base}:a", f"{base}:p", f"{base}:c")
