"""The progress display in both modes, and the learning-curve figure."""

from __future__ import annotations

import io

from rich.console import Console

from tuner.plots import learning_curve
from tuner.progress import TrainProgress


def test_plain_progress_prints_lines_at_the_interval_and_at_the_end() -> None:
    out = io.StringIO()
    with TrainProgress(1000, "ppo CartPole-v1", console=Console(file=out), line_interval_s=3600) as progress:
        progress.update(100, 2500.0, None)  # first update: printed
        progress.update(200, 2500.0, 20.0)  # within the interval: not printed
        progress.note("eval at 500 steps: return 9.0")
        progress.update(1000, 2600.0, 31.25)  # the end: printed
    lines = out.getvalue().splitlines()
    assert lines[0].startswith("ppo CartPole-v1: 100/1000 steps (10%), 2500 steps/s, return -")
    assert lines[1] == "eval at 500 steps: return 9.0"
    assert lines[2].startswith("ppo CartPole-v1: 1000/1000 steps (100%), 2600 steps/s, return 31.2")
    assert len(lines) == 3


def test_terminal_progress_draws_a_bar_and_disabled_progress_prints_nothing() -> None:
    out = io.StringIO()
    console = Console(file=out, force_terminal=True, width=120)
    with TrainProgress(1000, "ppo", console=console) as progress:
        progress.update(500, 2500.0, 12.5)
    assert "500/1000" in out.getvalue() and "return 12.5" in out.getvalue()

    quiet = io.StringIO()
    with TrainProgress(1000, "ppo", enabled=False, console=Console(file=quiet)) as progress:
        progress.update(1000, 2500.0, 12.5)
        progress.note("eval")
    assert quiet.getvalue() == ""


def test_learning_curve_draws_episodes_evaluations_and_reference_lines() -> None:
    episodes = [(256 * (i // 4 + 1), float(i)) for i in range(40)]
    evaluations = [(1024, 10.0, 2.0), (2048, 30.0, 1.0)]
    fig = learning_curve(episodes, evaluations, "ppo on CartPole-v1", [("solved", 475.0), ("random", 22.0)])
    (ax,) = fig.axes
    assert ax.get_xlabel() == "env steps"
    labels = {text.get_text() for text in ax.get_legend().get_texts()}
    assert {"training episode", "evaluation (±std)", "solved", "random"} <= labels
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png")
    assert buffer.getvalue().startswith(b"\x89PNG")


def test_learning_curve_without_finished_episodes_draws_the_evaluations_alone() -> None:
    fig = learning_curve([], [(200, -1200.0, 50.0)], "ppo on Pendulum-v1")
    (ax,) = fig.axes
    labels = [text.get_text() for text in ax.get_legend().get_texts()]
    assert labels == ["evaluation (±std)"]  # no training-episode scatter or running mean
    (errorbar,) = ax.containers  # the evaluation: its point, and caps at ± one std
    data_line, caps, _ = errorbar.lines
    assert list(data_line.get_xdata()) == [200] and list(data_line.get_ydata()) == [-1200.0]
    assert sorted(cap.get_ydata()[0] for cap in caps) == [-1250.0, -1150.0]
    assert ax.get_title() == "ppo on Pendulum-v1"
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png")
    assert buffer.getvalue().startswith(b"\x89PNG")
