"""``python -m glow_repro`` is the ``glow-repro`` command."""

from glow_repro.cli import main

main()
