"""Journal retention: how long the run journal keeps runs, and the automatic
prune that applies the ``wsrun.journal.retention`` setting.

The setting holds an age, a count, or both: ``30d`` (drop runs older than 30
days), ``keep 500`` (keep the 500 newest), ``30d, keep 500`` (drop runs older
than 30 days unless among the 500 newest). A run applies it when it ends, at
most once every ``PRUNE_EVERY`` seconds per journal (the time of the last prune
is kept in the journal), so the cost is one small query per run. Like ``wsrun
runs prune`` without ``--include-resumable``, it never drops a run that is still
running or that ``wsrun resume`` could continue.
"""

from __future__ import annotations

import re
import time
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from wsrun.core.journal import Journal, Pruned
    from wsrun.core.settings import Settings

SETTING = "wsrun.journal.retention"
#: Seconds between two automatic prunes of one journal.
PRUNE_EVERY = 24 * 3600
_UNITS = {"s": 1, "m": 60, "h": 3600, "d": 86400, "w": 7 * 86400}
_AGE = re.compile(r"^(\d+(?:\.\d+)?)([smhdw])$")
_KEEP = re.compile(r"^keep\s+(\d+)$")


def parse_age(text: str) -> float:
    """Seconds in an age such as ``30d``, ``12h``, ``2w``; ValueError naming it otherwise."""
    found = _AGE.match(text.strip())
    if not found:
        raise ValueError(f"'{text}' is not an age (a number and s, m, h, d or w: 30d, 12h)")
    return float(found.group(1)) * _UNITS[found.group(2)]


def parse_retention(text: str) -> tuple[float | None, int | None]:
    """(age in seconds, runs to keep) of a retention setting such as ``30d, keep 500``."""
    age: float | None = None
    keep: int | None = None
    for term in (t.strip() for t in str(text).split(",")):
        found = _KEEP.match(term)
        if found:
            keep = int(found.group(1))
        elif term:
            try:
                age = parse_age(term)
            except ValueError:
                raise ValueError(
                    f"{SETTING}: '{term}' is neither an age (30d) nor a count (keep 500)"
                ) from None
    if age is None and keep is None:
        raise ValueError(f"{SETTING}: empty; give an age (30d), a count (keep 500) or both")
    return age, keep


def apply_retention(
    journal: Journal, settings: Settings, now: float | None = None
) -> Pruned | None:
    """Prune ``journal`` by the retention setting if it is set and the last
    prune is at least PRUNE_EVERY old; what was pruned, or None."""
    found = settings.get(SETTING)
    if found is None or not str(found.value).strip():
        return None
    age, keep = parse_retention(str(found.value))
    now = time.time() if now is None else now
    last = journal.meta("last_prune")
    if last is not None and now - float(last) < PRUNE_EVERY:
        return None
    journal.set_meta("last_prune", repr(now))  # first: concurrent runs need not prune too
    return journal.prune(older_than=age, keep=keep)
