"""Env backends: each one's envs behave as Gymnasium's same-step-autoreset vector envs do.

Per backend and env id it claims: spaces and dtypes; the same actions from the same state give the
same observations, rewards, terminations and truncations as Gymnasium's own env (bit for bit on the
``vector`` backend, whose resets replay Gymnasium's per-env generators; to float32 rounding on EnvPool,
whose state is set from its first observation); autoreset and the final observation at a truncation;
the same seed gives the same learning curve; a population's slot refill resets only that slot's envs.
Tests that need EnvPool skip when it is not installed, and fail in CI, where `.ci/run` installs it.
"""

from __future__ import annotations

import math
import os
from collections.abc import Callable
from typing import Any

import gymnasium as gym
import numpy as np
import pytest

from algorithms import PPO, ConfigError, PPOConfig
from algorithms.common import env_backends
from algorithms.common.env_backends import installed_backend, resolve_backend
from algorithms.common.envs import EpisodeTracker, make_vec_env
from algorithms.ppo import step_envs
from algorithms.ppo_population import PopulationPPO


def envpool_ids() -> tuple[str, ...]:
    """The ids the EnvPool backend claims; skips (fails in CI) when EnvPool is not installed."""
    backend = installed_backend("envpool")
    if backend is None:
        if os.environ.get("CI") == "true":
            pytest.fail("EnvPool is not installed: .ci/run installs it with make install-envpool")
        pytest.skip('EnvPool is not installed (pip install -e ".[envpool]")')
    return backend.env_ids


ENVPOOL_IDS = (
    "CartPole-v1",
    "Pendulum-v1",
    "Acrobot-v1",
    "MountainCarContinuous-v0",
    "LunarLander-v3",
    "LunarLanderContinuous-v3",
)
CLAIMS = [("vector", "CartPole-v1"), *(("envpool", env_id) for env_id in ENVPOOL_IDS)]


def require(backend: str) -> None:
    if backend == "envpool":
        assert set(envpool_ids()) == set(ENVPOOL_IDS)


def balancing_action(obs: np.ndarray) -> np.ndarray:
    """CartPole actions that keep the pole up for the whole 500 steps (so episodes end by truncation)."""
    return (obs[:, 2] + 0.5 * obs[:, 3] > 0).astype(np.int64)


# --- spaces, dtypes, autoreset ---------------------------------------------------------------------
@pytest.mark.parametrize(("backend", "env_id"), CLAIMS)
def test_spaces_and_dtypes_equal_gymnasium_s(backend: str, env_id: str) -> None:
    require(backend)
    reference = make_vec_env(env_id, 3, 0, backend="gymnasium")
    envs = make_vec_env(env_id, 3, 0, backend=backend)
    try:
        assert envs.single_observation_space == reference.single_observation_space
        assert envs.single_action_space == reference.single_action_space
        obs, _ = envs.reset(seed=4)
        assert obs.shape == (3, *reference.single_observation_space.shape)
        assert obs.dtype == reference.single_observation_space.dtype
        envs.action_space.seed(0)
        for _ in range(30):
            obs, reward, terminated, truncated, _ = envs.step(envs.action_space.sample())
            assert obs.dtype == reference.single_observation_space.dtype
            assert reward.dtype == np.float64 and reward.shape == (3,)
            assert terminated.dtype == np.bool_ and truncated.dtype == np.bool_
    finally:
        envs.close()
        reference.close()


