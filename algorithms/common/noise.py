"""Temporally correlated ("coloured") Gaussian exploration noise for SAC and TD3.

White noise, drawn independently at every step, averages out over a few steps: an agent that needs a
long push in one direction (MountainCarContinuous: swing back, then forward) rarely gets one. Noise
whose power spectrum falls as 1/f^β keeps its sign for longer as β grows: β = 0 is white, β = 1 pink,
β = 2 red (a random walk within each sequence, close to Ornstein-Uhlenbeck noise). Eberhard et al.,
"Pink Noise Is All You Need: Colored Noise Exploration in Deep Reinforcement Learning" (ICLR 2023),
found pink noise the best default across tasks and the one that lets SAC and TD3 solve
MountainCarContinuous.

Each env and action dimension has its own stream, made one sequence of ``seq_len`` steps at a time by
shaping Gaussian Fourier coefficients (amplitude f^(−β/2), random phase; no constant term) and
transforming back, then scaling to unit variance. With β = 0 the noise is the generator's
``standard_normal`` draws themselves, step by step: white noise exactly as without this module.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from algorithms.common.config import require_in_range, require_int
from algorithms.common.off_policy import OffPolicyConfig

MAX_BETA = 3.0
"""Noise steeper than 1/f³ is a near-constant offset for a whole sequence: not an exploration noise."""


def check_noise(beta: float, seq_len: int) -> None:
    """ConfigError naming the field when ``noise_color`` or ``noise_seq_len`` is out of range."""
    require_in_range("noise_color", beta, 0.0, MAX_BETA)
    require_int("noise_seq_len", seq_len, 2)


def colored_sequences(beta: float, seq_len: int, n_streams: int, rng: np.random.Generator) -> np.ndarray:
    """``n_streams`` independent sequences of ``seq_len`` steps whose power spectrum is ∝ 1/f^β, each
    step of each stream N(0, 1) distributed; shape (seq_len, n_streams), float32."""
    freqs = np.fft.rfftfreq(seq_len)[1:]  # cycles per step, without the constant term
    amplitude = freqs ** (-beta / 2.0)
    coefficients = np.zeros((n_streams, freqs.size + 1), dtype=np.complex128)
    coefficients[:, 1:] = amplitude * (
        rng.standard_normal((n_streams, freqs.size)) + 1j * rng.standard_normal((n_streams, freqs.size))
    )
    if seq_len % 2 == 0:  # the Nyquist term of an even-length signal is real
        coefficients[:, -1] = amplitude[-1] * rng.standard_normal(n_streams)
    sequences = np.fft.irfft(coefficients, n=seq_len, axis=1)
    # Each step's variance, from the coefficients' variances (irfft: x_t = (1/L) Σ_k X_k e^{2πikt/L}):
    # a complex term contributes 2·2·a_k² (its two parts and its mirror), the real Nyquist term a².
    variance = 4.0 * np.sum(amplitude**2) / seq_len**2
    if seq_len % 2 == 0:
        variance -= 3.0 * amplitude[-1] ** 2 / seq_len**2
    return (sequences / np.sqrt(variance)).T.astype(np.float32)


class ColoredNoise:
    """A unit-variance noise stream per env and action dimension, coloured with exponent ``beta``.

    Args:
        beta: the exponent β of the power spectrum 1/f^β (0 white, 1 pink, 2 red), in [0, 3].
        seq_len: steps of each generated sequence; its lowest frequency is 1/seq_len per step.
        shape: (n_envs, act_dim), the shape of one step's noise.
        rng: the agent's generator (so that a seed fixes the noise).
    """

    def __init__(self, beta: float, seq_len: int, shape: tuple[int, int], rng: np.random.Generator) -> None:
        check_noise(beta, seq_len)
        self.beta = float(beta)
        self.seq_len = seq_len
        self.shape = shape
        self.rng = rng
        self._sequences = np.empty((0, *shape), dtype=np.float32)
        self._position = 0

    def sample(self) -> np.ndarray:
        """The next step's noise, shape ``shape``, float32."""
        if self.beta == 0.0:
            return self.rng.standard_normal(self.shape, dtype=np.float32)
        if self._position == len(self._sequences):
            n_streams = self.shape[0] * self.shape[1]
            sequences = colored_sequences(self.beta, self.seq_len, n_streams, self.rng)
            self._sequences = sequences.reshape(self.seq_len, *self.shape)
            self._position = 0
        step = self._sequences[self._position]
        self._position += 1
        return step


@dataclass(frozen=True)
class ContinuousOffPolicyConfig(OffPolicyConfig):
    """The fields SAC and TD3 add to :class:`OffPolicyConfig`: the colour of their exploration noise."""

    noise_color: float = 0.0
    """Exponent β of the exploration noise's power spectrum 1/f^β over time steps, in [0, 3]: 0 white
    (independent every step, the algorithm's usual noise), 1 pink (Eberhard et al. 2023; explores
    MountainCarContinuous), 2 red (close to Ornstein-Uhlenbeck). SAC colours the standard normal of its
    policy sample, TD3 its Gaussian exploration noise; evaluation is unchanged. Typical 0 … 2."""
    noise_seq_len: int = 1000
    """Steps of each generated noise sequence per env and action dimension (its lowest frequency is one
    cycle per sequence), ≥ 2. Typical: the env's episode length (Pendulum 200, MountainCarContinuous
    999)."""

    def __post_init__(self) -> None:
        super().__post_init__()
        check_noise(self.noise_color, self.noise_seq_len)

    def make_noise(self, n_envs: int, act_dim: int, rng: np.random.Generator) -> ColoredNoise:
        """The exploration noise of an agent with ``n_envs`` training envs of ``act_dim`` actions."""
        return ColoredNoise(self.noise_color, self.noise_seq_len, (n_envs, act_dim), rng)
