"""Bad input and faults as a new user and an operator meet them, through the real commands.

Each case ends in one line and an exit code, leaves nothing behind that it should not, and never shows
a password; faults in a running sweep (a killed worker, two commands at once, a late worker) lose
nothing and finish the study. Cases that need PostgreSQL are in test_postgres.py.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import optuna
import pytest
from mlflow import MlflowClient
from optuna.trial import TrialState

from tests.helpers import (
    ENV,
    ROOT,
    CommandResults,
    child_pids,
    command,
    commands_in_own_dirs,
    commands_two_at_a_time,
    containing,
    counted,
    files_containing,
    load,
    mlflow_values,
    one_error_line,
    optuna_values,
    read_only_dir,
    run_tune,
    runs_by_name,
    sqlite_row,
    tune_args,
    wait_for,
)
from tuner.compose import compose_config
from tuner.prepare import prepare
from tuner.study import (
    HEARTBEAT_LOST,
    INTERRUPTED,
    TuneSettings,
    budget_status,
    claim_trial,
    fail_and_retry,
    make_storage,
    top_up_budget,
    trial_id,
)
from tuner.sweep_report import trials_table
from tuner.train import resolve_config
from tuner.worker import run_worker

SECRET = "s3cr3t-pw"
UNREACHABLE = f"postgresql://alice:{SECRET}@127.0.0.1:1/rltune"  # nothing listens on port 1


# ---------------------------------------------------------------------------------------------------
# Values of the wrong type: one line naming the key and the value, exit 2, nothing created
# ---------------------------------------------------------------------------------------------------
SAC = ("algo=sac", "env=pendulum")
NUMBER = "must be a number, got"
SCHEDULABLE = "must be a number or a list of [from_step, value] pairs, got"  # PPO's member hyperparameters
# name -> (command, overrides, what the one error line says)
WRONG_TYPES: dict[str, tuple[str, tuple[str, ...], str]] = {
    "train_lr": ("tuner.train", ("algo.learning_rate=abc",), f"algo.learning_rate {SCHEDULABLE} 'abc'"),
    "train_gamma": ("tuner.train", ("algo.gamma=abc",), f"algo.gamma {SCHEDULABLE} 'abc'"),
    "train_clip_range": ("tuner.train", ("algo.clip_range=abc",), f"algo.clip_range {SCHEDULABLE} 'abc'"),
    "train_ent_coef": ("tuner.train", ("algo.ent_coef=abc",), f"algo.ent_coef {SCHEDULABLE} 'abc'"),
    "train_null": ("tuner.train", ("algo.learning_rate=null",), f"algo.learning_rate {SCHEDULABLE} None"),
    "train_sac_gamma": ("tuner.train", (*SAC, "algo.gamma=abc"), f"algo.gamma {NUMBER} 'abc'"),
    "train_sac_lr": ("tuner.train", (*SAC, "algo.learning_rate=abc"), f"algo.learning_rate {NUMBER} 'abc'"),
    "train_progress": ("tuner.train", ("progress=abc",), "progress must be true or false, got 'abc'"),
    "tune_lr": ("tuner.tune", ("algo.learning_rate=abc",), f"algo.learning_rate {SCHEDULABLE} 'abc'"),
    "tune_sac_gamma": ("tuner.tune", (*SAC, "algo.gamma=abc"), f"algo.gamma {NUMBER} 'abc'"),
    "tune_export": ("tuner.tune", ("tune.export=abc",), "tune.export must be true or false, got 'abc'"),
    "replay_trial": (
        "tuner.replay",
        ("study=s", "trial=abc"),
        "trial must be a trial number >= 0, got 'abc'",
    ),
    "report_confidence": ("tuner.report", ("report.confidence=abc",), "report.confidence must be a number"),
    "benchmark_workers": ("tuner.benchmark", ("benchmark.n_workers=abc",), "benchmark.n_workers must be"),
}


@pytest.fixture(scope="module")
def wrong_type_results(tmp_path_factory: pytest.TempPathFactory) -> CommandResults:
    """Every wrong-type command, each with its own runs directory."""
    jobs = {name: (module, overrides) for name, (module, overrides, _) in WRONG_TYPES.items()}
    return commands_in_own_dirs(tmp_path_factory, jobs)


@pytest.mark.parametrize("name", WRONG_TYPES)
def test_a_value_of_the_wrong_type_is_one_line_naming_the_key_and_value(
    name: str, wrong_type_results: CommandResults
) -> None:
    runs_dir, proc = wrong_type_results[name]
    assert proc.returncode == 2, proc.stderr
    assert WRONG_TYPES[name][2] in one_error_line(proc)
    assert not (runs_dir / "mlflow.db").exists() and not (runs_dir / "optuna.db").exists()


# ---------------------------------------------------------------------------------------------------
# A tracking store that cannot be used: one line within seconds, nothing created in either store
# ---------------------------------------------------------------------------------------------------
def _corrupted(tmp_path: Path) -> str:
    (tmp_path / "mlflow.db").write_bytes(b"this is not an SQLite database" * 100)
    return f"sqlite:///{tmp_path}/mlflow.db"


@pytest.mark.parametrize("module", ["tuner.train", "tuner.tune"])
@pytest.mark.parametrize("store", ["unreachable", "corrupted", "unwritable"])
def test_an_unusable_tracking_store_is_one_line_within_seconds_and_nothing_is_created(
    tmp_path: Path, module: str, store: str
) -> None:
    runs = tmp_path / "runs"
    runs.mkdir()
    before: bytes | None = None
    if store == "unreachable":
        uri, expected = UNREACHABLE, "cannot reach MLflow tracking store postgresql://alice:***@127.0.0.1:1"
    elif store == "corrupted":
        uri, expected = _corrupted(runs), "file is not a database"
        before = (runs / "mlflow.db").read_bytes()
    else:
        uri, expected = f"sqlite:///{tmp_path}/locked/mlflow.db", "is not a writable directory"
    started = time.monotonic()
    with read_only_dir(tmp_path / "locked"):
        proc = command(module, f"paths.runs_dir={runs}", f"tracking.uri={uri}")
    elapsed = time.monotonic() - started
    assert proc.returncode == 2, proc.stderr
    line = one_error_line(proc)
    assert expected in line and "tracking.uri" in line
    assert SECRET not in proc.stdout + proc.stderr
    # MLflow's retry loop took ~110 s on an idle machine; a failing command takes ~4 s idle and took 22 s
    # beside a CPU hog and a full test run, so the bound sits between the two with room for load.
    assert elapsed < 60, f"took {elapsed:.0f} s"
    assert not (runs / "optuna.db").exists()  # the study was not created before the store was checked
    if before is not None:
        assert (runs / "mlflow.db").read_bytes() == before
    else:
        assert not (runs / "mlflow.db").exists()


def test_a_runs_directory_that_cannot_be_written_is_one_line(tmp_path: Path) -> None:
    with read_only_dir(tmp_path / "locked") as locked:
        results = [command(m, f"paths.runs_dir={locked}/runs") for m in ("tuner.train", "tuner.tune")]
    for proc in results:
        assert proc.returncode == 2, proc.stderr
        line = one_error_line(proc)
        assert f"cannot write {locked}/runs" in line and "paths.runs_dir" in line


# ---------------------------------------------------------------------------------------------------
# Passwords: never printed or written, whatever fails
# ---------------------------------------------------------------------------------------------------
PASSWORD_CASES: dict[str, tuple[str, tuple[str, ...]]] = {  # name -> (command, overrides)
    "train_tracking": ("tuner.train", (f"tracking.uri={UNREACHABLE}",)),
    "tune_tracking": ("tuner.tune", (f"tracking.uri={UNREACHABLE}",)),
    "tune_storage": ("tuner.tune", (f"tune.storage={UNREACHABLE}",)),
    "tune_storage_url": ("tuner.tune", (f"storage.url={UNREACHABLE}",)),
    "worker_storage": ("tuner.worker", (f"tune.storage={UNREACHABLE}",)),
    "replay_storage_group": ("tuner.replay", (f"storage={UNREACHABLE}", "study=s", "trial=0")),
    "replay_storage_url": ("tuner.replay", (f"storage.url={UNREACHABLE}", "study=s", "trial=0")),
    "benchmark_tracking": ("tuner.benchmark", (f"tracking.uri={UNREACHABLE}",)),
    "report_tracking": ("tuner.report", (f"tracking.uri={UNREACHABLE}",)),
    "typo_beside_a_url": ("tuner.train", (f"tracking.uri={UNREACHABLE}", "algo.learning_rat=1")),
    "cfg_job": ("tuner.train", (f"tracking.uri={UNREACHABLE}", "--cfg", "job")),
}


@pytest.fixture(scope="module")
def password_results(tmp_path_factory: pytest.TempPathFactory) -> CommandResults:
    """Every command with a password in a URL override, each with its own runs directory."""
    return commands_in_own_dirs(tmp_path_factory, PASSWORD_CASES)


@pytest.mark.parametrize("name", PASSWORD_CASES)
def test_a_password_in_any_url_override_is_never_printed_or_written(
    name: str, password_results: CommandResults
) -> None:
    runs_dir, proc = password_results[name]
    assert SECRET not in proc.stdout + proc.stderr, proc.stdout + proc.stderr
    assert "Traceback" not in proc.stderr and "Error executing job" not in proc.stderr
    assert files_containing(runs_dir, SECRET) == []  # Hydra's log file included
    if name == "cfg_job":
        assert proc.returncode == 0 and "alice:***@127.0.0.1" in proc.stdout
    else:
        assert proc.returncode == 2, proc.stderr
        line = one_error_line(proc)
        assert ("learning_rat" if name == "typo_beside_a_url" else "alice:***@") in line


def test_a_sweep_records_no_password_given_in_an_override(tmp_path: Path) -> None:
    """A real sweep with two workers, the password in an override the trials inherit: nothing printed,
    logged or recorded (Optuna attributes, MLflow params and tags, files) holds it."""
    result = run_tune(tmp_path, "tune.n_trials=2", "tune.n_workers=2", f"+note={UNREACHABLE}")
    assert result.returncode == 0, result.stderr
    assert SECRET not in result.stdout + result.stderr
    assert files_containing(tmp_path, SECRET) == []  # worker logs, Hydra logs, databases, artifacts
    assert containing(mlflow_values(f"sqlite:///{tmp_path}/mlflow.db"), SECRET) == []
    stored = optuna_values(f"sqlite:///{tmp_path}/optuna.db")
    assert containing(stored, SECRET) == [] and containing(stored, "alice:***@")  # kept, masked


# ---------------------------------------------------------------------------------------------------
# Read-only commands create nothing
# ---------------------------------------------------------------------------------------------------
def test_read_only_commands_never_create_a_database(tmp_path: Path) -> None:
    jobs = {
        "replay": ("tuner.replay", ("study=nosuch", "trial=0")),
        "worker": ("tuner.worker", ("tune.join_timeout=0",)),
        "report": ("tuner.report", ("report.benchmark=nosuch",)),
    }
    expected = {
        "replay": "no Optuna storage at",
        "worker": "no Optuna storage at",
        "report": "no MLflow tracking",
    }
    results = commands_two_at_a_time(jobs, dict.fromkeys(jobs, tmp_path))
    for name, proc in results.items():
        assert proc.returncode == 2, proc.stderr
        assert expected[name] in one_error_line(proc)
    assert not [p.name for p in tmp_path.iterdir() if p.name != "hydra"]


def test_replay_reads_the_storage_it_is_given_and_names_a_url_given_as_the_group(tmp_path: Path) -> None:
    storage = f"sqlite:///{tmp_path}/elsewhere/optuna.db"
    sweep = run_tune(tmp_path, "tune.n_trials=1", f"storage.url={storage}")
    assert sweep.returncode == 0, sweep.stderr
    (trial,) = optuna.load_study(study_name="ppo_cartpole", storage=storage).trials
    replay = command(
        "tuner.replay",
        f"paths.runs_dir={tmp_path}",
        f"storage.url={storage}",
        "study=ppo_cartpole",
        "trial=0",
    )
    assert replay.returncode == 0, replay.stderr
    assert f"final eval return {trial.user_attrs['seed_returns'][0]:.2f}" in replay.stdout
    as_group = command(
        "tuner.replay", f"paths.runs_dir={tmp_path}", f"storage={storage}", "study=x", "trial=0"
    )
    assert as_group.returncode == 2
    line = one_error_line(as_group)
    assert "choose one of: local, postgres" in line and "storage.url=<url>" in line
    assert not (tmp_path / "optuna.db").exists()


# ---------------------------------------------------------------------------------------------------
# Faults in a running sweep
# ---------------------------------------------------------------------------------------------------
def _running_trials(tmp_path: Path) -> int:
    """How many trials of the study in ``tmp_path`` are RUNNING (read without writing)."""
    row = sqlite_row(tmp_path / "optuna.db", "SELECT COUNT(*) FROM trials WHERE state = 'RUNNING'")
    return 0 if row is None else int(row[0])


def test_a_sweep_whose_killed_worker_was_replaced_by_a_retry_completes(tmp_path: Path) -> None:
    """kill -9 of one of two local workers mid-trial: the trial is retried by the other, and the sweep
    finishes normally with a warning naming the worker: exit 0, tables, export, sweep run FINISHED."""
    args = tune_args(tmp_path, "tune.n_trials=4", "tune.n_workers=2", "tune.budget_steps=24000")
    proc = subprocess.Popen(
        args, cwd=ROOT, env=ENV, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
    )
    try:
        wait_for(lambda: _running_trials(tmp_path) == 2, 120, "both workers to run a trial")
        time.sleep(1.0)  # the trials are training
        workers = {pid: Path(f"/proc/{pid}/cmdline").read_bytes() for pid in child_pids(proc.pid)}
        (first,) = [pid for pid, line in workers.items() if b"worker=1" in line]
        os.kill(first, signal.SIGKILL)
        stdout, stderr = proc.communicate(timeout=300)
    finally:
        proc.kill()
    assert proc.returncode == 0, stderr
    assert "warning: worker 1 was killed by SIGKILL" in stdout
    study = load(tmp_path)
    assert [t.state for t in counted(study)] == [TrialState.COMPLETE] * 4
    (failed,) = [t for t in study.trials if t.state == TrialState.FAIL]
    assert "best trial" in stdout and (tmp_path / "conf" / "experiment" / "ppo_cartpole_tuned.yaml").exists()
    (sweep,) = runs_by_name(tmp_path)["sweep-ppo_cartpole"]
    assert sweep.info.status == "FINISHED" and "failure_reason" not in sweep.data.tags
    client = MlflowClient(f"sqlite:///{tmp_path}/mlflow.db")
    trials_csv = Path(client.download_artifacts(sweep.info.run_id, "trials.csv", str(tmp_path)))
    row = next(
        line for line in trials_csv.read_text().splitlines() if line.startswith(f"{failed.number},FAIL")
    )
    assert "worker stopped sending heartbeats" in row  # the retried attempt says why it failed


LONGER = ("tune.n_trials=6", "tune.budget_steps=16384")  # trials of seconds: a joining worker gets some


def test_a_worker_started_before_its_sweep_waits_for_the_trials(tmp_path: Path) -> None:
    log = tmp_path / "worker.out"
    with log.open("w") as out:
        worker = subprocess.Popen(
            [sys.executable, "-m", "tuner.worker", *tune_args(tmp_path, *LONGER)[3:], "worker=5"],
            cwd=ROOT, env=ENV, stdout=out, stderr=subprocess.STDOUT,
        )  # fmt: skip
    try:
        wait_for(  # the wait is announced once, before the study exists
            lambda: worker.poll() is not None or "waiting up to 600 s (tune.join_timeout)" in log.read_text(),
            timeout=120,
            what="the worker to announce its wait",
        )
        assert worker.poll() is None, log.read_text()
        assert not (tmp_path / "optuna.db").exists()
        sweep = run_tune(tmp_path, *LONGER)
        worker.wait(timeout=240)
    finally:
        worker.kill()
    rest = log.read_text()
    assert sweep.returncode == 0, sweep.stderr
    assert worker.returncode == 0, rest
    n_done = int(rest.strip().splitlines()[-1].removeprefix("worker done: ").split()[0])
    assert n_done >= 1, rest  # it joined and worked (it used to exit at once with 0 trials)
    assert [t.state for t in counted(load(tmp_path))] == [TrialState.COMPLETE] * 6


def test_a_worker_with_nothing_to_claim_ends_soon_after_the_last_trial(tmp_path: Path) -> None:
    """While another worker runs the study's last trial, an idle worker ends within moments of that
    trial ending, not a heartbeat interval later (it slept tune.heartbeat_interval, 10 s, between looks,
    so a study of several workers ended up to 10 s after its last trial)."""
    cfg = compose_config(
        [f"paths.runs_dir={tmp_path}", "tune.heartbeat_interval=10", "tune.grace_period=30"], "tune"
    )
    prepared = prepare(cfg, create=True)
    top_up_budget(prepared.study, 1)
    last = claim_trial(prepared.study, prepared.storage)  # the other worker's last trial
    assert last is not None
    finish = threading.Timer(
        1.0, prepared.storage.set_trial_state_values, (trial_id(last), TrialState.COMPLETE, [1.0])
    )
    started = time.monotonic()
    finish.start()
    try:
        outcomes = run_worker(prepared.study, prepared.storage, prepared.setup, prepared.settings)
    finally:
        finish.cancel()
    seconds = time.monotonic() - started
    assert outcomes == [] and budget_status(prepared.study).running == 0
    assert 1.0 <= seconds < 3.0, f"the idle worker ended {seconds:.1f} s after it started waiting"


def test_two_sweep_commands_on_a_fresh_runs_directory_share_one_study_and_one_run(tmp_path: Path) -> None:
    args = tune_args(tmp_path, "tune.n_trials=6")
    procs = [
        subprocess.Popen(args, cwd=ROOT, env=ENV, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        for _ in range(2)
    ]
    outputs = [proc.communicate(timeout=300) for proc in procs]
    for proc, (_, stderr) in zip(procs, outputs, strict=True):
        assert proc.returncode == 0, stderr
    study = load(tmp_path)
    assert sorted(t.number for t in study.trials) == list(range(6))  # one budget, not two
    assert all(t.state == TrialState.COMPLETE for t in study.trials)
    (sweep,) = runs_by_name(tmp_path)["sweep-ppo_cartpole"]  # joined, not a second run
    assert sweep.info.status == "FINISHED"


def test_a_pruned_trial_ends_its_runs_normally_with_its_state_in_tags(tmp_path: Path) -> None:
    # ThresholdPruner(lower=1e6) prunes every trial at its first report.
    result = run_tune(
        tmp_path, "tune.n_trials=2", "sampler=random", "pruner=none",
        "pruner._target_=optuna.pruners.ThresholdPruner", "+pruner.lower=1000000",
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    assert [t.state for t in load(tmp_path).trials] == [TrialState.PRUNED] * 2
    runs = runs_by_name(tmp_path)
    for number in (0, 1):
        (trial,) = runs[f"trial-{number}"]
        assert trial.info.status == "FINISHED"
        assert trial.data.tags["optuna_state"] == "PRUNED" and trial.data.tags["pruned_step"] == "256"
        assert "failure_reason" not in trial.data.tags
        (seed,) = runs[f"trial-{number}-seed1"]
        assert seed.info.status == "FINISHED" and "stopped_early" in seed.data.tags


def test_population_trials_pruned_record_their_step_too(tmp_path: Path) -> None:
    result = run_tune(
        tmp_path, "tune.n_trials=2", "tune.population=2", "sampler=random", "pruner=none",
        "pruner._target_=optuna.pruners.ThresholdPruner", "+pruner.lower=1000000",
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    for number in (0, 1):
        (trial,) = runs_by_name(tmp_path)[f"trial-{number}"]
        assert trial.info.status == "FINISHED" and trial.data.tags["optuna_state"] == "PRUNED"
        assert trial.data.tags["pruned_step"] == "256"


def test_retried_attempts_say_why_they_failed_and_only_the_last_attempt_counts(tmp_path: Path) -> None:
    """A trial whose worker stopped beating, and one whose worker was interrupted, are FAIL with their
    reason; a retry does not inherit its failed attempt's reason; an attempt that failed twice leaves one
    counted trial, so the budget stays exact."""
    cfg = compose_config(
        [f"paths.runs_dir={tmp_path}", "tune.heartbeat_interval=1", "tune.grace_period=2"], "tune"
    )
    settings = TuneSettings.from_config(resolve_config(cfg)["tune"])
    storage = make_storage(settings)
    study = optuna.create_study(storage=storage, study_name="retries")
    top_up_budget(study, 2)

    def claim_and_go_silent() -> optuna.Trial:
        trial = claim_trial(study, storage)
        assert trial is not None
        storage.record_heartbeat(trial._trial_id)
        return trial

    lost = claim_and_go_silent()  # trial 0: its worker dies
    interrupted = claim_trial(study, storage)  # trial 1: its worker is stopped
    assert interrupted is not None
    fail_and_retry(storage, study, interrupted)
    time.sleep(settings.grace_period + 1)
    optuna.storages.fail_stale_trials(study)  # trial 0 FAIL, retried as trial 3 (trial 2 retries trial 1)
    retry_of_interrupted = claim_and_go_silent()  # trial 2, which carries trial 1's attributes
    assert retry_of_interrupted.number == 2
    assert study.trials[2].user_attrs["fail_reason"] == ""  # the inherited reason is cleared on claim
    time.sleep(settings.grace_period + 1)
    optuna.storages.fail_stale_trials(study)  # trial 2 fails too, retried as trial 4

    table = trials_table(study).set_index("number")
    assert table.loc[lost.number, "fail_reason"] == HEARTBEAT_LOST
    assert table.loc[interrupted.number, "fail_reason"] == INTERRUPTED
    assert table.loc[2, "fail_reason"] == HEARTBEAT_LOST  # not the "interrupted" it inherited
    assert [t.state for t in study.trials] == [TrialState.FAIL] * 3 + [TrialState.WAITING] * 2
    assert budget_status(study).counted == 2  # trials 3 and 4: each retry chain counts once


@pytest.mark.parametrize("max_retry", [0, 2])
def test_a_trial_is_retried_at_most_max_retry_times_then_counts_as_failed(
    tmp_path: Path, max_retry: int
) -> None:
    """Each interruption of the same trial is retried until ``tune.max_retry`` retries were used; the
    last attempt then stays FAIL and is the one trial the chain counts against the budget."""
    cfg = compose_config([f"paths.runs_dir={tmp_path}", f"tune.max_retry={max_retry}"], "tune")
    settings = TuneSettings.from_config(resolve_config(cfg)["tune"])
    storage = make_storage(settings)
    study = optuna.create_study(storage=storage, study_name="retries")
    top_up_budget(study, 1)
    while (trial := claim_trial(study, storage)) is not None:  # every attempt of the trial is interrupted
        assert trial.number <= max_retry, "retried more than tune.max_retry times"
        fail_and_retry(storage, study, trial)
    assert [t.state for t in study.trials] == [TrialState.FAIL] * (max_retry + 1)
    status = budget_status(study)
    assert (status.counted, status.failed, status.waiting) == (1, 1, 0)


def test_trial_id_is_the_storage_id_optuna_gives_through_its_public_route(tmp_path: Path) -> None:
    """The one read of Optuna's private ``_trial_id`` agrees with the storage's public lookup, for live
    and frozen trials of two studies sharing one storage (so ids and numbers differ)."""
    storage = optuna.storages.RDBStorage(f"sqlite:///{tmp_path}/optuna.db")
    for name in ("first", "second"):
        study = optuna.create_study(storage=storage, study_name=name)
        top_up_budget(study, 3)
        live = claim_trial(study, storage)
        assert live is not None
        study_id = storage.get_study_id_from_name(name)
        for trial in [live, *study.trials]:
            assert trial_id(trial) == storage.get_trial_id_from_study_id_trial_number(study_id, trial.number)
