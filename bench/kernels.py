"""The kernel choices in algorithms/common, each timed against the plain PyTorch call it replaces.

- ``narrow_linear`` (transposed products) against ``torch.baddbmm`` for a value head, (2, 256, 256) @
  (2, 256, 1), forward and backward.
- ``FlatAdam`` (one flat buffer, ATen's fused Adam) against ``torch.optim.Adam`` with gradient-norm
  clipping, one step, on PPO's default 64×64 actor-critic and on SAC's 256×256 twin critic.
- The written-out update's hidden tanh, in place through numpy (``StackedMLP.forward_keeping_inputs``),
  against ``Tensor.tanh_``, and its derivative (``StackedMLP.backward_written_out``) against the same
  product in torch, on a (2, 256, 64) layer: PPO's default actor and critic at a minibatch of 256. Both
  sides of these two include a copy of the input (~3 µs), so that every call sees the same numbers.

One process, one torch thread, denormals flushed (as training runs). Each case is timed as the median of
several rounds of many calls; prints the time per call of both and their ratio.

    python -m bench.kernels [--rounds 7]
"""

from __future__ import annotations

import statistics
import time
from collections.abc import Callable

import gymnasium as gym
import numpy as np
import torch

from algorithms import PPOConfig
from algorithms.common.networks import configure_torch_cpu, make_twin_critic, narrow_linear
from algorithms.common.optim import FlatAdam, flatten_parameters
from algorithms.ppo import ActorCritic
from bench.common import count, script_parser


def per_call_seconds(fn: Callable[[], object], calls: int, rounds: int) -> float:
    """Median over ``rounds`` of the mean time of ``calls`` calls of ``fn`` (after one warm-up round)."""
    for _ in range(calls):
        fn()
    times = []
    for _ in range(rounds):
        start = time.perf_counter()
        for _ in range(calls):
            fn()
        times.append((time.perf_counter() - start) / calls)
    return statistics.median(times)


def narrow_head_case(rounds: int) -> tuple[float, float]:
    """(baddbmm, narrow_linear) seconds per forward + backward of a (2, 256, 256) @ (2, 256, 1) head."""
    h = torch.randn(2, 256, 256, requires_grad=True)
    weight = torch.randn(2, 256, 1, requires_grad=True)
    bias = torch.randn(2, 1, 1, requires_grad=True)

    def step(
        linear: Callable[[torch.Tensor, torch.Tensor, torch.Tensor], torch.Tensor],
    ) -> Callable[[], None]:
        def run() -> None:
            linear(h, weight, bias).sum().backward()
            h.grad = weight.grad = bias.grad = None

        return run

    plain = per_call_seconds(step(lambda h, w, b: torch.baddbmm(b, h, w)), 300, rounds)
    return plain, per_call_seconds(step(narrow_linear), 300, rounds)


def adam_case(module: torch.nn.Module, rounds: int) -> tuple[float, float]:
    """(torch.optim.Adam with clip_grad_norm_, FlatAdam) seconds per optimizer step on ``module``."""
    params = [p for p in module.parameters() if p.requires_grad]
    for p in params:
        p.grad = torch.randn_like(p)

    def torch_step() -> None:
        torch.nn.utils.clip_grad_norm_(params, 0.5)
        torch_adam.step()

    torch_adam = torch.optim.Adam(params, lr=3e-4, eps=1e-5)
    plain = per_call_seconds(torch_step, 500, rounds)
    flat = flatten_parameters(module.parameters())
    flat_adam = FlatAdam(flat, lr=3e-4, eps=1e-5, max_grad_norm=0.5)

    flat.grad = torch.randn_like(flat)
    return plain, per_call_seconds(flat_adam.step, 500, rounds)


def tanh_case(rounds: int) -> tuple[float, float]:
    """(``Tensor.tanh_``, numpy's tanh in place) seconds per call on a (2, 256, 64) hidden layer, each
    call on a fresh copy of the same pre-activations (repeated tanh would shrink them towards zero)."""
    source, layer = torch.randn(2, 256, 64), torch.empty(2, 256, 64)

    def numpy_tanh() -> None:
        np.tanh(layer.copy_(source).numpy(), out=layer.numpy())

    plain = per_call_seconds(lambda: layer.copy_(source).tanh_(), 2000, rounds)
    return plain, per_call_seconds(numpy_tanh, 2000, rounds)


def tanh_derivative_case(rounds: int) -> tuple[float, float]:
    """(torch's ``grad.mul_(1 - a * a)``, numpy's in-place product) seconds per call on a (2, 256, 64)
    layer's gradient and tanh output ``a``, each call on a fresh copy of the same gradient."""
    source, grad, output = torch.randn(2, 256, 64), torch.empty(2, 256, 64), torch.rand(2, 256, 64)

    def numpy_derivative() -> None:
        grad_array = grad.copy_(source).numpy()
        grad_array *= 1 - output.numpy() * output.numpy()

    plain = per_call_seconds(lambda: grad.copy_(source).mul_(1 - output * output), 2000, rounds)
    return plain, per_call_seconds(numpy_derivative, 2000, rounds)


def main() -> None:
    parser = script_parser(__doc__)
    parser.add_argument("--rounds", type=count, default=7, help="timing rounds per case (the median is kept)")
    args = parser.parse_args()
    configure_torch_cpu(1)
    ppo = ActorCritic(4, gym.spaces.Discrete(2), PPOConfig())
    cases = {
        "value head fwd+bwd, (2,256,256)@(2,256,1)": (
            "baddbmm",
            "narrow_linear",
            narrow_head_case(args.rounds),
        ),
        "Adam step, PPO 64x64 actor-critic": ("torch.optim.Adam", "FlatAdam", adam_case(ppo, args.rounds)),
        "Adam step, SAC 256x256 twin critic": (
            "torch.optim.Adam",
            "FlatAdam",
            adam_case(make_twin_critic(3, 1, (256, 256), "relu"), args.rounds),
        ),
        "hidden tanh in place, (2,256,64)": ("Tensor.tanh_", "numpy tanh", tanh_case(args.rounds)),
        "tanh derivative product, (2,256,64)": (
            "torch mul_",
            "numpy *=",
            tanh_derivative_case(args.rounds),
        ),
    }
    print(f"{'case':45s} {'PyTorch call':>18s} {'µs':>9s} {'rltune':>14s} {'µs':>9s} {'ratio':>7s}")
    for name, (plain_name, ours_name, (plain, ours)) in cases.items():
        ratio = plain / ours
        times = f"{plain_name:>18s} {plain * 1e6:9.1f} {ours_name:>14s} {ours * 1e6:9.1f}"
        print(f"{name:45s} {times} {ratio:6.2f}×")


if __name__ == "__main__":
    main()
