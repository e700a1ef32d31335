"""The Optuna tuner driven as a user drives it: real, tiny studies through `python -m tuner.tune`."""

from __future__ import annotations

import csv
import multiprocessing
import shlex
import signal
import subprocess
import sys
import time
from datetime import date, datetime
from pathlib import Path
from typing import Any

import numpy as np
import optuna
import pandas as pd
import pytest
import yaml
from mlflow import MlflowClient
from optuna.storages import RetryHeartbeatStaleTrialCallback
from optuna.trial import TrialState

from tests.helpers import (
    DIVERGE_STUDY,
    ENV,
    RANDOM_NO_PRUNING,
    command,
    counted,
    interrupt_once_started,
    kill_once_a_trial_runs,
    load,
    long_lines,
    run_tune,
    runs_by_name,
    screen_lines_in_terminal,
    tune_args,
)
from tuner.provenance import source_commit
from tuner.stats import compare
from tuner.study import claim_trial
from tuner.tracking import interrupts_raise
from tuner.tune import wait_for_workers


def test_study_resumes_up_to_the_new_budget_and_nests_runs(tmp_path: Path) -> None:
    first = run_tune(tmp_path, "tune.n_trials=2")
    assert first.returncode == 0, first.stderr
    assert len(load(tmp_path).trials) == 2
    second = run_tune(tmp_path, "tune.n_trials=4", "tune.n_seeds=2")
    assert second.returncode == 0, second.stderr
    study = load(tmp_path)
    assert [t.state for t in study.trials] == [TrialState.COMPLETE] * 4
    assert "top 10 trials" in second.stdout and "best trial" in second.stdout

    runs = runs_by_name(tmp_path)
    (sweep,) = runs["sweep-ppo_cartpole"]  # one sweep run for the study, reopened on resume
    assert sweep.info.status == "FINISHED"
    trial_3 = runs["trial-3"][0]
    assert trial_3.data.tags["mlflow.parentRunId"] == sweep.info.run_id
    seed_runs = runs["trial-3-seed1"] + runs["trial-3-seed2"]
    assert {r.data.tags["mlflow.parentRunId"] for r in seed_runs} == {trial_3.info.run_id}
    assert "eval/mean_return" in seed_runs[0].data.metrics
    client = MlflowClient(f"sqlite:///{tmp_path}/mlflow.db")
    # What the pruner saw of a two-seed trial: the first seed's evaluations at their own env steps (512
    # env steps a seed), not steps counted on across the seeds.
    first_seed = client.get_metric_history(runs["trial-3-seed1"][0].info.run_id, "eval/mean_return")
    assert study.trials[3].intermediate_values == {m.step: m.value for m in first_seed}
    assert max(study.trials[3].intermediate_values) == 512
    artifacts = {a.path for a in client.list_artifacts(sweep.info.run_id)}
    assert {"trials.csv", "trials.md", "optimization_history.png", "ppo_cartpole_tuned.yaml"} <= artifacts
    assert "best/value" in client.get_run(sweep.info.run_id).data.metrics
    # The preset's header says where it comes from: both sweep commands, the study's records, the code.
    header = [line for line in (tmp_path / "conf" / "experiment" / "ppo_cartpole_tuned.yaml").read_text()
              .splitlines() if line.startswith("#")]  # fmt: skip
    text = "\n".join(header)
    for extra in (["tune.n_trials=2"], ["tune.n_trials=4", "tune.n_seeds=2"]):
        args = tune_args(tmp_path, *extra)
        assert f"#   python -m tuner.tune {shlex.join(args[3:])}" in header
    assert f"Study 'ppo_cartpole', MLflow experiment 'ppo_cartpole', sweep run {sweep.info.run_id}." in text
    assert "Trials: 4 complete, 0 pruned, 0 failed; seeds [1, 2]; 512 env steps per run." in text
    assert "Method: RandomSampler, NopPruner, one trial at a time per worker." in text
    assert f"commit {source_commit()}, exported {date.today().isoformat()}" in text
    # The trials table speaks the config's language: gamma as the config has it, Optuna's reparameterised
    # one_minus_gamma beside it; a parameter sampled as itself (learning_rate) appears once.
    trials_csv = Path(client.download_artifacts(sweep.info.run_id, "trials.csv", str(tmp_path / "dl")))
    table = pd.read_csv(trials_csv)
    assert {"gamma", "one_minus_gamma", "learning_rate"} <= set(table.columns)
    assert "param_learning_rate" not in table.columns
    assert np.allclose(table["gamma"], 1 - table["one_minus_gamma"])
    assert study.metric_names == ["mean_return"]  # the objective's name on plots and the dashboard
    assert datetime.fromisoformat(study.user_attrs["started_at"]).tzinfo is not None
    experiment = sweep.info.experiment_id  # the printed links open its runs list and the sweep run
    assert f"/#/experiments/{experiment}?workflowType=machine_learning" in second.stdout
    assert f"/#/experiments/{experiment}/runs/{sweep.info.run_id}" in second.stdout


