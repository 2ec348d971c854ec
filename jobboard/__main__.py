"""``python -m jobboard`` is the ``jobboard`` command."""

from jobboard.cli import main

main()
