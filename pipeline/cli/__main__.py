"""`python -m pipeline.cli`: the same as the `steproute` command."""

from pipeline.cli import app

app()