def test_two_workers_share_the_budget_exactly(tmp_path: Path) -> None:
    result = run_tune(tmp_path, "tune.n_trials=5", "tune.n_workers=2")
    assert result.returncode == 0, result.stderr
    study = load(tmp_path)
    numbers = [t.number for t in study.trials]
    assert sorted(numbers) == list(range(5))  # exact count, no surplus trial, no duplicate numbers
    assert all(t.state == TrialState.COMPLETE for t in study.trials)
    # sampler.seed=0 is fixed (RANDOM_NO_PRUNING): each worker offsets it, so no config is sampled twice.
    assert len({tuple(sorted(t.params.items())) for t in study.trials}) == 5
    logs = list((tmp_path / "logs" / "ppo_cartpole").glob("worker-*.log"))
    worked = [p for p in logs if "trial " in p.read_text()]
    assert len(logs) == 2 and len(worked) == 2, "both workers must have run trials"


def test_the_sweep_stops_waiting_for_its_workers_the_moment_the_last_one_ends() -> None:
    """The sweep command refreshes its display every couple of seconds while workers run, but goes on to
    its summary as soon as the last worker exits (it slept 2 s between looks)."""
    workers = [
        subprocess.Popen([sys.executable, "-c", f"import time; time.sleep({seconds})"])
        for seconds in (0.2, 1.0)
    ]
    n_refreshes = 0

    def refresh() -> None:
        nonlocal n_refreshes
        n_refreshes += 1

    started = time.monotonic()
    with interrupts_raise() as signals:
        wait_for_workers(workers, signals, refresh, refresh_s=2.0)
    seconds = time.monotonic() - started
    assert all(worker.returncode == 0 for worker in workers)
    assert seconds < 1.6, f"returned {seconds:.2f} s after the workers started (the last ran 1 s)"
    assert n_refreshes >= 1  # the display shows the end state


def _claim_all(url: str, barrier: Any, claimed: Any) -> None:
    """Child process: claim trials the way a worker does, starting with the others, until none is left."""
    storage = optuna.storages.RDBStorage(url, engine_kwargs={"connect_args": {"timeout": 60}})
    study = optuna.load_study(study_name="claims", storage=storage)
    barrier.wait()
    numbers = []
    while (trial := claim_trial(study, storage)) is not None:
        numbers.append(trial.number)
    claimed.put(numbers)


def test_workers_claiming_at_once_on_sqlite_never_take_the_same_trial(tmp_path: Path) -> None:
    """SQLite ignores SELECT … FOR UPDATE, so Optuna's compare-and-set alone let two workers take one trial
    (9 of 10 rounds like these, before claims were serialised)."""
    context = multiprocessing.get_context("fork")
    for round_ in range(3):
        url = f"sqlite:///{tmp_path}/claims-{round_}.db"
        study = optuna.create_study(study_name="claims", storage=url)
        for _ in range(20):
            study.enqueue_trial({})
        barrier, claimed = context.Barrier(3), context.Queue()
        workers = [context.Process(target=_claim_all, args=(url, barrier, claimed)) for _ in range(3)]
        for worker in workers:
            worker.start()
        numbers = [n for _ in workers for n in claimed.get(timeout=120)]
        for worker in workers:
            worker.join(30)
        assert sorted(numbers) == list(range(20)), f"round {round_}: {sorted(numbers)}"


