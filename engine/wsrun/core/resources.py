"""Where the packaged recipes and schemas are, installed or in a source checkout.

Recipes ship inside the tool packs (``wsrun/packs/<pack>/recipes/``); a pack is found
through the ``wsrun.packs`` entry points, so a third party's pack adds its recipes
(``mypack/some-tool``) exactly as the built-in ones do.
"""

from __future__ import annotations

from collections.abc import Iterator
from functools import cache
from pathlib import Path

_PACKAGE = Path(__file__).resolve().parent.parent  # engine/wsrun


def _find(name: str) -> Path:
    inside = _PACKAGE / name  # a wheel ships them inside the package
    if inside.is_dir():
        return inside
    return _PACKAGE.parent.parent / name  # engine/wsrun -> the checkout's top level


@cache
def pack_recipe_dirs() -> dict[str, Path]:
    """Each installed tool pack's ``recipes`` folder, by pack name (``nrao``)."""
    from importlib.metadata import entry_points
    from importlib.util import find_spec

    found = {}
    for ep in entry_points(group="wsrun.packs"):
        spec = find_spec(ep.value)
        if spec is not None and spec.submodule_search_locations:
            found[ep.name] = Path(next(iter(spec.submodule_search_locations))) / "recipes"
    return dict(sorted(found.items()))


def packaged_files() -> Iterator[tuple[str, Path]]:
    """Every YAML file the packs ship, as (packaged name, path): ``nrao/deliver``."""
    for pack, folder in pack_recipe_dirs().items():
        for path in sorted(folder.rglob("*.yaml")):
            yield f"{pack}/{path.relative_to(folder).with_suffix('').as_posix()}", path


def packaged_path(name: str) -> Path | None:
    """Where a packaged name (``nrao/deliver``, no suffix needed) would be, or None when
    no installed pack has that name."""
    pack, _, rest = name.partition("/")
    folder = pack_recipe_dirs().get(pack)
    return folder / rest if folder is not None and rest else None


@cache
def schemas_dir() -> Path:
    return _find("schemas")
