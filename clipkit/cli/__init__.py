"""The `clipkit` command line: `main.py` (the parser and the one error policy), `types.py` (argument types),
`commands/` (one module per subcommand with `register` / `run`)."""

from clipkit.cli.main import build_parser, main, user_error

__all__ = ["build_parser", "main", "user_error"]