@pytest.mark.parametrize(
    ("sig", "n_workers"),
    [(signal.SIGTERM, 1), (signal.SIGINT, 2)],
    ids=["sigterm-1-worker", "ctrl-c-2-workers"],
)
def test_an_interrupted_sweep_loses_nothing_and_resumes(
    tmp_path: Path, sig: signal.Signals, n_workers: int
) -> None:
    """A signal while the trials train (in the sweep's own process for one worker; in worker processes,
    which the sweep stops, for two): one line, exit 128+N, the trials' runs KILLED and the trials back
    in the queue; the same command then finishes the study."""
    # Trials far longer than the wait for them to start: on a loaded machine too, the signal comes
    # while every worker is training.
    args = tune_args(tmp_path, "tune.n_trials=2", "tune.budget_steps=1000000", f"tune.n_workers={n_workers}")
    returncode, stderr = interrupt_once_started(tmp_path, args, seed_runs=n_workers, sig=sig)
    assert returncode == 128 + sig, stderr
    assert f"interrupted by {sig.name}" in stderr and "Traceback" not in stderr
    runs = [r for rs in runs_by_name(tmp_path).values() for r in rs]
    assert not [r.info.run_name for r in runs if r.info.status == "RUNNING"]
    killed = {r.info.run_name for r in runs if r.info.status == "KILLED"}
    interrupted = list(range(n_workers))  # each worker was training one trial
    for number in interrupted:
        assert f"trial-{number}" in killed and any(name.startswith(f"trial-{number}-seed") for name in killed)
    study = load(tmp_path)
    assert not [t for t in study.trials if t.state == TrialState.RUNNING]
    assert [t.number for t in study.trials if t.state == TrialState.FAIL] == interrupted

    again = run_tune(tmp_path, "tune.n_trials=2")
    assert again.returncode == 0, again.stderr
    study = load(tmp_path)
    assert [t.state for t in counted(study)] == [TrialState.COMPLETE] * 2
    assert any(t.params == study.trials[0].params for t in counted(study))  # the retry of trial 0


def test_killed_worker_trial_is_failed_by_heartbeat_and_retried(tmp_path: Path) -> None:
    args = tune_args(tmp_path, "tune.n_trials=2", "tune.budget_steps=30000")
    killed_number, killed_run_id = kill_once_a_trial_runs(args, ENV, f"sqlite:///{tmp_path}/optuna.db")

    again = run_tune(tmp_path, "tune.n_trials=2")
    assert again.returncode == 0, again.stderr
    study = load(tmp_path)
    trials = {t.number: t for t in study.trials}
    assert trials[killed_number].state == TrialState.FAIL
    retries = [
        t for t in study.trials if RetryHeartbeatStaleTrialCallback.retried_trial_number(t) == killed_number
    ]
    assert len(retries) == 1 and retries[0].state == TrialState.COMPLETE
    assert retries[0].params == trials[killed_number].params  # same config, retried
    assert [t.state for t in counted(study)] == [TrialState.COMPLETE] * 2  # exact budget
    client = MlflowClient(f"sqlite:///{tmp_path}/mlflow.db")
    assert client.get_run(killed_run_id).info.status == "KILLED"
    all_runs = [r for runs in runs_by_name(tmp_path).values() for r in runs]
    assert not [r.info.run_name for r in all_runs if r.info.status == "RUNNING"]


