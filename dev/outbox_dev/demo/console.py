"""What the demo prints, and how it fails."""

from __future__ import annotations


class DemoError(Exception):
    """Something went wrong: printed as a one-line reason, exit code 1."""


def say(text: str = "") -> None:
    """Print a line of the demo's story now (child logs go to files, not here)."""
    print(text, flush=True)
