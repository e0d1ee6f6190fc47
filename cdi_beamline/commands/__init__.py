"""Subcommands of ``cdi-beamline``; each module exposes ``add_parser(subparsers)``."""
