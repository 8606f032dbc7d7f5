"""How an entity's work ended, in words: "Done, 4 of 12 images skipped" and
why each was skipped, from the ``skipped`` and ``counts`` attributes a recipe
sets (engine/wsrun/packs/distillery/recipes/alchemist.yaml). The dashboard and ``wsrun state
show`` both say it, so a collection that skipped images never shows "Done" only.
"""

from __future__ import annotations

import re
from typing import Any

#: What a skipped item's keys say it is: (key naming it, unit).
UNITS = (("image", "image"), ("folder", "book"))
_PATH = re.compile(r"(?<![\w.])/(?:[^\s/:'\"]+/)+([^\s/:'\"]+)")


def reason(error: Any) -> str:
    """One line of an error: its first line, after the last "failed: " that
    names the step, with each absolute path cut to its file name."""
    text = str(error or "").strip().splitlines()[0] if str(error or "").strip() else ""
    if " failed: " in text:
        text = text.rsplit(" failed: ", 1)[1]
    return _PATH.sub(lambda m: m.group(1), text)


def outcome(state: str, attributes: dict[str, Any]) -> tuple[str, list[str]]:
    """(summary, one reason per skipped item) of an entity in ``state``."""
    skipped = [s for s in attributes.get("skipped") or [] if isinstance(s, dict)]
    if not skipped:
        return state, []
    counts = attributes.get("counts") if isinstance(attributes.get("counts"), dict) else {}
    parts, reasons = [], []
    for key, unit in UNITS:
        mine = [s for s in skipped if s.get(key)]
        if not mine:
            continue
        total = counts.get(unit + "s")
        of = f" of {total}" if isinstance(total, int) and total >= len(mine) else ""
        parts.append(f"{len(mine)}{of} {unit}{'s' if (total or len(mine)) != 1 else ''}")
        for s in mine:
            why = reason(s.get("error")) or "no reason recorded"
            name = str(s[key]).rsplit("/", 1)[-1] + ": "
            why = why[len(name) :] if why.startswith(name) else why  # named already
            step = f" (step {s['failed_step']})" if s.get("failed_step") else ""
            reasons.append(f"{unit} {s[key]}{step}: {why}")
    if not parts:
        return state, []
    return f"{state}, {' and '.join(parts)} skipped", reasons
