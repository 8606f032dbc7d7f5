"""Finding and loading recipes, by path or by packaged name."""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Any

from wsrun.core.loader import Document, Where, load
from wsrun.core.resources import packaged_path

RECIPE_SUFFIXES = (".yaml", ".yml")


class RecipeNotFound(LookupError):
    pass


def is_recipe_ref(uses: str) -> bool:
    """A ``uses:`` value names a recipe (not a step type) when it looks like a
    path or a packaged name such as ``nrao/deliver``."""
    return "/" in uses or uses.endswith(RECIPE_SUFFIXES)


def resolve(ref: str, base_dir: str | None = None) -> str:
    """The file of a recipe given as a path (relative to ``base_dir``), a
    directory holding ``recipe.yaml``, or a packaged name (``nrao/deliver``)."""
    candidates = []
    if os.path.isabs(ref):
        candidates.append(ref)
    else:
        candidates.append(os.path.join(base_dir or os.getcwd(), ref))
    packaged = None if ref.startswith((".", "/")) else packaged_path(ref)
    if packaged is not None:
        candidates.append(str(packaged))
    for c in candidates:
        for p in (c, *(c + s for s in RECIPE_SUFFIXES), os.path.join(c, "recipe.yaml")):
            if os.path.isfile(p):
                return os.path.abspath(p)
    raise RecipeNotFound(ref)


def is_lifecycle_document(data: Any) -> bool:
    """True for a parsed YAML file that is a lifecycle, not a recipe: the packs ship
    both side by side, and commands that walk them (``wsrun recipes``) tell them apart."""
    return isinstance(data, dict) and "recipe" not in data and "states" in data


@dataclass
class Recipe:
    """A loaded recipe: its data and where each part of it came from."""

    path: str
    doc: Document

    @property
    def data(self) -> dict[str, Any]:
        return self.doc.data if isinstance(self.doc.data, dict) else {}

    @property
    def name(self) -> str:
        return str(self.data.get("recipe") or os.path.splitext(os.path.basename(self.path))[0])

    @property
    def description(self) -> str:
        return str(self.data.get("description") or "")

    @property
    def inputs(self) -> dict[str, dict[str, Any]]:
        return self.data.get("inputs") or {}

    @property
    def settings(self) -> dict[str, dict[str, Any]]:
        """Declared settings, each normalised to {name, default?, required, secret}."""
        out = {}
        for alias, spec in (self.data.get("settings") or {}).items():
            spec = {"name": spec} if isinstance(spec, str) else dict(spec)
            spec.setdefault("required", "default" not in spec)
            spec.setdefault("secret", False)
            out[alias] = spec
        return out

    @property
    def vars(self) -> dict[str, Any]:
        return self.data.get("vars") or {}

    def step_list(self, section: str) -> list[dict[str, Any]]:
        return self.data.get(section) or []

    @property
    def outputs(self) -> dict[str, Any]:
        return self.data.get("outputs") or {}

    @property
    def dir(self) -> str:
        return os.path.dirname(self.path)

    def where(self, *path: Any) -> Where:
        return self.doc.where(path)


_cache: dict[str, tuple[float, Recipe]] = {}


def load_recipe(path: str) -> Recipe:
    """Parse a recipe file (cached while the file is unchanged). Structure is
    checked by ``wsrun.core.validate``, not here."""
    mtime = os.stat(path).st_mtime
    hit = _cache.get(path)
    if hit and hit[0] == mtime:
        return hit[1]
    recipe = Recipe(path, load(path))
    _cache[path] = (mtime, recipe)
    return recipe
