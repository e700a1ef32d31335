"""What every benchmark script shares: where the repository is, and a command line that prints the
script's docstring as its help. Run the scripts as modules from the repository root (``python -m
bench.throughput``), so that this package is importable."""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import NoReturn

ROOT = Path(__file__).resolve().parents[1]
"""The repository: presets resolve their paths against it, and commands run from it."""


class OneLineErrorParser(argparse.ArgumentParser):
    """An argument parser whose errors are one line (``prog: error: …``, exit 2), without the usage
    block argparse prints before them: the message names the flag, the value and what is valid."""

    def error(self, message: str) -> NoReturn:
        """Print ``message`` on one line to stderr and exit 2."""
        self.exit(2, f"{self.prog}: error: {message}\n")


def script_parser(doc: str | None) -> OneLineErrorParser:
    """An argument parser whose help text is ``doc`` (a script's docstring) with its line breaks kept."""
    return OneLineErrorParser(description=doc, formatter_class=argparse.RawDescriptionHelpFormatter)


def count(text: str) -> int:
    """An argparse ``type`` for a count: an integer ≥ 1."""
    try:
        value = int(text)
    except ValueError:
        value = 0
    if value < 1:
        raise argparse.ArgumentTypeError(f"{text!r}: expected an integer ≥ 1")
    return value
