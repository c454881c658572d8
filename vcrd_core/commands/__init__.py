"""CLI subcommands, one module each: ``add_parser(subparsers)`` registers it and sets ``func=run``;
``run(args) -> int`` returns the exit code."""
