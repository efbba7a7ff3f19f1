"""`python -m sdbatch` runs the CLI."""

from sdbatch.cli.app import main

main()
