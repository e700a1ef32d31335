"""Training throughput of rltune's agents against Stable-Baselines3's with identical hyperparameters.

PPO on CartPole-v1 (SB3's defaults and rl-zoo3's tuned set) and on LunarLander-v3 (rl-zoo3's set); D3QN
with every option off against SB3's DQN on CartPole-v1 (SB3's defaults), and the full D3QN alone; SAC
and TD3 on Pendulum-v1 with one gradient step per env step, batch 256 and two 256-unit layers (where
SB3's cost is measured); SAC-Discrete on CartPole-v1 at the same network, batch and update rate, beside
rltune's D3QN at those settings (SB3 has no SAC-Discrete: its rows are rltune's alone).

Both agents train on the same env for the same number of env steps with one torch thread; the time of
``learn`` alone is measured (model and env construction excluded for both). rltune runs once per env
backend that covers the env (gymnasium, vector, envpool: one row each); SB3 uses its default
``DummyVecEnv``. Prints env-steps/s of each and the ratio rltune / SB3. Needs the ``bench`` extra
(``make bench`` installs it, with EnvPool).

    python -m bench.throughput [--steps-scale 1.0] [--repeats 1] [--algos ppo,d3qn,sac,td3,sacd]
                               [--backends gymnasium,vector,envpool]
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch

from algorithms import ALGORITHMS, PPOConfig, build_config, get_algorithm
from algorithms.common.env_backends import BACKENDS, backends_covering
from algorithms.common.networks import configure_torch_cpu
from bench.common import ROOT, count, script_parser


@dataclass(frozen=True)
class Case:
    """One comparison: an env, a step budget and the hyperparameters both libraries get."""

    name: str
    env_id: str
    steps: int
    config: Any  # the rltune config dataclass of ``algo``
    algo: str = "ppo"
    sb3: bool = True  # False: rltune only (no SB3 equivalent), its env-steps/s printed alone


# The hyperparameters both libraries name alike, passed to SB3 as they are.
PPO_SHARED_FIELDS = (
    "n_steps", "batch_size", "n_epochs", "gamma", "gae_lambda", "clip_range_vf", "normalize_advantage",
    "ent_coef", "vf_coef", "max_grad_norm", "target_kl",
)  # fmt: skip
REPLAY_SHARED_FIELDS = (
    "learning_rate", "buffer_size", "learning_starts", "batch_size", "tau", "gamma", "train_freq",
    "gradient_steps",
)  # fmt: skip


def same_named(config: Any, fields: tuple[str, ...]) -> dict[str, Any]:
    """``config``'s values of ``fields``, keyed by the same names."""
    return {name: getattr(config, name) for name in fields}


def _linear(start: float) -> Callable[[float], float]:
    """SB3 schedule: ``start`` × progress_remaining (rl-zoo3's ``lin_<start>``)."""
    return lambda progress_remaining: progress_remaining * start


def sb3_kwargs(config: PPOConfig) -> dict[str, Any]:
    """The Stable-Baselines3 PPO arguments equal to ``config`` (refuses settings SB3 cannot mirror)."""
    unsupported = {
        "normalize_obs": config.normalize_obs,
        "normalize_reward": config.normalize_reward,
        "policy_dist": config.policy_dist != "auto",
    }
    if any(unsupported.values()):
        raise ValueError(
            f"no SB3 equivalent without wrappers for: {[k for k, v in unsupported.items() if v]}"
        )
    activation = {"tanh": torch.nn.Tanh, "relu": torch.nn.ReLU, "elu": torch.nn.ELU, "gelu": torch.nn.GELU}
    arch = list(config.net_arch)
    return dict(
        same_named(config, PPO_SHARED_FIELDS),
        learning_rate=_linear(config.learning_rate) if config.anneal_lr else config.learning_rate,
        clip_range=_linear(config.clip_range) if config.anneal_clip_range else config.clip_range,
        policy_kwargs=dict(
            net_arch=dict(pi=arch, vf=arch),
            activation_fn=activation[config.activation],
            ortho_init=config.ortho_init,
            log_std_init=config.log_std_init,
            optimizer_kwargs=dict(eps=config.adam_eps),
        ),
    )


