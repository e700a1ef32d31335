"""Population-based training through the CLI (``tune.method=pbt``): real, tiny sweeps."""

from __future__ import annotations

from pathlib import Path

import pytest
from mlflow import MlflowClient
from optuna.trial import TrialState

from tests.helpers import ROOT, TINY, command, counted, load, one_error_line, run_tune, runs_by_name
from tuner.compose import compose_config
from tuner.export import export_preset
from tuner.pbt_population import (
    EVENTS_ATTR,
    LINEAGE_ATTR,
    MEMBER_ATTR,
    PARENT_ATTR,
    START_ATTR,
    lineage_values,
)
from tuner.provenance import Provenance
from tuner.study import budget_status
from tuner.train import resolve_config

PBT = ["tune.method=pbt", "tune.population=8", "tune.n_seeds=2", "tune.budget_steps=2048"]
"""Four members of two seeds, 2,048 env steps each; with pbt.interval_steps=512, three decisions."""


def test_a_pbt_sweep_records_every_segment_as_a_trial(tmp_path: Path) -> None:
    result = run_tune(tmp_path, *PBT, "pbt.interval_steps=512", "pbt.resample_probability=0.5")
    assert result.returncode == 0, result.stderr
    study = load(tmp_path)
    trials = counted(study)
    events = study.user_attrs[EVENTS_ATTR]
    assert len(events) == 3  # one bottom member at each of the steps 512, 1024, 1536 (a quarter of 4)
    assert [e["step"] for e in events] == [512, 1024, 1536]
    assert len(trials) == 4 + len(events)
    by_number = {t.number: t for t in trials}
    for event in events:
        ended, new = by_number[event["ended_trial"]], by_number[event["new_trial"]]
        source = by_number[event["source_trial"]]
        assert ended.state == TrialState.PRUNED and max(ended.intermediate_values) == event["step"]
        assert new.user_attrs[MEMBER_ATTR] == ended.user_attrs[MEMBER_ATTR] == event["to_member"]
        assert new.user_attrs[PARENT_ATTR] == source.number and new.user_attrs[START_ATTR] == event["step"]
        assert new.user_attrs[LINEAGE_ATTR][:-1] == source.user_attrs[LINEAGE_ATTR]  # inherited
        assert new.user_attrs[LINEAGE_ATTR][-1] == [event["step"], event["new"]]
        assert {k: new.user_attrs["config_values"][k] for k in event["new"]} == event["new"]
        assert min(new.intermediate_values) > event["step"]  # a segment reports from its start on
    complete = [t for t in trials if t.state == TrialState.COMPLETE]
    assert sorted(t.user_attrs[MEMBER_ATTR] for t in complete) == [0, 1, 2, 3]  # each member ends once
    assert "its lineage (population-based training), exported as schedules" in result.stdout

    runs = runs_by_name(tmp_path)
    client = MlflowClient(f"sqlite:///{tmp_path}/mlflow.db")
    (sweep,) = runs["sweep-ppo_cartpole"]
    artifacts = {a.path for a in client.list_artifacts(sweep.info.run_id)}
    assert {"pbt_events.md", "pbt_events.csv"} <= artifacts
    new_trial = by_number[events[0]["new_trial"]]
    (seed_run,) = runs[f"trial-{new_trial.number}-seed1"]
    history = sorted(
        client.get_metric_history(seed_run.info.run_id, "pbt/learning_rate"), key=lambda m: m.step
    )
    assert history[0].step == 512  # logged from the segment's start (and again at its end, if it ended)
    assert all(m.value == pytest.approx(events[0]["new"]["learning_rate"]) for m in history)


def test_an_interval_beyond_the_budget_trains_as_population_mode(tmp_path: Path) -> None:
    """No decision falls inside the budget: every trial's learning curve is population mode's, bit for bit."""
    pbt = run_tune(tmp_path / "pbt", *PBT, "pbt.interval_steps=100000")
    search = run_tune(tmp_path / "search", *PBT[1:], "tune.n_trials=4")
    assert pbt.returncode == 0 and search.returncode == 0, pbt.stderr + search.stderr
    curves = [
        {t.number: (t.params, t.intermediate_values, t.values) for t in load(tmp_path / name).trials}
        for name in ("pbt", "search")
    ]
    assert len(curves[0]) == 4 and curves[0] == curves[1]
    assert EVENTS_ATTR not in load(tmp_path / "pbt").user_attrs


def final_return(runs_dir: Path) -> float:
    """The last ``eval/mean_return`` of the one run recorded under ``runs_dir``."""
    client = MlflowClient(f"sqlite:///{runs_dir}/mlflow.db")
    (run,) = client.search_runs([client.get_experiment_by_name("ppo_cartpole").experiment_id])
    return client.get_metric_history(run.info.run_id, "eval/mean_return")[-1].value


