"""Benchmark algorithms × environments × seeds, every cell a normal training run in MLflow:
``python -m tuner.benchmark``.

    python -m tuner.benchmark                          # benchmark=quick
    python -m tuner.benchmark benchmark=classic
    python -m tuner.benchmark benchmark.algos=[ppo,sac] benchmark.envs=[pendulum] benchmark.sources.sac=tuned
    python -m tuner.benchmark benchmark=classic 'benchmark.sources=[default,preset,tuned]'

compose (Hydra) → plan the cells: every compatible (algo, env) pair (incompatible pairs are skipped with a
one-line note) × the seeds, each cell's training config composed and validated before anything runs →
open (or reopen) the benchmark's parent run in the MLflow experiment ``benchmark_<name>`` → skip the cells
already FINISHED there with the same settings → train the rest in ``benchmark.n_workers`` processes, each
a :func:`tuner.train.run_training` nested under the parent. An interrupted benchmark is resumed by running
the same command: nothing finished is trained twice, and an interrupted cell is trained again from scratch.
``python -m tuner.report`` then builds the comparison tables from those runs.
"""

from __future__ import annotations

import hashlib
import json
import multiprocessing
import re
import signal
import sys
import time
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import gymnasium as gym
from omegaconf import DictConfig, OmegaConf, open_dict
from rich import get_console
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

from algorithms import ConfigError, NonFiniteLossError, get_algorithm
from tuner.app import EXIT_FAILED, hydra_app
from tuner.compose import CONF_DIR, algorithm_config, compose_config, known_envs
from tuner.ledger import append_to_ledger, read_ledger, record_from_run
from tuner.secrets import mask_secrets
from tuner.tracking import RunReader, start_run
from tuner.train import RunSettings, resolve_config, run_training
from tuner.ui_links import print_links

SOURCES = ("default", "preset", "tuned")
KIND_PARENT = "benchmark"
KIND_CELL = "benchmark_cell"
PLAN_ARTIFACT = "plan.json"  # on the parent run: {cell key: fingerprint} of the latest invocation
# What a cell takes of the benchmark's tracking config: where it records, and which artifacts it keeps.
CELL_TRACKING_KEYS = ("uri", "experiment", "artifact_dir", "log_models", "log_curves")
# Config keys that say where a run is recorded or how it is displayed, not what is trained: left out of
# a cell's fingerprint, so a benchmark resumed with another tracking URI or on another machine still
# recognises its finished cells.
NOT_FINGERPRINTED = ("tracking", "paths", "progress", "hydra")
# Env config keys the report reads but training does not: editing a reference score or threshold keeps
# the finished cells (in MLflow or a ledger) of the envs it touches.
ENV_NOT_FINGERPRINTED = ("reference", "threshold", "random_score")


@dataclass(frozen=True)
class BenchmarkSettings:
    """The validated ``benchmark`` node of conf/benchmark.yaml."""

    name: str
    algos: tuple[str, ...]
    envs: tuple[str, ...]
    sources: dict[str, tuple[str, ...]]
    """Where each listed algorithm's hyperparameters come from: one source, or several trained side by
    side (``default``, ``preset``, ``tuned``); an algorithm not listed trains its defaults."""
    seeds: tuple[int, ...]
    budget_steps: dict[str, int | None]
    """Env steps per cell for each env; None: the env's ``budget_steps``."""
    eval_points: int
    n_workers: int

    @classmethod
    def from_config(cls, node: Mapping[str, Any]) -> BenchmarkSettings:
        """Read and check ``cfg.benchmark``; ConfigError naming the key and the valid choices otherwise."""
        name = node.get("name")
        if not isinstance(name, str) or not re.fullmatch(r"[\w.-]+", name):
            raise ConfigError(f"benchmark.name must be letters, digits, '_', '-' or '.', got {name!r}")
        algos = _names(node, "algos")
        for algo in algos:
            get_algorithm(algo)  # ConfigError listing the registered algorithms
        envs = _names(node, "envs")
        env_choices = known_envs()
        for env in envs:
            if env not in env_choices:
                raise ConfigError(f"benchmark.envs: unknown env {env!r}; choose: {', '.join(env_choices)}")
        seeds = _positive_int(node, "seeds", 1)
        first_seed = _positive_int(node, "first_seed", 0)
        return cls(
            name=name,
            algos=algos,
            envs=envs,
            sources=_sources(node.get("sources"), algos),
            seeds=tuple(range(first_seed, first_seed + seeds)),
            budget_steps=_budgets(node.get("budget_steps"), envs, env_choices),
            eval_points=_positive_int(node, "eval_points", 1),
            n_workers=_positive_int(node, "n_workers", 1),
        )

    def sources_of(self, algo: str) -> tuple[str, ...]:
        """Where ``algo``'s hyperparameters come from (``default`` unless listed in ``sources``)."""
        return self.sources.get(algo, ("default",))


