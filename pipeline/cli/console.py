"""Where the CLI writes: the console, the error console and the one-line user error."""

from __future__ import annotations

import typer
from rich.console import Console

console = Console()
err_console = Console(stderr=True)


def fail(message: str) -> typer.Exit:
    """Print `message` as one red error line; raise the returned exit (code 2)."""
    err_console.print(f"[bold red]error:[/] {message}")
    return typer.Exit(code=2)
