"""Final evaluation return of a training preset over several seeds, with the interquartile mean.

Composes the same Hydra config as ``python -m tuner.train`` (so any preset or override works), trains
one agent per seed in parallel worker processes and evaluates each on separate evaluation envs
(seed + env.eval.seed_offset). Prints one row per seed as it finishes, then the IQM (mean of the
middle 50 %, :func:`tuner.stats.iqm`). No MLflow run is created.

    python -m bench.scores experiment=ppo_cartpole
    python -m bench.scores experiment=ppo_pendulum --seeds 5 --workers 2 total_steps=200000
"""

from __future__ import annotations

import sys
import time
from concurrent.futures import ProcessPoolExecutor, as_completed
from dataclasses import dataclass

import numpy as np

from algorithms.common.networks import configure_torch_cpu
from bench.common import ROOT, count, script_parser
from tuner.compose import compose_config
from tuner.stats import bootstrap_ci, iqm
from tuner.train import RunSettings, build_agent, resolve_config


@dataclass(frozen=True)
class SeedResult:
    """Outcome of one seed's training run."""

    seed: int
    mean_return: float
    std_return: float
    steps: int
    seconds: float
    sps: float
    env_backend: str


def train_one(overrides: list[str], seed: int) -> SeedResult:
    """Train and evaluate one seed (runs in a worker process), with the checks ``tuner.train`` makes."""
    config = resolve_config(compose_config([*overrides, f"seed={seed}", f"paths.root_dir={ROOT}"]))
    settings = RunSettings.from_config(config)
    configure_torch_cpu(settings.torch_threads)
    start = time.perf_counter()
    with build_agent(config, settings) as agent:
        state = agent.learn(settings.total_steps)
        elapsed = time.perf_counter() - start
        result = agent.evaluate(settings.eval_episodes, seed=settings.eval_seed)
        backend = agent.env_backend
    return SeedResult(seed, result.mean_return, result.std_return, state.step, elapsed, state.sps, backend)


def main() -> None:
    """Parse arguments, run the seeds, print the table."""
    parser = script_parser(__doc__)
    parser.add_argument("--seeds", type=count, default=5, help="number of seeds (1, 2, …)")
    parser.add_argument("--first-seed", type=int, default=1)
    parser.add_argument("--workers", type=count, default=2, help="parallel training processes")
    parser.add_argument("overrides", nargs="*", help="Hydra overrides, e.g. experiment=ppo_cartpole")
    args = parser.parse_intermixed_args()  # options may follow the Hydra overrides
    cfg = compose_config([*args.overrides, f"paths.root_dir={ROOT}"])
    seeds = list(range(args.first_seed, args.first_seed + args.seeds))
    print(
        f"{cfg.algo.name} on {cfg.env.id}, {int(cfg.total_steps):,} env steps, seeds {seeds}, "
        f"eval {cfg.env.eval.n_episodes} episodes on separate envs; "
        f"overrides: {' '.join(args.overrides) or '-'}"
    )
    start = time.perf_counter()
    results, n_failed = run_seeds(args.overrides, seeds, args.workers)
    if results:
        returns = [r.mean_return for r in sorted(results, key=lambda r: r.seed)]
        low, high = bootstrap_ci(returns, iqm)  # NaN for one seed
        shown_ci = f" [95 % CI {low:.1f}, {high:.1f}]" if len(returns) > 1 else ""
        print(
            f"IQM {iqm(returns):.1f}{shown_ci}   mean {np.mean(returns):.1f} ± {np.std(returns):.1f}   "
            f"min {min(returns):.1f}   wall {time.perf_counter() - start:.0f} s"
            + (f"   ({len(returns)} of {len(seeds)} seeds)" if n_failed else "")
        )
    if n_failed:
        sys.exit(1)


def run_seeds(overrides: list[str], seeds: list[int], workers: int) -> tuple[list[SeedResult], int]:
    """Train the seeds in ``workers`` processes and print each seed's row as soon as it finishes (a
    failure or a stop later in a run of hours keeps what was printed); a seed that raises is reported
    on one line and the others go on. Returns the finished seeds' results and the number that failed."""
    print(
        f"{'seed':>4} {'final eval return':>18} {'± std':>8} {'env steps':>10} {'sps':>7} {'seconds':>8} "
        "env backend",
        flush=True,
    )
    results: list[SeedResult] = []
    n_failed = 0
    with ProcessPoolExecutor(max_workers=workers) as pool:
        futures = {pool.submit(train_one, overrides, seed): seed for seed in seeds}
        for future in as_completed(futures):
            try:
                r = future.result()
            except Exception as error:  # reported; the exit status says so
                n_failed += 1
                print(f"seed {futures[future]} failed: {type(error).__name__}: {error}", flush=True)
                continue
            results.append(r)
            print(
                f"{r.seed:>4} {r.mean_return:>18.1f} {r.std_return:>8.1f} {r.steps:>10,} "
                f"{r.sps:>7,.0f} {r.seconds:>8.1f} {r.env_backend}",
                flush=True,
            )
    return results, n_failed


if __name__ == "__main__":
    main()
