"""Optional pseudonymisation of user and session ids before they reach Redis or any topic.

A keyed hash (HMAC-SHA256) rather than a plain hash: without the key, nobody can confirm a
guessed id by hashing it. The same key gives the same pseudonym, so sessions still group.
"""

from __future__ import annotations

import dataclasses
import hashlib
import hmac

from stream_app.ingest.events import Event


class Pseudonymizer:
    def __init__(self, key: str) -> None:
        self._key = key.encode()

    def __repr__(self) -> str:
        return "Pseudonymizer(key=**********)"

    def pseudonym(self, value: str) -> str:
        if not value:
            return value
        digest = hmac.new(self._key, value.encode(), hashlib.sha256).hexdigest()
        return f"p-{digest[:32]}"

    def apply(self, event: Event) -> Event:
        return dataclasses.replace(
            event,
            user_session=self.pseudonym(event.user_session),
            user_id=self.pseudonym(event.user_id),
        )
