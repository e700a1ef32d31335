"""The benchmark driven as a user drives it (``python -m tuner.benchmark``), and its cell planning."""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import subprocess
import sys
from collections import Counter
from pathlib import Path

import pandas as pd
import pytest
from mlflow import MlflowClient

from algorithms import ConfigError
from tests.helpers import ENV, ROOT, long_lines, one_error_line, runs_named_like, wait_for
from tuner.benchmark import BenchmarkSettings, cell_config, plan_cells

BASE = {
    "name": "t",
    "algos": ["ppo", "sac"],
    "envs": ["cartpole", "pendulum"],
    "sources": {},
    "seeds": 2,
    "first_seed": 2001,
    "budget_steps": {"cartpole": 2048, "pendulum": 2000},
    "eval_points": 2,
    "n_workers": 1,
}


def settings(**changes: object) -> BenchmarkSettings:
    return BenchmarkSettings.from_config({**BASE, **changes})


def tracking(tmp_path: Path) -> dict[str, str]:
    return {"uri": f"sqlite:///{tmp_path}/m.db", "experiment": "benchmark_t", "artifact_dir": str(tmp_path)}


def test_incompatible_pairs_are_skipped_with_a_note(tmp_path: Path) -> None:
    plan = plan_cells(settings(), tracking(tmp_path), str(ROOT))
    assert [c.key for c in plan.cells] == [
        "ppo/cartpole/2001",
        "ppo/cartpole/2002",
        "ppo/pendulum/2001",
        "ppo/pendulum/2002",
        "sac/pendulum/2001",
        "sac/pendulum/2002",
    ]
    assert plan.skipped_pairs == ("sac on cartpole: sac needs Box actions, cartpole has Discrete(2)",)
    cell = plan.cells[0]
    assert cell.budget_steps == 2048
    assert "env.eval.freq_steps=1024" in cell.overrides and "seed=2001" in cell.overrides


def test_fingerprints_follow_the_trained_config_not_the_tracking(tmp_path: Path) -> None:
    plan = plan_cells(settings(), tracking(tmp_path), str(ROOT))
    assert len({c.fingerprint for c in plan.cells}) == len(plan.cells)  # seeds differ
    elsewhere = plan_cells(settings(), {**tracking(tmp_path), "uri": "sqlite:////other/m.db"}, str(ROOT))
    assert [c.fingerprint for c in elsewhere.cells] == [c.fingerprint for c in plan.cells]
    longer = plan_cells(
        settings(budget_steps={"cartpole": 4096, "pendulum": 2000}), tracking(tmp_path), str(ROOT)
    )
    assert longer.cells[0].fingerprint != plan.cells[0].fingerprint
    assert longer.cells[2].fingerprint == plan.cells[2].fingerprint  # pendulum unchanged


def test_sources_select_presets(tmp_path: Path) -> None:
    plan = plan_cells(settings(sources={"ppo": "preset", "sac": "preset"}), tracking(tmp_path), str(ROOT))
    sources = {c.key: c.source for c in plan.cells}
    assert sources["ppo/cartpole/2001"] == "preset:ppo_cartpole"
    assert sources["sac/pendulum/2001"] == "preset:sac_pendulum"
    assert "experiment=ppo_cartpole" in plan.cells[0].overrides
    # A pair without a committed tuned preset: SAC-Discrete has none (issue 32 tunes the classic pairs).
    tuned = settings(algos=["sacd"], envs=["cartpole"], sources={"sacd": "tuned"}, budget_steps=None)
    with pytest.raises(
        ConfigError, match=r"sources\.sacd=tuned, but there is no conf/experiment/sacd_cartpole_tuned"
    ):
        plan_cells(tuned, tracking(tmp_path), str(ROOT))