def test_vector_cartpole_replays_gymnasium_s_trajectories_bit_for_bit() -> None:
    """Same seed, same actions: every observation, reward, end flag and final observation equal, through
    terminations (random actions) and truncations at 500 steps (a balancing controller)."""
    reference = make_vec_env("CartPole-v1", 6, 0, backend="gymnasium")
    envs = make_vec_env("CartPole-v1", 6, 0, backend="vector")
    rng = np.random.default_rng(0)
    obs_a, _ = reference.reset(seed=11)
    obs_b, _ = envs.reset(seed=11)
    n_terminated = n_truncated = 0
    for t in range(1200):
        # envs 0-2 balance (truncations), envs 3-5 act at random for the first 600 steps (terminations)
        actions = balancing_action(obs_a)
        if t < 600:
            actions[3:] = rng.integers(0, 2, 3)
        obs_a, reward_a, term_a, trunc_a, info_a = reference.step(actions)
        obs_b, reward_b, term_b, trunc_b, info_b = envs.step(actions)
        np.testing.assert_array_equal(obs_b, obs_a)
        np.testing.assert_array_equal(reward_b, reward_a)
        np.testing.assert_array_equal(term_b, term_a)
        np.testing.assert_array_equal(trunc_b, trunc_a)
        for i in np.flatnonzero(term_a | trunc_a):
            np.testing.assert_array_equal(info_b["final_obs"][i], info_a["final_obs"][i])
        n_terminated += int(term_a.sum())
        n_truncated += int(trunc_a.sum())
    assert n_terminated > 20 and n_truncated >= 3
    reference.close()
    envs.close()


def set_gymnasium_state(env: gym.Env, env_id: str, obs: np.ndarray) -> None:
    """Put Gymnasium's single env into the state that ``obs`` shows."""
    base = env.unwrapped
    if env_id in ("CartPole-v1", "MountainCarContinuous-v0"):
        base.state = obs.astype(np.float64)
    elif env_id == "Pendulum-v1":
        base.state = np.array([math.atan2(obs[1], obs[0]), obs[2]])
    elif env_id == "Acrobot-v1":
        base.state = np.array([math.atan2(obs[1], obs[0]), math.atan2(obs[3], obs[2]), obs[4], obs[5]])
    else:
        raise AssertionError(env_id)


STEP_TESTS: dict[str, tuple[Callable[[np.ndarray, np.random.Generator], np.ndarray], int]] = {
    # env id: (policy, steps compared); each long enough for an episode end
    "CartPole-v1": (lambda obs, rng: balancing_action(obs), 520),
    "Pendulum-v1": (lambda obs, rng: np.zeros((1, 1), np.float32), 220),
    "Acrobot-v1": (lambda obs, rng: np.ones(1, np.int64), 510),  # torque 0: truncated at 500 steps
    "MountainCarContinuous-v0": (lambda obs, rng: np.sign(obs[:, 1:2]).astype(np.float32) + 0.1, 300),
}


@pytest.mark.parametrize("env_id", sorted(STEP_TESTS))
def test_envpool_steps_as_gymnasium_from_the_same_state(env_id: str) -> None:
    """Each step, from the state EnvPool's observation shows, Gymnasium's env given the same action
    reaches the same observation, reward and episode end (to the float32 rounding of the state it was
    put in; the state is set again every step, as both envs amplify rounding differences); at the end
    EnvPool's ``final_obs`` is that last observation and the returned one starts a new episode."""
    assert env_id in envpool_ids()
    policy, n_steps = STEP_TESTS[env_id]
    envs = make_vec_env(env_id, 1, 0, backend="envpool")
    single = gym.make(env_id)
    rng = np.random.default_rng(0)
    obs, _ = envs.reset(seed=3)
    single.reset(seed=0)
    episode_ends = 0
    for _ in range(n_steps):
        set_gymnasium_state(single, env_id, obs[0])
        action = policy(obs, rng)
        obs, reward, terminated, truncated, info = envs.step(action)
        expected, expected_reward, expected_term, expected_trunc, _ = single.step(action[0])
        shown = info["final_obs"][0] if terminated[0] or truncated[0] else obs[0]
        np.testing.assert_allclose(shown, expected, atol=1e-4, rtol=1e-4)
        np.testing.assert_allclose(reward[0], expected_reward, atol=1e-4, rtol=1e-4)
        assert (terminated[0], truncated[0]) == (expected_term, expected_trunc)
        if terminated[0] or truncated[0]:
            episode_ends += 1
            assert not np.allclose(obs[0], shown), "the returned observation starts the next episode"
            single.reset()
    assert episode_ends >= 1
    envs.close()


