"""The engine: recipes, validation, expressions, plan/apply, the journal, settings.

Nothing here imports a store, a step type, a pack or a face (tests/test_layers.py)."""
