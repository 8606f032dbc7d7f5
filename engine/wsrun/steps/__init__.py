"""Built-in step types, one module each (see ``wsrun.step`` for the contract)."""
