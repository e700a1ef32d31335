"""Population-based training: what one PBT decision costs inside the batched population.

Builds a PopulationPPO of K members (64×64 actor and critic, Pendulum-v1: Gaussian policy, observation
and reward normalisers, so every piece of state exploit copies is there), trains one iteration, then
times :func:`tuner.pbt.pbt_step` with fresh random scores: the bottom quarter of the members each copy
a top member's weights, Adam state, normaliser statistics and place in training (exploit) and take
explored hyperparameters (explore). Prints the median time of a whole decision and of one exploit +
explore, over ``--repeats`` decisions.

    python -m bench.pbt --members 16
"""

from __future__ import annotations

import statistics
import time

import numpy as np

from algorithms import PPOConfig
from algorithms.common.networks import configure_torch_cpu
from algorithms.ppo_population import PopulationPPO
from bench.common import script_parser
from tuner.pbt import Lineages, PBTSettings, member_specs, pbt_step, quantile_size
from tuner.search import ParamSpec

EXPLORED = [
    ParamSpec("learning_rate", "float", low=1e-5, high=2e-3, log=True),
    ParamSpec("clip_range", "float", low=0.1, high=0.4),
    ParamSpec("gae_lambda", "float", low=1e-4, high=0.1, log=True, reparam="one_minus"),
    ParamSpec("gamma", "float", low=1e-4, high=0.03, log=True, reparam="one_minus"),
    ParamSpec("ent_coef", "float", low=1e-8, high=0.1, log=True),
    ParamSpec("vf_coef", "float", low=0.2, high=1.0),
    ParamSpec("max_grad_norm", "float", low=0.3, high=5.0, log=True),
]
"""Every member hyperparameter, explored over rl-zoo3-like ranges."""


def decision_seconds(n_members: int, repeats: int, seed: int = 0) -> list[float]:
    """Wall time of each of ``repeats`` PBT decisions on a trained population of ``n_members``."""
    config = PPOConfig(
        n_envs=2, n_steps=64, batch_size=64, n_epochs=1, normalize_obs=True, normalize_reward=True
    )
    rng = np.random.default_rng(seed)
    specs = member_specs(EXPLORED)
    initial = [{spec.name: getattr(config, spec.name) for spec in specs} for _ in range(n_members)]
    lineages = Lineages.start(initial)
    settings = PBTSettings(interval_steps=128)
    slots = [(k,) for k in range(n_members)]
    times = []
    with PopulationPPO("Pendulum-v1", config, n_members) as population:
        for k in range(n_members):
            population.start_member(k, config, seed=k, total_steps=10**9)
        population.learn_iteration()
        for _ in range(repeats):
            scores = rng.normal(size=n_members).tolist()
            start = time.perf_counter()
            pbt_step(population, slots, scores, specs, settings, lineages, 128, rng)
            times.append(time.perf_counter() - start)
    return times


def main() -> None:
    """Parse arguments, time the decisions, print the medians."""
    parser = script_parser(__doc__)
    parser.add_argument("--members", type=int, default=16, help="K, members of the population")
    parser.add_argument("--repeats", type=int, default=200, help="decisions timed")
    args = parser.parse_args()
    configure_torch_cpu(1)
    times = decision_seconds(args.members, args.repeats)
    n_moves = quantile_size(args.members, PBTSettings(1).quantile)
    median = statistics.median(times)
    print(f"PBT decision, K={args.members}, 64x64 actor and critic, Pendulum-v1, {args.repeats} decisions")
    print(f"  whole decision ({n_moves} exploit + explore): median {median * 1e3:.3f} ms, "
          f"max {max(times) * 1e3:.3f} ms")  # fmt: skip
    print(f"  one exploit + explore: median {median / n_moves * 1e3:.3f} ms")


if __name__ == "__main__":
    main()