def _sources(value: Any, algos: Sequence[str]) -> dict[str, tuple[str, ...]]:
    """``benchmark.sources``: a source or a list of them for every algorithm, or a mapping algo ->
    source(s); ConfigError naming the key and the choices otherwise."""
    if value is None:
        return {}
    if isinstance(value, str) or (isinstance(value, Sequence) and not isinstance(value, Mapping)):
        return {algo: _source_list("benchmark.sources", value) for algo in algos}
    if not isinstance(value, Mapping):
        raise ConfigError(
            "benchmark.sources must be a source, a list of sources or a mapping algo -> source(s); "
            f"got {value!r}"
        )
    sources = {}
    for algo, listed in value.items():
        get_algorithm(str(algo))
        sources[str(algo)] = _source_list(f"benchmark.sources.{algo}", listed)
    return sources


def _source_list(key: str, value: Any) -> tuple[str, ...]:
    """One source or a non-empty list of distinct ones, each of :data:`SOURCES`."""
    listed = [value] if isinstance(value, str) else value
    if not isinstance(listed, Sequence) or not listed:
        raise ConfigError(
            f"{key} must be a source or a non-empty list of them ({', '.join(SOURCES)}); got {value!r}"
        )
    for source in listed:
        if source not in SOURCES:
            raise ConfigError(f"{key}: unknown source {source!r}; choose: {', '.join(SOURCES)}")
    if len(set(listed)) != len(listed):
        raise ConfigError(f"{key} names a source twice: {list(listed)}")
    return tuple(str(source) for source in listed)


@dataclass(frozen=True)
class Cell:
    """One training run of the benchmark: an algorithm on an environment with one seed.

    Attributes:
        algo, env, seed: what is trained (``env`` is the name of a conf/env/ file).
        source: where the hyperparameters come from, e.g. ``default``, ``preset:ppo_cartpole``.
        overrides: the Hydra overrides of conf/train.yaml that make this run.
        budget_steps: env steps.
        fingerprint: hash of the resolved training config (without tracking and paths); a finished run
            with the same cell and fingerprint makes training this cell again unnecessary.
        kinds: the benchmark's sources this run stands for: ``("preset",)``, or ``("default",
            "preset")`` where the pair has no preset and both were asked for (one run serves both).
        compared: the benchmark trains several sources of this (algo, env), so the key names the source.
    """

    algo: str
    env: str
    seed: int
    source: str
    overrides: tuple[str, ...]
    budget_steps: int
    fingerprint: str
    kinds: tuple[str, ...] = ("default",)
    compared: bool = False

    @property
    def key(self) -> str:
        """The cell's identity in MLflow (tag ``cell``): ``algo/env/seed``, or ``algo/env/<source>/seed``
        where the benchmark lists several sources for the algorithm."""
        if self.compared:
            return f"{self.algo}/{self.env}/{self.kinds[0]}/{self.seed}"
        return f"{self.algo}/{self.env}/{self.seed}"


@dataclass(frozen=True)
class Plan:
    """The cells to train and the (algo, env) pairs left out, with the reason."""

    cells: tuple[Cell, ...]
    skipped_pairs: tuple[str, ...]