def test_a_diverging_trial_fails_cleanly_and_the_study_completes(tmp_path: Path) -> None:
    """Also what a person reads at 80 columns: every line fits, tables included, and each failed
    trial's reason is printed once."""
    result = run_tune(
        tmp_path,
        *DIVERGE_STUDY,
        "tune.n_trials=4",
        "tune.validate_seeds=2",
        "+search.params.log_std_init={type:categorical,choices:[0.0,-1000.0]}",
        env={"COLUMNS": "80"},
    )
    assert result.returncode == 0, result.stderr
    study = load(tmp_path, "diverge")
    states = [t.state for t in study.trials]
    assert len(states) == 4 and TrialState.FAIL in states and TrialState.COMPLETE in states
    failed = [t for t in study.trials if t.state == TrialState.FAIL]
    assert all(t.params["log_std_init"] == -1000.0 for t in failed)
    assert all("diverged" in t.user_attrs["fail_reason"] for t in failed)
    runs = runs_by_name(tmp_path)
    assert {r.info.status for r in runs[f"trial-{failed[0].number}"]} == {"FAILED"}

    output = result.stdout + result.stderr
    assert long_lines(output) == []
    reason = failed[0].user_attrs["fail_reason"]
    assert output.count(reason) == len(failed), output
    table_rows = [line for line in result.stdout.splitlines() if line.startswith("│")]
    assert any(row.split("│")[1].strip() == "difference" for row in table_rows)  # validation, unbroken


def test_exported_preset_reproduces_the_trial_with_its_seed(tmp_path: Path) -> None:
    result = run_tune(tmp_path, "tune.n_trials=2", "tune.export_name=rltune_test_export_tuned")
    assert result.returncode == 0, result.stderr
    best = load(tmp_path).best_trial
    preset = tmp_path / "conf" / "experiment" / "rltune_test_export_tuned.yaml"
    assert preset.exists()
    train = command(
        "tuner.train",
        f"hydra.searchpath=[file://{tmp_path}/conf]",
        "experiment=rltune_test_export_tuned",
        f"paths.runs_dir={tmp_path}/replay",
        timeout=120,
    )
    assert train.returncode == 0, train.stderr
    client = MlflowClient(f"sqlite:///{tmp_path}/replay/mlflow.db")
    (run,) = client.search_runs([client.get_experiment_by_name("ppo_cartpole").experiment_id])
    history = client.get_metric_history(run.info.run_id, "eval/mean_return")
    assert history[-1].value == pytest.approx(best.user_attrs["seed_returns"][0], abs=1e-9)

    replay = command(
        "tuner.replay",
        "study=ppo_cartpole",
        f"trial={best.number}",
        f"paths.runs_dir={tmp_path}",
        timeout=120,
    )
    assert replay.returncode == 0, replay.stderr
    assert f"final eval return {best.user_attrs['seed_returns'][0]:.2f}" in replay.stdout


@pytest.mark.parametrize(
    ("override", "fragment", "code"),
    [
        ("search.params.learning_rate.low=-1", "learning_rate", 2),
        ("search.params.clip_range.choices=[]", "clip_range", 2),
        ("+search.params.learning_rat={type:float,low:0.1,high:0.2}", "learning_rat", 2),
        ("sampler=foo", "sampler=foo is not a config in conf/sampler; choose one of: cmaes, gp,", 2),
        ("pruner=bar", "pruner=bar is not a config in conf/pruner; choose one of: hyperband,", 2),
        ("tune.validate_seeds_start=1", "validation seeds", 2),
    ],
)
def test_bad_sweep_configs_give_one_clear_message(
    tmp_path: Path, override: str, fragment: str, code: int
) -> None:
    result = run_tune(tmp_path, override, "tune.n_trials=2", "tune.validate_seeds=2", timeout=60)
    assert result.returncode == code
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: ") and fragment in lines[0], result.stderr
    assert not (tmp_path / "optuna.db").exists() and not (tmp_path / "mlflow.db").exists()


@pytest.mark.parametrize(
    ("sampler", "pruner"),
    [
        ("tpe", "median"),
        ("cmaes", "successive_halving"),
        ("gp", "hyperband"),
        ("nsga2", "none"),
        ("random", "wilcoxon"),
    ],
)
def test_every_sampler_and_pruner_runs_a_study(tmp_path: Path, sampler: str, pruner: str) -> None:
    result = run_tune(
        tmp_path,
        f"sampler={sampler}",
        "sampler.seed=0",
        f"pruner={pruner}",
        "tune.n_trials=3",
        "tune.n_seeds=2",
    )
    assert result.returncode == 0, result.stderr
    study = load(tmp_path)
    assert len(study.trials) == 3
    assert all(t.state in (TrialState.COMPLETE, TrialState.PRUNED) for t in study.trials)
    assert len(study.directions) == (2 if sampler == "nsga2" else 1)
    if sampler == "nsga2":  # return and wall-clock seconds
        complete = [t for t in study.trials if t.state == TrialState.COMPLETE]
        assert all(len(t.values) == 2 and t.values[1] > 0 for t in complete)


