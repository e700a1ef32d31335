"""Trials per hour of one study with 1 and with 2 workers, on the embedded storage and on PostgreSQL.

Runs the same small study through ``python -m tuner.tune`` in fresh directories and fresh databases, and
prints trials/hour from the first trial's start to the last trial's end, and the speed-up of 2 workers
over 1. Every trial costs the same: only the learning rate is searched (structural knobs such as n_steps
or n_epochs would make the sampled trials, not the workers, decide the time), and nothing is pruned.

    python -m bench.workers                                   # sqlite and postgres, 8 trials of 50k steps
    python -m bench.workers --storages postgres --trials 12
"""

from __future__ import annotations

import os
import subprocess
import sys
import tempfile
import time
import uuid

import optuna

from bench.common import ROOT, count, script_parser

POSTGRES = os.environ.get("RLTUNE_BENCH_POSTGRES", "postgresql://postgres@127.0.0.1:5432")
STUDY = [
    "experiment=ppo_cartpole",
    "~search.params",
    "+search.params={learning_rate:{type:float,low:0.0001,high:0.003,log:true}}",
    "tune.n_seeds=1",
    "sampler=random",
    "pruner=none",
    "tune.validate_seeds=0",
    "tune.export=false",
    "tune.study_name=workers_bench",
]


def run_study(storage: str, n_workers: int, n_trials: int, budget_steps: int) -> tuple[float, float]:
    """(trials per hour over the trials' span, command wall seconds) of one fresh study."""
    with tempfile.TemporaryDirectory() as tmp:
        if storage == "sqlite":
            url, extra = f"sqlite:///{tmp}/optuna.db", ["storage=local"]
        else:
            url, extra = f"{POSTGRES}/rltune_bench_{uuid.uuid4().hex[:8]}", ["storage=postgres"]
        args = [
            sys.executable, "-m", "tuner.tune", *STUDY, *extra, f"paths.runs_dir={tmp}",
            f"tune.n_trials={n_trials}", f"tune.n_workers={n_workers}", f"tune.budget_steps={budget_steps}",
        ]  # fmt: skip
        env = {**os.environ, "RLTUNE_STORAGE": url, "MLFLOW_DISABLE_TELEMETRY": "true"}
        start = time.perf_counter()
        subprocess.run(args, cwd=ROOT, env=env, check=True, capture_output=True)
        wall = time.perf_counter() - start
        trials = optuna.load_study(study_name="workers_bench", storage=url).trials
        if storage != "sqlite":
            _drop(url)
    span = (max(t.datetime_complete for t in trials) - min(t.datetime_start for t in trials)).total_seconds()
    return len(trials) / span * 3600, wall


def _drop(url: str) -> None:
    import sqlalchemy

    server, name = url.rsplit("/", 1)
    engine = sqlalchemy.create_engine(f"{server}/postgres", isolation_level="AUTOCOMMIT")
    with engine.connect() as connection:
        connection.execute(sqlalchemy.text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
    engine.dispose()


def main() -> None:
    """Run each storage with 1 and 2 workers and print the table."""
    parser = script_parser(__doc__)
    parser.add_argument("--storages", default="sqlite,postgres", help="comma-separated: sqlite, postgres")
    parser.add_argument("--trials", type=count, default=8, help="trials per study (same work each)")
    parser.add_argument("--budget-steps", type=count, default=50000, help="env steps per trial")
    args = parser.parse_args()
    print(
        f"study: {' '.join(STUDY)}, {args.trials} trials of {args.budget_steps} steps; {os.cpu_count()} CPUs"
    )
    print(f"{'storage':<9} {'workers':>7} {'trials/hour':>12} {'wall s':>7} {'speed-up':>9}")
    for storage in args.storages.split(","):
        base = None
        for n_workers in (1, 2):
            rate, wall = run_study(storage, n_workers, args.trials, args.budget_steps)
            base = base or rate
            print(f"{storage:<9} {n_workers:>7} {rate:>12,.0f} {wall:>7.0f} {rate / base:>8.2f}×", flush=True)


if __name__ == "__main__":
    main()
