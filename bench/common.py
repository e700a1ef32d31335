"""What every benchmark script shares: where the repository is, and a command line that prints the
script's docstring as its help. Run the scripts as modules from the repository root (``python -m
bench.throughput``), so that this package is importable."""

from __future__ import annotations

import argparse
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
"""The repository: presets resolve their paths against it, and commands run from it."""


def script_parser(doc: str | None) -> argparse.ArgumentParser:
    """An argument parser whose help text is ``doc`` (a script's docstring) with its line breaks kept."""
    return argparse.ArgumentParser(description=doc, formatter_class=argparse.RawDescriptionHelpFormatter)