def pendulum_step_angle_first(obs: np.ndarray, torque: float) -> np.ndarray:
    """Pendulum's next observation when the angle advances by the speed *before* its clip to ±8 (the
    order of Gymnasium's old Pendulum-v0, which EnvPool keeps); Gymnasium's Pendulum-v1 clips first."""
    theta, speed = math.atan2(obs[1], obs[0]), float(obs[2])
    u = min(max(torque, -2.0), 2.0)
    new_speed = speed + (3 * 10.0 / 2 * math.sin(theta) + 3.0 * u) * 0.05
    new_theta = theta + new_speed * 0.05
    return np.array([math.cos(new_theta), math.sin(new_theta), min(max(new_speed, -8.0), 8.0)])


def test_envpool_pendulum_differs_from_gymnasium_s_only_at_the_speed_limit() -> None:
    """With random full-range torques the pendulum spins up to its speed limit. At every step EnvPool's
    observation follows the angle-first order of :func:`pendulum_step_angle_first`; Gymnasium's agrees
    with it wherever the speed stays under the limit and differs where it was clipped (the one
    documented difference; the PPO preset's policy never reaches the limit)."""
    assert "Pendulum-v1" in envpool_ids()
    envs = make_vec_env("Pendulum-v1", 1, 0, backend="envpool")
    single = gym.make("Pendulum-v1")
    rng = np.random.default_rng(1)
    obs, _ = envs.reset(seed=3)
    single.reset(seed=0)
    n_clipped = 0
    for _ in range(2000):
        set_gymnasium_state(single, "Pendulum-v1", obs[0])
        action = rng.uniform(-2.0, 2.0, size=(1, 1)).astype(np.float32)
        expected = pendulum_step_angle_first(obs[0], float(action[0, 0]))
        obs, _, terminated, truncated, info = envs.step(action)
        gymnasium_s = single.step(action[0])[0]
        shown = info["final_obs"][0] if terminated[0] or truncated[0] else obs[0]
        np.testing.assert_allclose(shown, expected, atol=1e-4, rtol=1e-4)
        if abs(expected[2]) < 8.0:
            np.testing.assert_allclose(gymnasium_s, expected, atol=1e-4, rtol=1e-4)
        elif np.abs(gymnasium_s - expected).max() > 1e-3:
            n_clipped += 1
        if terminated[0] or truncated[0]:
            single.reset()
    assert n_clipped >= 5, f"the torques reached the speed limit only {n_clipped} times"
    envs.close()


def lander_heuristic(obs: np.ndarray) -> np.ndarray:
    """Discrete LunarLander actions of Gymnasium's demonstration rule (``lunar_lander.heuristic``),
    for a batch: tilt toward the pad, hover proportionally to the horizontal offset, damp once a leg
    touches."""
    x, y, vx, vy, angle, spin, leg_1, leg_2 = obs.T
    angle_target = np.clip(0.5 * x + vx, -0.4, 0.4)
    angle_todo = (angle_target - angle) * 0.5 - spin
    hover_todo = (0.55 * np.abs(x) - y) * 0.5 - 0.5 * vy
    landed = (leg_1 > 0) | (leg_2 > 0)
    angle_todo = np.where(landed, 0.0, angle_todo)
    hover_todo = np.where(landed, -0.5 * vy, hover_todo)
    actions = np.zeros(len(obs), dtype=np.int64)
    actions[angle_todo > 0.05] = 1
    actions[angle_todo < -0.05] = 3
    actions[(hover_todo > np.abs(angle_todo)) & (hover_todo > 0.05)] = 2
    return actions


def heuristic_returns(backend: str, n_episodes: int) -> np.ndarray:
    """Returns of the first ``n_episodes`` LunarLander episodes flown by :func:`lander_heuristic`."""
    envs = make_vec_env("LunarLander-v3", 8, 0, backend=backend)
    obs, _ = envs.reset(seed=100)
    tracker = EpisodeTracker(8)
    while len(tracker.finished_returns) < n_episodes:
        obs, reward, terminated, truncated, _ = envs.step(lander_heuristic(obs))
        tracker.update(reward, terminated | truncated)
    envs.close()
    return np.array(tracker.finished_returns[:n_episodes])


