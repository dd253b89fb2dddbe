"""The one error shape every stage records: a short machine-readable ``reason`` and a ``detail``.

Reports, skip tables and fetch ledgers store ``reason`` as a code users can group by and
``detail`` as the human explanation, so every stage's failure class derives from this one.
"""

from __future__ import annotations

__all__ = ["ReasonError"]


class ReasonError(ValueError):
    """A failure with ``reason`` (a short code for tables) and ``detail`` (for people)."""

    def __init__(self, reason: str, detail: str) -> None:
        super().__init__(f"{reason}: {detail}")
        self.reason = reason
        self.detail = detail
