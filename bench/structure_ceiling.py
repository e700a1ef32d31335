"""How fast can one PPO trial of a given structure be on this CPU, and how close do we come?

A sweep's speed-up over rl-zoo3 depends on the structures its sampler draws (bench/results/sweep_speed.md).
For one structure, this script puts three measured times beside a floor that no fp32 PPO on one core of
this machine can beat:

- Stable-Baselines3 (what rl-zoo3 trains), one trial with the same hyperparameters;
- rltune's single-agent PPO, one trial;
- rltune's population mode: K members trained together to the same budget, wall time / K;
- the floor: the trial's matrix arithmetic (forward passes while collecting, forward and backward passes
  of every minibatch of every epoch, actor and critic) at the best fp32 matmul rate measured on one core
  here, plus the time the environments alone take to step that many times with random actions. It leaves
  out everything else (the optimizer, the losses, the advantages, Python), so it is a lower bound.

SB3's time divided by the floor is the largest speed-up over SB3 any implementation could reach on that
structure here, without changing the arithmetic (no lower precision, no fewer updates).

    python -m bench.structure_ceiling algo.batch_size=64 algo.n_steps=1024 algo.n_epochs=20 \\
        'algo.net_arch=[256,256]' algo.activation=relu algo.ortho_init=false
    python -m bench.structure_ceiling --members 8 --budget-steps 50000 [Hydra overrides on the preset]

Hydra overrides apply to ``experiment=ppo_cartpole`` (rl-zoo3's CartPole base: 8 envs). Needs the bench
extra (Stable-Baselines3); run it from the repository root, as a module. One torch thread throughout.
"""

from __future__ import annotations

import itertools
import math
import time
from dataclasses import dataclass

import numpy as np
import torch

from algorithms import PPO, PPOConfig
from algorithms.common.envs import make_vec_env
from algorithms.common.networks import configure_torch_cpu
from algorithms.ppo import ActorCritic
from algorithms.ppo_population import PopulationPPO
from bench.common import count, script_parser
from bench.throughput import sb3_kwargs
from tuner.compose import algorithm_config, compose_config


@dataclass(frozen=True)
class TrialWork:
    """The arithmetic and env steps of one PPO trial.

    Attributes:
        env_steps: env steps collected (whole rollouts, as PPO collects them: may pass the budget).
        updates: rollouts, each followed by ``n_epochs`` passes over it.
        flops: floating-point operations of the network matmuls (multiply and add counted apart).
    """

    env_steps: int
    updates: int
    flops: float


def layer_sizes(obs_dim: int, hidden: list[int], out_dim: int) -> list[tuple[int, int]]:
    """(fan_in, fan_out) of each layer of an MLP."""
    return list(itertools.pairwise((obs_dim, *hidden, out_dim)))


def trial_work(config: PPOConfig, obs_dim: int, head_dim: int, budget: int) -> TrialWork:
    """Count one trial's matmul FLOPs for an actor (``head_dim`` outputs) and a critic of ``config.net_arch``.

    Per sample, a forward pass costs Σ fan_in·fan_out multiply-adds per network; a backward pass costs
    that again for the weight gradients and that minus the first layer for the input gradients.
    """
    rollout = config.n_envs * config.n_steps
    updates = math.ceil(budget / rollout)
    forward_macs = 0
    train_macs = 0
    for out_dim in (head_dim, 1):
        layers = layer_sizes(obs_dim, list(config.net_arch), out_dim)
        macs = sum(fan_in * fan_out for fan_in, fan_out in layers)
        first = layers[0][0] * layers[0][1]
        forward_macs += macs
        train_macs += macs + macs + (macs - first)
    collect = updates * rollout * forward_macs
    train = updates * config.n_epochs * rollout * train_macs
    return TrialWork(env_steps=updates * rollout, updates=updates, flops=2.0 * (collect + train))


def peak_matmul_flops(size: int = 1024, repeats: int = 50) -> float:
    """The best fp32 matmul rate (FLOP/s) of one thread here: a large square product, best of ``repeats``.

    A rate measured too low would raise the floor and understate the ceiling, so take the best of many
    products after a warm-up (the first ones run before the core has reached its clock).
    """
    a, b = torch.randn(size, size), torch.randn(size, size)
    for _ in range(5):
        torch.mm(a, b)
    best = math.inf
    for _ in range(repeats):
        start = time.perf_counter()
        torch.mm(a, b)
        best = min(best, time.perf_counter() - start)
    return 2.0 * size**3 / best