@dataclass(frozen=True)
class CellOutcome:
    """How one cell ended in its worker process."""

    key: str
    status: str  # "finished" or "failed"
    message: str
    mean_return: float | None = None
    wall_time_s: float | None = None
    run_id: str | None = None
    fingerprint: str = ""


def plan_cells(settings: BenchmarkSettings, tracking: Mapping[str, Any], root_dir: str) -> Plan:
    """Every compatible (algo, env) pair × seed as a validated cell; ConfigError on the first bad one.

    A pair whose algorithm cannot act in the env's action space is skipped with a note; a missing
    ``tuned`` preset, an unknown env id or a bad hyperparameter is an error, found before anything runs.
    """
    cells: list[Cell] = []
    skipped: list[str] = []
    for env in settings.envs:
        action_space = _action_space(env, root_dir)
        for algo in settings.algos:
            agent_cls = get_algorithm(algo).agent_cls
            if not isinstance(action_space, agent_cls.action_spaces):
                allowed = " or ".join(t.__name__ for t in agent_cls.action_spaces)
                skipped.append(f"{algo} on {env}: {algo} needs {allowed} actions, {env} has {action_space}")
                continue
            # With several sources, every cell's key names its source, whether or not the pair has a
            # preset: the keys then stay the same when a source is added to the list later.
            compared = len(settings.sources_of(algo)) > 1
            variants = _pair_variants(algo, env, settings.sources_of(algo))
            for (experiment, source), kinds in variants.items():
                pair_cells = _pair_cells(settings, algo, env, experiment, source, tracking, root_dir)
                cells.extend(replace(cell, kinds=kinds, compared=compared) for cell in pair_cells)
    return Plan(tuple(cells), tuple(skipped))


def _pair_variants(
    algo: str, env: str, sources: Sequence[str]
) -> dict[tuple[str | None, str], tuple[str, ...]]:
    """The distinct configs ``sources`` select for ``algo`` on ``env`` ((preset name or None, source
    label) → the sources each stands for): a ``preset`` that falls back to the defaults is one config
    with ``default``."""
    variants: dict[tuple[str | None, str], tuple[str, ...]] = {}
    for source in sources:
        variant = _experiment_for(algo, env, source)
        variants[variant] = (*variants.get(variant, ()), source)
    return variants


def _pair_cells(
    settings: BenchmarkSettings,
    algo: str,
    env: str,
    experiment: str | None,
    source: str,
    tracking: Mapping[str, Any],
    root_dir: str,
) -> list[Cell]:
    """Compose, resolve and validate the training config of ``algo`` on ``env``; one cell per seed."""
    base = [f"algo={algo}", f"env={env}", *([f"experiment={experiment}"] if experiment else [])]
    budget = settings.budget_steps.get(env)
    if budget is None:
        budget = int(compose_config([*base, f"paths.root_dir={root_dir}"]).env.budget_steps)
    common = (
        *base,
        f"total_steps={budget}",
        f"env.eval.freq_steps={max(1, budget // settings.eval_points)}",
        "progress=false",
    )
    try:
        config = resolve_config(cell_config(common, tracking, root_dir))
        RunSettings.from_config(config)
        algorithm_config(config["algo"])
    except ConfigError as exc:
        raise ConfigError(f"{algo} on {env} ({source}): {exc}") from exc
    trained = {key: value for key, value in config.items() if key not in NOT_FINGERPRINTED}
    trained["env"] = {key: value for key, value in config["env"].items() if key not in ENV_NOT_FINGERPRINTED}
    cells = []
    for seed in settings.seeds:
        payload = json.dumps({**trained, "seed": seed}, sort_keys=True, default=str).encode()
        fingerprint = hashlib.sha256(payload).hexdigest()[:16]
        cells.append(Cell(algo, env, seed, source, (*common, f"seed={seed}"), budget, fingerprint))
    return cells


