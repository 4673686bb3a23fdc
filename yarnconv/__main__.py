"""``python -m yarnconv``: the same as the ``yarnconv`` command."""

from yarnconv.cli import main

main()
