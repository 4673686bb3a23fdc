"""The ``yarnconv`` command line: parsing and printing over :mod:`yarnconv.api`."""

from yarnconv.cli.app import main

__all__ = ["main"]
