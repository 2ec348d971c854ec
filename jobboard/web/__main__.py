"""``python -m jobboard.web``: the console command on its own."""

from jobboard.web.command import run

run()
