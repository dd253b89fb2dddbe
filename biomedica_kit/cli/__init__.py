"""The ``biomedica`` command line: one click group, a module per command family."""

from biomedica_kit.cli.main import main

__all__ = ["main"]
