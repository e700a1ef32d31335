"""Env backends: who steps a run's vectorised envs, with one set of semantics whatever the answer.

Every backend returns a :class:`gymnasium.vector.VectorEnv` that behaves like Gymnasium's
``SyncVectorEnv`` in same-step autoreset mode, which is what the agents are written against:

- spaces and dtypes are Gymnasium's for the env id; rewards are float64;
- ``reset(seed=s)`` seeds env ``i`` with ``s + i``; ``reset(seed=[...], options={"reset_mask": mask})``
  resets only the masked envs (Gymnasium's own partial-reset API);
- an env whose episode ends is reset in the same ``step`` call, the returned observation is the new
  episode's first, and the last one is in ``infos["final_obs"][i]`` (``infos["_final_obs"]`` marks
  which), so a time-limit truncation can be bootstrapped from the true final observation.

Backends:

``gymnasium``
    ``gymnasium.make_vec``'s ``SyncVectorEnv`` (or ``AsyncVectorEnv``): one Python env object per env.
``vector``
    Gymnasium's batched implementation of an env (its ``vector_entry_point``), which steps all envs
    with one set of array operations. Gymnasium's batched envs only autoreset on the *next* step and
    reset every env from one random generator, so this module drives their resets itself: each env has
    its own generator seeded ``seed + i`` and draws its initial state as the single env does, so a
    run's trajectories are those of the ``gymnasium`` backend for the same seed and actions. That needs
    the env's reset distribution, hence :data:`VECTOR_ENV_IDS`.
``envpool`` (and any other plugin)
    Registered through the ``rltune.env_backends`` entry point group by an installed package (rltune's
    own ``envbackends.envpool``, installed with the ``envpool`` extra); this package never imports one.
``auto``
    The first backend in :data:`AUTO_ORDER` that is installed and whose ``auto_min_envs`` lists the env
    id (equivalence with Gymnasium tested) with at most that many envs; else ``gymnasium``.
"""

from __future__ import annotations

import dataclasses
import functools
import importlib
import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from importlib.metadata import entry_points
from typing import Any, ClassVar

import gymnasium as gym
import numpy as np
from gymnasium.utils import seeding
from gymnasium.vector import AutoresetMode
from gymnasium.vector.utils import batch_space

from algorithms.common.errors import ConfigError

BACKENDS = ("auto", "gymnasium", "vector", "envpool")
"""Valid values of ``env.backend``."""

VECTORIZATION_MODES = ("sync", "async")

AUTO_ORDER = ("vector", "envpool")
"""Backends ``auto`` tries, fastest first (bench/results/env_backends.md), before ``gymnasium``."""

ENTRY_POINT_GROUP = "rltune.env_backends"
"""Installed packages register backends here: the entry point names an :class:`EnvBackend`."""

PLUGIN_EXTRAS = {"envpool": "envpool"}
"""Plugin backend → the rltune extra that installs it (for the error when it is missing)."""

MakeEnvs = Callable[[str, int, int, Mapping[str, Any]], gym.vector.VectorEnv]


@dataclass(frozen=True)
class EnvBackend:
    """A way to create batched envs.

    Attributes:
        name: the ``env.backend`` value that selects it.
        make: ``make(env_id, n_envs, seed, env_kwargs)`` → a same-step-autoreset VectorEnv, reset with
            ``seed`` already (``reset(seed=seed)`` again restarts the same episodes).
        env_ids: the env ids it can create.
        tested_ids: the ids among those whose equivalence with Gymnasium the test suite checks.
        auto_min_envs: tested id → the fewest envs at which this backend steps it faster than
            Gymnasium's ``SyncVectorEnv`` (bench/results/env_backends.md; a batched call costs more
            than one plain env step); ``auto`` picks it for these ids only.
        reseeds_subsets: a partial reset honours per-env seeds. EnvPool seeds each env once, when the
            pool is made; a partial reset there continues the env's own random stream.
    """

    name: str
    make: MakeEnvs
    env_ids: tuple[str, ...]
    tested_ids: tuple[str, ...]
    auto_min_envs: Mapping[str, int]
    reseeds_subsets: bool = True


def import_env_module(env_id: str) -> str:
    """For ``"package.module:EnvName-v0"`` import the module that registers the env (as
    ``gymnasium.make`` does); return the bare id."""
    if ":" not in env_id:
        return env_id
    module, env_id = env_id.split(":", 1)
    try:
        importlib.import_module(module)
    except ImportError as exc:
        raise ConfigError(f"cannot import {module!r} to register environment {env_id!r}: {exc}") from exc
    return env_id