def env_stepping_seconds(env_id: str, n_envs: int, steps: int, seed: int = 0) -> float:
    """Wall time of ``steps`` env steps (in batches of ``n_envs``) with random actions: the envs alone."""
    envs = make_vec_env(env_id, n_envs, seed, "sync", {})
    try:
        envs.reset(seed=seed)
        envs.action_space.seed(seed)
        actions = [envs.action_space.sample() for _ in range(64)]
        start = time.perf_counter()
        for t in range(math.ceil(steps / n_envs)):
            envs.step(actions[t % len(actions)])
        return time.perf_counter() - start
    finally:
        envs.close()


def sb3_trial_seconds(env_id: str, config: PPOConfig, budget: int, seed: int) -> float:
    """Stable-Baselines3's ``learn`` time for one trial with ``config``'s hyperparameters."""
    import stable_baselines3
    from stable_baselines3.common.env_util import make_vec_env as sb3_vec_env

    env = sb3_vec_env(env_id, n_envs=config.n_envs, seed=seed)
    model = stable_baselines3.PPO("MlpPolicy", env, seed=seed, device="cpu", verbose=0, **sb3_kwargs(config))
    start = time.perf_counter()
    model.learn(budget)
    elapsed = time.perf_counter() - start
    env.close()
    return elapsed


def single_trial_seconds(env_id: str, config: PPOConfig, budget: int, seed: int) -> float:
    """rltune's single-agent ``learn`` time for one trial."""
    with PPO(env_id, config, seed=seed) as agent:
        start = time.perf_counter()
        agent.learn(budget)
        return time.perf_counter() - start


def population_trial_seconds(env_id: str, config: PPOConfig, budget: int, members: int) -> float:
    """rltune's population mode: wall time for ``members`` trials trained together, per trial."""
    with PopulationPPO(env_id, config, n_members=members) as population:
        for slot in range(members):
            population.start_member(slot, config, seed=slot + 1, total_steps=budget)
        start = time.perf_counter()
        while population.active_slots:
            population.learn_iteration()
        return (time.perf_counter() - start) / members


def main() -> None:
    """Measure the three implementations and the floor for one structure; print the comparison."""
    parser = script_parser(__doc__)
    parser.add_argument("--members", type=count, default=8, help="K, the population size")
    parser.add_argument("--budget-steps", type=count, default=50000, help="env steps per trial")
    parser.add_argument("overrides", nargs="*", help="Hydra overrides on experiment=ppo_cartpole")
    args = parser.parse_args()
    configure_torch_cpu(1)
    cfg = compose_config(["experiment=ppo_cartpole", *args.overrides])
    _, config = algorithm_config(dict(cfg.algo))
    env_id = str(cfg.env.id)
    probe = make_vec_env(env_id, 1, 0, "sync", {})
    obs_dim = int(np.prod(probe.single_observation_space.shape))
    head_dim = ActorCritic(obs_dim, probe.single_action_space, config).head_dim  # the actor's outputs
    probe.close()

    work = trial_work(config, obs_dim, head_dim, args.budget_steps)
    peak = peak_matmul_flops()
    env_s = env_stepping_seconds(env_id, config.n_envs, work.env_steps)
    floor = work.flops / peak + env_s
    sb3 = sb3_trial_seconds(env_id, config, args.budget_steps, seed=0)
    single = single_trial_seconds(env_id, config, args.budget_steps, seed=0)
    population = population_trial_seconds(env_id, config, args.budget_steps, args.members)

    print(
        f"{env_id}, {' '.join(args.overrides) or 'the preset'}: one trial = {args.budget_steps} steps "
        f"budget, {work.env_steps} collected in {work.updates} rollouts, {config.n_epochs} epochs each"
    )
    print(
        f"matmul work {work.flops / 1e9:.0f} GFLOP; best fp32 matmul rate, one thread: "
        f"{peak / 1e9:.0f} GFLOP/s → {work.flops / peak:.1f} s; env stepping alone {env_s:.1f} s; "
        f"floor {floor:.1f} s a trial"
    )
    rows = (
        ("Stable-Baselines3", sb3),
        ("rltune, one agent", single),
        (f"rltune population K={args.members}, per trial", population),
        ("floor (arithmetic at peak + env stepping)", floor),
    )
    for label, seconds in rows:
        print(
            f"{label:<44} {seconds:7.1f} s a trial  {sb3 / seconds:5.2f}× SB3  "
            f"{work.flops / seconds / 1e9:5.1f} GFLOP/s"
        )
    print(f"largest possible speed-up over SB3 on this structure here: {sb3 / floor:.2f}×")


if __name__ == "__main__":
    main()
