"""bench/sweep_speed.py: the multi-seed summary (ratios per seed, then their median) and how rl-zoo3's
trials are counted."""

from __future__ import annotations

import pickle
import subprocess
import sys
from pathlib import Path

import optuna
import pytest

from bench.sweep_speed import Study, print_summary, zoo_trial_counts


def test_the_summary_gives_each_studys_median_ratio_to_the_baseline_of_its_own_seed(
    capsys: pytest.CaptureFixture[str],
) -> None:
    zoo, k8 = "rl-zoo3", "rltune population K=8, 1 worker"
    results = [
        Study(zoo, wall_s=3600, trials=20, best=500.0, peak_rss_mib=1, seed=0),  # 20 trials/hour
        Study(k8, wall_s=1800, trials=20, best=500.0, peak_rss_mib=1, failed=0, seed=0),  # 2×
        Study(zoo, wall_s=1800, trials=20, best=480.0, peak_rss_mib=1, seed=10),  # 40 trials/hour
        Study(k8, wall_s=360, trials=20, best=470.0, peak_rss_mib=1, failed=0, seed=10),  # 5×
        Study(zoo, wall_s=900, trials=20, best=500.0, peak_rss_mib=1, seed=20),  # 80 trials/hour
        Study(k8, wall_s=300, trials=20, best=500.0, peak_rss_mib=1, failed=0, seed=20),  # 3×
    ]
    print_summary(results)
    lines = {line.split("  ")[0].strip(): line for line in capsys.readouterr().out.splitlines()[1:]}
    assert "ratio median  1.00×" in lines[zoo]
    # Per seed 2×, 5×, 3×: the median is 3×, not the ratio of median trials/hour (200 / 40 = 5×).
    assert "trials/hour   200.0" in lines[k8]
    assert "ratio median  3.00× (per seed 2.00, 5.00, 3.00)" in lines[k8]
    assert "best ≥ baseline's in 2/3 seeds" in lines[k8]


def test_rl_zoo3_trials_pruned_before_any_evaluation_count_as_failed(tmp_path: Path) -> None:
    study = optuna.create_study(direction="maximize")
    states = optuna.trial.TrialState
    study.add_trial(
        optuna.trial.create_trial(state=states.COMPLETE, value=500.0, intermediate_values={50000: 500.0})
    )
    study.add_trial(
        optuna.trial.create_trial(state=states.PRUNED, intermediate_values={50000: 9.0})
    )  # the pruner
    study.add_trial(optuna.trial.create_trial(state=states.PRUNED))  # rl-zoo3's objective caught a NaN
    study.add_trial(optuna.trial.create_trial(state=states.FAIL))
    (tmp_path / "ppo").mkdir()
    with (tmp_path / "ppo" / "report_CartPole-v1_4-trials-50000-tpe-median_1.pkl").open("wb") as file:
        pickle.dump(study, file)
    assert zoo_trial_counts(tmp_path) == (2, 2)
    assert zoo_trial_counts(tmp_path / "nothing") is None


@pytest.mark.parametrize(
    ("args", "named"),
    [
        (["--keep", "{existing}"], "--keep="),
        (["--skip", "zoo,sequentail"], "--skip=zoo,sequentail: unknown 'sequentail'; choose from"),
        (["--seeds", "0,ten"], "--seeds=0,ten: expected comma-separated integers ≥ 0"),
        (["--workers", "0"], "--workers=0: expected comma-separated integers ≥ 1"),
        (["--envs", "cartpole,acrobot"], "--envs=cartpole,acrobot: rl-zoo3 cannot"),
    ],
)
def test_bad_arguments_exit_2_with_one_line_naming_them_before_any_study(
    args: list[str], named: str, tmp_path: Path
) -> None:
    existing = tmp_path / "kept"
    existing.mkdir()
    (existing / "old.db").write_text("")
    argv = [arg.format(existing=existing) for arg in args]
    done = subprocess.run(
        [sys.executable, "-m", "bench.sweep_speed", *argv], capture_output=True, text=True, timeout=60
    )
    assert done.returncode == 2
    assert done.stdout == ""  # no study announced, none started
    assert done.stderr.count("\n") == 1 and named in done.stderr, done.stderr
    assert sorted(p.name for p in tmp_path.rglob("*")) == ["kept", "old.db"]  # nothing created