def make_gymnasium_envs(
    env_id: str, n_envs: int, vectorization: str, env_kwargs: Mapping[str, Any]
) -> gym.vector.VectorEnv:
    """``gymnasium.make_vec`` in same-step autoreset mode (not yet reset); ``vectorization`` is one of
    :data:`VECTORIZATION_MODES` (checked by the caller)."""
    try:
        # The passive API checker and order-enforcing wrappers cost a third of CartPole's step time and
        # check nothing a registered env needs; the time limit (TimeLimit) stays.
        spec = dataclasses.replace(gym.spec(env_id), disable_env_checker=True, order_enforce=False)
        return gym.make_vec(
            spec,
            num_envs=n_envs,
            vectorization_mode=vectorization,
            vector_kwargs={"autoreset_mode": AutoresetMode.SAME_STEP},
            **dict(env_kwargs),
        )
    except (gym.error.Error, TypeError, ImportError, ModuleNotFoundError) as exc:
        # unknown id, a missing extra (box2d, mujoco), or kwargs the env does not take
        raise ConfigError(f"cannot create environment {env_id!r}: {exc}") from exc


class SameStepVectorEnv(gym.vector.VectorEnv):
    """Base of the batched backends: same-step autoreset and partial resets on top of two primitives.

    Subclasses set the spaces and implement :meth:`step_batch` (every env one step, no autoreset) and
    :meth:`reset_envs` (fresh episodes for some envs, optionally reseeding them).
    """

    metadata: ClassVar[dict[str, Any]] = {"autoreset_mode": AutoresetMode.SAME_STEP}

    def __init__(self, n_envs: int, single_observation_space: gym.Space, single_action_space: gym.Space):
        self.num_envs = n_envs
        self.single_observation_space = single_observation_space
        self.single_action_space = single_action_space
        self.observation_space = batch_space(single_observation_space, n_envs)
        self.action_space = batch_space(single_action_space, n_envs)
        self.obs = np.zeros((n_envs, *single_observation_space.shape), single_observation_space.dtype)

    def step_batch(self, actions: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
        """Step every env: (observations, rewards, terminations, truncations), without any reset."""
        raise NotImplementedError

    def reset_envs(self, env_ids: np.ndarray, seeds: Sequence[int | None] | None) -> np.ndarray:
        """Start a new episode in envs ``env_ids`` (reseeded with ``seeds`` where given); their first
        observations, in the order of ``env_ids``."""
        raise NotImplementedError

    def reset(
        self, *, seed: int | Sequence[int | None] | None = None, options: dict[str, Any] | None = None
    ) -> tuple[np.ndarray, dict[str, Any]]:
        """Reset every env, or those of ``options["reset_mask"]``; ``seed``: an int (env i gets
        ``seed + i``), a list with one seed per env, or None (continue each env's random stream)."""
        mask = np.ones(self.num_envs, dtype=bool)
        if options and "reset_mask" in options:
            mask = np.asarray(options["reset_mask"], dtype=bool)
            if mask.shape != (self.num_envs,) or not mask.any():
                raise ValueError(f"reset_mask must be {self.num_envs} booleans, at least one True")
        if isinstance(seed, int | np.integer):
            seed = [int(seed) + i for i in range(self.num_envs)]
        env_ids = np.flatnonzero(mask)
        seeds = None if seed is None else [seed[i] for i in env_ids]
        self.obs[env_ids] = self.reset_envs(env_ids, seeds)
        return self.obs.copy(), {}

    def step(self, actions: Any) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray, dict[str, Any]]:
        """Step every env; an env whose episode ended starts its next one in this same call."""
        obs, rewards, terminated, truncated = self.step_batch(np.asarray(actions))
        obs = np.array(obs, dtype=self.single_observation_space.dtype)
        infos: dict[str, Any] = {}
        done = terminated | truncated
        if done.any():
            env_ids = np.flatnonzero(done)
            final_obs = np.full(self.num_envs, None, dtype=object)
            for i in env_ids:
                final_obs[i] = obs[i].copy()
            infos = {"final_obs": final_obs, "_final_obs": done.copy()}
            obs[env_ids] = self.reset_envs(env_ids, None)
        self.obs = obs
        return obs.copy(), rewards.astype(np.float64), terminated.copy(), truncated.copy(), infos


# --- vector: Gymnasium's batched implementations -----------------------------------------------------
CARTPOLE_RESET_BOUND = 0.05
"""CartPole's reset draws each of the 4 state variables uniformly from ±this (Gymnasium's default)."""


