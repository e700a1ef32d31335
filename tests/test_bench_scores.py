"""bench/scores.py reports each seed as it finishes, so a long run loses nothing to a later failure."""

from __future__ import annotations

import sys

import pytest

from bench import scores


def _fake_train_one(overrides: list[str], seed: int) -> scores.SeedResult:
    """Seed 2 fails; the others return a result whose return is 10 × the seed (no training)."""
    if seed == 2:
        raise RuntimeError("seed 2 crashed")
    return scores.SeedResult(seed, 10.0 * seed, 1.0, 1000, 2.0, 500.0, "gymnasium")


def test_finished_seeds_are_printed_when_another_seed_fails(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setattr(scores, "train_one", _fake_train_one)
    monkeypatch.setattr(sys, "argv", ["scores", "experiment=ppo_cartpole", "--seeds", "3", "--workers", "1"])
    with pytest.raises(SystemExit) as exit_info:
        scores.main()
    assert exit_info.value.code == 1
    out = capsys.readouterr().out
    rows = {
        line.split()[0]: line.split()[1] for line in out.splitlines() if line.split()[:1] in (["1"], ["3"])
    }
    assert rows == {"1": "10.0", "3": "30.0"}
    assert "seed 2 failed: RuntimeError: seed 2 crashed" in out
    assert "IQM 20.0" in out  # over the seeds that finished


def test_all_seeds_give_the_table_and_exit_normally(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setattr(scores, "train_one", _fake_train_one)
    monkeypatch.setattr(
        sys,
        "argv",
        ["scores", "experiment=ppo_cartpole", "--seeds", "1", "--first-seed", "3", "--workers", "1"],
    )
    scores.main()
    out = capsys.readouterr().out
    assert "IQM 30.0" in out
    assert "failed" not in out


@pytest.mark.parametrize(("flag", "value"), [("--seeds", "0"), ("--workers", "0"), ("--workers", "two")])
def test_a_count_below_one_exits_2_with_one_line_before_any_seed_runs(
    flag: str, value: str, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    def must_not_train(overrides: list[str], seed: int) -> scores.SeedResult:
        raise AssertionError("a seed started")

    monkeypatch.setattr(scores, "train_one", must_not_train)
    monkeypatch.setattr(sys, "argv", ["scores", "experiment=ppo_cartpole", flag, value])
    with pytest.raises(SystemExit) as exit_info:
        scores.main()
    assert exit_info.value.code == 2
    captured = capsys.readouterr()
    assert captured.out == ""
    assert captured.err == f"scores: error: argument {flag}: {value!r}: expected an integer ≥ 1\n"
