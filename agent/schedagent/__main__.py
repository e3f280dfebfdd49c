"""Entry point for `python -m schedagent`."""

from .cli import main

main()
