"""Built-in step types, one module each (see ``wsrun.core.step`` for the contract)."""
