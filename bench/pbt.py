"""Population-based training against the other ways to tune, at equal env steps; and one decision's cost.

First, what one PBT decision costs inside the batched population: a PopulationPPO of K members (64×64
actor and critic, Pendulum-v1, so the Gaussian log-std and both normalisers are there) after one
iteration, timing :func:`tuner.pbt.pbt_step` with fresh random scores (the bottom quarter each exploit
a top member and explore).

Then, per env, the same search space (rltune's PPO space without its structural knobs: learning_rate,
gamma, gae_lambda, clip_range, ent_coef, max_grad_norm, vf_coef; the rest fixed by the env's settings
below) and the same budget: ``--members`` trials or members of ``--budget`` env steps each, tuned by

- ``pbt``: rltune's PBT (``tune.method=pbt``, one process, interval a tenth of the budget);
- ``tpe``: TPE with median pruning, two workers, one trial at a time each;
- ``tpe-population``: the same in population mode (one process);
- ``random``: random search, two workers;
- ``ray-pbt``: Ray Tune's ``PopulationBasedTraining`` with the same population, interval, quantile,
  resampling probability and factors, training rltune's PPO as a Ray function trainable that saves and
  restores its own checkpoints, two trials at a time (``ray[tune]``, in the bench extra).

Each method's wall time is the tuning alone. What it returns (rltune: its exported preset, a schedule
for PBT; Ray: its best trial's last config) is then trained from scratch on ``--validate-seeds``
held-out seeds (1001, …) and scored by the IQM of the final evaluation returns with its 95 % bootstrap
CI.

    python -m bench.pbt                                  # both envs, every method
    python -m bench.pbt --envs pendulum --methods pbt,tpe
    python -m bench.pbt --step-cost-only
"""

from __future__ import annotations

import dataclasses
import os
import random
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Mapping, Sequence
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import yaml

from algorithms import PPO, PPOConfig
from algorithms.common.networks import configure_torch_cpu
from algorithms.ppo_population import PopulationPPO
from bench.common import ROOT, count, script_parser
from bench.scores import train_one
from tuner.compose import algorithm_config, compose_config
from tuner.pbt import Lineages, PBTSettings, member_specs, pbt_step, quantile_size
from tuner.search import ParamSpec, to_overrides
from tuner.stats import bootstrap_ci, iqm
from tuner.train import RunSettings, resolve_config

EXPLORED = [
    ParamSpec("learning_rate", "float", low=1e-5, high=2e-3, log=True),
    ParamSpec("gamma", "float", low=1e-4, high=0.03, log=True, reparam="one_minus"),
    ParamSpec("gae_lambda", "float", low=1e-4, high=0.1, log=True, reparam="one_minus"),
    ParamSpec("clip_range", "categorical", choices=(0.1, 0.2, 0.3, 0.4)),
    ParamSpec("ent_coef", "float", low=1e-8, high=0.1, log=True),
    ParamSpec("max_grad_norm", "float", low=0.3, high=2.0, log=True),
    ParamSpec("vf_coef", "float", low=0.2, high=1.0),
]
"""conf/search/ppo.yaml's member hyperparameters: what every method searches here."""
STRUCTURAL_OFF = ["~search.params.n_steps", "~search.params.batch_size", "~search.params.n_epochs"]


# --- one decision's cost ---------------------------------------------------------------------------
def decision_seconds(n_members: int, repeats: int, seed: int = 0) -> list[float]:
    """Wall time of each of ``repeats`` PBT decisions on a trained population of ``n_members``."""
    config = PPOConfig(
        n_envs=2, n_steps=64, batch_size=64, n_epochs=1, normalize_obs=True, normalize_reward=True
    )
    rng = np.random.default_rng(seed)
    specs = member_specs(EXPLORED)
    lineages = Lineages.start([{s.name: getattr(config, s.name) for s in specs} for _ in range(n_members)])
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


