"""The command lines: ``wsrun`` and its subcommands."""