def test_timeout_stops_claiming_trials_and_a_rerun_finishes_the_budget(tmp_path: Path) -> None:
    """Trials of about a second each and a 1-second timeout: the first command stops claiming before the
    budget is used (how many it started depends on the machine's load; none is fine), and the same
    command again finishes exactly the budget."""
    first = run_tune(tmp_path, "tune.n_trials=6", "tune.timeout=1")
    assert first.returncode == 0, first.stderr
    states = [t.state for t in load(tmp_path).trials]
    assert len(states) == 6 and TrialState.WAITING in states and TrialState.RUNNING not in states
    second = run_tune(tmp_path, "tune.n_trials=6")
    assert second.returncode == 0, second.stderr
    study = load(tmp_path)
    assert sorted(t.number for t in study.trials) == list(range(6))  # no surplus trial
    assert [t.state for t in study.trials] == [TrialState.COMPLETE] * 6


@pytest.mark.parametrize(
    "algo, env, own_param",
    [
        ("sac", "pendulum", "ent_coef"),
        ("td3", "pendulum", "exploration_noise"),
        ("d3qn", "cartpole", "n_step"),
        ("sacd", "cartpole", "target_entropy_scale"),
    ],
)
def test_off_policy_algorithms_tune_with_their_own_search_space(
    tmp_path: Path, algo: str, env: str, own_param: str
) -> None:
    result = command(
        "tuner.tune",
        f"algo={algo}",
        f"env={env}",
        "algo.net_arch=[32,32]",
        "algo.batch_size=64",
        "~search.params.net_arch",
        "~search.params.batch_size",
        "~search.params.gradient_steps",
        "tune.n_trials=2",
        "tune.n_seeds=1",
        "tune.budget_steps=400",
        "tune.validate_seeds=0",
        "env.eval.freq_steps=200",
        "env.eval.n_episodes=1",
        *RANDOM_NO_PRUNING,
        f"paths.runs_dir={tmp_path}",
        f"tune.export_dir={tmp_path}/conf/experiment",
        timeout=240,
    )
    assert result.returncode == 0, result.stderr
    study = load(tmp_path, f"{algo}_{env}")
    assert [t.state for t in study.trials] == [TrialState.COMPLETE] * 2
    assert own_param in study.trials[0].params and "one_minus_gamma" in study.trials[0].params