def print_step_cost(n_members: int, repeats: int) -> None:
    times = decision_seconds(n_members, repeats)
    n_moves = quantile_size(n_members, PBTSettings(1).quantile)
    median = statistics.median(times)
    print(f"PBT decision, K={n_members}, 64x64 actor and critic, Pendulum-v1, {repeats} decisions:")
    print(
        f"  whole decision ({n_moves} exploit + explore): median {median * 1e3:.3f} ms, "
        f"max {max(times) * 1e3:.3f} ms; one exploit + explore: {median / n_moves * 1e3:.3f} ms"
    )


# --- the comparison ----------------------------------------------------------------------------------
@dataclass(frozen=True)
class Case:
    """An env and the fixed settings every method tunes around."""

    name: str
    overrides: tuple[str, ...]
    budget: int
    """Env steps per trial (per member for PBT)."""

    @property
    def settings(self) -> tuple[str, ...]:
        """The overrides, with an evaluation (and a PBT decision) every tenth of the budget."""
        return (*self.overrides, f"env.eval.freq_steps={self.budget // 10}")


CASES = {
    # rltune's preset (rl-zoo3's values without gSDE).
    "pendulum": Case("pendulum", ("experiment=ppo_pendulum",), 200_000),
    # rl-zoo3's PPO Acrobot-v1 settings (normalised observations and rewards, 16 × 256 rollouts).
    "acrobot": Case(
        "acrobot",
        (
            "env=acrobot",
            "algo.n_envs=16",
            "algo.n_steps=256",
            "algo.batch_size=64",
            "algo.gae_lambda=0.94",
            "algo.gamma=0.99",
            "algo.n_epochs=4",
            "algo.ent_coef=0.0",
            "algo.normalize_obs=true",
            "algo.normalize_reward=true",
        ),
        100_000,
    ),
}


@dataclass(frozen=True)
class MethodResult:
    """What one tuning method took and returned."""

    method: str
    wall_s: float
    n_trials: int
    values: dict[str, Any]
    """The algo values it returns (schedules for rltune's PBT)."""


def rltune_method_overrides(method: str, members: int) -> list[str]:
    """The tune overrides of one of rltune's methods."""
    return {
        "pbt": ["tune.method=pbt", f"tune.population={members}", "sampler=random", "pruner=none"],
        "tpe": ["sampler=tpe", "pruner=median", f"tune.n_trials={members}", "tune.n_workers=2"],
        "tpe-population": ["sampler=tpe", "pruner=median", f"tune.n_trials={members}",
                           f"tune.population={members}"],
        "random": ["sampler=random", "pruner=none", f"tune.n_trials={members}", "tune.n_workers=2"],
    }[method]  # fmt: skip


def run_rltune(case: Case, method: str, members: int, workdir: Path, seed: int) -> MethodResult:
    """One rltune sweep (no validation), timed; the algo node of the preset it exports."""
    name = f"bench_pbt_{case.name}_{method.replace('-', '_')}"
    command = [
        sys.executable, "-m", "tuner.tune", *case.settings, *STRUCTURAL_OFF,
        *rltune_method_overrides(method, members), f"sampler.seed={seed}", "tune.n_seeds=1",
        f"tune.budget_steps={case.budget}", f"pbt.interval_steps={case.budget // 10}",
        "tune.validate_seeds=0", f"tune.study_name={name}", f"tune.export_name={name}",
        f"tune.export_dir={workdir}/export", f"paths.runs_dir={workdir}/{name}",
    ]  # fmt: skip
    start = time.perf_counter()
    done = subprocess.run(command, cwd=ROOT, capture_output=True, text=True)
    wall = time.perf_counter() - start
    if done.returncode != 0:
        raise RuntimeError(f"{method} on {case.name} failed:\n{done.stderr[-2000:]}")
    exported = yaml.safe_load((workdir / "export" / f"{name}.yaml").read_text())
    n_trials = sum(1 for line in done.stdout.splitlines() if line.startswith("trial "))
    return MethodResult(method, wall, n_trials, exported["algo"])