def cell_config(overrides: Sequence[str], tracking: Mapping[str, Any], root_dir: str) -> DictConfig:
    """conf/train.yaml with a cell's ``overrides``, recorded where the benchmark records (``tracking``:
    its keys replace those of the train config's tracking node, whose other keys stay).

    The tracking keys are set as data, not as Hydra overrides, so any URI (with ``?``, ``=`` or a
    password) passes unparsed.
    """
    cfg = compose_config([*overrides, f"paths.root_dir={root_dir}"])
    with open_dict(cfg):
        composed = OmegaConf.to_container(cfg.tracking, resolve=False)
        assert isinstance(composed, dict)
        cfg.tracking = OmegaConf.create({**composed, **tracking})
    return cfg


def _experiment_for(algo: str, env: str, source: str) -> tuple[str | None, str]:
    """The preset (conf/experiment/ name) a source selects, and the source's label."""
    if source == "default":
        return None, "default"
    name = f"{algo}_{env}" if source == "preset" else f"{algo}_{env}_tuned"
    if (CONF_DIR / "experiment" / f"{name}.yaml").is_file():
        return name, f"{source}:{name}"
    if source == "preset":
        return None, "default"  # no rltune preset for this pair: the documented fallback
    raise ConfigError(
        f"benchmark.sources.{algo}=tuned, but there is no conf/experiment/{name}.yaml; export one with "
        f"`python -m tuner.tune algo={algo} env={env}`, or use source default or preset"
    )


def _action_space(env: str, root_dir: str) -> gym.Space:
    """The action space of conf/env/<env>.yaml's environment (made once, then closed)."""
    node = compose_config([f"env={env}", f"paths.root_dir={root_dir}"]).env
    kwargs = OmegaConf.to_container(node.kwargs, resolve=True) or {}
    try:
        instance = gym.make(str(node.id), **kwargs)  # type: ignore[arg-type]
    except (gym.error.Error, TypeError, ImportError, ModuleNotFoundError) as exc:
        raise ConfigError(f"benchmark.envs: cannot create {env} ({node.id}): {exc}") from exc
    try:
        return instance.action_space
    finally:
        instance.close()


def finished_cells(reader: RunReader, experiment: str, name: str) -> set[tuple[str, str]]:
    """``(cell key, fingerprint)`` of every FINISHED cell run of benchmark ``name``."""
    runs = reader.find_runs({"kind": KIND_CELL, "benchmark": name}, experiment, finished_only=True)
    return {(run.data.tags.get("cell", ""), run.data.tags.get("fingerprint", "")) for run in runs}


def parent_run_id(reader: RunReader, experiment: str, name: str) -> str | None:
    """The benchmark's parent run from an earlier session, to nest the resumed cells under it too."""
    runs = reader.find_runs({"kind": KIND_PARENT, "benchmark": name}, experiment)
    return runs[0].info.run_id if runs else None


def train_cell(cell: Cell, tracking: Mapping[str, Any], root_dir: str, parent: str, name: str) -> CellOutcome:
    """Train one cell (in a worker process) and say how it ended; never raises for a failed run."""

    cfg = cell_config(cell.overrides, tracking, root_dir)
    tags = {
        "kind": KIND_CELL,
        "benchmark": name,
        "cell": cell.key,
        "fingerprint": cell.fingerprint,
        "source": cell.source,
        "source_kinds": ",".join(cell.kinds),
    }
    try:
        result = run_training(cfg, parent_run_id=parent, run_name=cell.key.replace("/", "-"), tags=tags)
    except NonFiniteLossError as exc:
        return CellOutcome(cell.key, "failed", f"training diverged: {exc}")
    except KeyboardInterrupt as exc:
        # SIGTERM from the main process (its Ctrl-C or kill): the run is already ended KILLED; this
        # worker is done. SystemExit leaves the pool's worker loop instead of waiting for more tasks.
        raise SystemExit(128 + getattr(exc, "signum", signal.SIGINT)) from None
    except Exception as exc:  # reported with the cell; the other cells go on
        return CellOutcome(cell.key, "failed", mask_secrets(f"{type(exc).__name__}: {exc}"))
    return CellOutcome(
        cell.key, "finished", "", result.mean_return, result.wall_time_s, result.run_id, cell.fingerprint
    )


