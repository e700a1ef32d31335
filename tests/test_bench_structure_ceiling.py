"""The FLOP count behind bench/structure_ceiling.py's floor."""

from __future__ import annotations

from algorithms import PPOConfig
from bench.structure_ceiling import trial_work


def test_trial_work_counts_rollouts_and_matmul_flops_by_hand() -> None:
    config = PPOConfig(n_envs=8, n_steps=32, batch_size=64, n_epochs=3, net_arch=(64,))
    work = trial_work(config, obs_dim=4, head_dim=2, budget=256)
    # actor 4→64→2: 256 + 128 multiply-adds a forward pass; critic 4→64→1: 256 + 64.
    forward = (256 + 128) + (256 + 64)
    # backward: the weight gradients cost a forward pass, the input gradients all but the first layer.
    train = (3 * 384 - 256) + (3 * 320 - 256)
    assert work.updates == 1
    assert work.env_steps == 256
    assert work.flops == 2 * (256 * forward + 3 * 256 * train)


def test_trial_work_collects_whole_rollouts_past_the_budget() -> None:
    config = PPOConfig(n_envs=8, n_steps=32, batch_size=64, n_epochs=1, net_arch=(64,))
    work = trial_work(config, obs_dim=4, head_dim=2, budget=257)
    assert work.updates == 2
    assert work.env_steps == 512
