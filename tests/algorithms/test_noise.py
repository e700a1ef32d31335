"""Coloured exploration noise (noise_color): its spectrum and variance; SAC and TD3 explore with it."""

from __future__ import annotations

from typing import Any

import numpy as np
import pytest

from algorithms import SAC, TD3, SACConfig, TD3Config
from algorithms.common.noise import ColoredNoise, colored_sequences


def spectral_slope(sequences: np.ndarray) -> float:
    """The slope of log power against log frequency, power averaged over the streams (columns)."""
    power = np.mean(np.abs(np.fft.rfft(sequences, axis=0)) ** 2, axis=1)[1:]
    freqs = np.fft.rfftfreq(len(sequences))[1:]
    return float(np.polyfit(np.log(freqs), np.log(power), 1)[0])


def lag_one_autocorrelation(sequences: np.ndarray) -> float:
    """The mean over streams (columns) of the correlation between consecutive steps."""
    return float(np.mean([np.corrcoef(s[:-1], s[1:])[0, 1] for s in sequences.T]))


@pytest.mark.parametrize("seq_len", [1000, 999])
@pytest.mark.parametrize("beta", [0.0, 1.0, 2.0])
def test_sequences_have_unit_variance_and_a_power_spectrum_falling_as_one_over_f_to_the_beta(
    beta: float, seq_len: int
) -> None:
    sequences = colored_sequences(beta, seq_len, 1000, np.random.default_rng(0))
    assert sequences.shape == (seq_len, 1000) and sequences.dtype == np.float32
    assert sequences.var() == pytest.approx(1.0, abs=0.05)
    assert spectral_slope(sequences) == pytest.approx(-beta, abs=0.05)
    # Pink and red noise keep their sign from step to step; white noise does not.
    expected = {0.0: (-0.02, 0.02), 1.0: (0.6, 0.9), 2.0: (0.98, 1.0)}[beta]
    assert expected[0] < lag_one_autocorrelation(sequences) < expected[1]
    # Streams are independent of each other.
    assert abs(np.corrcoef(sequences.T)[np.triu_indices(1000, 1)].mean()) < 0.02


def test_white_noise_is_the_generators_own_standard_normal_draws() -> None:
    """noise_color=0 leaves SAC and TD3 exploring exactly as before the option existed."""
    noise = ColoredNoise(0.0, 1000, (4, 2), np.random.default_rng(7))
    reference = np.random.default_rng(7)
    for _ in range(5):
        np.testing.assert_array_equal(noise.sample(), reference.standard_normal((4, 2), dtype=np.float32))


def test_a_stream_runs_on_past_its_sequence_length_and_a_seed_fixes_it() -> None:
    def draws(seed: int) -> np.ndarray:
        noise = ColoredNoise(1.0, 50, (3, 2), np.random.default_rng(seed))
        return np.stack([noise.sample() for _ in range(120)])  # two new sequences on the way

    first = draws(0)
    assert first.shape == (120, 3, 2)
    np.testing.assert_array_equal(first, draws(0))
    assert not np.array_equal(first, draws(1))
    assert not np.array_equal(first[:50], first[50:100])  # each sequence is drawn afresh


def exploration_deviations(agent: Any, n_steps: int) -> np.ndarray:
    """Exploring minus deterministic actions on one fixed observation, per step: (n_steps, n_envs)."""
    obs = np.zeros((agent.runner.n_envs, agent.runner.obs_dim), dtype=np.float32)
    greedy = agent._act(obs) if isinstance(agent, TD3) else agent.actor.act_numpy(obs, None)
    return np.stack([(agent._explore(obs) - greedy)[:, 0] for _ in range(n_steps)])


@pytest.mark.parametrize(
    ("cls", "config_cls", "extra"),
    [(SAC, SACConfig, {}), (TD3, TD3Config, {"exploration_noise": 0.1})],
    ids=["sac", "td3"],
)
def test_sac_and_td3_explore_with_noise_correlated_over_time_when_coloured(
    cls: type, config_cls: type, extra: dict[str, Any]
) -> None:
    autocorrelations = {}
    for beta in (0.0, 1.0):
        config = config_cls(net_arch=(16, 16), n_envs=2, noise_color=beta, noise_seq_len=500, **extra)
        with cls("MountainCarContinuous-v0", config, seed=0) as agent:
            deviations = exploration_deviations(agent, 500)
        autocorrelations[beta] = lag_one_autocorrelation(deviations)
    assert abs(autocorrelations[0.0]) < 0.15
    assert autocorrelations[1.0] > 0.5
