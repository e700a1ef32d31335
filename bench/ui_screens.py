"""Screenshots of what a person sees in the MLflow UI and optuna-dashboard after a sweep and a benchmark.

On a fresh runs directory: a tiny PPO CartPole sweep (with held-out validation), a tiny benchmark and
its report; then the MLflow UI and optuna-dashboard on free local ports, and headless Chromium (Debian's
``chromium`` package) photographs

- ``runs_list.png``: the sweep experiment's runs list, opened from the link the sweep printed;
- ``trial_run.png``: one trial's run page, as reached from the runs list;
- ``validation.png``: the sweep run's ``validation.md`` artifact (the printed sweep link, its Artifacts tab);
- ``report_curves.png``: the report run's CartPole learning curves (likewise from the report's link);
- ``dashboard.png``: the study's page in optuna-dashboard.

The run pages are taken in the model-training view, in which the printed runs list opens and a person
clicking through it stays; the printed run links themselves open in MLflow's default (GenAI) sidebar,
with the same page content.

The servers are stopped afterwards; the pictures go to ``bench/results/ui/`` (``--out``). Needs the
``dashboard`` extra (``make ui-screens`` installs it) and ``chromium`` on the PATH.

    python -m bench.ui_screens [--out bench/results/ui] [--keep DIR]
"""

from __future__ import annotations

import contextlib
import os
import re
import shutil
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path

from mlflow import MlflowClient

from bench.common import ROOT, script_parser

ENV = {**os.environ, "MLFLOW_DISABLE_TELEMETRY": "true", "PYTHONUNBUFFERED": "1"}
SWEEP = [
    "experiment=ppo_cartpole",
    "tune.n_trials=6",
    "tune.n_seeds=2",
    "tune.budget_steps=4096",
    "tune.validate_seeds=3",
    "env.eval.freq_steps=1024",
    "env.eval.n_episodes=3",
    "tune.export=false",
]
BENCHMARK = [
    "benchmark=quick",
    "benchmark.algos=[ppo,d3qn]",
    "benchmark.envs=[cartpole]",
    "benchmark.seeds=2",
    "benchmark.budget_steps=8192",
]
WINDOW = "1440,900"
RENDER_BUDGET_MS = 15000  # virtual time the page's scripts get before the picture