def test_held_out_validation_retrains_default_and_best_on_unseen_seeds_and_compares_them(
    tmp_path: Path,
) -> None:
    """The sweep's last step, as a user reads it: default and tuned retrained on seeds 1001–1004 (never
    tuning seeds), the tuned config equal to the best trial's and to the exported preset, and the table
    equal to tuner.stats.compare of the returns those runs recorded."""
    result = run_tune(tmp_path, "tune.n_trials=3", "tune.validate_seeds=4")
    assert result.returncode == 0, result.stderr
    assert "held-out validation: default vs tuned" in result.stdout
    best = load(tmp_path).best_trial
    runs = runs_by_name(tmp_path)
    (sweep,) = runs["sweep-ppo_cartpole"]
    returns: dict[str, list[float]] = {}
    client = MlflowClient(f"sqlite:///{tmp_path}/mlflow.db")
    for label in ("default", "tuned"):
        (parent,) = runs[f"validation-{label}"]
        assert parent.data.tags["mlflow.parentRunId"] == sweep.info.run_id
        seeds = [runs[f"validation-{label}-seed{s}"][0] for s in (1001, 1002, 1003, 1004)]
        assert {r.data.tags["seed"] for r in seeds} == {"1001", "1002", "1003", "1004"}
        assert all(r.data.tags["mlflow.parentRunId"] == parent.info.run_id for r in seeds)
        returns[label] = [
            client.get_metric_history(r.info.run_id, "eval/mean_return")[-1].value for r in seeds
        ]
        sampled = {k: float(r.data.params[f"algo.{k}"]) for r in seeds for k in ("learning_rate", "gamma")}
        wanted = (
            best.user_attrs["config_values"] if label == "tuned" else {"learning_rate": 3e-4, "gamma": 0.99}
        )
        assert sampled == {k: pytest.approx(float(wanted[k])) for k in ("learning_rate", "gamma")}
        for run in seeds:  # a validation run keeps its agent and curve; a tuning seed's run does not
            assert {"model.pt", "learning_curve.png"} <= artifact_names(client, run.info.run_id)
    for run in runs["trial-0-seed1"]:
        assert artifact_names(client, run.info.run_id) == {"config.yaml"}
    preset = yaml.safe_load((tmp_path / "conf" / "experiment" / "ppo_cartpole_tuned.yaml").read_text())
    assert {k: preset["algo"][k] for k in best.user_attrs["config_values"]} == best.user_attrs[
        "config_values"
    ]

    expected = compare(returns["default"], returns["tuned"], seed=0)
    table = Path(client.download_artifacts(sweep.info.run_id, "validation.csv", str(tmp_path)))
    rows = {row["config"]: row for row in csv.DictReader(table.open())}
    assert float(rows["default"]["iqm"]) == pytest.approx(expected.baseline_iqm)
    assert float(rows["tuned"]["iqm"]) == pytest.approx(expected.candidate_iqm)
    assert float(rows["difference"]["ci_low"]) == pytest.approx(expected.difference_ci[0])
    assert float(rows["difference"]["ci_high"]) == pytest.approx(expected.difference_ci[1])
    assert rows["difference"]["significant"] == str(expected.significant)
    metrics = client.get_run(sweep.info.run_id).data.metrics
    assert metrics["validation/tuned_iqm"] == pytest.approx(expected.candidate_iqm)


def test_log_lines_print_above_the_live_progress_bar_at_80_columns(tmp_path: Path) -> None:
    """On a terminal the sweep's bar is live; log lines (here each seed's INFO lines, which a sweep
    otherwise keeps to its log file) are printed above it, never onto it, and nothing is wider."""
    lines = screen_lines_in_terminal(
        tune_args(tmp_path, "tune.n_trials=2", "++hydra.job_logging.handlers.console.level=INFO")
    )
    bar_lines = [line for line in lines if "━" in line]
    log_lines = [line for line in lines if "INFO" in line]
    assert bar_lines and any("training ppo on CartPole-v1" in line for line in log_lines)
    assert not [line for line in bar_lines if "INFO" in line or "training" in line]
    assert long_lines("\n".join(lines)) == []


def artifact_names(client: MlflowClient, run_id: str) -> set[str]:
    """The names of a run's top-level artifacts."""
    return {artifact.path for artifact in client.list_artifacts(run_id)}


def test_enqueue_base_makes_trial_0_train_the_preset_s_searched_values(tmp_path: Path) -> None:
    """tune.enqueue_base=true: the first trial's values are the experiment preset's for every searched
    field the space can sample; its gae_lambda 0.8 and ent_coef 0.0 are outside their ranges, so the
    sampler picks those, as the command says."""
    result = run_tune(tmp_path, "experiment=ppo_cartpole", "tune.n_trials=2", "tune.enqueue_base=true")
    assert result.returncode == 0, result.stderr
    assert (
        "trial 0 trains the base config's searched values; the sampler chooses gae_lambda, ent_coef "
        in " ".join(
            result.stdout.split()  # the console wraps lines at 80 columns
        )
    )
    first, second = sorted(load(tmp_path).trials, key=lambda t: t.number)
    values = first.user_attrs["config_values"]
    preset = {"learning_rate": 1e-3, "gamma": 0.98, "clip_range": 0.2, "vf_coef": 0.5, "max_grad_norm": 0.5}
    assert {k: values[k] for k in preset} == pytest.approx(preset)
    assert second.user_attrs["config_values"]["learning_rate"] != 1e-3
