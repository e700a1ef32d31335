"""Fingerprints of learning curves and final weights, for checking that a refactor changed no number.

Trains each case below for a few thousand env steps with a fixed seed, one torch thread, and prints one
line per case: a hash of every iteration's (step, episode returns, losses) and a hash of every tensor and
array the agent saves. Run it on the code before and after a change, on the same machine, and compare
the two outputs line by line; floating-point results may differ between CPU types, so the hashes are not
meant to be committed as expected values.

    python -m bench.fingerprints            # every case
    python -m bench.fingerprints ppo_beta   # some cases, by name
"""

from __future__ import annotations

import argparse
import hashlib
import tempfile
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import numpy as np
import torch

from algorithms import D3QN, PPO, SAC, TD3, D3QNConfig, PPOConfig, SACConfig, TD3Config, TrainState
from algorithms.common.networks import configure_torch_cpu
from algorithms.ppo_population import PopulationPPO, member_configs

OFF_POLICY = dict(net_arch=(32, 32), batch_size=64, learning_starts=100)
PPO_SMALL = dict(n_envs=2, n_steps=64, batch_size=64, n_epochs=2)


def _leaves(value: Any) -> Iterator[bytes]:
    """The bytes of every tensor, array and plain value in ``value``, in a fixed order."""
    if isinstance(value, torch.Tensor):
        yield value.detach().cpu().contiguous().numpy().tobytes()
    elif isinstance(value, np.ndarray):
        yield np.ascontiguousarray(value).tobytes()
    elif isinstance(value, dict):
        for key in sorted(value, key=str):
            yield str(key).encode()
            yield from _leaves(value[key])
    elif isinstance(value, list | tuple):
        for item in value:
            yield from _leaves(item)
    else:
        yield repr(value).encode()


def digest(value: Any) -> str:
    """A short sha256 of :func:`_leaves`."""
    sha = hashlib.sha256()
    for chunk in _leaves(value):
        sha.update(chunk)
    return sha.hexdigest()[:16]


def agent_case(agent_cls: type, env_id: str, config: Any, steps: int) -> tuple[str, str]:
    """Train one agent; (curve hash, hash of everything it saves)."""
    curve: list[tuple] = []

    def record(state: TrainState) -> None:
        curve.append((state.step, tuple(state.episode_returns), tuple(sorted(state.losses.items()))))

    with agent_cls(env_id, config, seed=7) as agent, tempfile.TemporaryDirectory() as tmp:
        agent.learn(steps, record)
        path = Path(tmp) / "model.pt"
        agent.save(path)
        saved = torch.load(path, weights_only=True)
    return digest(curve), digest(saved)


def population_case(members: int, steps: int) -> tuple[str, str]:
    """A population of ``members`` with different learning rates on Pendulum; (curve hash, weights hash)."""
    config = PPOConfig(**PPO_SMALL, normalize_obs=True, normalize_reward=True)
    curve: list[tuple] = []
    with PopulationPPO("Pendulum-v1", config, n_members=members) as population:
        changes = [{"learning_rate": 3e-4 * (k + 1), "clip_range": 0.1 + 0.05 * k} for k in range(members)]
        for slot, member_config in enumerate(member_configs(config, changes)):
            population.start_member(slot, member_config, seed=slot + 1, total_steps=steps)
        while population.active_slots:
            result = population.learn_iteration()
            for slot, state in sorted(result.states.items()):
                losses = tuple(sorted(state.losses.items()))
                curve.append((slot, state.step, tuple(state.episode_returns), losses))
        optimizer = {k: v for k, v in vars(population.optimizer).items() if isinstance(v, torch.Tensor)}
        weights = {"net": population.net.state_dict(), "log_std": population.log_std, "adam": optimizer}
    return digest(curve), digest(weights)


CASES: dict[str, Callable[[], tuple[str, str]]] = {
    "ppo_cartpole": lambda: agent_case(PPO, "CartPole-v1", PPOConfig(**PPO_SMALL), 4096),
    "ppo_pendulum_normalized": lambda: agent_case(
        PPO, "Pendulum-v1", PPOConfig(**PPO_SMALL, normalize_obs=True, normalize_reward=True), 4096
    ),
    "ppo_beta": lambda: agent_case(
        PPO, "Pendulum-v1", PPOConfig(**PPO_SMALL, policy_dist="beta", target_kl=0.01, anneal_lr=True), 4096
    ),
    "population_k4": lambda: population_case(4, 4096),
    "sac": lambda: agent_case(SAC, "Pendulum-v1", SACConfig(**OFF_POLICY), 1000),
    "td3": lambda: agent_case(TD3, "Pendulum-v1", TD3Config(**OFF_POLICY), 1000),
    "d3qn_all_options": lambda: agent_case(
        D3QN,
        "CartPole-v1",
        D3QNConfig(
            **OFF_POLICY, target_update_interval=100, n_step=3, prioritized=True, noisy=True, n_envs=2
        ),
        2000,
    ),
}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("cases", nargs="*", help=f"cases to run (default: all): {', '.join(CASES)}")
    names = parser.parse_args().cases or list(CASES)
    unknown = [name for name in names if name not in CASES]
    if unknown:
        parser.error(f"unknown case {unknown[0]!r}; choose from: {', '.join(CASES)}")
    configure_torch_cpu(1)
    for name in names:
        curve, weights = CASES[name]()
        print(f"{name:<26} curve {curve}  weights {weights}", flush=True)


if __name__ == "__main__":
    main()
