"""Env steps per second of each env backend, random actions, no learning: the part of a small-network
run that the backend decides (and the order in which ``env.backend=auto`` tries them).

For each env id and number of envs, every backend that covers the id steps its batched env with the
same pre-drawn random actions, alternating backends between repeats; the median of the repeats and the
ratio to the ``gymnasium`` backend are printed. Same-step autoreset included (every backend resets the
envs whose episode ended inside ``step``).

    python -m bench.env_backends [--envs CartPole-v1,Pendulum-v1] [--n-envs 8,64,128] [--steps 2000]
"""

from __future__ import annotations

import statistics
import time

from algorithms.common.env_backends import backends_covering
from algorithms.common.envs import make_vec_env
from bench.common import count, script_parser

DEFAULT_ENVS = "CartPole-v1,Pendulum-v1,Acrobot-v1,MountainCarContinuous-v0,LunarLander-v3"


def steps_per_second(env_id: str, n_envs: int, backend: str, n_steps: int, seed: int) -> float:
    """Env steps/s of ``n_envs`` envs of ``env_id`` on ``backend`` over ``n_steps`` random-action calls."""
    envs = make_vec_env(env_id, n_envs, seed, backend=backend)
    try:
        envs.reset(seed=seed)
        actions = [envs.action_space.sample() for _ in range(n_steps)]
        start = time.perf_counter()
        for action in actions:
            envs.step(action)
        return n_steps * n_envs / (time.perf_counter() - start)
    finally:
        envs.close()


def main() -> None:
    """Print env-steps/s per env id, number of envs and backend, with the ratio to ``gymnasium``."""
    parser = script_parser(__doc__)
    parser.add_argument("--envs", default=DEFAULT_ENVS, help="comma-separated env ids")
    parser.add_argument("--n-envs", default="8,64,128", help="comma-separated numbers of envs")
    parser.add_argument("--steps", type=count, default=2000, help="step calls per measurement")
    parser.add_argument(
        "--repeats", type=count, default=3, help="alternating repeats; the median is reported"
    )
    args = parser.parse_args()
    header = f"{'env id':<26} {'envs':>5} {'backend':<10} {'steps/s':>10} {'× gymnasium':>12}"
    print(header)
    print("-" * len(header))
    for env_id in [e.strip() for e in args.envs.split(",") if e.strip()]:
        for n_envs in [int(n) for n in args.n_envs.split(",")]:
            names = backends_covering(env_id)
            measured: dict[str, list[float]] = {name: [] for name in names}
            for rep in range(args.repeats):
                for name in names:
                    measured[name].append(steps_per_second(env_id, n_envs, name, args.steps, rep))
            base = statistics.median(measured["gymnasium"])
            for name in names:
                sps = statistics.median(measured[name])
                print(f"{env_id:<26} {n_envs:>5} {name:<10} {sps:>10,.0f} {sps / base:>12.2f}", flush=True)


if __name__ == "__main__":
    main()
