"""The known-good presets reach their published-level scores at full budget.

Marked slow, so `make test` leaves them out; `make test-presets`, `make test-full` and CI run them.
"""

import pytest

from bench.scores import train_one

pytestmark = pytest.mark.slow


@pytest.mark.parametrize(
    ("preset", "minimum"),
    [
        ("ppo_cartpole", 475.0),  # rl-zoo3: 500 at 100k
        ("ppo_pendulum", -300.0),  # rl-zoo3 (with gSDE): −172 at 100k
    ],
)
def test_preset_reaches_its_score_at_full_budget(preset: str, minimum: float) -> None:
    result = train_one([f"experiment={preset}"], seed=1)
    assert result.mean_return >= minimum, f"{preset}: eval {result.mean_return:.1f} < {minimum}"
