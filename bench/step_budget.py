"""What one PPO gradient step may cost for rltune to train a preset N× faster than Stable-Baselines3,
beside what the step, and the networks alone, cost in eager PyTorch on this machine.

A PPO iteration collects one rollout and then takes ``n_epochs × minibatches`` gradient steps. The script
times, one torch thread each:

- Stable-Baselines3's ``learn`` at the preset's hyperparameters (SB3's default ``DummyVecEnv``);
- rltune's ``learn`` twice, at the preset's ``n_epochs`` and at one epoch. The difference splits an
  iteration into the part that does not depend on the epochs (collecting the rollout, advantages,
  logging) and the time of one gradient step (forward, losses, backward, clipping, Adam);
- the networks alone: the preset's actor and critic, forward and backward on one minibatch with a
  trivial loss (the sum of their outputs) and one optimizer step, first through autograd and then with
  the backward written out (no autograd at all). No PPO step in eager PyTorch can do less work than
  the first, and the second is what is left without autograd's bookkeeping.

From SB3's time it prints the step time that the target ratio allows, given the measured rest of the
iteration, so that the two can be compared on one machine in one run.

    python -m bench.step_budget                                # rl-zoo3's CartPole set, target 3×
    python -m bench.step_budget --target 3 experiment=ppo_lunarlander

Hydra overrides select and change the preset (default ``experiment=ppo_cartpole``). Needs the bench extra
(Stable-Baselines3); run it from the repository root, as a module.
"""

from __future__ import annotations

import dataclasses
import statistics
import time
from collections.abc import Callable

import torch
from omegaconf import OmegaConf

from algorithms import PPO, PPOConfig
from algorithms.common.networks import WRITTEN_OUT_ACTIVATIONS, configure_torch_cpu
from bench.common import count, script_parser
from bench.kernels import per_call_seconds
from bench.structure_ceiling import sb3_trial_seconds
from tuner.compose import algorithm_config, compose_config


@dataclasses.dataclass(frozen=True)
class IterationSplit:
    """An iteration's time split into the part every epoch shares and the gradient steps.

    Attributes:
        rest_s: seconds an iteration spends outside its gradient steps (rollout, advantages, logging).
        step_s: seconds of one gradient step.
    """

    rest_s: float
    step_s: float


def split_iteration(
    iteration_s: float, one_epoch_s: float, steps: int, steps_one_epoch: int
) -> IterationSplit:
    """Solve ``iteration = rest + steps · step`` from two runs that differ only in their step count."""
    step_s = (iteration_s - one_epoch_s) / (steps - steps_one_epoch)
    return IterationSplit(rest_s=one_epoch_s - steps_one_epoch * step_s, step_s=step_s)


def allowed_step_seconds(sb3_iteration_s: float, target: float, rest_s: float, steps: int) -> float:
    """The longest gradient step that still makes an iteration ``target``× faster than SB3's, given the
    rest of the iteration (negative: the rest alone is already too slow)."""
    return (sb3_iteration_s / target - rest_s) / steps


