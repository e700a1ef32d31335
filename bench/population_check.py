"""Does population mode learn as well as single agents? K members vs K independent runs, same config.

Trains one population of K members with identical hyperparameters (a preset) and seeds 1 … K, and K
single-agent PPO runs with seeds 101 … 100+K (disjoint, so the two samples are independent), each for the
same budget, then evaluates every agent on 10 episodes (evaluation seed = seed + 10000) and prints the
IQM of the final returns with a 95 % percentile bootstrap CI for both groups, whether the CIs overlap,
and the wall time of each side (measured in this run, on this machine).

    python -m bench.population_check                                  # CartPole preset, 8 × 25k steps
    python -m bench.population_check --preset ppo_pendulum --budget-steps 100000
    python -m bench.population_check algo.batch_size=64 algo.n_steps=1024 algo.n_epochs=20 \
        'algo.net_arch=[256,256]'                                     # any structure, as Hydra overrides
"""

from __future__ import annotations

import time

import numpy as np

from algorithms import PPO
from algorithms.common.networks import configure_torch_cpu
from algorithms.ppo_population import PopulationPPO
from bench.common import count, script_parser
from tuner.compose import algorithm_config, compose_config
from tuner.stats import bootstrap_ci, iqm

EVAL_EPISODES = 10
EVAL_SEED_OFFSET = 10000


def population_returns(
    env_id: str, config: object, seeds: list[int], budget: int
) -> tuple[list[float], float]:
    """(final eval return per member, wall seconds) of one population trained to ``budget``."""
    start = time.perf_counter()
    with PopulationPPO(env_id, config, n_members=len(seeds)) as population:
        for slot, seed in enumerate(seeds):
            population.start_member(slot, config, seed, budget)
        while population.active_slots:
            population.learn_iteration()
        results = population.evaluate(
            {slot: seed + EVAL_SEED_OFFSET for slot, seed in enumerate(seeds)}, EVAL_EPISODES
        )
    return [results[slot].mean_return for slot in range(len(seeds))], time.perf_counter() - start


def single_returns(env_id: str, config: object, seeds: list[int], budget: int) -> tuple[list[float], float]:
    """(final eval return per run, total wall seconds) of independent single-agent runs."""
    start = time.perf_counter()
    returns = []
    for seed in seeds:
        with PPO(env_id, config, seed=seed) as agent:
            agent.learn(budget)
            returns.append(agent.evaluate(EVAL_EPISODES, seed + EVAL_SEED_OFFSET).mean_return)
    return returns, time.perf_counter() - start


def main() -> None:
    """Train both groups and print the comparison."""
    parser = script_parser(__doc__)
    parser.add_argument("--preset", default="ppo_cartpole", help="a PPO experiment preset in conf/experiment")
    parser.add_argument(
        "--members", type=count, default=8, help="K: population size and number of single runs"
    )
    parser.add_argument("--budget-steps", type=count, default=25000, help="env steps per agent")
    parser.add_argument("overrides", nargs="*", help="Hydra overrides on the preset, e.g. algo.n_epochs=20")
    args = parser.parse_args()
    configure_torch_cpu(1)
    cfg = compose_config([f"experiment={args.preset}", *args.overrides])
    _, config = algorithm_config(dict(cfg.algo))
    env_id = str(cfg.env.id)
    k = args.members
    pop, pop_wall = population_returns(env_id, config, list(range(1, k + 1)), args.budget_steps)
    single, single_wall = single_returns(env_id, config, list(range(101, 101 + k)), args.budget_steps)
    print(
        f"{args.preset} {' '.join(args.overrides)} on {env_id}: {k} agents × {args.budget_steps} steps, "
        f"final eval over {EVAL_EPISODES} episodes"
    )
    rows = []
    for label, returns, wall in (("population", pop, pop_wall), ("single runs", single, single_wall)):
        low, high = bootstrap_ci(returns)
        rows.append((low, high))
        shown = ", ".join(f"{r:.1f}" for r in returns)
        print(
            f"{label:<12} IQM {iqm(returns):8.1f}  95% CI [{low:8.1f}, {high:8.1f}]  "
            f"mean {np.mean(returns):8.1f}  wall {wall:6.1f} s  returns: {shown}"
        )
    (low_a, high_a), (low_b, high_b) = rows
    overlap = low_a <= high_b and low_b <= high_a
    print(
        f"CIs overlap: {'yes' if overlap else 'NO'}; "
        f"speed: population {single_wall / pop_wall:.2f}× the single runs"
    )


if __name__ == "__main__":
    main()
