"""Population-based training's decisions: ranking, exploit pairs, explore inside the space, lineages."""

from __future__ import annotations

import math

import numpy as np
import pytest

from algorithms import ConfigError, PPOConfig
from algorithms.ppo_population import PopulationPPO, member_configs
from tuner.pbt import (
    Lineages,
    PBTSettings,
    exploit_pairs,
    explore,
    lineage_schedule,
    member_specs,
    pbt_step,
    perturb,
    quantile_size,
    resample,
)
from tuner.search import ParamSpec

SPECS = [
    ParamSpec("learning_rate", "float", low=1e-5, high=2e-3, log=True),
    ParamSpec("gamma", "float", low=1e-4, high=0.03, log=True, reparam="one_minus"),
    ParamSpec("clip_range", "float", low=0.1, high=0.4, step=0.05),
    ParamSpec("ent_coef", "categorical", choices=(0.0, 0.001, 0.01, 0.1)),
    ParamSpec("n_steps", "int", low=5, high=8, reparam="pow2"),
    ParamSpec("vf_coef", "float", low=0.2, high=1.0),
]


def test_quantiles_and_pairs() -> None:
    """A quarter of 16 members is 4 at each end; each bottom member gets a source from the top; NaN is
    the worst score; of equal scores the lower index ranks lower."""
    assert [quantile_size(n, 0.25) for n in (1, 2, 3, 4, 8, 16)] == [0, 1, 1, 1, 2, 4]
    assert quantile_size(5, 0.5) == 2  # never more than half
    scores = [5.0, float("nan"), 9.0, 1.0, 7.0, 3.0, 8.0, 2.0]
    rng = np.random.default_rng(0)
    for _ in range(50):
        pairs = exploit_pairs(scores, 0.25, rng)
        assert [target for target, _ in pairs] == [1, 3]  # NaN, then the lowest score
        assert all(source in (2, 6) for _, source in pairs)
    sources = {source for _ in range(50) for _, source in exploit_pairs(scores, 0.25, rng)}
    assert sources == {2, 6}  # uniform over the top: both drawn
    assert exploit_pairs([1.0, 1.0, 1.0, 1.0], 0.25, rng)[0][0] == 0
    assert exploit_pairs([1.0], 0.25, rng) == []


@pytest.mark.parametrize("spec", SPECS, ids=lambda s: s.name)
def test_perturbed_and_resampled_values_stay_in_their_range(spec: ParamSpec) -> None:
    """From either end of the range and from the middle, repeated perturbation by 0.8 or 1.2 (and by
    extreme factors) and resampling give only values the space can sample."""
    rng = np.random.default_rng(1)
    starts = [*spec.end_values(), resample(spec, rng)]
    for start in starts:
        value = start
        for _ in range(40):
            value = perturb(spec, value, float(rng.choice([0.8, 1.2, 0.01, 100.0])))
            assert spec.contains(value), (spec.name, value)
    assert all(spec.contains(resample(spec, rng)) for _ in range(200))


def test_perturbation_moves_the_sampled_quantity() -> None:
    learning_rate, gamma, clip, ent_coef, n_steps, _ = SPECS
    assert perturb(learning_rate, 1e-3, 1.2) == pytest.approx(1.2e-3)
    assert perturb(learning_rate, 1e-3, 10.0) == pytest.approx(2e-3)  # clipped to the top
    assert perturb(gamma, 0.99, 1.2) == pytest.approx(1 - 0.012)  # 1 − γ is what is scaled
    assert perturb(clip, 0.2, 1.2) == pytest.approx(0.25)  # 0.24 onto the 0.05 grid
    assert perturb(ent_coef, 0.001, 1.2) == 0.01 and perturb(ent_coef, 0.001, 0.8) == 0.0
    assert perturb(ent_coef, 0.1, 1.2) == 0.1  # the last choice stays
    assert perturb(n_steps, 64, 1.2) == 128  # exponent 6 → 7 (at least one step)
    assert perturb(n_steps, 256, 1.2) == 256


def test_explore_resamples_or_perturbs_every_explored_value() -> None:
    values = {"learning_rate": 1e-3, "gamma": 0.99, "clip_range": 0.2, "ent_coef": 0.001, "vf_coef": 0.5}
    specs = member_specs(SPECS)
    assert [s.name for s in specs] == ["learning_rate", "gamma", "clip_range", "ent_coef", "vf_coef"]
    rng = np.random.default_rng(2)
    perturbed = explore(values, specs, PBTSettings(10, resample_probability=0.0), rng)
    assert perturbed["learning_rate"] in (pytest.approx(8e-4), pytest.approx(1.2e-3))
    assert perturbed["vf_coef"] in (pytest.approx(0.4), pytest.approx(0.6))
    resampled = [explore(values, specs, PBTSettings(10, resample_probability=1.0), rng) for _ in range(20)]
    assert len({r["learning_rate"] for r in resampled}) == 20
    assert all(spec.contains(r[spec.name]) for r in resampled for spec in specs)


