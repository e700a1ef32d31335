"""A benchmark's finished cells as a CSV file, the ledger (``ledger=<path>`` of ``tuner.benchmark`` and
``report.ledger=<path>`` of ``tuner.report``).

MLflow holds every cell's run; the ledger holds, per finished cell, its key and config fingerprint and
what the report reads of its run (:class:`~tuner.curves.RunRecord`), one row each, appended as cells
finish. A ledger kept with the repository outlives the tracking store: a benchmark started again
elsewhere skips the cells it lists (same key and fingerprint), and the report takes from it the cells
its tracking store lacks. So a benchmark longer than one machine's session can run in parts.
"""

from __future__ import annotations

import csv
import fcntl
import io
import json
import math
import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from algorithms import ConfigError
from tuner.curves import RunRecord
from tuner.tracking import RunReader

EVAL_METRIC = "eval/mean_return"
COLUMNS = (
    "cell", "fingerprint", "algo", "env", "seed", "source", "kinds", "steps", "returns", "budget_steps",
    "threshold", "random_score", "reference", "env_reference", "wall_time_s", "sps",
)  # fmt: skip

Ledger = dict[tuple[str, str], RunRecord]
"""(cell key, fingerprint) → the cell's record."""


def record_from_run(reader: RunReader, run: Any) -> RunRecord:
    """What the report needs of a finished cell run: its params, tags, evaluation curve and cost."""
    params, tags, metrics = run.data.params, run.data.tags, run.data.metrics
    curve = reader.metric_history(run.info.run_id, EVAL_METRIC)
    if not curve:
        raise ConfigError(f"run {run.info.run_id} ({tags.get('cell')}) has no {EVAL_METRIC} metric")
    algo = params["algo.name"]
    references = {
        key.removeprefix("env.reference.").removesuffix(".score"): float(value)
        for key, value in params.items()
        if key.startswith("env.reference.") and key.endswith(".score")
    }
    if not references:
        raise ConfigError(f"env {params.get('env.name')!r} has no reference scores to normalize with")
    source = tags.get("source", "default")
    return RunRecord(
        algo=algo,
        env=params["env.name"],
        seed=int(params["seed"]),
        source=source,
        steps=tuple(float(step) for step, _ in curve),
        returns=tuple(value for _, value in curve),
        budget_steps=int(params["total_steps"]),
        threshold=_optional_float(params.get("env.threshold")),
        random_score=float(params["env.random_score"]),
        reference=references.get(algo),
        env_reference=max(references.values()),
        wall_time_s=float(metrics.get("time/wall_time_s", math.nan)),
        sps=float(metrics.get("time/sps", math.nan)),
        kinds=tuple(tags.get("source_kinds", source.split(":")[0]).split(",")),
    )


def _optional_float(value: str | None) -> float | None:
    return None if value in (None, "None", "null", "") else float(value)


def read_ledger(path: str | Path | None) -> Ledger:
    """The cells a ledger lists (empty for None or a file not written yet); ConfigError naming the file
    and the line for a row it cannot read."""
    if path is None or not Path(path).exists():
        return {}
    ledger: Ledger = {}
    with open(path, newline="") as handle:
        for line, row in enumerate(csv.DictReader(handle), start=2):
            try:
                ledger[(row["cell"], row["fingerprint"])] = _record(row)
            except (KeyError, ValueError, TypeError) as exc:
                raise ConfigError(f"ledger {path}, line {line}: cannot read the row ({exc})") from None
    return ledger


def _record(row: Mapping[str, str]) -> RunRecord:
    return RunRecord(
        algo=row["algo"],
        env=row["env"],
        seed=int(row["seed"]),
        source=row["source"],
        steps=tuple(float(s) for s in json.loads(row["steps"])),
        returns=tuple(float(r) for r in json.loads(row["returns"])),
        budget_steps=int(row["budget_steps"]),
        threshold=_optional_float(row["threshold"]),
        random_score=float(row["random_score"]),
        reference=_optional_float(row["reference"]),
        env_reference=float(row["env_reference"]),
        wall_time_s=float(row["wall_time_s"]),
        sps=float(row["sps"]),
        kinds=tuple(row["kinds"].split(",")),
    )


def append_to_ledger(path: str | Path, cell: str, fingerprint: str, record: RunRecord) -> None:
    """Add a finished cell's row (after the header, when the file is new) in one ``write`` of an
    appending descriptor under an exclusive lock: a reader never sees half a row."""
    row = {
        "cell": cell,
        "fingerprint": fingerprint,
        **{name: getattr(record, name) for name in COLUMNS[2:]},
        "kinds": ",".join(record.kinds),
        "steps": json.dumps(list(record.steps)),
        "returns": json.dumps(list(record.returns)),
    }
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        text = io.StringIO()
        writer = csv.DictWriter(text, fieldnames=COLUMNS, lineterminator="\n")
        if os.fstat(fd).st_size == 0:
            writer.writeheader()
        writer.writerow(row)
        os.write(fd, text.getvalue().encode())
        os.fsync(fd)  # on disk before the next cell starts
    finally:
        os.close(fd)  # releases the lock
