"""The committed tuned presets train, from their own config, to a return that shows they learnt.

Marked slow and kept out of `make test-presets` (and so out of CI): `make test-full` runs them. Each is
trained on the first held-out seed of its study's validation (1001), which tuning never saw; the bar is
well above a random policy and below what the study's validation found (bench/results/tuning_studies.md).
"""

import pytest

from bench.scores import train_one
from tests.helpers import TUNED_PRESETS

pytestmark = pytest.mark.slow

MINIMUM = {
    "d3qn_acrobot_tuned": -150.0,  # random policy: -500
    "d3qn_cartpole_tuned": 100.0,  # random policy: 22
    "d3qn_lunarlander_tuned": -120.0,  # random policy: -180; its study found -64 at its 100k steps
    "ppo_acrobot_tuned": -150.0,  # random policy: -500
    "ppo_cartpole_tuned": 400.0,  # random policy: 22
    "ppo_lunarlander_tuned": 100.0,  # random policy: -180
    "ppo_mountaincarcontinuous_tuned": -1.0,  # random policy: -33; it learns to stand still, not the goal
    "ppo_pendulum_tuned": -400.0,  # random policy: about -1200
    "sac_mountaincarcontinuous_tuned": 50.0,  # random policy: -33; standing still: 0; the goal: 90
    "sac_pendulum_tuned": -400.0,  # random policy: about -1200
    "td3_mountaincarcontinuous_tuned": 50.0,  # random policy: -33; standing still: 0; the goal: 90
    "td3_pendulum_tuned": -400.0,  # random policy: about -1200
}


def test_every_tuned_preset_has_a_bar() -> None:
    assert set(MINIMUM) == set(TUNED_PRESETS)


@pytest.mark.parametrize("preset", sorted(MINIMUM))
def test_tuned_preset_learns_on_a_held_out_seed(preset: str) -> None:
    result = train_one([f"experiment={preset}"], seed=1001)
    assert result.mean_return >= MINIMUM[preset], (
        f"{preset}: eval {result.mean_return:.1f} < {MINIMUM[preset]}"
    )
