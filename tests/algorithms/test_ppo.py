"""PPO's public surface: determinism, persistence, evaluation, error paths, and that it learns."""

from pathlib import Path

import numpy as np
import pytest
import torch

from algorithms import PPO, ConfigError, NonFiniteLossError, PPOConfig, TrainState, UnsupportedSpaceError
from tests.algorithms.toy_envs import register_toy_envs
from tests.helpers import record_curve, saved_and_loaded, score_after_learning


def preset_config(name: str) -> PPOConfig:
    """The PPO hyperparameters of ``conf/experiment/<name>.yaml``."""
    from omegaconf import OmegaConf

    from tuner.compose import algorithm_config, compose_config

    return algorithm_config(
        OmegaConf.to_container(compose_config([f"experiment={name}"]).algo, resolve=True)
    )[1]


@pytest.mark.parametrize(
    ("env_id", "config"),
    [
        ("CartPole-v1", PPOConfig(n_envs=2, n_steps=64, batch_size=32, n_epochs=2)),
        (
            "Pendulum-v1",
            PPOConfig(
                n_envs=2, n_steps=64, batch_size=32, n_epochs=2, normalize_obs=True, normalize_reward=True
            ),
        ),
        ("Pendulum-v1", PPOConfig(n_envs=2, n_steps=64, batch_size=32, n_epochs=2, policy_dist="beta")),
    ],
    ids=["categorical", "gaussian-normalized", "beta"],
)
def test_same_config_and_seed_give_a_bit_identical_learning_curve(env_id: str, config: PPOConfig) -> None:
    with PPO(env_id, config, seed=7) as a, PPO(env_id, config, seed=7) as b:
        curve_a, curve_b = record_curve(a, 1024), record_curve(b, 1024)
        assert curve_a == curve_b
        for pa, pb in zip(a.policy.parameters(), b.policy.parameters(), strict=True):
            assert torch.equal(pa, pb)
    with PPO(env_id, config, seed=8) as c:
        assert record_curve(c, 1024) != curve_a, "a different seed must give a different curve"


def test_save_load_gives_identical_actions_and_eval_return(tmp_path: Path) -> None:
    config = PPOConfig(
        n_envs=2, n_steps=64, batch_size=64, n_epochs=2, normalize_obs=True, normalize_reward=True
    )
    with PPO("Pendulum-v1", config, seed=3) as agent:
        agent.learn(512)
        obs = np.random.default_rng(0).uniform(-1, 1, size=(16, 3)).astype(np.float32)
        with saved_and_loaded(agent, tmp_path / "model.pt", obs, episodes=3, seed=100) as loaded:
            assert loaded.num_steps == agent.num_steps
            for name in ("obs_normalizer", "reward_normalizer"):  # every statistic of both normalisers
                mine, theirs = getattr(agent, name).rms, getattr(loaded, name).rms
                np.testing.assert_array_equal(theirs.mean, mine.mean)
                np.testing.assert_array_equal(theirs.var, mine.var)
                assert theirs.count == mine.count > 512  # every step's observations were folded in
            assert torch.equal(loaded.optimizer.exp_avg_sq, agent.optimizer.exp_avg_sq)
            assert loaded.optimizer.step_count == agent.optimizer.step_count > 0
            assert loaded.config == agent.config


def test_evaluate_runs_exactly_the_requested_episodes_reproducibly() -> None:
    with PPO("CartPole-v1", PPOConfig(n_steps=64, batch_size=64), seed=0) as agent:
        first = agent.evaluate(7, seed=123)
        again = agent.evaluate(7, seed=123)
        assert len(first.returns) == 7 and len(first.lengths) == 7
        assert first.returns.tolist() == again.returns.tolist()
        np.testing.assert_array_equal(first.returns, first.lengths)  # CartPole: +1 per step


def test_callback_can_stop_training_early() -> None:
    with PPO("CartPole-v1", PPOConfig(n_steps=64, batch_size=64, n_epochs=1), seed=0) as agent:

        def stop_after_two(state: TrainState) -> None:
            if state.iteration == 2:
                state.request_stop()

        state = agent.learn(64 * 100, stop_after_two)
        assert state.iteration == 2 and state.step == 128


@pytest.mark.parametrize(
    ("env_id", "fragment"),
    [
        ("rltune_test/MultiDiscreteAction-v0", "MultiDiscrete"),
        ("rltune_test/DictObs-v0", "Dict"),
        ("rltune_test/UnboundedBox-v0", "bounded Box"),
    ],
)
def test_unsupported_spaces_are_rejected_naming_the_space(env_id: str, fragment: str) -> None:
    register_toy_envs()
    with pytest.raises(UnsupportedSpaceError, match=fragment):
        PPO(env_id, PPOConfig(), seed=0)


