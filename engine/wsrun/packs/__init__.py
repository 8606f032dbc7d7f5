"""Tool packs: each tool family's own step types next to its recipes, registered
through the ``wsrun.steps`` and ``wsrun.packs`` entry points like any plugin."""