def free_port() -> int:
    """A TCP port nothing listens on now."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def run_module(module: str, *args: str) -> str:
    """Run ``python -m module args`` from the repository root; its standard output (fails loudly)."""
    done = subprocess.run(
        [sys.executable, "-m", module, *args], cwd=ROOT, env=ENV, capture_output=True, text=True, check=False
    )
    if done.returncode != 0:
        raise SystemExit(
            f"{module} failed ({done.returncode}):\n{done.stdout[-2000:]}\n{done.stderr[-3000:]}"
        )
    return done.stdout


@contextlib.contextmanager
def serving(command: list[str], url: str) -> Iterator[None]:
    """Run a server while the block runs; wait until ``url`` answers, stop the server afterwards."""
    server = subprocess.Popen(
        command, cwd=ROOT, env=ENV, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
    )
    try:
        deadline = time.monotonic() + 90
        while True:
            try:
                with urllib.request.urlopen(url, timeout=2):
                    break
            except OSError:
                if server.poll() is not None or time.monotonic() > deadline:
                    raise SystemExit(f"{command[0]} did not answer on {url}") from None
                time.sleep(0.5)
        yield
    finally:
        server.terminate()
        try:
            server.wait(timeout=15)
        except subprocess.TimeoutExpired:
            server.kill()


def screenshot(url: str, path: Path) -> None:
    """Photograph ``url`` with headless Chromium into ``path``."""
    browser = shutil.which("chromium") or shutil.which("chromium-browser")
    if browser is None:
        raise SystemExit("chromium is not installed: apt-get install chromium")
    with tempfile.TemporaryDirectory() as profile:
        subprocess.run(
            [browser, "--headless", "--no-sandbox", "--disable-gpu", "--hide-scrollbars",
             f"--user-data-dir={profile}", f"--window-size={WINDOW}",
             f"--virtual-time-budget={RENDER_BUDGET_MS}", f"--screenshot={path}", url],
            check=True, capture_output=True, timeout=120,
        )  # fmt: skip
    print(f"{path.name}: {url}")


def printed_links(stdout: str) -> list[str]:
    """The UI links a command printed, in order."""
    return re.findall(r"^\s+(http://\S+)$", stdout, flags=re.MULTILINE)


def record(runs_dir: Path) -> dict[str, str]:
    """Train the sweep, the benchmark and the report into ``runs_dir``; the links they printed."""
    where = f"paths.runs_dir={runs_dir}"
    sweep_out = run_module("tuner.tune", *SWEEP, where)
    run_module("tuner.benchmark", *BENCHMARK, where)
    report_out = run_module("tuner.report", "report.benchmark=quick", "report.n_resamples=500", where)
    sweep_links, report_links = printed_links(sweep_out), printed_links(report_out)
    return {"runs": sweep_links[0], "sweep": sweep_links[1], "report": report_links[1]}


def pages(runs_dir: Path, links: dict[str, str], mlflow_base: str, dashboard_base: str) -> dict[str, str]:
    """The address of each picture, on the servers' real ports."""
    client = MlflowClient(f"sqlite:///{runs_dir}/mlflow.db")
    experiment = client.get_experiment_by_name("ppo_cartpole").experiment_id
    (trial,) = client.search_runs([experiment], "attributes.run_name = 'trial-0'")
    local = "http://127.0.0.1:5000"
    training_view = "?workflowType=machine_learning"  # the view the runs list's link opens, kept on clicks
    sweep_run, report_run = (links[name].replace(local, mlflow_base) for name in ("sweep", "report"))
    return {
        "runs_list.png": links["runs"].replace(local, mlflow_base),
        "trial_run.png": f"{mlflow_base}/#/experiments/{experiment}/runs/{trial.info.run_id}{training_view}",
        "validation.png": f"{sweep_run}/artifacts/validation.md{training_view}",
        "report_curves.png": f"{report_run}/artifacts/curves_cartpole.png{training_view}",
        "dashboard.png": f"{dashboard_base}/dashboard/studies/1",
    }


def main() -> None:
    """Record, serve, photograph, stop."""
    parser = script_parser(__doc__)
    parser.add_argument("--out", type=Path, default=ROOT / "bench" / "results" / "ui", help="folder of PNGs")
    parser.add_argument(
        "--keep", type=Path, help="record into this folder and keep it (default: a temporary one)"
    )
    args = parser.parse_args()
    with contextlib.ExitStack() as stack:
        runs_dir = args.keep or Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="ui_screens_")))
        links = record(runs_dir)
        mlflow_port, dashboard_port = free_port(), free_port()
        mlflow_base = f"http://127.0.0.1:{mlflow_port}"
        dashboard_base = f"http://127.0.0.1:{dashboard_port}"
        venv_bin = Path(sys.executable).parent
        stack.enter_context(serving(
            [str(venv_bin / "mlflow"), "ui", "--backend-store-uri", f"sqlite:///{runs_dir}/mlflow.db",
             "--host", "127.0.0.1", "--port", str(mlflow_port), "--workers", "1"],
            mlflow_base,
        ))  # fmt: skip
        stack.enter_context(serving(
            [str(venv_bin / "optuna-dashboard"), f"sqlite:///{runs_dir}/optuna.db", "--host", "127.0.0.1",
             "--port", str(dashboard_port)],
            dashboard_base,
        ))  # fmt: skip
        args.out.mkdir(parents=True, exist_ok=True)
        for name, url in pages(runs_dir, links, mlflow_base, dashboard_base).items():
            screenshot(url, args.out / name)


if __name__ == "__main__":
    main()
