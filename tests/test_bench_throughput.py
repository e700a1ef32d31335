"""bench/throughput.py: a bad algorithm or backend name stops the script before anything is timed."""

from __future__ import annotations

import subprocess
import sys

import pytest

from algorithms import PPOConfig
from bench import throughput


@pytest.mark.parametrize(
    ("args", "named"),
    [
        (["--algos", "ppo,dqn"], "--algos=ppo,dqn: unknown 'dqn'; choose from ["),
        (["--backends", "gymnasium,gym"], "--backends=gymnasium,gym: unknown 'gym'; choose from ["),
    ],
)
def test_an_unknown_name_exits_2_with_one_line_naming_it_and_the_choices(args: list[str], named: str) -> None:
    done = subprocess.run(
        [sys.executable, "-m", "bench.throughput", *args], capture_output=True, text=True, timeout=120
    )
    assert done.returncode == 2
    assert done.stdout == ""  # no table started
    assert done.stderr.count("\n") == 1 and named in done.stderr, done.stderr
    assert "'d3qn'" in done.stderr if "--algos" in args else "'envpool'" in done.stderr


def test_a_case_no_selected_backend_covers_is_skipped_without_timing_sb3(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    calls: list[str] = []
    monkeypatch.setattr(throughput, "run_ours", lambda case, steps, seed, name: calls.append(name) or 1.0)
    monkeypatch.setattr(throughput, "run_sb3", lambda case, steps, seed: calls.append("sb3") or 1.0)
    lunar = throughput.Case("PPO LunarLander-v3", "LunarLander-v3", 100, PPOConfig())
    throughput.print_case(lunar, 100, repeats=2, seed=0, wanted={"vector"})  # vector runs CartPole only
    assert calls == []
    assert capsys.readouterr().out == ""
    cartpole = throughput.Case("PPO CartPole-v1", "CartPole-v1", 100, PPOConfig())
    throughput.print_case(cartpole, 100, repeats=2, seed=0, wanted={"vector"})
    assert calls == ["vector", "sb3", "vector", "sb3"]
    assert "PPO CartPole-v1" in capsys.readouterr().out