def test_envpool_lunarlander_lands_the_heuristic_as_gymnasium_s() -> None:
    """Box2D's state cannot be set from outside, so EnvPool's LunarLander port is compared by outcome:
    the same demonstration policy over 48 episodes scores alike on both (means within 25, and the
    landing rate within 15 points)."""
    assert "LunarLander-v3" in envpool_ids()
    ours, theirs = heuristic_returns("envpool", 48), heuristic_returns("gymnasium", 48)
    assert theirs.mean() > 150, "the heuristic flies Gymnasium's lander"
    assert abs(ours.mean() - theirs.mean()) < 25
    assert abs((ours > 200).mean() - (theirs > 200).mean()) < 0.15


@pytest.mark.parametrize("backend", ["gymnasium", "vector", "envpool"])
def test_a_truncated_step_is_bootstrapped_from_the_final_observation(backend: str) -> None:
    """PPO's reward at a time-limit truncation is r + γ·V(final observation), not V(the reset one)."""
    require(backend)
    envs = make_vec_env("CartPole-v1", 2, 0, backend=backend)
    obs, _ = envs.reset(seed=0)
    seen: list[np.ndarray] = []

    def value(final_obs: np.ndarray) -> np.ndarray:
        seen.append(final_obs.copy())
        return final_obs.sum(axis=1)

    for _ in range(500):
        before = obs
        obs, reward, done = step_envs(envs, balancing_action(obs), EpisodeTracker(2), None, value, 0.5)
    assert done.all() and len(seen) == 1, "both envs truncate at the 500th step"
    final = seen[0]
    assert not np.allclose(final, obs), "V was given the final observations, not the new episodes' first"
    assert np.abs(final - before)[:, [0, 2]].max() < 0.05  # position and angle: one step from before
    np.testing.assert_allclose(reward, 1.0 + 0.5 * final.sum(axis=1), rtol=1e-6)
    envs.close()


# --- learning, populations -------------------------------------------------------------------------
SMALL = PPOConfig(n_envs=4, n_steps=32, batch_size=64, n_epochs=2)


@pytest.mark.parametrize("backend", ["vector", "envpool"])
def test_the_same_seed_gives_the_same_curve_twice(backend: str) -> None:
    require(backend)
    curves = [ppo_curve(backend, seed=3) for _ in range(2)]
    assert curves[0] == curves[1] and any(returns for _, _, returns in curves[0])


def ppo_curve(backend: str, seed: int) -> list[tuple]:
    """(step, policy loss, episode returns) per iteration of a small PPO CartPole run on ``backend``."""
    curve: list = []
    with PPO("CartPole-v1", SMALL, seed=seed, env_backend=backend) as agent:
        assert agent.env_backend == backend
        agent.learn(2048, lambda s: curve.append((s.step, s.losses["policy_loss"], s.episode_returns)))
    return curve


def test_vector_gives_the_gymnasium_backend_s_curve() -> None:
    """Its trajectories being Gymnasium's, a PPO run on ``vector`` learns exactly as on ``gymnasium``."""
    assert ppo_curve("gymnasium", seed=5) == ppo_curve("vector", seed=5)


@pytest.mark.parametrize("backend", ["gymnasium", "vector", "envpool"])
def test_a_slot_refill_resets_only_that_slot_s_envs(backend: str) -> None:
    """Two populations trained alike, one with slot 1 restarted half-way: the other members' curves are
    identical, and the restart reset only slot 1's block of the batched env."""
    require(backend)
    curves: list[dict[int, list]] = []
    for restart in (False, True):
        curve: dict[int, list] = {0: [], 1: [], 2: []}
        with PopulationPPO("CartPole-v1", SMALL, n_members=3, env_backend=backend) as population:
            for slot in range(3):
                population.start_member(slot, SMALL, seed=10 * slot, total_steps=4096)
            for iteration in range(8):
                if restart and iteration == 4:
                    masks = spy_resets(population)
                    population.start_member(1, SMALL, seed=99, total_steps=4096)
                    assert len(masks) == 1
                    np.testing.assert_array_equal(np.flatnonzero(masks[0]), np.arange(4, 8))
                for slot, state in population.learn_iteration().states.items():
                    curve[slot].append((state.step, state.episode_returns, state.losses["policy_loss"]))
        curves.append(curve)
    assert curves[0][0] == curves[1][0] and curves[0][2] == curves[1][2]
    assert curves[0][1] != curves[1][1]


