"""bench/sweep_speed.py's multi-seed summary: ratios are taken per seed, then their median."""

from __future__ import annotations

import pytest

from bench.sweep_speed import Study, print_summary


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
