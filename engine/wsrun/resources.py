"""Where the packaged recipes and schemas are, installed or in a source checkout."""

from __future__ import annotations

from functools import cache
from pathlib import Path

_PACKAGE = Path(__file__).resolve().parent


def _find(name: str) -> Path:
    inside = _PACKAGE / name  # a wheel ships them inside the package
    if inside.is_dir():
        return inside
    return _PACKAGE.parent.parent / name  # engine/wsrun -> the checkout's top level


@cache
def recipes_dir() -> Path:
    return _find("recipes")


@cache
def schemas_dir() -> Path:
    return _find("schemas")