def cases() -> list[Case]:
    """SB3's PPO defaults, and rl-zoo3's tuned CartPole-v1 set as rltune's preset carries it."""
    from omegaconf import OmegaConf

    from tuner.compose import algorithm_config, compose_config

    preset = compose_config(["experiment=ppo_cartpole", f"paths.root_dir={ROOT}"])
    _, zoo = algorithm_config(OmegaConf.to_container(preset.algo, resolve=True))
    lunar = compose_config(["experiment=ppo_lunarlander", f"paths.root_dir={ROOT}"])
    _, lunar_zoo = algorithm_config(OmegaConf.to_container(lunar.algo, resolve=True))
    cases = [
        Case("PPO CartPole-v1, SB3 defaults", "CartPole-v1", 40_960, PPOConfig()),
        Case("PPO CartPole-v1, rl-zoo3 set", preset.env.id, int(preset.total_steps), zoo),
        Case("PPO LunarLander-v3, rl-zoo3 set", lunar.env.id, 65_536, lunar_zoo),
    ]
    if "d3qn" in ALGORITHMS:  # SB3's DQN defaults, then every D3QN option on
        plain = build_config("d3qn", {"dueling": False, "double_q": False})
        cases.append(Case("DQN CartPole-v1, SB3 defaults", "CartPole-v1", 50_000, plain, "d3qn"))
        full = build_config("d3qn", {"n_step": 3, "prioritized": True, "noisy": True})
        cases.append(Case("D3QN CartPole-v1, all options", "CartPole-v1", 50_000, full, "d3qn", sb3=False))
    for algo in ("sac", "td3"):
        if algo in ALGORITHMS:  # one update per step, batch 256, 256x256: SB3's update dominates its time
            config = build_config(algo, {"net_arch": [256, 256], "batch_size": 256, "train_freq": 1})
            cases.append(Case(f"{algo.upper()} Pendulum-v1, 256x256", "Pendulum-v1", 3_000, config, algo))
    if "sacd" in ALGORITHMS:  # SB3 has no SAC-Discrete: beside rltune's D3QN at the same network and batch
        same = {"net_arch": [256, 256], "batch_size": 256, "train_freq": 1, "gradient_steps": 1}
        for algo in ("sacd", "d3qn"):
            config = build_config(algo, same)
            cases.append(
                Case(f"{algo.upper()} CartPole-v1, 256x256", "CartPole-v1", 3_000, config, algo, sb3=False)
            )
    return cases


def sb3_replay_kwargs(config: Any) -> dict[str, Any]:
    """The Stable-Baselines3 arguments every replay-based agent (SAC, TD3, DQN) shares with ``config``."""
    if config.activation != "relu":
        raise ValueError("the SB3 comparison uses ReLU, as both libraries default to")
    return dict(
        same_named(config, REPLAY_SHARED_FIELDS),
        policy_kwargs=dict(net_arch=list(config.net_arch), activation_fn=torch.nn.ReLU),
    )


def sb3_off_policy_kwargs(algo: str, config: Any, env_id: str) -> dict[str, Any]:
    """The Stable-Baselines3 SAC / TD3 arguments equal to rltune's ``config``."""
    common = sb3_replay_kwargs(config)
    if algo == "sac":
        if config.actor_learning_rate is not None or config.critic_learning_rate is not None:
            raise ValueError("SB3's SAC has one learning rate")
        if config.target_entropy_scale != 1.0:
            raise ValueError("SB3's automatic target entropy is -|A| (target_entropy_scale 1)")
        return dict(
            common,
            ent_coef=config.ent_coef if config.ent_coef != "auto" else f"auto_{config.init_ent_coef}",
            target_update_interval=config.target_update_interval,
            target_entropy="auto",
        )
    import gymnasium as gym
    import numpy as np
    from stable_baselines3.common.noise import NormalActionNoise

    dims = gym.spec(env_id).make().action_space.shape[0]
    return dict(
        common,
        policy_delay=config.policy_delay,
        target_policy_noise=config.target_policy_noise,
        target_noise_clip=config.target_noise_clip,
        action_noise=NormalActionNoise(np.zeros(dims), config.exploration_noise * np.ones(dims)),
    )


def sb3_dqn_kwargs(config: Any) -> dict[str, Any]:
    """The Stable-Baselines3 DQN arguments equal to rltune's D3QN ``config`` with every option off."""
    options = {
        "dueling": config.dueling,
        "double_q": config.double_q,
        "n_step": config.n_step > 1,
        "prioritized": config.prioritized,
        "noisy": config.noisy,
    }
    if any(options.values()):
        raise ValueError(f"SB3's DQN has none of: {[k for k, v in options.items() if v]}")
    return dict(
        sb3_replay_kwargs(config),
        target_update_interval=config.target_update_interval,
        exploration_fraction=config.exploration_fraction,
        exploration_initial_eps=config.exploration_initial_eps,
        exploration_final_eps=config.exploration_final_eps,
        max_grad_norm=config.max_grad_norm,
    )


