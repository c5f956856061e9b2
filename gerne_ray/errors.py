"""The one exception type for errors a user can cause."""

from __future__ import annotations


class GerneError(Exception):
    """A user-facing error: the message says what was wrong and how to fix it, on one line."""

    def __init__(self, message: str) -> None:
        super().__init__(" ".join(message.split()))
