"""Subcommands of the `clipkit` CLI, one module each (see clipkit/cli.py)."""
