"""One PPO CartPole study three ways, in one run: rltune sequential, rltune population mode, rl-zoo3.

Every study has the same trials × steps, rl-zoo3's own PPO search space (``search=ppo_zoo`` mirrors
``rl_zoo3.hyperparams_opt.sample_ppo_params``, same parameters in the same order) on rl-zoo3's CartPole
base hyperparameters (``experiment=ppo_cartpole``: 8 envs), one evaluation of 5 episodes every
``budget / evaluations`` steps, and rl-zoo3's optimizer settings: TPE (multivariate, 10 random startup
trials, the same seed) and a median pruner (10 startup trials, warm-up of a third of the evaluations).
With the same seed, the random startup trials of the sequential rltune study and of rl-zoo3 should sample
the same configurations, so the two do the same work until TPE takes over; a population fixes its
structural settings per population, so it samples differently. rl-zoo3 runs as its README teaches::

    python -m rl_zoo3.train --algo ppo --env CartPole-v1 -optimize --n-trials 20 --n-timesteps 50000 \\
        --sampler tpe --pruner median

(with ``--n-evaluations`` when ``--evaluations`` is not 1, its default for 50k steps). That first study is
the baseline of every ratio. Parallel studies use each tool's own way: rl-zoo3's ``--n-jobs`` (Optuna
trials in threads of one process, ``--zoo-jobs``) and rltune's ``tune.n_workers`` (worker processes on
one storage, ``--workers``). For each study the script prints the command's wall time, trials per hour
(trials that trained, complete or pruned, per hour of wall time; failed trials are counted apart), the
best value, and the peak resident memory of its largest process. Needs the bench extra
(``pip install -e ".[bench]"``).

    python -m bench.sweep_speed                        # K = 8, 20 trials × 50k steps, 1 and 2 workers
    python -m bench.sweep_speed --population 1,4,8,16,32 --workers 2 --evaluations 5
    python -m bench.sweep_speed --seeds 0,10,20 --population 8   # each study per seed, then medians
    python -m bench.sweep_speed --seeds 20 --population 16 --population-trials 4 --skip sequential,zoo

With ``--envs cartpole,acrobot`` the rltune studies tune one config on those envs (``tune.envs``, every
env ``--budget-steps`` steps, so a trial trains steps × envs); rl-zoo3 tunes one env, so ``--skip zoo``
is then required.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import pickle
import re
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import optuna

from bench.common import ROOT, count, script_parser

SKIPPABLE = {"sequential", "zoo"}
"""Studies ``--skip`` can leave out."""

ENV = {**os.environ, "MLFLOW_DISABLE_TELEMETRY": "true", "PYTHONUNBUFFERED": "1"}


@dataclass(frozen=True)
class Study:
    """What one study run produced."""

    label: str
    wall_s: float
    trials: int
    best: float | None
    peak_rss_mib: float
    failed: int | None = None
    """Trials that failed, read from the tool's own study (None when it could not be read). rl-zoo3
    turns an error in training (a NaN, a failed assertion) into a pruned trial; a pruned trial without
    any evaluation reported is such a trial, and counts as failed here."""
    seed: int = 0
    """The sampler seed of the study."""

    @property
    def trials_per_hour(self) -> float:
        """Trials that trained (complete or pruned) per hour of the command's wall time.

        A failed trial is left out: it ends before training (an invalid sampled config) or part-way
        (a diverged loss), so counting it would flatter the tool that fails more often.
        """
        return self.trials / self.wall_s * 3600


def run_command(args: list[str], cwd: Path, log: Path) -> tuple[float, float]:
    """(wall seconds, peak RSS in MiB) of a command; raises if it fails, pointing at its log."""
    start = time.perf_counter()
    with log.open("w") as out:
        proc = subprocess.Popen(args, cwd=cwd, env=ENV, stdout=out, stderr=subprocess.STDOUT)
        _, status, usage = os.wait4(proc.pid, 0)
    wall = time.perf_counter() - start
    proc.returncode = os.waitstatus_to_exitcode(status)
    if proc.returncode != 0:
        raise RuntimeError(f"{' '.join(args[:4])} … exited {proc.returncode}; see {log}")
    return wall, usage.ru_maxrss / 1024  # Linux reports KiB


def rltune_study(
    label: str, work: Path, n_trials: int, budget: int, evaluations: int, seed: int, extra: list[str]
) -> Study:
    """A study through ``python -m tuner.tune``; its best value read back from its Optuna storage."""
    runs = work / re.sub(r"[^A-Za-z0-9]+", "_", label)
    freq = budget // evaluations
    args = [
        sys.executable, "-m", "tuner.tune", "experiment=ppo_cartpole", "search=ppo_zoo",
        "sampler=tpe", f"sampler.seed={seed}", "sampler.n_startup_trials=10",
        "pruner=median", "pruner.n_startup_trials=10", f"pruner.n_warmup_steps={evaluations // 3 * freq}",
        "tune.n_seeds=1", f"tune.n_trials={n_trials}", f"tune.budget_steps={budget}",
        f"env.eval.freq_steps={freq}", "env.eval.n_episodes=5", "tune.validate_seeds=0", "tune.export=false",
        "tune.study_name=sweep_speed", f"paths.runs_dir={runs}", *extra,
    ]  # fmt: skip
    runs.mkdir(parents=True)
    wall, rss = run_command(args, ROOT, runs / "output.log")
    study = optuna.load_study(study_name="sweep_speed", storage=f"sqlite:///{runs}/optuna.db")
    states = optuna.trial.TrialState
    trained = [t for t in study.trials if t.state in (states.COMPLETE, states.PRUNED)]
    failed = sum(t.state == states.FAIL for t in study.trials)
    complete = [t.value for t in trained if t.value is not None]
    return Study(label, wall, len(trained), max(complete, default=None), rss, failed, seed)


def zoo_study(
    work: Path, n_trials: int, budget: int, evaluations: int, seed: int, threads: int, jobs: int
) -> Study:
    """rl-zoo3's optimizer on the same study; its best value parsed from what it prints.

    ``jobs`` is rl-zoo3's ``--n-jobs``: Optuna trials run in that many threads of one process.
    """
    folder = work / f"rl_zoo3_threads{threads}_jobs{jobs}"
    folder.mkdir(parents=True)
    args = [
        sys.executable, "-m", "rl_zoo3.train", "--algo", "ppo", "--env", "CartPole-v1", "-optimize",
        "--n-trials", str(n_trials), "--n-timesteps", str(budget), "--sampler", "tpe", "--pruner", "median",
        "--log-folder", str(folder / "logs"), "--num-threads", str(threads), "--seed", str(seed),
        "--n-jobs", str(jobs),
        *(["--n-evaluations", str(evaluations)] if evaluations != 1 else []),
    ]  # fmt: skip
    log = folder / "output.log"
    wall, rss = run_command(args, folder, log)
    text = log.read_text()
    best = re.search(r"Best trial:\s*\nValue:\s*([-\d.eE+]+)", text)
    label = f"rl-zoo3, {threads} torch thread{'s' if threads > 1 else ''}, --n-jobs {jobs}"
    counts = zoo_trial_counts(folder / "logs")
    if counts is None:  # no pickled study: fall back on the count it prints (every trial, failed or not)
        finished = re.search(r"Number of finished trials:\s*(\d+)", text)
        trained, failed = (int(finished.group(1)) if finished else n_trials), None
    else:
        trained, failed = counts
    return Study(label, wall, trained, float(best.group(1)) if best else None, rss, failed, seed)


def zoo_trial_counts(log_folder: Path) -> tuple[int, int] | None:
    """(trials that trained, trials that failed) of the study rl-zoo3 pickles beside its report.

    Trained: complete, or pruned by the pruner at an evaluation. Failed: failed, or pruned with no
    evaluation reported, which is how rl-zoo3's objective ends a trial whose training raised.
    None when there is no such file.
    """
    reports = sorted(log_folder.glob("ppo/report_*.pkl"))
    if not reports:
        return None
    with reports[-1].open("rb") as file:
        study = pickle.load(file)  # written by the rl-zoo3 run this script just started
    states = optuna.trial.TrialState

    def trained(trial: optuna.trial.FrozenTrial) -> bool:
        return trial.state == states.COMPLETE or (
            trial.state == states.PRUNED and bool(trial.intermediate_values)
        )

    def failed(trial: optuna.trial.FrozenTrial) -> bool:
        return trial.state == states.FAIL or (trial.state == states.PRUNED and not trial.intermediate_values)

    return sum(map(trained, study.trials)), sum(map(failed, study.trials))


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    """The command line, checked before any study starts: a bad value exits 2 with one line naming it.
    The comma-separated counts come back as lists of integers and ``--skip`` as a set."""
    parser = script_parser(__doc__)
    parser.add_argument("--trials", type=count, default=20, help="trials per study")
    parser.add_argument("--budget-steps", type=count, default=50000, help="env steps per trial")
    parser.add_argument("--population", default="8", help="comma-separated K values for population mode")
    parser.add_argument(
        "--population-trials",
        type=count,
        default=None,
        help="tune.population_trials for the population studies: trials a population takes before it "
        "retires and the next one samples a new structure (default: rltune's, 2·K)",
    )
    parser.add_argument("--evaluations", type=count, default=1, help="evaluations per trial (pruning points)")
    parser.add_argument("--zoo-threads", default="1", help="torch threads for rl-zoo3 runs (comma-separated)")
    parser.add_argument(
        "--zoo-jobs", default="1,2", help="rl-zoo3 --n-jobs values, each with every --zoo-threads value"
    )
    parser.add_argument(
        "--workers", default="1,2", help="tune.n_workers values for every rltune study (comma-separated)"
    )
    parser.add_argument(
        "--seeds",
        default="0",
        help="sampler seeds (comma-separated): every study runs once per seed; with several, a summary "
        "gives each study's median over them",
    )
    parser.add_argument(
        "--envs",
        default="",
        help="comma-separated env configs: one multi-env study (tune.envs; needs --skip zoo)",
    )
    parser.add_argument("--skip", default="", help="comma-separated studies to leave out: sequential, zoo")
    parser.add_argument(
        "--keep", type=Path, default=None, help="keep every study's logs and databases in this (new) folder"
    )
    args = parser.parse_args(argv)
    for key in ("seeds", "population", "zoo_jobs", "zoo_threads", "workers"):
        setattr(args, key, _int_list(parser, key, getattr(args, key)))
    skip = set(filter(None, args.skip.split(",")))
    if skip - SKIPPABLE:
        parser.error(
            f"--skip={args.skip}: unknown {sorted(skip - SKIPPABLE)[0]!r}; choose from {sorted(SKIPPABLE)}"
        )
    args.skip = skip
    if args.envs and "zoo" not in skip:
        parser.error(f"--envs={args.envs}: rl-zoo3 cannot tune on several envs; add --skip zoo")
    if args.keep is not None and args.keep.exists():
        parser.error(f"--keep={args.keep}: the folder exists; name a new one (studies must not resume)")
    return args


def _int_list(parser: argparse.ArgumentParser, key: str, text: str) -> list[int]:
    """A comma-separated list of integers (seeds ≥ 0, counts ≥ 1; only --population may be empty), or
    a one-line error naming ``--key``."""
    minimum = 0 if key == "seeds" else 1
    try:
        values = [int(item) for item in text.split(",") if item]
    except ValueError:
        values = [minimum - 1]
    if (not values and key != "population") or any(value < minimum for value in values):
        flag = f"--{key.replace('_', '-')}"
        parser.error(f"{flag}={text}: expected comma-separated integers ≥ {minimum}")
    return values


def main() -> None:
    """Run every study of the comparison and print the table."""
    args = parse_args()
    on = f"tune.envs=[{args.envs}], each" if args.envs else "CartPole-v1:"
    print(
        f"PPO {on} {args.trials} trials × {args.budget_steps} steps, TPE + median pruner, rl-zoo3's "
        f"search space, {args.evaluations} evaluation(s) of 5 episodes per trial; {os.cpu_count()} CPUs",
        flush=True,
    )
    results: list[Study] = []
    with contextlib.ExitStack() as stack:
        if args.keep is None:
            work = Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="sweep_speed_")))
        else:
            args.keep.mkdir(parents=True)  # a new folder (parse_args checks): studies must not resume
            work = args.keep.resolve()
        print(f"studies in {work}", flush=True)
        for seed in args.seeds:
            print(f"sampler seed {seed}", flush=True)
            results.extend(run_studies(args, work / f"seed{seed}", seed))
    if len(args.seeds) > 1:
        print_summary(results)


def run_studies(args: argparse.Namespace, work: Path, seed: int) -> list[Study]:
    """Every study of the comparison with one sampler seed; the first one is the baseline of its rows."""
    results: list[Study] = []
    budget, n, evals = args.budget_steps, args.trials, args.evaluations
    if "zoo" not in args.skip:
        for jobs in args.zoo_jobs:
            for threads in args.zoo_threads:
                results.append(zoo_study(work, n, budget, evals, seed, threads, jobs))
                _print_row(results[-1], results[0])
    for workers in args.workers:
        modes = [] if "sequential" in args.skip else [("sequential", 0)]
        retire = "" if args.population_trials is None else f" ({args.population_trials} trials each)"
        modes += [(f"population K={k}{retire}", k) for k in args.population]
        for name, k in modes:
            label = f"rltune {name}, {workers} worker{'s' if workers > 1 else ''}"
            extra = [f"tune.n_workers={workers}", *([f"tune.envs=[{args.envs}]"] if args.envs else [])]
            if k:
                extra.append(f"tune.population={k}")
                if args.population_trials is not None:
                    extra.append(f"tune.population_trials={args.population_trials}")
            results.append(rltune_study(label, work, n, budget, evals, seed, extra))
            _print_row(results[-1], results[0])
    return results


def print_summary(results: list[Study]) -> None:
    """Each study's median over the seeds: trials/hour and its ratio to the baseline of the same seed.

    A study's speed depends on which configurations its sampler draws (a 256×256 network at 20 epochs
    costs ten times a 64-unit one), so one seed can flatter or sink either tool; the median over seeds,
    with every seed's figure beside it, is the comparison to quote.
    """
    baselines = {study.seed: study for study in results if study.label == results[0].label}
    print(f"median over seeds {sorted(baselines)}; ratios are to {results[0].label} of the same seed")
    for label in dict.fromkeys(study.label for study in results):
        rows = [study for study in results if study.label == label]
        ratios = [study.trials_per_hour / baselines[study.seed].trials_per_hour for study in rows]
        as_good = sum(
            study.best is not None
            and baselines[study.seed].best is not None
            and study.best >= baselines[study.seed].best
            for study in rows
        )
        print(
            f"{label:<42} trials/hour {statistics.median(s.trials_per_hour for s in rows):7.1f}  "
            f"ratio median {statistics.median(ratios):5.2f}× (per seed "
            f"{', '.join(f'{r:.2f}' for r in ratios)})  best ≥ baseline's in {as_good}/{len(rows)} seeds",
            flush=True,
        )


def _print_row(study: Study, baseline: Study) -> None:
    best = "-" if study.best is None else f"{study.best:.1f}"
    failed = "-" if study.failed is None else str(study.failed)
    ratio = study.trials_per_hour / baseline.trials_per_hour
    print(
        f"{study.label:<42} wall {study.wall_s:7.0f} s  trained {study.trials:3d}  failed {failed:>2}  "
        f"trials/hour {study.trials_per_hour:7.1f}  ({ratio:5.2f}× {baseline.label})  best {best:>6}  "
        f"peak RSS {study.peak_rss_mib:6.0f} MiB",
        flush=True,
    )


if __name__ == "__main__":
    main()
