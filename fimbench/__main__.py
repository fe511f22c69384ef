"""``python -m fimbench``: the same command-line interface as the ``fimbench`` script."""

from fimbench.cli import main

main()