class CartPoleVector(SameStepVectorEnv):
    """Gymnasium's ``CartPoleVectorEnv`` stepping every env at once; resets drawn per env, as
    ``CartPoleEnv`` draws them, so the trajectories are the single env's."""

    def __init__(self, env_id: str, n_envs: int, env_kwargs: Mapping[str, Any]):
        try:
            self.inner = gym.make_vec(env_id, num_envs=n_envs, vectorization_mode="vector_entry_point",
                                      **dict(env_kwargs))  # fmt: skip
        except (gym.error.Error, TypeError) as exc:
            raise ConfigError(f"cannot create environment {env_id!r} (env.backend=vector): {exc}") from exc
        base = self.inner.unwrapped
        super().__init__(n_envs, base.single_observation_space, base.single_action_space)
        self.base = base
        self.rngs = [seeding.np_random(i)[0] for i in range(n_envs)]
        base.reset(seed=0)  # allocates the state

    def step_batch(self, actions: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
        obs, rewards, terminated, truncated, _ = self.base.step(actions)
        self.base.prev_done[:] = False  # resets are ours, in this same step
        return obs, rewards, terminated, truncated

    def reset_envs(self, env_ids: np.ndarray, seeds: Sequence[int | None] | None) -> np.ndarray:
        bound = CARTPOLE_RESET_BOUND
        for j, i in enumerate(env_ids):
            if seeds is not None and seeds[j] is not None:
                self.rngs[i] = seeding.np_random(int(seeds[j]))[0]
            self.base.state[:, i] = self.rngs[i].uniform(low=-bound, high=bound, size=(4,))
        self.base.steps[env_ids] = 0
        self.base.prev_done[env_ids] = False
        return self.base.state[:, env_ids].T.astype(np.float32)

    def close(self, **kwargs: Any) -> None:
        self.inner.close()


VECTOR_ENV_IDS = ("CartPole-v0", "CartPole-v1")
"""Env ids with a batched implementation in Gymnasium that the ``vector`` backend drives."""

VECTOR_AUTO_MIN_ENVS = 8
"""From this many envs ``auto`` runs CartPole on ``vector``: level with Gymnasium's at 4, 1.5× at 8
(bench/results/env_backends.md)."""


def make_vector_envs(
    env_id: str, n_envs: int, seed: int, env_kwargs: Mapping[str, Any]
) -> gym.vector.VectorEnv:
    """The ``vector`` backend's envs for ``env_id``, reset with ``seed``."""
    envs = CartPoleVector(env_id, n_envs, env_kwargs)
    envs.reset(seed=seed)
    return envs


VECTOR_BACKEND = EnvBackend(
    "vector",
    make_vector_envs,
    VECTOR_ENV_IDS,
    VECTOR_ENV_IDS,
    dict.fromkeys(VECTOR_ENV_IDS, VECTOR_AUTO_MIN_ENVS),
)


# --- the registry ----------------------------------------------------------------------------------
@functools.cache
def plugin_backend(name: str) -> EnvBackend | None:
    """The backend an installed package registers as ``name``; None when none does.

    ConfigError naming the extra when the package registers it but cannot import its engine."""
    for entry in entry_points(group=ENTRY_POINT_GROUP, name=name):
        try:
            backend = entry.load()
        except ImportError as exc:
            raise ConfigError(f"{missing_extra(name)} ({exc})") from None
        return backend if isinstance(backend, EnvBackend) else None
    return None


def missing_extra(name: str) -> str:
    """The message for a plugin backend that cannot run here: the extra that installs it."""
    extra = PLUGIN_EXTRAS.get(name, name)
    return f'env.backend={name} needs the {extra!r} extra: pip install -e ".[{extra}]"'


def installed_backend(name: str) -> EnvBackend | None:
    """The backend ``name`` when it can run here (built in, or a plugin whose engine imports)."""
    if name == "vector":
        return VECTOR_BACKEND
    try:
        return plugin_backend(name)
    except ConfigError:
        return None


def check_backend(backend: str) -> str:
    """``backend`` when it is a valid ``env.backend`` value; ConfigError naming the choices otherwise."""
    if backend not in BACKENDS:
        raise ConfigError(f"env.backend must be one of {', '.join(BACKENDS)}; got {backend!r}")
    return backend


def backends_covering(env_id: str) -> list[str]:
    """The concrete backends that can run here and create ``env_id``, ``gymnasium`` first."""
    names = ["gymnasium"]
    for name in ("vector", "envpool"):
        found = installed_backend(name)
        if found is not None and env_id in found.env_ids:
            names.append(name)
    return names


def resolve_backend(backend: str, env_id: str, n_envs: int) -> str:
    """The concrete backend ``backend`` means for ``n_envs`` envs of ``env_id`` (``auto`` → the
    fastest tested one)."""
    if check_backend(backend) != "auto":
        return backend
    env_id = env_id.split(":", 1)[-1]  # "package.module:EnvName-v0": the id after the module
    for name in AUTO_ORDER:
        found = installed_backend(name)
        if found is not None and n_envs >= found.auto_min_envs.get(env_id, math.inf):
            return name
    return "gymnasium"


def backend_for(name: str, env_id: str) -> EnvBackend:
    """The installed backend ``name``, checked to cover ``env_id``; ConfigError naming the choices."""
    found = VECTOR_BACKEND if name == "vector" else plugin_backend(name)
    if found is None:
        raise ConfigError(missing_extra(name))
    if env_id not in found.env_ids:
        raise ConfigError(
            f"env.backend={name} has no {env_id!r}; it covers {', '.join(found.env_ids)} "
            "(env.backend=gymnasium covers every registered id)"
        )
    return found