def run_ray_pbt(case: Case, members: int, workdir: Path, seed: int) -> MethodResult:
    """Ray Tune's PBT over the same space and budget; its best trial's last config."""
    # Ray is imported here, not at the top: only this method needs it, and it takes seconds to import.
    import ray
    from ray import tune as ray_tune
    from ray.tune.schedulers import PopulationBasedTraining

    base = resolve_config(compose_config([*case.settings, f"paths.root_dir={ROOT}"]))
    interval = case.budget // 10
    # Ray samples the initial values from param_space and perturbs by hyperparam_mutations, where a list
    # means "move to a neighbouring choice", as rltune's PBT does for a categorical.
    space = {_ray_name(spec): _ray_domain(spec, ray_tune) for spec in EXPLORED}
    mutations = {
        _ray_name(spec): list(spec.choices or ()) if spec.type == "categorical" else space[_ray_name(spec)]
        for spec in EXPLORED
    }
    scheduler = PopulationBasedTraining(
        time_attr="env_steps", metric="mean_return", mode="max", perturbation_interval=interval,
        hyperparam_mutations=mutations, quantile_fraction=0.25, resample_probability=0.25,
        perturbation_factors=(1.2, 0.8),
    )  # fmt: skip
    random.seed(seed)  # Ray's PBT draws its sources and perturbations from the random module
    trainable = ray_tune.with_parameters(
        ray_trainable, base=base, budget=case.budget, interval=interval, seed=seed
    )
    start = time.perf_counter()
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False,
             runtime_env={"env_vars": {"PYTHONPATH": str(ROOT)}})  # fmt: skip
    try:
        tuner = ray_tune.Tuner(
            ray_tune.with_resources(trainable, {"cpu": 1}),
            param_space=space,
            tune_config=ray_tune.TuneConfig(scheduler=scheduler, num_samples=members),
            run_config=ray_tune.RunConfig(storage_path=str(workdir / "ray"), name=f"ray_pbt_{case.name}",
                                          verbose=0),
        )  # fmt: skip
        results = tuner.fit()
        best = results.get_best_result(metric="mean_return", mode="max", scope="last")
    finally:
        ray.shutdown()
    wall = time.perf_counter() - start
    values = {**base["algo"], **_from_ray(best.config)}
    return MethodResult("ray-pbt", wall, members, values)


def _ray_name(spec: ParamSpec) -> str:
    return spec.optuna_name  # one_minus_gamma: Ray scales 1 − γ, as rltune does


def _ray_domain(spec: ParamSpec, ray_tune: Any) -> Any:
    if spec.type == "categorical":
        return ray_tune.choice(list(spec.choices or ()))
    if spec.log:
        return ray_tune.loguniform(spec.low, spec.high)
    return ray_tune.uniform(spec.low, spec.high)


def _from_ray(config: Mapping[str, Any]) -> dict[str, Any]:
    """PPO config values from a Ray trial's config (its keys are the sampled quantities)."""
    return {spec.name: spec.to_value(config[_ray_name(spec)]) for spec in EXPLORED}


def ray_trainable(
    config: dict[str, Any], base: dict[str, Any], budget: int, interval: int, seed: int
) -> None:
    """Ray function trainable: rltune's PPO with the trial's values, ``interval`` env steps a report,
    checkpointed (and restored, with new values, when PBT exploits) through Ray's checkpoints."""
    from ray import tune as ray_tune  # in the Ray worker process

    configure_torch_cpu(1)
    settings = RunSettings.from_config(base)
    _, algo = algorithm_config({**base["algo"], **_from_ray(config)})
    checkpoint = ray_tune.get_checkpoint()
    if checkpoint is None:
        agent = PPO(settings.env_id, algo, seed, settings.env_kwargs, settings.env_backend)
    else:
        with checkpoint.as_directory() as directory:
            agent = PPO.load(Path(directory) / "agent.pt", seed=seed)
        agent.config = algo  # the explored values, from the next iteration on
    with agent:
        while agent.num_steps < budget:
            agent.learn(min(interval, budget - agent.num_steps))
            result = agent.evaluate(settings.eval_episodes, seed=settings.eval_seed)
            with tempfile.TemporaryDirectory() as directory:
                agent.save(Path(directory) / "agent.pt")
                ray_tune.report(
                    {"mean_return": result.mean_return, "env_steps": agent.num_steps},
                    checkpoint=ray_tune.Checkpoint.from_directory(directory),
                )