def run_ours(case: Case, steps: int, seed: int, backend: str) -> float:
    """rltune's env-steps/s for ``case`` with its envs on ``backend``."""
    agent_cls = get_algorithm(case.algo).agent_cls
    with agent_cls(case.env_id, case.config, seed=seed, env_backend=backend) as agent:
        start = time.perf_counter()
        agent.learn(steps)
        return steps_taken(agent.num_steps, time.perf_counter() - start)


def run_sb3(case: Case, steps: int, seed: int) -> float:
    """Stable-Baselines3's env-steps/s for ``case``."""
    import stable_baselines3
    from stable_baselines3.common.env_util import make_vec_env

    env = make_vec_env(case.env_id, n_envs=case.config.n_envs, seed=seed)
    if case.algo == "ppo":
        kwargs = sb3_kwargs(case.config)
    elif case.algo == "d3qn":
        kwargs = sb3_dqn_kwargs(case.config)
    else:
        kwargs = sb3_off_policy_kwargs(case.algo, case.config, case.env_id)
    model_cls = getattr(stable_baselines3, "DQN" if case.algo == "d3qn" else case.algo.upper())
    model = model_cls("MlpPolicy", env, seed=seed, device="cpu", verbose=0, **kwargs)
    start = time.perf_counter()
    model.learn(steps)
    elapsed = time.perf_counter() - start
    env.close()
    return steps_taken(model.num_timesteps, elapsed)


def steps_taken(steps: int, seconds: float) -> float:
    """Env steps per second."""
    return steps / seconds


def main() -> None:
    """Run every case and print a table of env-steps/s and ratios."""
    parser = script_parser(__doc__)
    parser.add_argument("--steps-scale", type=float, default=1.0, help="multiply each case's step budget")
    parser.add_argument(
        "--repeats", type=count, default=1, help="alternating repeats; the median is reported"
    )
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument(
        "--algos", default="", help="comma-separated algorithms to run (default: all), e.g. sac,td3"
    )
    parser.add_argument("--backends", default="", help="comma-separated env backends (default: all here)")
    args = parser.parse_args()
    selected = _names(parser, "--algos", args.algos, sorted(ALGORITHMS))
    wanted = _names(parser, "--backends", args.backends, [b for b in BACKENDS if b != "auto"])
    configure_torch_cpu(1)
    try:
        import stable_baselines3
    except ImportError:
        sys.exit("error: Stable-Baselines3 is not installed; run `make bench` (installs the bench extra)")

    print(
        f"torch {torch.__version__}, SB3 {stable_baselines3.__version__}, 1 torch thread, "
        f"median of {args.repeats}"
    )
    header = f"{'case':<32} {'backend':<9} {'steps':>8} {'rltune sps':>11} {'SB3 sps':>9} {'ratio':>6}"
    print(header)
    print("-" * len(header))
    for case in cases():
        if selected and case.algo not in selected:
            continue
        print_case(case, max(1, int(case.steps * args.steps_scale)), args.repeats, args.seed, wanted)


def _names(parser: argparse.ArgumentParser, flag: str, text: str, valid: list[str]) -> set[str]:
    """The comma-separated names of ``text`` (empty: all), or exit 2 with one line naming the first
    unknown one and the valid choices."""
    names = {name.strip().lower() for name in text.split(",") if name.strip()}
    unknown = sorted(names - set(valid))
    if unknown:
        parser.error(f"{flag}={text}: unknown {unknown[0]!r}; choose from {valid}")
    return names


def print_case(case: Case, steps: int, repeats: int, seed: int, wanted: set[str]) -> None:
    """Run ``case`` ``repeats`` times on each backend and SB3, alternating; print a row per backend."""
    names = [name for name in backends_covering(case.env_id) if not wanted or name in wanted]
    if not names:  # none of the selected backends runs this env: nothing to compare SB3 with
        return
    ours: dict[str, list[float]] = {name: [] for name in names}
    theirs = []
    for rep in range(repeats):
        for name in names:
            ours[name].append(run_ours(case, steps, seed + rep, name))
        if case.sb3:
            theirs.append(run_sb3(case, steps, seed + rep))
    for name in names:
        o = statistics.median(ours[name])
        if not case.sb3:
            print(f"{case.name:<32} {name:<9} {steps:>8} {o:>11,.0f} {'-':>9} {'-':>6}", flush=True)
            continue
        t = statistics.median(theirs)
        print(f"{case.name:<32} {name:<9} {steps:>8} {o:>11,.0f} {t:>9,.0f} {o / t:>6.2f}", flush=True)


if __name__ == "__main__":
    main()