def _worker_init() -> None:
    """Worker processes leave Ctrl-C to the main process, which ends them with SIGTERM: one clean path."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)


def _train_cell_star(args: tuple[Cell, Mapping[str, Any], str, str, str]) -> CellOutcome:
    return train_cell(*args)


def run_cells(
    cells: Sequence[Cell], tracking: Mapping[str, Any], root_dir: str, parent: str, name: str, n_workers: int
) -> Iterable[CellOutcome]:
    """Train ``cells`` in ``n_workers`` spawned processes, yielding each outcome as it arrives.

    On an interruption of the main process the workers get SIGTERM, which ends their open MLflow runs
    KILLED (see :func:`tuner.tracking.start_run`).
    """
    context = multiprocessing.get_context("spawn")  # no forked copies of MLflow's database connections
    pool = context.Pool(min(n_workers, len(cells)), initializer=_worker_init)
    try:
        tasks = [(cell, tracking, root_dir, parent, name) for cell in cells]
        yield from pool.imap_unordered(_train_cell_star, tasks)
        pool.close()
    except BaseException:
        pool.terminate()
        raise
    finally:
        pool.join()


def run_benchmark(cfg: DictConfig, console: Console) -> int:
    """Plan, skip what is finished, train the rest; returns the exit code (0, or 1 if a cell failed)."""

    config = resolve_config(cfg)
    settings = BenchmarkSettings.from_config(config["benchmark"])
    tracking = {key: config["tracking"][key] for key in CELL_TRACKING_KEYS}
    root_dir = str(config["paths"]["root_dir"])
    plan = plan_cells(settings, tracking, root_dir)
    for note in plan.skipped_pairs:
        console.print(f"skip {note}")
    if not plan.cells:
        raise ConfigError("benchmark: no compatible (algo, env) pair; see benchmark.algos and benchmark.envs")
    ledger_path = _ledger_path(config.get("ledger"))
    in_ledger = set(read_ledger(ledger_path))
    # The store is checked (with the experiment) before the first write anywhere.
    reader = RunReader(tracking["uri"], create=True, experiment=tracking["experiment"])
    done = finished_cells(reader, tracking["experiment"], settings.name) | in_ledger
    todo = [cell for cell in plan.cells if (cell.key, cell.fingerprint) not in done]
    listed = sum((cell.key, cell.fingerprint) in in_ledger for cell in plan.cells)
    console.print(
        f"benchmark {settings.name!r}: {len(plan.cells)} cells, {len(plan.cells) - len(todo)} already "
        f"finished in MLflow ({mask_secrets(tracking['uri'])}, experiment {tracking['experiment']!r})"
        f"{f' or the ledger {ledger_path} ({listed})' if ledger_path else ''}, "
        f"{len(todo)} to train with {settings.n_workers} workers"
    )
    previous = parent_run_id(reader, tracking["experiment"], settings.name)
    with start_run(
        tracking["uri"],
        tracking["experiment"],
        tracking["artifact_dir"],
        run_name=f"benchmark-{settings.name}",
        tags={"kind": KIND_PARENT, "benchmark": settings.name},
        resume_run_id=previous,
    ) as parent:
        # The report reads the current plan (which cells, with which fingerprint) from PLAN_ARTIFACT.
        parent.log_text(json.dumps({c.key: c.fingerprint for c in plan.cells}, indent=1), PLAN_ARTIFACT)
        stamp = time.strftime("%Y%m%d-%H%M%S")
        parent.log_text(OmegaConf.to_yaml({"benchmark": config["benchmark"]}), f"benchmark-{stamp}.yaml")
        failed = _train(todo, tracking, root_dir, parent.run_id, settings, console, reader, ledger_path)
    finished = len(todo) - len(failed)
    console.print(
        f"benchmark {settings.name!r}: {finished} cells trained now, {len(plan.cells) - len(todo)} skipped "
        f"(finished before), {len(failed)} failed; report: "
        f"python -m tuner.report report.benchmark={settings.name}"
    )
    print_links(console, tracking["uri"], parent.experiment_id, parent.run_id, "the benchmark run")
    return EXIT_FAILED if failed else 0


def _train(
    todo: Sequence[Cell],
    tracking: Mapping[str, Any],
    root_dir: str,
    parent: str,
    settings: BenchmarkSettings,
    console: Console,
    reader: RunReader,
    ledger: str | None = None,
) -> list[CellOutcome]:
    """Run the cells with a progress bar, adding each finished one to the ``ledger`` (if any); returns
    the failed outcomes (interruption propagates)."""

    failed: list[CellOutcome] = []
    if not todo:
        return failed
    columns = (TextColumn("cells"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn())
    with Progress(*columns, console=console, disable=not console.is_terminal) as progress:
        task = progress.add_task("cells", total=len(todo))
        for outcome in run_cells(todo, tracking, root_dir, parent, settings.name, settings.n_workers):
            progress.advance(task)
            if outcome.status == "finished":
                result = f"final eval return {outcome.mean_return:.1f} in {outcome.wall_time_s:.0f} s"
                console.print(f"{outcome.key}: {result}")
                if ledger is not None and outcome.run_id is not None:
                    record = record_from_run(reader, reader.run(outcome.run_id))
                    append_to_ledger(ledger, outcome.key, outcome.fingerprint, record)
            else:
                failed.append(outcome)
                console.print(f"{outcome.key}: FAILED: {outcome.message}")
    return failed


def _ledger_path(value: Any) -> str | None:
    """``ledger``: a CSV file path (created with the first finished cell) or null."""
    if value is None:
        return None
    if not isinstance(value, str) or not value or Path(value).is_dir():
        raise ConfigError(f"ledger must be a file path (a CSV the benchmark adds to) or null, got {value!r}")
    return value


def _names(node: Mapping[str, Any], key: str) -> tuple[str, ...]:
    value = node.get(key)
    if isinstance(value, str):
        value = [value]
    if not isinstance(value, Sequence) or not value or not all(isinstance(v, str) for v in value):
        raise ConfigError(f"benchmark.{key} must be a non-empty list of names, got {value!r}")
    return tuple(dict.fromkeys(value))  # unique, in order


def _positive_int(node: Mapping[str, Any], key: str, minimum: int) -> int:
    value = node.get(key)
    if not isinstance(value, int) or isinstance(value, bool) or value < minimum:
        raise ConfigError(f"benchmark.{key} must be an integer >= {minimum}, got {value!r}")
    return value


def _budgets(value: Any, envs: Sequence[str], known_envs: Sequence[str]) -> dict[str, int | None]:
    """``benchmark.budget_steps`` (null, one int, or env -> int) as env -> steps (None: the env's default)."""
    if value is None:
        return dict.fromkeys(envs)
    if isinstance(value, Mapping):
        # A lookup table: entries for envs not selected are ignored, but a name must be an env config.
        unknown = sorted(set(value) - set(known_envs))
        if unknown:
            raise ConfigError(
                f"benchmark.budget_steps: unknown env {', '.join(unknown)}; choose: {', '.join(known_envs)}"
            )
        budgets = {env: value.get(env) for env in envs}
    else:
        budgets = dict.fromkeys(envs, value)
    for env, steps in budgets.items():
        if steps is not None and (not isinstance(steps, int) or isinstance(steps, bool) or steps < 1):
            raise ConfigError(f"benchmark.budget_steps.{env} must be an integer >= 1 or null, got {steps!r}")
    return budgets


@hydra_app(
    "benchmark",
    interrupted="finished cells are kept in MLflow, re-run the same command to train the rest",
)
def main(cfg: DictConfig) -> None:
    """``python -m tuner.benchmark``; exit codes as in :mod:`tuner.app` (2 for a bad config, with
    nothing run; 1 when a cell failed)."""
    console = get_console()  # the one rich console: log lines print above the progress bar
    sys.exit(run_benchmark(cfg, console))


if __name__ == "__main__":
    main()