def test_source_tuned_trains_the_exported_preset(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """``sources.ppo=tuned`` trains conf/experiment/ppo_cartpole_tuned.yaml (what a sweep exports), in a
    copy of conf/ so the repository's own exported presets are left alone."""
    conf = tmp_path / "conf"
    shutil.copytree(ROOT / "conf", conf)
    (conf / "experiment" / "ppo_cartpole_tuned.yaml").write_text(
        "# @package _global_\n"
        "defaults:\n  - override /algo: ppo\n  - override /env: cartpole\n"
        "algo:\n  learning_rate: 0.000777\n  gamma: 0.97\n"
    )
    monkeypatch.setattr("tuner.compose.CONF_DIR", conf)
    monkeypatch.setattr("tuner.benchmark.CONF_DIR", conf)
    only_ppo = {"algos": ["ppo"], "envs": ["cartpole"]}
    tuned = plan_cells(settings(**only_ppo, sources={"ppo": "tuned"}), tracking(tmp_path), str(ROOT))
    preset = plan_cells(settings(**only_ppo, sources={"ppo": "preset"}), tracking(tmp_path), str(ROOT))
    assert [c.source for c in tuned.cells] == ["tuned:ppo_cartpole_tuned"] * 2
    assert all("experiment=ppo_cartpole_tuned" in c.overrides for c in tuned.cells)
    algo = cell_config(tuned.cells[0].overrides, tracking(tmp_path), str(ROOT)).algo
    assert (algo.learning_rate, algo.gamma) == (0.000777, 0.97)
    assert {c.fingerprint for c in tuned.cells}.isdisjoint(c.fingerprint for c in preset.cells)


def test_several_sources_train_side_by_side_and_a_missing_preset_is_the_defaults_once(tmp_path: Path) -> None:
    both = settings(algos=["ppo"], envs=["cartpole", "acrobot"], sources=["default", "preset"])
    assert both.sources == {"ppo": ("default", "preset")}
    plan = plan_cells(both, tracking(tmp_path), str(ROOT))
    cells = {c.key: c for c in plan.cells}
    # CartPole has rltune's (rl-zoo3's) preset: two configs, the key names the source.
    assert cells["ppo/cartpole/default/2001"].source == "default"
    assert cells["ppo/cartpole/preset/2001"].source == "preset:ppo_cartpole"
    assert cells["ppo/cartpole/preset/2001"].kinds == ("preset",)
    # Acrobot has none: the preset source is the defaults, trained once for both.
    assert cells["ppo/acrobot/default/2001"].source == "default"
    assert cells["ppo/acrobot/default/2001"].kinds == ("default", "preset")
    assert sorted(cells) == sorted(
        [f"ppo/cartpole/{kind}/{seed}" for kind in ("default", "preset") for seed in (2001, 2002)]
        + ["ppo/acrobot/default/2001", "ppo/acrobot/default/2002"]  # one set of runs stands for both
    )
    assert len({c.fingerprint for c in plan.cells}) == len(plan.cells)
    # A mapping takes a source or a list per algorithm; one source keeps the key as before.
    mixed = settings(sources={"ppo": ["preset", "default"], "sac": "preset"})
    assert mixed.sources == {"ppo": ("preset", "default"), "sac": ("preset",)}
    keys = [c.key for c in plan_cells(mixed, tracking(tmp_path), str(ROOT)).cells]
    assert "sac/pendulum/2001" in keys and "ppo/pendulum/default/2001" in keys


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"sources": ["default", "best"]}, "benchmark.sources: unknown source 'best'; choose: default"),
        ({"sources": {"ppo": []}}, "benchmark.sources.ppo must be a source or a non-empty list of them"),
        ({"sources": ["preset", "preset"]}, "benchmark.sources names a source twice: ['preset', 'preset']"),
        ({"sources": 3}, "benchmark.sources must be a source, a list of sources or a mapping"),
    ],
)
def test_bad_source_lists_name_the_key_and_the_choices(change: dict, message: str) -> None:
    with pytest.raises(ConfigError) as info:
        settings(**change)
    assert message in str(info.value)


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"algos": ["ppo", "dqn"]}, "unknown algorithm 'dqn'; choose one of: d3qn, ppo, sac, sacd, td3"),
        ({"envs": ["cartpol"]}, "unknown env 'cartpol'; choose: acrobot, cartpole"),
        (
            {"sources": {"ppo": "best"}},
            "benchmark.sources.ppo: unknown source 'best'; choose: default, preset, tuned",
        ),
        ({"budget_steps": {"hoper": 10}}, "benchmark.budget_steps: unknown env hoper; choose: acrobot"),
        ({"budget_steps": -5}, "budget_steps.cartpole must be an integer >= 1 or null"),
        ({"seeds": 0}, "benchmark.seeds must be an integer >= 1"),
        ({"name": "a/b"}, "benchmark.name must be letters, digits"),
    ],
)
def test_bad_settings_name_the_problem_and_the_choices(change: dict, message: str) -> None:
    with pytest.raises(ConfigError, match=message.replace("(", r"\(").replace(")", r"\)")):
        settings(**change)