def test_policy_dist_must_fit_the_action_space() -> None:
    with pytest.raises(ConfigError, match="beta"):
        PPO("CartPole-v1", PPOConfig(policy_dist="beta"), seed=0)


def test_unknown_env_id_is_a_config_error_with_a_suggestion() -> None:
    with pytest.raises(ConfigError, match=r"CartPol.*CartPole"):
        PPO("CartPol-v1", PPOConfig(), seed=0)


def test_non_finite_loss_raises_the_dedicated_error() -> None:
    register_toy_envs()
    with PPO("rltune_test/NaNReward-v0", PPOConfig(n_steps=32, batch_size=32), seed=0) as agent:
        with pytest.raises(NonFiniteLossError, match=r"non-finite (policy_loss|value_loss)") as info:
            agent.learn(64)
        assert info.value.step == 32


def test_actions_are_clipped_to_the_bounds() -> None:
    config = PPOConfig(n_steps=32, batch_size=32, log_std_init=3.0)  # σ ≈ 20 on a ±2 action space
    with PPO("Pendulum-v1", config, seed=0) as agent:
        actions = agent.predict(np.zeros((256, 3), dtype=np.float32), deterministic=False)
        assert actions.min() >= -2.0 and actions.max() <= 2.0
        assert (np.abs(actions) == 2.0).mean() > 0.5


# --- learning smoke runs: short, but they must clearly beat a random policy ---------------------------
def random_policy_return(env_id: str, episodes: int = 20) -> float:
    import gymnasium as gym

    env = gym.make(env_id)
    env.action_space.seed(0)
    total = 0.0
    for ep in range(episodes):
        env.reset(seed=ep)
        done = False
        while not done:
            _, r, term, trunc, _ = env.step(env.action_space.sample())
            total += float(r)
            done = term or trunc
    return total / episodes


def test_discrete_ppo_learns_cartpole() -> None:
    random_score = random_policy_return("CartPole-v1")  # ≈ 22
    zoo = preset_config("ppo_cartpole")  # rl-zoo3's values
    score = score_after_learning(PPO, "CartPole-v1", zoo, 25_000)
    assert score >= 100 > 4 * random_score, f"eval {score:.1f} vs random {random_score:.1f}"


def test_continuous_ppo_learns_pendulum() -> None:
    random_score = random_policy_return("Pendulum-v1", episodes=10)  # ≈ −1200
    config = PPOConfig(
        n_envs=4,
        n_steps=256,
        batch_size=256,
        n_epochs=10,
        gamma=0.9,
        gae_lambda=0.95,
        learning_rate=1e-3,
        normalize_obs=False,
    )
    score = score_after_learning(PPO, "Pendulum-v1", config, 60_000)
    assert score > random_score + 400, f"eval {score:.1f} vs random {random_score:.1f}"


def test_async_vectorization_gives_the_same_curve_as_sync() -> None:
    base = dict(n_envs=2, n_steps=64, batch_size=64, n_epochs=2)
    with (
        PPO("CartPole-v1", PPOConfig(**base), seed=5) as sync_agent,
        PPO("CartPole-v1", PPOConfig(**base, vectorization="async"), seed=5) as async_agent,
    ):
        assert record_curve(sync_agent, 512) == record_curve(async_agent, 512)


def test_module_prefixed_env_id_imports_the_registering_module() -> None:
    with pytest.raises(UnsupportedSpaceError, match="Dict"):
        PPO("tests.algorithms.toy_envs:rltune_test/DictObs-v0", PPOConfig(), seed=0)
    with pytest.raises(ConfigError, match="no_such_module"):
        PPO("no_such_module:Foo-v0", PPOConfig(), seed=0)


class CountingGenerator:
    """A numpy Generator that counts the permutations drawn from it."""

    def __init__(self, rng: np.random.Generator) -> None:
        self.rng = rng
        self.n_permutations = 0

    def permutation(self, n: int) -> np.ndarray:
        self.n_permutations += 1
        return self.rng.permutation(n)

    def __getattr__(self, name: str) -> object:
        return getattr(self.rng, name)


@pytest.mark.parametrize(("batch_size", "n_permutations"), [(128, 0), (32, 3)])
def test_an_epoch_is_shuffled_only_when_it_has_several_minibatches(
    batch_size: int, n_permutations: int
) -> None:
    # One minibatch of the whole rollout: the losses are means over it, so a shuffle would cost an index
    # of every tensor per epoch and change nothing but the order of a float sum.
    config = PPOConfig(n_envs=2, n_steps=64, batch_size=batch_size, n_epochs=3)
    with PPO("CartPole-v1", config, seed=3) as agent:
        agent.rng = CountingGenerator(agent.rng)  # type: ignore[assignment]
        agent.learn(128)  # one rollout, three epochs
        assert agent.rng.n_permutations == n_permutations