def spy_resets(population: PopulationPPO) -> list[np.ndarray]:
    """Record the reset masks of ``population``'s batched env from now on."""
    masks: list[np.ndarray] = []
    original = population.envs.reset

    def reset(**kwargs: Any) -> Any:
        masks.append(kwargs["options"]["reset_mask"].copy())
        return original(**kwargs)

    population.envs.reset = reset  # type: ignore[method-assign]
    return masks


# --- choosing a backend -----------------------------------------------------------------------------
def test_auto_picks_a_tested_faster_backend_else_gymnasium() -> None:
    assert resolve_backend("auto", "CartPole-v1", 8) == "vector"
    assert resolve_backend("auto", "CartPole-v1", 1) == "gymnasium"  # one env: a batched call costs more
    assert resolve_backend("auto", "CartPole-v1", 4) == "gymnasium"  # level at 4 envs
    assert resolve_backend("auto", "MountainCarContinuous-v0", 8) == "gymnasium"  # EnvPool's is slower
    assert resolve_backend("auto", "LunarLanderContinuous-v3", 8) == "gymnasium"  # not compared
    expected = "envpool" if installed_backend("envpool") is not None else "gymnasium"
    assert resolve_backend("auto", "Acrobot-v1", 1) == expected
    assert resolve_backend("auto", "LunarLander-v3", 16) == expected
    assert resolve_backend("auto", "Pendulum-v1", 8) == "gymnasium"  # differs at the speed limit
    assert resolve_backend("gymnasium", "CartPole-v1", 8) == "gymnasium"
    with PPO("CartPole-v1", PPOConfig(n_envs=8), env_backend="auto") as agent:
        assert agent.env_backend == "vector" and type(agent.envs).__name__ == "CartPoleVector"


@pytest.mark.parametrize(
    ("backend", "env_id", "message"),
    [
        (
            "threads",
            "CartPole-v1",
            "env.backend must be one of auto, gymnasium, vector, envpool; got 'threads'",
        ),
        (
            "vector",
            "Pendulum-v1",
            "env.backend=vector has no 'Pendulum-v1'; it covers CartPole-v0, CartPole-v1",
        ),
    ],
)
def test_a_bad_backend_is_one_clear_error(backend: str, env_id: str, message: str) -> None:
    with pytest.raises(ConfigError) as error:
        make_vec_env(env_id, 2, 0, backend=backend)
    assert str(error.value).startswith(message)


def test_envpool_names_the_ids_it_covers() -> None:
    envpool_ids()
    with pytest.raises(ConfigError, match=r"env.backend=envpool has no 'Hopper-v5'; it covers CartPole-v1, "):
        make_vec_env("Hopper-v5", 2, 0, backend="envpool")


def test_a_missing_envpool_names_the_extra(monkeypatch: pytest.MonkeyPatch) -> None:
    class Entry:
        def load(self) -> None:
            raise ModuleNotFoundError("No module named 'envpool'")

    env_backends.plugin_backend.cache_clear()
    monkeypatch.setattr(env_backends, "entry_points", lambda **kwargs: [Entry()])
    try:
        with pytest.raises(ConfigError, match=r"env.backend=envpool needs the 'envpool' extra: pip install"):
            make_vec_env("Pendulum-v1", 2, 0, backend="envpool")
        assert resolve_backend("auto", "Acrobot-v1", 8) == "gymnasium"
    finally:
        env_backends.plugin_backend.cache_clear()
