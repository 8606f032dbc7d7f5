"""``wsrun worker``: recipes run when messages arrive, states change or files appear."""