@pytest.mark.parametrize(
    ("node", "message"),
    [
        ({"quantile": 0.7}, "pbt.quantile must be a number in (0, 0.5], got 0.7"),
        ({"interval_steps": 0}, "pbt.interval_steps must be an integer >= 1, got 0"),
        ({"resample_probability": 2}, "pbt.resample_probability must be a number in [0, 1], got 2"),
        ({"perturb_factors": [0.8, -1]},
         "pbt.perturb_factors must be a non-empty list of numbers > 0, got [0.8, -1]"),
        ({"last_n_evals": True}, "pbt.last_n_evals must be an integer >= 1, got True"),
        ({"quantil": 0.2}, "unknown setting pbt.quantil; valid settings: interval_steps, last_n_evals, "
         "perturb_factors, quantile, resample_probability"),
    ],
)  # fmt: skip
def test_bad_pbt_settings_are_one_clear_error(node: dict, message: str) -> None:
    with pytest.raises(ConfigError) as caught:
        PBTSettings.from_mapping(node, budget_steps=10_000)
    assert str(caught.value) == message


def test_the_default_interval_is_a_tenth_of_the_budget_or_the_evaluation_period() -> None:
    node = {"interval_steps": None, "perturb_factors": [0.8, 1.2]}
    assert PBTSettings.from_mapping(node, 50_000) == PBTSettings(interval_steps=5_000)
    assert PBTSettings.from_mapping(node, 50_000, eval_freq_steps=10_000) == PBTSettings(
        interval_steps=10_000
    )
    assert PBTSettings.from_mapping(node, 500_000, eval_freq_steps=10_000).interval_steps == 50_000


def test_a_lineage_becomes_schedules() -> None:
    history = [
        (0, {"learning_rate": 1e-3, "gamma": 0.99}),
        (2048, {"learning_rate": 8e-4, "gamma": 0.99}),
        (2048, {"learning_rate": 6e-4, "gamma": 0.99}),  # two decisions at one step: the later counts
        (4096, {"learning_rate": 6e-4, "gamma": 0.95}),
    ]
    schedule = lineage_schedule(history)
    assert schedule == {"learning_rate": [[0, 1e-3], [2048, 6e-4]], "gamma": [[0, 0.99], [4096, 0.95]]}
    config = PPOConfig.from_dict(schedule)  # what PPOConfig takes
    assert config.at_step(3000).learning_rate == 6e-4 and config.at_step(5000).gamma == 0.95
    assert lineage_schedule([(0, {"learning_rate": 1e-3})]) == {"learning_rate": 1e-3}


def test_a_pbt_step_moves_the_bottom_members_onto_the_top_ones() -> None:
    """Two PBT members of two seeds each (slots 0-1 and 2-3): the worse one's slots take the better
    one's state seed by seed and train on with explored values; the lineage records it."""
    config = PPOConfig(n_envs=2, n_steps=64, batch_size=64, n_epochs=1)
    specs = member_specs(SPECS)
    initial = [
        {"learning_rate": 1e-3, "gamma": 0.99, "clip_range": 0.2, "ent_coef": 0.0, "vf_coef": 0.5},
        {"learning_rate": 1e-4, "gamma": 0.95, "clip_range": 0.3, "ent_coef": 0.01, "vf_coef": 0.8},
    ]
    lineages = Lineages.start(initial)
    with PopulationPPO("CartPole-v1", config, n_members=4) as population:
        for member, slots in enumerate(((0, 1), (2, 3))):
            for seed, slot in enumerate(slots):
                population.start_member(slot, member_configs(config, [initial[member]])[0], seed, 4096)
        population.learn_iteration()
        settings = PBTSettings(128, resample_probability=0.0)
        events = pbt_step(population, [(0, 1), (2, 3)], [10.0, 20.0], specs, settings, lineages, 128,
                          np.random.default_rng(0))  # fmt: skip
        assert len(events) == 1 and (events[0].target, events[0].source) == (0, 1)
        assert events[0].old == initial[0]
        new = events[0].new
        for name, value in new.items():
            factor = value / initial[1][name] if initial[1][name] else math.nan
            spec = next(s for s in specs if s.name == name)
            assert spec.contains(value)
            if spec.type == "float" and spec.step is None and spec.reparam is None:
                assert factor == pytest.approx(0.8) or factor == pytest.approx(1.2), name
        for target_slot, source_slot in ((0, 2), (1, 3)):
            target, source = population.members[target_slot], population.members[source_slot]
            assert target is not None and source is not None
            assert {name: getattr(target.config, name) for name in new} == new
            assert target.num_steps == source.num_steps
        assert lineages.histories[0] == [(0, initial[1]), (128, new)]
        assert lineages.current(1) == initial[1]
