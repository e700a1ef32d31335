"""What the demo study of ``make sweep`` costs: its wall time and the MLflow artifacts it stores.

Runs the Makefile's demo study (``SWEEP_DEMO``: PPO on CartPole, 20 trials × 3 seeds × 30k env steps,
2 workers, held-out validation on 5 seeds) into a fresh runs directory, without exporting a preset, and
prints its wall time and the bytes of its artifacts by file name (how many files, their total) and in
all. Nothing else runs meanwhile; the machine's other load changes the time, not the bytes.

    python -m bench.sweep_footprint [--keep DIR] [-- extra overrides]
"""

from __future__ import annotations

import collections
import contextlib
import os
import re
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from bench.common import ROOT, script_parser

ENV = {**os.environ, "MLFLOW_DISABLE_TELEMETRY": "true"}


def demo_overrides() -> list[str]:
    """The overrides of ``make sweep`` without ARGS, read from the Makefile (``SWEEP_DEMO ?= …``)."""
    makefile = (ROOT / "Makefile").read_text(encoding="utf-8")
    found = re.search(r"^SWEEP_DEMO \?= (.+)$", makefile, flags=re.MULTILINE)
    if found is None:
        raise SystemExit("the Makefile defines no SWEEP_DEMO")
    return found.group(1).split()


def artifact_bytes(artifact_root: Path) -> dict[str, tuple[int, int]]:
    """``file name -> (number of files, total bytes)`` of every artifact under ``artifact_root``."""
    totals: dict[str, list[int]] = collections.defaultdict(lambda: [0, 0])
    for path in artifact_root.rglob("*"):
        if path.is_file():
            totals[path.name][0] += 1
            totals[path.name][1] += path.stat().st_size
    return {name: (count, size) for name, (count, size) in totals.items()}


def main() -> None:
    """Run the demo study, then print its time and its artifacts' sizes as a markdown table."""
    parser = script_parser(__doc__)
    parser.add_argument("--keep", type=Path, help="runs directory to use and keep (default: a temporary one)")
    parser.add_argument("extra", nargs="*", help="more overrides, after the demo's")
    args = parser.parse_args()
    overrides = [*demo_overrides(), "tune.export=false", *args.extra]
    with contextlib.ExitStack() as stack:
        runs_dir = args.keep or Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="footprint_")))
        command = [sys.executable, "-m", "tuner.tune", *overrides, f"paths.runs_dir={runs_dir}"]
        print("$", " ".join(command[1:]), flush=True)
        start = time.perf_counter()
        done = subprocess.run(command, cwd=ROOT, env=ENV, capture_output=True, text=True, check=False)
        wall_s = time.perf_counter() - start
        if done.returncode != 0:
            tail = f"{done.stdout[-2000:]}\n{done.stderr[-2000:]}"
            raise SystemExit(f"the sweep failed ({done.returncode}):\n{tail}")
        sizes = artifact_bytes(runs_dir / "mlartifacts")
    print(f"\nwall time of the study: {wall_s:.0f} s\n")
    print("| artifact | files | bytes |\n|:--|--:|--:|")
    for name, (count, size) in sorted(sizes.items(), key=lambda item: -item[1][1]):
        print(f"| {name} | {count} | {size:,} |")
    total_files = sum(count for count, _ in sizes.values())
    total_bytes = sum(size for _, size in sizes.values())
    print(f"| all | {total_files} | {total_bytes:,} |")


if __name__ == "__main__":
    main()
