"""Bus selectors as recipes write them (``on: {message: pipeline.process.*}``).

The syntax belongs to the recipe language, so validation checks it without a bus;
the bus backends bind queues with the same check (``wsrun.stores.bus.base``).
"""

from __future__ import annotations


def pattern_problem(pattern: str) -> str | None:
    """Why ``pattern`` cannot bind a queue, or None: dotted words, with ``*`` and
    ``#`` only as whole words."""
    words = pattern.split(".")
    if not pattern or any(not w or (("*" in w or "#" in w) and len(w) > 1) for w in words):
        return (
            f"invalid pattern {pattern!r}: dotted words, with * (one word) or # (any number)"
            " as whole words"
        )
    return None
