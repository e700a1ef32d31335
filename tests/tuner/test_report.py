"""The benchmark report built from MLflow runs created here, with numbers checked by hand."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest
from mlflow import MlflowClient
from rich.console import Console

from algorithms import ConfigError
from tuner.benchmark import KIND_CELL, KIND_PARENT, PLAN_ARTIFACT
from tuner.report import KIND_REPORT, build_report, print_report, publish, write_outputs
from tuner.tracking import RunReader, start_run

EXPERIMENT = "benchmark_t"
CARTPOLE = {
    "name": "cartpole",
    "threshold": 475.0,
    "random_score": 22.0,
    "reference": {"ppo": {"score": 500.0}},
}
PENDULUM = {
    "name": "pendulum",
    "threshold": None,
    "random_score": -1200.0,
    "reference": {"ppo": {"score": -172.2}, "sac": {"score": -151.9}},
}
# (algo, env, seed) -> eval curve at steps 500 and 1000 (budget 1000)
CURVES = {
    ("ppo", CARTPOLE["name"], 1): [200.0, 500.0],
    ("ppo", CARTPOLE["name"], 2): [480.0, 400.0],
    ("ppo", CARTPOLE["name"], 3): [100.0, 300.0],
    ("ppo", PENDULUM["name"], 1): [-900.0, -686.0],
    ("ppo", PENDULUM["name"], 2): [-600.0, -172.2],
    ("sac", PENDULUM["name"], 1): [-400.0, -151.9],
    ("sac", PENDULUM["name"], 2): [-300.0, -200.0],
}
ENVS = {"cartpole": CARTPOLE, "pendulum": PENDULUM}


def tracking(tmp_path: Path) -> dict[str, str]:
    return {
        "uri": f"sqlite:///{tmp_path}/mlflow.db",
        "experiment": EXPERIMENT,
        "artifact_dir": str(tmp_path / "art"),
    }


def record_cell(
    t: dict[str, str],
    parent: str,
    algo: str,
    env: str,
    seed: int,
    curve: list[float],
    fingerprint: str = "f",
    benchmark: str = "t",
    sources: tuple[str, str] | None = None,
) -> str:
    """A finished cell run; ``sources``: its (label, kinds) tags and source in the cell key."""
    config = {"algo": {"name": algo}, "env": ENVS[env], "seed": seed, "total_steps": 1000}
    cell = f"{algo}/{env}/{seed}" if sources is None else f"{algo}/{env}/{sources[1].split(',')[0]}/{seed}"
    tags = {"kind": KIND_CELL, "benchmark": benchmark, "cell": cell, "fingerprint": fingerprint}
    if sources is not None:
        tags |= {"source": sources[0], "source_kinds": sources[1]}
    with start_run(**t, run_name=cell.replace("/", "-"), tags=tags, parent_run_id=parent) as run:
        run.log_params(config)
        for step, value in zip((500, 1000), curve, strict=True):
            run.log_metric("eval/mean_return", value, step)
        run.log_metrics({"time/wall_time_s": 10.0 * seed, "time/sps": 100.0 * seed}, 1000)
        return run.run_id


@pytest.fixture
def store(tmp_path: Path) -> tuple[dict[str, str], RunReader]:
    """A benchmark 't' in MLflow: the planned cells of CURVES, plus runs the report must ignore."""
    t = tracking(tmp_path)
    plan = {f"{a}/{e}/{s}": "f" for a, e, s in CURVES} | {"sac/pendulum/3": "f"}  # seed 3 never finished
    with start_run(**t, run_name="benchmark-t", tags={"kind": KIND_PARENT, "benchmark": "t"}) as parent:
        parent.log_text(json.dumps(plan), PLAN_ARTIFACT)
        record_cell(t, parent.run_id, "ppo", "cartpole", 1, [0.0, 0.0], fingerprint="old-config")  # stale
        for (algo, env, seed), curve in CURVES.items():
            record_cell(t, parent.run_id, algo, env, seed, curve)
        interrupted = {"kind": KIND_CELL, "benchmark": "t", "cell": "sac/pendulum/3", "fingerprint": "f"}
        with pytest.raises(KeyboardInterrupt), start_run(**t, tags=interrupted):  # KILLED: not counted
            raise KeyboardInterrupt
    return t, RunReader(t["uri"])


def test_summary_rows_match_hand_computed_numbers(store: tuple[dict[str, str], RunReader]) -> None:
    report = build_report(store[1], "t", n_resamples=2000)
    rows = {(r.env, r.algo): r for r in report.summary.itertuples()}
    assert set(rows) == {("cartpole", "ppo"), ("pendulum", "ppo"), ("pendulum", "sac")}

    cartpole = rows[("cartpole", "ppo")]
    assert cartpole.seeds == 3
    assert cartpole.iqm == pytest.approx(400.0)  # finals 500, 400, 300: three values are kept whole
    assert cartpole.mean == pytest.approx(400.0) and cartpole.std == pytest.approx(100.0)
    assert cartpole.reached == "2/3"  # seed 1 at 1000 steps, seed 2 at 500 steps, seed 3 never
    assert cartpole.median_steps_to_threshold == 750.0
    assert cartpole.normalized_iqm == pytest.approx((400.0 - 22.0) / (500.0 - 22.0))
    # Seed 1: points (0,0), (500, 178/478), (1000, 1): area (178/478·500 + (178/478 + 1)·500) / 2 / 1000.
    seed1 = (178 / 478 * 500 / 2 + (178 / 478 + 1) * 500 / 2) / 1000
    seed2 = (458 / 478 * 500 / 2 + (458 / 478 + 378 / 478) * 500 / 2) / 1000
    seed3 = (78 / 478 * 500 / 2 + (78 / 478 + 278 / 478) * 500 / 2) / 1000
    assert cartpole.normalized_auc == pytest.approx((seed1 + seed2 + seed3) / 3)
    assert cartpole.wall_time_s == pytest.approx(20.0) and cartpole.sps == pytest.approx(200.0)
    assert cartpole.reference == 500.0
    assert cartpole.ci_low <= cartpole.iqm <= cartpole.ci_high

    # Pendulum normalizes with the best reference on the env (SAC's -151.9) for every algorithm.
    ppo = rows[("pendulum", "ppo")]
    assert ppo.reached == "-" and math.isnan(ppo.median_steps_to_threshold)
    scale = -151.9 + 1200.0
    assert ppo.normalized_iqm == pytest.approx(((-686.0 + 1200) / scale + (-172.2 + 1200) / scale) / 2)
    assert ppo.reference == -172.2
    assert report.missing == ("sac/pendulum/3",)


def test_aggregate_pools_normalized_scores_over_envs(store: tuple[dict[str, str], RunReader]) -> None:
    report = build_report(store[1], "t", n_resamples=2000)
    rows = {r.algo: r for r in report.aggregate.itertuples()}
    cartpole = [(500 - 22) / 478, (400 - 22) / 478, (300 - 22) / 478]
    pendulum = [(-686 + 1200) / 1048.1, (-172.2 + 1200) / 1048.1]
    assert rows["ppo"].envs == 2 and rows["ppo"].runs == 5
    # Five pooled scores; the IQM drops the lowest (-686 on Pendulum) and highest (500 on CartPole).
    middle = [(300 - 22) / 478, (400 - 22) / 478, (-172.2 + 1200) / 1048.1]
    assert rows["ppo"].normalized_iqm == pytest.approx(sum(middle) / 3)
    assert min(cartpole + pendulum) <= rows["ppo"].ci_low <= rows["ppo"].normalized_iqm
    assert rows["ppo"].normalized_iqm <= rows["ppo"].ci_high <= max(cartpole + pendulum)
    assert rows["sac"].envs == 1 and rows["sac"].runs == 2


def test_outputs_are_files_and_mlflow_artifacts(
    store: tuple[dict[str, str], RunReader], tmp_path: Path
) -> None:
    t, reader = store
    report = build_report(reader, None, n_resamples=500)  # None: the newest benchmark, 't'
    assert report.name == "t"
    files = write_outputs(report, tmp_path / "reports" / "t")
    names = {p.name for p in files}
    assert {"summary.csv", "summary.md", "aggregate.csv", "aggregate.md", "aggregate_iqm.png"} <= names
    assert {"curves_cartpole.png", "curves_pendulum.png", "performance_profile.png"} <= names
    assert all(p.stat().st_size > 0 for p in files)
    assert "| cartpole" in (tmp_path / "reports" / "t" / "summary.md").read_text()
    run_id = publish(report, files, reader, t["uri"], t["artifact_dir"]).run_id
    assert {a.path for a in MlflowClient(t["uri"]).list_artifacts(run_id)} == names
    console = Console(width=200, record=True)
    print_report(report, console)
    text = console.export_text()
    assert "400.0" in text and "sac/pendulum/3" in text


def test_a_benchmark_has_one_report_run_nested_under_it(
    store: tuple[dict[str, str], RunReader], tmp_path: Path
) -> None:
    t, reader = store
    report = build_report(reader, "t", n_resamples=500)
    files = write_outputs(report, tmp_path / "reports" / "t")
    first = publish(report, files, reader, t["uri"], t["artifact_dir"])
    again = publish(report, files, reader, t["uri"], t["artifact_dir"])  # make report, run twice
    assert again.run_id == first.run_id
    (run,) = reader.find_runs({"kind": KIND_REPORT, "benchmark": "t"}, report.experiment)
    (benchmark,) = reader.find_runs({"kind": KIND_PARENT, "benchmark": "t"}, report.experiment)
    assert run.data.tags["mlflow.parentRunId"] == benchmark.info.run_id
    assert run.info.status == "FINISHED"


def test_unknown_benchmark_names_the_ones_there(store: tuple[dict[str, str], RunReader]) -> None:
    with pytest.raises(ConfigError, match=r"no benchmark 'nope'.*benchmarks here: t"):
        build_report(store[1], "nope")


# --- several sources side by side ------------------------------------------------------------------
# (algo, env) -> {(source label, kinds): final returns of seeds 1, 2, ...}; Pendulum has no PPO preset
# here, so its default runs stand for the preset too.
SOURCED = {
    ("ppo", "cartpole"): {
        ("default", "default"): [100.0, 200.0, 300.0],
        ("preset:ppo_cartpole", "preset"): [400.0, 450.0, 480.0],
        ("tuned:ppo_cartpole_tuned", "tuned"): [500.0, 500.0, 500.0],
    },
    ("ppo", "pendulum"): {
        ("default", "default,preset"): [-800.0, -600.0],
        ("tuned:ppo_pendulum_tuned", "tuned"): [-200.0, -180.0],
    },
}


@pytest.fixture
def sourced(tmp_path: Path) -> RunReader:
    """A benchmark 's' that trained default, preset and tuned side by side."""
    t = tracking(tmp_path)
    plan = {}
    with start_run(**t, run_name="benchmark-s", tags={"kind": KIND_PARENT, "benchmark": "s"}) as parent:
        for (algo, env), by_source in SOURCED.items():
            for (label, kinds), finals in by_source.items():
                for seed, final in enumerate(finals, start=1):
                    record_cell(t, parent.run_id, algo, env, seed, [0.0, final], benchmark="s",
                                sources=(label, kinds))  # fmt: skip
                    plan[f"{algo}/{env}/{kinds.split(',')[0]}/{seed}"] = "f"
        parent.log_text(json.dumps(plan), PLAN_ARTIFACT)
    return RunReader(t["uri"])


def test_sources_side_by_side_by_hand(sourced: RunReader, tmp_path: Path) -> None:
    report = build_report(sourced, "s", n_resamples=2000)
    assert report.sources is not None and report.sources_aggregate is not None
    rows = {row["env"]: row for row in report.sources.to_dict("records")}
    cartpole, pendulum = rows["cartpole"], rows["pendulum"]
    assert cartpole["default_iqm"] == 200.0 and cartpole["tuned_iqm"] == 500.0
    assert cartpole["preset_iqm"] == pytest.approx(1330.0 / 3)  # three values are kept whole
    assert cartpole["preset_source"] == "preset:ppo_cartpole" and cartpole["tuned_seeds"] == 3
    assert cartpole["tuned-preset"] == pytest.approx(500.0 - 1330.0 / 3)
    assert cartpole["tuned-default"] == pytest.approx(300.0)
    assert cartpole["tuned-preset_ci_low"] >= 20.0  # 500s against at most 480
    # No preset on Pendulum: the default runs stand for it (IQM of two values: their mean).
    assert (
        pendulum["preset_source"] == "default" and pendulum["preset_iqm"] == pendulum["default_iqm"] == -700.0
    )
    assert pendulum["tuned-preset"] == pytest.approx(-190.0 + 700.0)

    # Across the two cells, on the normalised scale (CartPole (r − 22)/478, Pendulum (r + 1200)/1048.1,
    # SAC's −151.9 being the env's best reference): the IQM of 5 pooled scores drops the lowest and highest.
    def normalised(env: str, returns: list[float]) -> list[float]:
        return [(r - 22.0) / 478.0 if env == "cartpole" else (r + 1200.0) / 1048.1 for r in returns]

    pooled = {
        kind: sorted(
            normalised(env, finals)
            for (_, env), by_source in SOURCED.items()
            for (_, kinds), finals in by_source.items()
            if kind in kinds.split(",")
            for finals in [finals]
        )
        for kind in ("default", "preset", "tuned")
    }
    aggregate = {row["source"]: row for row in report.sources_aggregate.to_dict("records")}
    for kind, scores in pooled.items():
        flat = sorted(s for group in scores for s in group)
        assert aggregate[kind]["normalized_iqm"] == pytest.approx(np.mean(flat[1:-1]))
        assert aggregate[kind]["cells"] == 2 and aggregate[kind]["runs"] == 5
    difference = aggregate["tuned − preset"]
    assert difference["normalized_iqm"] == pytest.approx(
        aggregate["tuned"]["normalized_iqm"] - aggregate["preset"]["normalized_iqm"]
    )
    assert 0.0 < difference["ci_low"] <= difference["normalized_iqm"] <= difference["ci_high"]
    # Over the cells with a preset of their own (CartPole; Pendulum's preset is its defaults), again.
    own_preset = np.mean(normalised("cartpole", [400.0, 450.0, 480.0]))
    assert aggregate["preset (cells with a preset)"]["normalized_iqm"] == pytest.approx(own_preset)
    assert aggregate["tuned (cells with a preset)"]["normalized_iqm"] == pytest.approx(1.0)
    own = aggregate["tuned − preset (cells with a preset)"]
    assert own["cells"] == 1 and own["runs"] == 3
    assert own["normalized_iqm"] == pytest.approx(1.0 - own_preset)

    # The per-algorithm aggregate has a row per source; the files and the console show the comparison.
    assert sorted(zip(report.aggregate["algo"], report.aggregate["source"], strict=True)) == [
        ("ppo", "default"), ("ppo", "preset"), ("ppo", "tuned")
    ]  # fmt: skip
    names = {p.name for p in write_outputs(report, tmp_path / "out")}
    assert {"sources.csv", "sources.md", "sources_aggregate.csv", "sources_aggregate.md"} <= names
    console = Console(width=250, record=True)
    print_report(report, console)
    text = console.export_text()
    assert "sources side by side" in text and "tuned − preset" in text and "443.3 [" in text
