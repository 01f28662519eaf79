"""``python -m asynctask``: the same as the ``asynctask`` command."""

from asynctask.cli import main

main()