def bench_cli(tmp_path: Path, *overrides: str, timeout: float = 240) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        bench_args(tmp_path, *overrides), cwd=ROOT, env=ENV, capture_output=True, text=True, timeout=timeout
    )


def bench_args(tmp_path: Path, *overrides: str) -> list[str]:
    return [
        sys.executable,
        "-m",
        "tuner.benchmark",
        "benchmark.name=t",
        "benchmark.algos=[ppo]",
        "benchmark.first_seed=2001",
        "benchmark.eval_points=2",
        *([] if any(o.startswith("benchmark.n_workers=") for o in overrides) else ["benchmark.n_workers=1"]),
        f"paths.runs_dir={tmp_path}",
        *overrides,
    ]


def cell_runs(tmp_path: Path) -> list:
    client = MlflowClient(f"sqlite:///{tmp_path}/mlflow.db")
    experiment = client.get_experiment_by_name("benchmark_t")
    return client.search_runs([experiment.experiment_id], filter_string="tags.kind = 'benchmark_cell'")


def test_interrupted_benchmark_resumes_without_retraining_finished_cells(tmp_path: Path) -> None:
    """Two workers: two quick CartPole cells, then two Pendulum cells far too long to finish, interrupted
    with SIGTERM while both train; the same benchmark then trains only the Pendulum cells."""
    two_workers = ("benchmark.envs=[cartpole,pendulum]", "benchmark.seeds=2", "benchmark.n_workers=2")
    pendulum_too_long = "benchmark.budget_steps={cartpole: 2048, pendulum: 10000000}"
    long_run = bench_args(tmp_path, *two_workers, pendulum_too_long)
    log = tmp_path / "benchmark.out"
    with log.open("w") as out:
        proc = subprocess.Popen(
            long_run, cwd=ROOT, env=ENV, stdout=out, stderr=subprocess.STDOUT, start_new_session=True
        )
    try:
        # Interrupt once both CartPole cells are recorded as finished and both Pendulum cells' runs exist.
        def cartpole_done_and_pendulum_started() -> bool:
            cartpole_done = log.read_text().count("final eval return") == 2
            return cartpole_done and runs_named_like(tmp_path, "ppo-pendulum-%") == 2

        wait_for(
            lambda: proc.poll() is not None or cartpole_done_and_pendulum_started(),
            timeout=240,
            what="the CartPole cells to finish and the Pendulum cells to start",
        )
        proc.send_signal(signal.SIGTERM)
        proc.wait(timeout=60)
    finally:
        with contextlib.suppress(ProcessLookupError):  # its cell workers too, should it hang
            os.killpg(proc.pid, signal.SIGKILL)
    output = log.read_text()
    assert output.count("final eval return") == 2, output
    assert proc.returncode == 128 + signal.SIGTERM, output
    assert "re-run the same command" in output

    runs = cell_runs(tmp_path)
    status = {r.data.tags["cell"]: r.info.status for r in runs}
    assert status == {
        "ppo/cartpole/2001": "FINISHED",
        "ppo/cartpole/2002": "FINISHED",
        "ppo/pendulum/2001": "KILLED",
        "ppo/pendulum/2002": "KILLED",
    }

    # The same benchmark with a Pendulum budget that fits: only the Pendulum cells are trained.
    resumed = bench_cli(tmp_path, *two_workers, "benchmark.budget_steps={cartpole: 2048, pendulum: 1024}")
    assert resumed.returncode == 0, resumed.stdout + resumed.stderr
    assert "4 cells, 2 already finished in MLflow" in resumed.stdout
    runs = cell_runs(tmp_path)
    per_cell = Counter(r.data.tags["cell"] for r in runs if r.info.status == "FINISHED")
    assert per_cell == {
        c: 1 for c in ("ppo/cartpole/2001", "ppo/cartpole/2002", "ppo/pendulum/2001", "ppo/pendulum/2002")
    }
    parents = {r.data.tags["mlflow.parentRunId"] for r in runs}
    assert len(parents) == 1  # the resumed cells nest under the same benchmark run

    # Nothing left to do: a third run trains nothing, and the report reads all four cells back.
    again = bench_cli(
        tmp_path, "benchmark.envs=[cartpole,pendulum]", "benchmark.seeds=2",
        "benchmark.budget_steps={cartpole: 2048, pendulum: 1024}",
    )  # fmt: skip
    assert again.returncode == 0 and "0 to train" in again.stdout, again.stdout + again.stderr
    assert len(cell_runs(tmp_path)) == len(runs)
    report = subprocess.run(
        [sys.executable, "-m", "tuner.report", f"paths.runs_dir={tmp_path}", "report.n_resamples=500"],
        cwd=ROOT, env={**ENV, "COLUMNS": "80"}, capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert report.returncode == 0, report.stdout + report.stderr
    assert "cartpole" in report.stdout and "pendulum" in report.stdout
    # At 80 columns the tables leave out columns (and say which) instead of breaking their rows.
    assert long_lines(report.stdout + report.stderr) == []
    assert "not shown at 80 columns:" in report.stdout
    assert (tmp_path / "reports" / "t" / "summary.csv").read_text().count("\n") == 3  # header + 2 rows


def test_bad_benchmark_config_exits_2_before_any_run(tmp_path: Path) -> None:
    result = bench_cli(
        tmp_path,
        "benchmark.algos=[sacd]",
        "benchmark.envs=[cartpole]",
        "+benchmark.sources.sacd=tuned",  # a pair without a committed tuned preset
        timeout=120,
    )  # fmt: skip
    assert result.returncode == 2
    assert (
        result.stderr.strip()
        .splitlines()[-1]
        .startswith("error: benchmark.sources.sacd=tuned, but there is no")
    )
    assert not (tmp_path / "mlflow.db").exists()


def test_a_ledger_that_is_a_folder_or_unreadable_is_an_error_before_any_run(tmp_path: Path) -> None:
    folder = bench_cli(tmp_path / "a", f"ledger={tmp_path}", timeout=120)
    assert folder.returncode == 2
    assert f"ledger must be a file path (a CSV the benchmark adds to) or null, got '{tmp_path}'" in (
        one_error_line(folder)
    )
    broken = tmp_path / "broken.csv"
    broken.write_text("cell,fingerprint,algo\nppo/cartpole/2001,abc,ppo\n")
    unreadable = bench_cli(tmp_path / "b", f"ledger={broken}", timeout=120)
    assert unreadable.returncode == 2
    assert f"ledger {broken}, line 2: cannot read the row" in one_error_line(unreadable)
    assert not (tmp_path / "a" / "mlflow.db").exists() and not (tmp_path / "b" / "mlflow.db").exists()


@pytest.mark.parametrize("kind", ["missing", "folder"])
def test_a_report_ledger_that_is_not_a_file_is_an_error_before_anything_is_written(
    tmp_path: Path, kind: str
) -> None:
    """A mistyped report.ledger must not be read as an empty ledger (the report would then quietly lack
    the cells it was meant to add)."""
    ledger = tmp_path / "cells.csv" if kind == "missing" else tmp_path
    result = subprocess.run(
        [sys.executable, "-m", "tuner.report", f"paths.runs_dir={tmp_path / 'runs'}",
         f"report.ledger={ledger}"],
        cwd=ROOT, env=ENV, capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert result.returncode == 2
    assert f"report.ledger must be an existing CSV file (a benchmark's ledger=), got '{ledger}'" in (
        one_error_line(result)
    )
    assert not (tmp_path / "runs" / "mlflow.db").exists() and not (tmp_path / "runs" / "reports").exists()


def test_adding_a_source_keeps_the_cells_already_planned(tmp_path: Path) -> None:
    """[default, preset] then [default, preset, tuned] (LunarLander has both presets, Acrobot neither
    but its defaults): the cells of the shorter list keep their keys and fingerprints, so the finished
    ones (in MLflow or a ledger) are not trained again."""
    two = settings(algos=["ppo"], envs=["lunarlander"], sources=["default", "preset"])
    three = settings(algos=["ppo"], envs=["lunarlander"], sources=["default", "preset", "tuned"])
    before = {(c.key, c.fingerprint) for c in plan_cells(two, tracking(tmp_path), str(ROOT)).cells}
    after = {(c.key, c.fingerprint) for c in plan_cells(three, tracking(tmp_path), str(ROOT)).cells}
    assert before < after and len(after - before) == 2  # the tuned cells of the two seeds


def test_a_benchmark_of_several_sources_reports_them_side_by_side(tmp_path: Path) -> None:
    """default and preset PPO on CartPole (rltune has its preset) and Acrobot (it has none: one set of
    runs for both), then `tuner.report`: the sources table, its files, the difference."""
    result = bench_cli(
        tmp_path, "benchmark.envs=[cartpole,acrobot]", "benchmark.seeds=2",
        "benchmark.sources.ppo=[default,preset]", "benchmark.budget_steps=1024",
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    keys = sorted(run.data.tags["cell"] for run in cell_runs(tmp_path))
    assert keys == sorted(
        [f"ppo/cartpole/{kind}/{seed}" for kind in ("default", "preset") for seed in (2001, 2002)]
        + ["ppo/acrobot/default/2001", "ppo/acrobot/default/2002"]  # one set of runs stands for both
    )
    report = subprocess.run(
        [sys.executable, "-m", "tuner.report", f"paths.runs_dir={tmp_path}", "report.n_resamples=200"],
        cwd=ROOT, env={**ENV, "COLUMNS": "200"}, capture_output=True, text=True, timeout=240,
    )  # fmt: skip
    assert report.returncode == 0, report.stderr
    assert "sources side by side" in report.stdout
    sources = pd.read_csv(tmp_path / "reports" / "t" / "sources.csv")
    rows = {row["env"]: row for row in sources.to_dict("records")}
    assert rows["cartpole"]["preset_source"] == "preset:ppo_cartpole"
    assert rows["acrobot"]["preset_source"] == "default"
    assert rows["acrobot"]["preset_iqm"] == rows["acrobot"]["default_iqm"]
    aggregate = pd.read_csv(tmp_path / "reports" / "t" / "sources_aggregate.csv")
    assert list(aggregate["source"]) == ["default", "preset"]  # no tuned: no difference to show


def test_a_ledger_carries_finished_cells_to_another_tracking_store(tmp_path: Path) -> None:
    """A benchmark with a ledger writes a row per finished cell; the same benchmark started with an empty
    tracking store and that ledger trains nothing, and its report takes the cells from the ledger: the
    same table as the first store's report."""
    ledger = tmp_path / "cells.csv"
    args = (
        "benchmark.envs=[cartpole]",
        "benchmark.seeds=2",
        "benchmark.budget_steps=1024",
        f"ledger={ledger}",
    )
    first = bench_cli(tmp_path / "here", *args)
    assert first.returncode == 0, first.stderr
    rows = pd.read_csv(ledger)
    assert sorted(rows["cell"]) == ["ppo/cartpole/2001", "ppo/cartpole/2002"]
    assert len(cell_runs(tmp_path / "here")) == 2
    again = bench_cli(tmp_path / "elsewhere", *args)
    assert again.returncode == 0, again.stderr
    assert "2 already finished" in " ".join(again.stdout.split()) and not cell_runs(tmp_path / "elsewhere")

    def report(runs: Path, *extra: str) -> pd.DataFrame:
        result = subprocess.run(
            [sys.executable, "-m", "tuner.report", f"paths.runs_dir={runs}", "report.n_resamples=200",
             *extra],
            cwd=ROOT, env=ENV, capture_output=True, text=True, timeout=240,
        )  # fmt: skip
        assert result.returncode == 0, result.stderr
        return pd.read_csv(runs / "reports" / "t" / "summary.csv")

    here, elsewhere = report(tmp_path / "here"), report(tmp_path / "elsewhere", f"report.ledger={ledger}")
    pd.testing.assert_frame_equal(here, elsewhere)
    assert list(elsewhere["seeds"]) == [2]