def held_out_returns(case: Case, values: Mapping[str, Any], seeds: Sequence[int]) -> list[float]:
    """Final evaluation returns of ``values`` trained from scratch on ``seeds``, two at a time."""
    tuned = {k: v for k, v in values.items() if k != "name"}
    overrides = [*case.settings, *to_overrides(tuned), f"total_steps={case.budget}"]
    with ProcessPoolExecutor(max_workers=2) as pool:
        results = list(pool.map(train_one, [overrides] * len(seeds), seeds))
    return [r.mean_return for r in results]


def compare(
    case: Case, methods: Sequence[str], members: int, validate_seeds: Sequence[int], seed: int
) -> None:
    """Tune ``case`` with each method, validate what each returns, print one row per method."""
    total = members * case.budget
    print(f"\n{case.name}: {members} trials/members x {case.budget:,} env steps ({total:,} in all); "
          f"overrides: {' '.join(case.settings)}", flush=True)  # fmt: skip
    header = f"{'method':<15} {'wall s':>7} {'trials':>6}  held-out IQM [95 % CI]"
    print(f"{header} over seeds {list(validate_seeds)}")
    with tempfile.TemporaryDirectory() as tmp:
        for method in methods:
            workdir = Path(tmp)
            if method == "ray-pbt":
                result = run_ray_pbt(case, members, workdir, seed)
            else:
                result = run_rltune(case, method, members, workdir, seed)
            returns = held_out_returns(case, result.values, validate_seeds)
            low, high = bootstrap_ci(returns, iqm)
            shown = ", ".join(f"{r:.1f}" for r in returns)
            print(f"{method:<15} {result.wall_s:>7.0f} {result.n_trials:>6}  {iqm(returns):.1f} "
                  f"[{low:.1f}, {high:.1f}]  ({shown})", flush=True)  # fmt: skip
            changed = {k: v for k, v in result.values.items() if k in {s.name for s in EXPLORED}}
            print(f"{'':<15} returned: {changed}", flush=True)


def main() -> None:
    """Parse arguments; print the decision cost, then the comparison."""
    parser = script_parser(__doc__)
    parser.add_argument("--members", type=count, default=8, help="trials, or PBT members, per method")
    parser.add_argument("--envs", default="pendulum,acrobot", help=f"comma-separated, of {', '.join(CASES)}")
    parser.add_argument("--methods", default="pbt,tpe,tpe-population,random,ray-pbt")
    parser.add_argument("--validate-seeds", type=count, default=5)
    parser.add_argument("--budget", type=count, default=None, help="env steps per trial (default: the env's)")
    parser.add_argument("--seed", type=int, default=0, help="sampler seed (and Ray's)")
    parser.add_argument("--step-cost-only", action="store_true", help="only time one PBT decision")
    parser.add_argument("--step-members", type=count, default=16, help="K for the decision's cost")
    args = parser.parse_args()
    configure_torch_cpu(1)
    os.environ.setdefault("MLFLOW_DISABLE_TELEMETRY", "true")
    print_step_cost(args.step_members, 200)
    if args.step_cost_only:
        return
    seeds = list(range(1001, 1001 + args.validate_seeds))
    for name in args.envs.split(","):
        case = CASES[name] if args.budget is None else dataclasses.replace(CASES[name], budget=args.budget)
        compare(case, args.methods.split(","), args.members, seeds, args.seed)


if __name__ == "__main__":
    main()
