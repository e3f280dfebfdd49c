"""Entry point for `python -m schedagent`."""

from schedagent.cli import main

main()