def test_an_exported_schedule_retrains_to_the_same_final_return(tmp_path: Path) -> None:
    """A segment whose lineage changed its values exports as schedules; the preset trains to the same
    final return twice, and tuner.replay (from the trial's stored overrides) to that return too."""
    result = run_tune(tmp_path, *PBT, "pbt.interval_steps=512")
    assert result.returncode == 0, result.stderr
    trial = next(t for t in load(tmp_path).trials if len(t.user_attrs.get(LINEAGE_ATTR, [])) >= 2)
    values = lineage_values(trial)
    assert values is not None and isinstance(values["learning_rate"], list)  # a schedule
    overrides = trial.user_attrs["overrides"]
    assert any(o.startswith("algo.learning_rate=[[0,") for o in overrides)  # what tuner.replay trains
    config = resolve_config(compose_config([*overrides, f"paths.root_dir={ROOT}"]))
    assert config["algo"]["learning_rate"] == values["learning_rate"]
    study = load(tmp_path)
    provenance = Provenance(
        "ppo_cartpole", (), "PBT", budget_status(study), (1, 2), "2048", "ppo_cartpole", "", "test", "today"
    )
    export_preset(trial, config, provenance, 1, tmp_path / "conf" / "experiment", "rltune_test_pbt")
    returns = []
    for run in ("first", "second"):
        train = command(
            "tuner.train",
            f"hydra.searchpath=[file://{tmp_path}/conf]",
            "experiment=rltune_test_pbt",
            f"paths.runs_dir={tmp_path}/{run}",
            timeout=120,
        )
        assert train.returncode == 0, train.stderr
        returns.append(final_return(tmp_path / run))
    assert returns[0] == returns[1]
    replay = command(
        "tuner.replay", "study=ppo_cartpole", f"trial={trial.number}", f"paths.runs_dir={tmp_path}"
    )
    assert replay.returncode == 0, replay.stderr
    assert f"final eval return {returns[0]:.2f}" in replay.stdout


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        (["tune.method=grid"], "tune.method must be one of search, pbt; got 'grid'"),
        (["tune.method=pbt", "tune.population=3", "tune.n_seeds=2"],
         "tune.method=pbt needs at least 2 members: tune.population (3) // tune.n_seeds (2) = 1; "
         "set tune.population >= 4"),
        (["tune.method=pbt", "tune.population=4", "tune.n_workers=2"],
         "tune.method=pbt trains one population in one process; got tune.n_workers=2 (set tune.n_workers=1)"),
        (["tune.method=pbt", "tune.population=4", "pbt.interval_steps=128"],
         "pbt.interval_steps (128) must be at least env.eval.freq_steps (256): members are ranked by their "
         "evaluations"),
        (["tune.method=pbt", "tune.population=4", "pbt.quantile=0.9"],
         "pbt.quantile must be a number in (0, 0.5], got 0.9"),
    ],
)  # fmt: skip
def test_bad_pbt_settings_give_one_clear_message(tmp_path: Path, overrides: list[str], message: str) -> None:
    result = run_tune(tmp_path, *overrides, timeout=60)
    assert result.returncode == 2
    assert result.stderr.strip().splitlines() == [f"error: {message}"], result.stderr
    assert not (tmp_path / "optuna.db").exists() and not (tmp_path / "mlflow.db").exists()


def test_pbt_is_for_ppo_only(tmp_path: Path) -> None:
    sac = command("tuner.tune", "algo=sac", "env=pendulum", "tune.method=pbt", "tune.population=6",
                  f"paths.runs_dir={tmp_path}", timeout=60)  # fmt: skip
    assert sac.returncode == 2
    assert (
        one_error_line(sac) == "error: tune.method=pbt trains PPO only; got algo=sac (set tune.method=search)"
    )
    assert not (tmp_path / "optuna.db").exists() and not (tmp_path / "mlflow.db").exists()


def test_a_study_keeps_its_method(tmp_path: Path) -> None:
    """Resuming a search study as PBT (same tune.study_name) is one clear error that changes nothing."""
    search = run_tune(tmp_path, "tune.n_trials=1")
    assert search.returncode == 0, search.stderr
    pbt = run_tune(tmp_path, *PBT, "pbt.interval_steps=512", timeout=60)
    assert pbt.returncode == 2
    assert one_error_line(pbt) == (
        "error: study 'ppo_cartpole' is tuned with tune.method=search, not pbt; use another tune.study_name"
    )
    assert len(load(tmp_path).trials) == 1


def test_a_worker_cannot_join_a_pbt_study(tmp_path: Path) -> None:
    pbt = run_tune(tmp_path, *PBT, "pbt.interval_steps=512", "tune.validate_seeds=0")
    assert pbt.returncode == 0, pbt.stderr
    worker = command(
        "tuner.worker", *TINY, *PBT, "pbt.interval_steps=512", f"paths.runs_dir={tmp_path}", timeout=60
    )
    assert worker.returncode == 2
    assert one_error_line(worker) == (
        "error: study 'ppo_cartpole' is tuned with tune.method=pbt, whose population trains in its sweep "
        "command's process; a worker cannot join it"
    )