def gradient_steps(config: PPOConfig) -> int:
    """Gradient steps in one iteration: every epoch, every minibatch of the rollout."""
    rollout = config.n_envs * config.n_steps
    return config.n_epochs * -(-rollout // config.batch_size)  # a last, shorter minibatch counts


def rltune_iteration_seconds(env_id: str, config: PPOConfig, budget: int, seed: int) -> float:
    """Seconds per iteration of rltune's ``learn`` (construction excluded)."""
    with PPO(env_id, config, seed=seed) as agent:
        start = time.perf_counter()
        agent.learn(budget)
        elapsed = time.perf_counter() - start
        return elapsed / (agent.num_steps / (config.n_envs * config.n_steps))


def network_step(agent: PPO, obs: torch.Tensor) -> Callable[[], None]:
    """Forward and backward of the agent's actor and critic on the minibatch ``obs`` (batch, obs_dim)
    with the sum of their outputs as the loss, then the agent's own optimizer step."""

    def step() -> None:
        head, value = agent.policy(obs)
        (head.sum() + value.sum()).backward()
        agent.optimizer.step()

    return step


def network_step_without_autograd(agent: PPO, obs: torch.Tensor) -> Callable[[], None]:
    """The same arithmetic as :func:`network_step` with the backward written out
    (:meth:`~algorithms.common.networks.StackedMLP.backward_written_out`), so no autograd graph is built;
    the gradients go where autograd would put them."""
    net = agent.policy.net
    if not net.writes_out_backward:
        raise ValueError(f"the written-out backward covers {WRITTEN_OUT_ACTIVATIONS}, not {net.activation!r}")
    # d(loss)/d(output): 1 where the loss reads the output (the actor's head, the critic's one column);
    # the padding columns of the narrower head get no gradient, as through autograd.
    out_grad = torch.zeros(len(net.out_dims), obs.shape[0], net.weights[-1].shape[2])
    for member, width in enumerate(net.out_dims):
        out_grad[member, :, :width] = 1.0

    def step() -> None:
        _, inputs = net.forward_keeping_inputs(obs)
        net.backward_written_out(inputs, out_grad)
        agent.optimizer.step()

    return step


def main() -> None:
    """Time SB3, rltune at the preset's epochs and at one, and the networks alone; print the budget."""
    parser = script_parser(__doc__)
    parser.add_argument("--target", type=float, default=3.0, help="speed-up over SB3 to budget for")
    parser.add_argument("--budget-steps", type=count, default=51_200, help="env steps per learn run")
    parser.add_argument("--repeats", type=count, default=3, help="alternating repeats (medians are kept)")
    parser.add_argument("overrides", nargs="*", help="Hydra overrides (default: experiment=ppo_cartpole)")
    args = parser.parse_args()
    configure_torch_cpu(1)
    overrides = args.overrides or ["experiment=ppo_cartpole"]
    cfg = compose_config(overrides)
    _, config = algorithm_config(OmegaConf.to_container(cfg.algo, resolve=True))
    if config.activation not in WRITTEN_OUT_ACTIVATIONS:
        parser.error(f"algo.activation={config.activation!r}: this script covers {WRITTEN_OUT_ACTIVATIONS}")
    env_id = str(cfg.env.id)
    one_epoch = dataclasses.replace(config, n_epochs=1)
    rollout = config.n_envs * config.n_steps
    runs: dict[str, list[float]] = {"sb3": [], "rltune": [], "one epoch": []}
    for _ in range(args.repeats):
        runs["sb3"].append(
            sb3_trial_seconds(env_id, config, args.budget_steps, seed=0) / -(-args.budget_steps // rollout)
        )
        runs["rltune"].append(rltune_iteration_seconds(env_id, config, args.budget_steps, seed=0))
        runs["one epoch"].append(rltune_iteration_seconds(env_id, one_epoch, args.budget_steps, seed=0))
    sb3_s, ours_s, one_s = (statistics.median(runs[k]) for k in ("sb3", "rltune", "one epoch"))
    steps = gradient_steps(config)
    split = split_iteration(ours_s, one_s, steps, gradient_steps(one_epoch))
    allowed = allowed_step_seconds(sb3_s, args.target, split.rest_s, steps)
    with PPO(env_id, config, seed=0) as agent:
        minibatch = config.batch_size
        obs = torch.randn(minibatch, agent.policy.net.weights[0].shape[1])
        network_s = per_call_seconds(network_step(agent, obs), calls=500, rounds=7)
        bare_s = per_call_seconds(network_step_without_autograd(agent, obs), calls=500, rounds=7)

    ms = 1e3
    print(f"{' '.join(overrides)}: {env_id}, {rollout} env steps and {steps} gradient steps an iteration "
          f"(minibatch {minibatch}), median of {args.repeats}")  # fmt: skip
    print(f"Stable-Baselines3            {sb3_s * ms:7.2f} ms an iteration")
    print(f"rltune                       {ours_s * ms:7.2f} ms an iteration ({sb3_s / ours_s:.2f}× SB3): "
          f"{split.rest_s * ms:.2f} ms outside the steps + {steps} × {split.step_s * ms:.3f} ms")  # fmt: skip
    print(f"{args.target:g}× SB3 allows          {sb3_s / args.target * ms:7.2f} ms an iteration: with the "
          f"rest as measured, {allowed * ms:.3f} ms a step")  # fmt: skip
    print(f"networks alone, autograd     {network_s * ms:7.3f} ms a step (forward, backward of a sum, Adam)")
    print(f"networks alone, no autograd  {bare_s * ms:7.3f} ms a step (the backward written out)")


if __name__ == "__main__":
    main()
