"""Keep the step reference in docs/recipes.md generated from the schemas.

``python -m wsrun.cli.docgen docs/recipes.md`` rewrites the part between the
``<!-- steps:begin -->`` and ``<!-- steps:end -->`` markers; a test checks the
committed file is current, so docs and code cannot drift.
"""

from __future__ import annotations

import sys

from wsrun.core.stepdocs import markdown_reference

BEGIN = "<!-- steps:begin -->"
END = "<!-- steps:end -->"


def render(text: str) -> str:
    head, _, rest = text.partition(BEGIN)
    _, _, tail = rest.partition(END)
    return f"{head}{BEGIN}\n{markdown_reference()}\n{END}{tail}"


def main(argv: list[str]) -> int:
    path = argv[0]
    with open(path, encoding="utf-8") as f:
        text = f.read()
    if BEGIN not in text or END not in text:
        print(f"{path}: no {BEGIN} ... {END} markers", file=sys.stderr)
        return 2
    with open(path, "w", encoding="utf-8") as f:
        f.write(render(text))
    return 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
