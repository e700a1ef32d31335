"""tuner.search: the YAML search spaces, their validation, sampling through real Optuna, and overrides."""

from __future__ import annotations

import dataclasses
import math
from pathlib import Path
from typing import Any

import numpy as np
import optuna
import pytest
from omegaconf import OmegaConf

from algorithms import ConfigError, PPOConfig
from tuner.compose import CONF_DIR, algorithm_config, compose_config
from tuner.search import (
    MIN_UPDATES_PER_TRIAL,
    ParamSpec,
    SearchSpace,
    format_override_value,
    load_search_space,
    to_overrides,
)

PPO_SPACE_FILE = Path(CONF_DIR) / "search" / "ppo.yaml"
N_TRIALS = 50
REQUIRED = (
    "learning_rate",
    "clip_range",
    "gae_lambda",
    "ent_coef",
    "gamma",
    "n_steps",
    "batch_size",
    "n_epochs",
    "max_grad_norm",
    "vf_coef",
)
# The documented ranges of conf/search/ppo.yaml, as config values (after reparam).
FLOAT_RANGES = {
    "learning_rate": (1e-5, 2e-3),
    "ent_coef": (1e-8, 0.1),
    "max_grad_norm": (0.3, 2.0),
    "vf_coef": (0.2, 1.0),
    "gamma": (1 - 0.03, 1 - 1e-4),
    "gae_lambda": (1 - 0.1, 1 - 1e-4),
}
POW2_RANGES = {"n_steps": (2**5, 2**12), "batch_size": (2**5, 2**10)}
CHOICES = {"clip_range": {0.1, 0.2, 0.3, 0.4}, "n_epochs": {1, 5, 10, 20}}


def _random_study() -> optuna.Study:
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    return optuna.create_study(sampler=optuna.samplers.RandomSampler(seed=0))


@pytest.fixture(scope="module")
def ppo_space() -> SearchSpace:
    cfg = compose_config(["+search=ppo"])
    return load_search_space(cfg.search, cfg.algo)


@pytest.fixture(scope="module")
def sampled(ppo_space: SearchSpace) -> list[tuple[dict[str, Any], dict[str, Any]]]:
    """(config values, Optuna params) of 50 random trials."""
    study = _random_study()
    out = []
    for _ in range(N_TRIALS):
        trial = study.ask()
        values = ppo_space.suggest(trial)
        study.tell(trial, 0.0)
        out.append((values, dict(trial.params)))
    return out


# --- the real PPO space ---------------------------------------------------------------------------------
def test_yaml_file_and_composed_node_agree(ppo_space: SearchSpace) -> None:
    direct = SearchSpace.from_config(OmegaConf.load(PPO_SPACE_FILE), "ppo")
    assert direct == ppo_space
    assert ppo_space.algo == "ppo"
    assert set(REQUIRED) <= set(ppo_space.names)
    assert "n_envs" not in ppo_space.names  # structural: kept from the algo config / preset


def test_optuna_names_say_what_is_sampled(ppo_space: SearchSpace) -> None:
    names = {p.name: p.optuna_name for p in ppo_space.params}
    assert names["gamma"] == "one_minus_gamma"
    assert names["gae_lambda"] == "one_minus_gae_lambda"
    assert names["n_steps"] == "log2_n_steps"
    assert names["batch_size"] == "log2_batch_size"
    assert names["learning_rate"] == "learning_rate"
    assert set(ppo_space.distributions()) == set(names.values())


def test_sampled_values_lie_in_the_documented_ranges(sampled: list[tuple[dict, dict]]) -> None:
    for values, _ in sampled:
        assert set(values) == set(FLOAT_RANGES) | set(POW2_RANGES) | set(CHOICES)
        for name, (low, high) in FLOAT_RANGES.items():
            assert type(values[name]) is float
            assert low <= values[name] <= high, (name, values[name])
        for name, (low, high) in POW2_RANGES.items():
            value = values[name]
            assert type(value) is int and value & (value - 1) == 0, (name, value)
            assert low <= value <= high
        for name, choices in CHOICES.items():
            assert values[name] in choices
        assert 0.9 < values["gae_lambda"] < 1 and 0.97 <= values["gamma"] < 1


def test_sampled_values_cover_the_ranges(sampled: list[tuple[dict, dict]]) -> None:
    """50 random trials spread over the space (log-uniform: both decades of the lr range get hits)."""
    lrs = [v["learning_rate"] for v, _ in sampled]
    assert min(lrs) < 1e-4 < max(lrs)
    assert len({v["n_steps"] for v, _ in sampled}) >= 5
    assert {v["clip_range"] for v, _ in sampled} == CHOICES["clip_range"]


def test_sampled_sets_build_valid_configs(sampled: list[tuple[dict, dict]]) -> None:
    """batch_size is capped at the rollout (n_envs * n_steps): no sample is an invalid PPOConfig, and
    larger batch draws become one minibatch of the whole rollout."""
    for values, params in sampled:
        config = PPOConfig.from_dict(values)
        assert {k: getattr(config, k) for k in values} == values
        assert values["batch_size"] == min(2 ** params["log2_batch_size"], values["n_steps"])
    assert any(2 ** params["log2_batch_size"] > values["n_steps"] for values, params in sampled)


def test_params_round_trip(ppo_space: SearchSpace, sampled: list[tuple[dict, dict]]) -> None:
    for values, params in sampled:
        assert ppo_space.values_from_params(params) == values
        assert ppo_space.values_from_params(ppo_space.params_from_values(values)) == values


def test_default_config_enqueues_exactly(ppo_space: SearchSpace) -> None:
    """The PPOConfig defaults, except ent_coef = 0 (outside the log range), replay through a real study."""
    defaults = dataclasses.asdict(PPOConfig())
    assert ppo_space.out_of_range(defaults) == ["ent_coef"]
    wanted = {**{k: defaults[k] for k in ppo_space.names}, "ent_coef": 1e-8}
    assert ppo_space.out_of_range(wanted) == []
    study = _random_study()
    study.enqueue_trial(ppo_space.params_from_values(wanted))
    trial = study.ask()
    assert ppo_space.suggest(trial) == wanted
    assert ppo_space.values_from_params(trial.params) == wanted


def test_values_outside_the_space_are_reported(ppo_space: SearchSpace) -> None:
    by_name = {p.name: p for p in ppo_space.params}
    assert not by_name["n_steps"].contains(1000)  # not a power of two
    assert not by_name["n_steps"].contains(2**13)
    assert not by_name["clip_range"].contains(0.25)
    assert not by_name["gamma"].contains(0.5)
    assert by_name["gamma"].contains(1 - 1e-4) and by_name["gamma"].contains(0.97)
    with pytest.raises(ConfigError, match=r"n_steps.*not a power of two"):
        ppo_space.params_from_values({**dataclasses.asdict(PPOConfig()), "n_steps": 1000})
    with pytest.raises(ConfigError, match="clip_range"):
        by_name["clip_range"].to_sampled(0.25)
    with pytest.raises(ConfigError, match="log2_n_steps"):
        ppo_space.values_from_params({"learning_rate": 1e-3})


def test_overrides_compose_back_exactly(sampled: list[tuple[dict, dict]]) -> None:
    for values, _ in sampled[:5]:
        overrides = to_overrides(values)
        assert overrides[0].startswith("algo.learning_rate=")
        algo = compose_config(overrides).algo
        for name, value in values.items():
            assert algo[name] == value and type(algo[name]) is type(value), (name, algo[name], value)


def test_override_values_of_every_kind_compose_back() -> None:
    values = {
        "learning_rate": 0.1 + 0.2,
        "log_std_init": -1e-300,
        "adam_eps": 5e-324,
        "n_steps": 123,
        "anneal_lr": True,
        "ortho_init": False,
        "target_kl": None,
        "net_arch": (32, 16),
        "activation": "it's a \\ ${x} \\",
    }
    assert format_override_value(True) == "true" and format_override_value(None) == "null"
    assert to_overrides({"learning_rate": 0.000123}) == ["algo.learning_rate=0.000123"]
    assert to_overrides({"seed": 3}, prefix="") == ["seed=3"]
    algo = compose_config(to_overrides(values)).algo
    for name, value in values.items():
        got = algo[name]
        got = tuple(got) if name == "net_arch" else got
        assert got == value and type(got) is type(value), (name, got, value)
    assert (
        math.copysign(
            1.0, compose_config(["algo.log_std_init=" + format_override_value(-0.0)]).algo.log_std_init
        )
        < 0
    )


def test_numpy_scalars_become_plain_values() -> None:
    spec = ParamSpec("n_steps", "int", low=5, high=12, reparam="pow2")
    assert type(spec.to_value(np.int64(7))) is int and spec.to_value(np.int64(7)) == 128
    assert format_override_value(np.float64(0.1)) == "0.1"
    assert format_override_value(np.int64(3)) == "3"
    assert format_override_value(np.bool_(True)) == "true"


# --- bad spaces: one ConfigError naming the parameter ---------------------------------------------------
def _space(params: dict[str, Any], algo: str = "ppo") -> dict[str, Any]:
    return {"algo": algo, "params": params}


BAD_SPACES: dict[str, tuple[dict[str, Any], str]] = {
    "unknown_field": (
        _space({"learning_rat": {"type": "float", "low": 1e-5, "high": 1e-3}}),
        r"learning_rat.*did you mean 'learning_rate'",
    ),
    "low_equals_high": (
        _space({"vf_coef": {"type": "float", "low": 0.5, "high": 0.5}}),
        r"vf_coef.*low \(0\.5\) must be < high \(0\.5\)",
    ),
    "low_above_high": (
        _space({"n_epochs": {"type": "int", "low": 10, "high": 2}}),
        r"n_epochs.*must be < high",
    ),
    "log_with_zero_low": (
        _space({"ent_coef": {"type": "float", "low": 0.0, "high": 0.1, "log": True}}),
        r"ent_coef.*log: true needs low > 0",
    ),
    "missing_high": (_space({"vf_coef": {"type": "float", "low": 0.2}}), r"vf_coef.*missing high"),
    "empty_choices": (_space({"clip_range": {"type": "categorical", "choices": []}}), r"clip_range.*choices"),
    "missing_choices": (_space({"clip_range": {"type": "categorical"}}), r"clip_range.*choices"),
    "unknown_type": (
        _space({"gamma": {"type": "uniform", "low": 0.9, "high": 0.99}}),
        r"gamma.*unknown type 'uniform'.*float, int, categorical",
    ),
    "unknown_reparam": (
        _space({"gamma": {"type": "float", "low": 1e-4, "high": 0.1, "reparam": "one_minus_log"}}),
        r"gamma.*unknown reparam 'one_minus_log'.*one_minus.*pow2",
    ),
    "pow2_on_float": (
        _space({"n_steps": {"type": "float", "low": 5.0, "high": 12.0, "reparam": "pow2"}}),
        r"n_steps.*pow2 needs type int",
    ),
    "unknown_key": (
        _space({"vf_coef": {"type": "float", "low": 0.2, "hihg": 1.0}}),
        r"vf_coef.*'hihg'.*did you mean 'high'",
    ),
    "bound_rejected_by_config": (
        _space({"gae_lambda": {"type": "float", "low": 0.5, "high": 1.5}}),
        r"gae_lambda.*rejects the value 1\.5.*gae_lambda must be in",
    ),
    "one_minus_beyond_one": (
        _space({"gamma": {"type": "float", "low": 1e-4, "high": 2.0, "log": True, "reparam": "one_minus"}}),
        r"gamma.*rejects the value -1\.0",
    ),
    "int_field_as_float": (
        _space({"n_epochs": {"type": "float", "low": 1.0, "high": 20.0}}),
        r"n_epochs.*must be an integer",
    ),
    "step_not_dividing": (
        _space({"n_epochs": {"type": "int", "low": 1, "high": 20, "step": 3}}),
        r"n_epochs.*multiple of step",
    ),
    "wrong_algo": (
        _space({"vf_coef": {"type": "float", "low": 0.2, "high": 1.0}}, algo="sac"),
        r"search=ppo",
    ),
    "no_params": ({"algo": "ppo", "params": {}}, r"search\.params"),
    "values_missing_a_choice": (
        _space({"net_arch": {"type": "categorical", "choices": ["tiny", "small"], "values": {"tiny": [64]}}}),
        r"net_arch.*values must give exactly one config value per choice",
    ),
    "values_on_a_float": (
        _space({"vf_coef": {"type": "float", "low": 0.2, "high": 1.0, "values": {"a": 1}}}),
        r"vf_coef.*unknown key 'values'",
    ),
    "list_choices_without_names": (
        _space({"net_arch": {"type": "categorical", "choices": [[64], [64, 64]]}}),
        r"net_arch.*choices must be scalars.*name them",
    ),
    "cap_on_a_float": (
        _space({"vf_coef": {"type": "float", "low": 0.2, "high": 1.0, "cap": ["n_envs"]}}),
        r"vf_coef.*unknown key 'cap'",
    ),
    "cap_unknown_field": (
        _space({"batch_size": {"type": "int", "low": 2, "high": 10, "reparam": "pow2", "cap": ["n_env"]}}),
        r"batch_size\.cap.*'n_env' is not a field.*did you mean 'n_envs'",
    ),
    "cap_not_a_list": (
        _space({"batch_size": {"type": "int", "low": 2, "high": 10, "cap": "n_envs"}}),
        r"batch_size.*cap must be a list",
    ),
    "cap_on_itself": (
        _space({"batch_size": {"type": "int", "low": 2, "high": 10, "cap": ["batch_size"]}}),
        r"batch_size.*cap cannot name the parameter itself",
    ),
    "cap_on_a_float_field": (
        _space({"batch_size": {"type": "int", "low": 2, "high": 10, "cap": ["gamma"]}}),
        r"batch_size\.cap.*gamma must be an integer",
    ),
}


@pytest.mark.parametrize("name", sorted(BAD_SPACES))
def test_bad_space_raises_one_clear_config_error(name: str) -> None:
    node, pattern = BAD_SPACES[name]
    with pytest.raises(ConfigError, match=pattern):
        SearchSpace.from_config(OmegaConf.create(node), "ppo")


def test_cap_trains_an_oversized_batch_on_the_whole_rollout() -> None:
    """rl-zoo3's space (search=ppo_zoo) samples batches up to 1024 over rollouts from 8 × 32 = 256; capped
    at n_envs * n_steps, every draw is a valid config (what SB3 trains), while Optuna keeps the draw."""
    cfg = compose_config(["experiment=ppo_cartpole", "search=ppo_zoo"], config_name="tune")
    space = load_search_space(cfg.search, cfg.algo)
    n_envs = cfg.algo.n_envs
    assert space.fixed == {"n_envs": n_envs}
    study = _random_study()
    n_capped = 0
    for _ in range(N_TRIALS):
        trial = study.ask()
        values = space.suggest(trial)
        drawn = 2 ** trial.params["log2_batch_size"]
        rollout = n_envs * values["n_steps"]
        assert values["batch_size"] == min(drawn, rollout)
        n_capped += drawn > rollout
        PPOConfig.from_dict({**values, "n_envs": n_envs})  # never "larger than a rollout"
        assert space.values_from_params(trial.params) == values
    assert n_capped > 0  # the seed draws oversized batches, so the cap was exercised


def test_cap_reads_a_searched_field_and_leaves_uncapped_spaces_alone() -> None:
    """A cap naming a searched field uses the drawn value; without cap an oversized batch stays (and the
    trial rejects it)."""
    params = {
        "n_steps": {"type": "int", "low": 3, "high": 4, "reparam": "pow2"},
        "batch_size": {"type": "int", "low": 5, "high": 6, "reparam": "pow2"},
    }
    plain = SearchSpace.from_config(_space(params), "ppo", {"n_envs": 2})
    capped = SearchSpace.from_config(
        _space({**params, "batch_size": {**params["batch_size"], "cap": ["n_envs", "n_steps"]}}),
        "ppo",
        {"n_envs": 2},
    )
    params_drawn = {"log2_n_steps": 3, "log2_batch_size": 6}  # rollout 2 × 8 = 16, batch 64
    assert plain.values_from_params(params_drawn) == {"n_steps": 8, "batch_size": 64}
    assert capped.values_from_params(params_drawn) == {"n_steps": 8, "batch_size": 16}
    assert capped.values_from_params({"log2_n_steps": 4, "log2_batch_size": 5}) == {
        "n_steps": 16,
        "batch_size": 32,
    }


def test_interactions_with_other_fields_are_not_bound_errors() -> None:
    """n_steps = 2^3 = 8 < the base batch_size (64): a combination the trial rejects, not a bound error."""
    space = SearchSpace.from_config(
        _space({"n_steps": {"type": "int", "low": 3, "high": 12, "reparam": "pow2"}}), "ppo"
    )
    assert space.names == ("n_steps",)
    # A base that is invalid on its own is reported as such, not blamed on a parameter.
    with pytest.raises(ConfigError, match="base ppo config is invalid"):
        SearchSpace.from_config(
            _space({"vf_coef": {"type": "float", "low": 0.2, "high": 1.0}}), "ppo", {"gamma": 2.0}
        )


def test_base_values_are_used_for_the_bound_check() -> None:
    """learning_rate alone is fine; the base's name key (from cfg.algo) is ignored."""
    node = _space({"learning_rate": {"type": "float", "low": 1e-5, "high": 1e-3, "log": True}})
    space = SearchSpace.from_config(node, "ppo", {"name": "ppo", "n_envs": 4})
    assert space.names == ("learning_rate",)


def test_unknown_algorithm_is_named() -> None:
    with pytest.raises(ConfigError, match="unknown algorithm 'foo'"):
        SearchSpace.from_config(_space({}, algo="foo"), "foo")


def test_pow2_two_layers_maps_to_two_equal_hidden_layers_and_back() -> None:
    from tuner.search import ParamSpec

    spec = ParamSpec.from_mapping(
        "net_arch", {"type": "int", "low": 6, "high": 9, "reparam": "pow2_two_layers"}
    )
    assert spec.optuna_name == "log2_width_net_arch"
    assert spec.to_value(8) == [256, 256]
    assert spec.to_sampled([256, 256]) == 8
    assert spec.contains((64, 64)) and not spec.contains([1024, 1024]) and not spec.contains([64, 128])


def test_a_fixed_sampler_seed_is_offset_per_worker() -> None:
    from optuna.distributions import FloatDistribution

    from tuner.study import build_sampler

    node = {"_target_": "optuna.samplers.RandomSampler", "seed": 0}

    def first_draw(sampler: optuna.samplers.BaseSampler) -> float:
        study = optuna.create_study(sampler=sampler)
        return study.ask({"x": FloatDistribution(0.0, 1.0)}).params["x"]

    assert first_draw(build_sampler(node)) == first_draw(build_sampler(node, seed_offset=0))  # reproducible
    assert first_draw(build_sampler(node)) != first_draw(build_sampler(node, seed_offset=1))


def test_named_choices_map_to_config_values_and_back() -> None:
    """rl-zoo3's space names its network shapes; the config gets the layer list (search=ppo_zoo)."""
    space = load_search_space(compose_config(["search=ppo_zoo"], config_name="tune").search, {"name": "ppo"})
    (net_arch,) = [p for p in space.params if p.name == "net_arch"]
    assert net_arch.optuna_name == "net_arch"
    assert [net_arch.to_value(c) for c in ("tiny", "small", "medium")] == [[64], [64, 64], [256, 256]]
    assert net_arch.to_sampled((256, 256)) == "medium" and net_arch.to_sampled([64]) == "tiny"
    assert not net_arch.contains([32, 32])
    study = optuna.create_study(sampler=optuna.samplers.RandomSampler(seed=0))
    for _ in range(10):
        values = space.suggest(study.ask())
        PPOConfig(**{**values, "n_envs": 32})  # valid once a rollout (>= 32 × 32) holds the largest batch
        assert to_overrides({"net_arch": values["net_arch"]})[0] in {
            "algo.net_arch=[64]",
            "algo.net_arch=[64,64]",
            "algo.net_arch=[256,256]",
        }


# --- every committed space against trial budgets ---------------------------------------------------------
SPACES = {  # each committed space, with the presets whose base config it is tuned from
    "ppo": [[], ["experiment=ppo_cartpole"], ["experiment=ppo_lunarlander"]],
    "ppo_zoo": [[], ["experiment=ppo_cartpole"]],
    "sac": [["algo=sac", "env=pendulum"], ["experiment=sac_pendulum"]],
    "td3": [["algo=td3", "env=pendulum"], ["experiment=td3_pendulum"]],
    "d3qn": [["algo=d3qn"], ["experiment=d3qn_cartpole"], ["experiment=d3qn_lunarlander"]],
    "sacd": [["algo=sacd"], ["algo=sacd", "env=lunarlander"]],
}


def test_every_committed_search_space_is_listed_here() -> None:
    assert set(SPACES) == {p.stem for p in (Path(CONF_DIR) / "search").glob("*.yaml")}


@pytest.mark.parametrize("budget", [10_000, 50_000, 1_000_000])
@pytest.mark.parametrize("space_name", SPACES)
def test_a_thousand_draws_fit_their_algorithm_and_the_trial_budget(space_name: str, budget: int) -> None:
    """1,000 random draws of each committed space, from each preset it tunes, at each budget: every one
    is a valid config of its algorithm, and its warm-up plus MIN_UPDATES_PER_TRIAL rollouts (training
    phases) fit into the budget."""
    for base in SPACES[space_name]:
        cfg = compose_config([*base, f"search={space_name}"], config_name="tune")
        algo = OmegaConf.to_container(cfg.algo, resolve=True)
        space = load_search_space(cfg.search, cfg.algo).for_budget(budget, base=algo)
        study = _random_study()
        for _ in range(1000 // len(SPACES[space_name]) + 1):
            values = space.suggest(study.ask())
            _, config = algorithm_config({**algo, **values})
            rollout = math.prod(getattr(config, f) for f in config.ROLLOUT_FIELDS)
            warmup = getattr(config, config.WARMUP_FIELD) if config.WARMUP_FIELD else 0
            assert warmup + MIN_UPDATES_PER_TRIAL * rollout <= budget, (base, values)


def test_a_budget_narrows_the_rollout_and_warm_up_draws_or_names_itself() -> None:
    ppo = load_search_space(compose_config(["+search=ppo"]).search, {"name": "ppo", "n_envs": 8})
    n_steps = {p.name: p for p in ppo.for_budget(20_000, base={"n_envs": 8}).params}["n_steps"]
    assert (n_steps.low, n_steps.high) == (5, 9)  # 8 envs x 512 steps x 4 = 16,384 <= 20,000
    assert ppo.for_budget(1_000_000, base={"n_envs": 8}) == ppo  # nothing to drop
    with pytest.raises(ConfigError, match=r"search.params.n_steps: its smallest value 32 does not fit "):
        ppo.for_budget(1000, base={"n_envs": 8})
    cfg = compose_config(["algo=sac", "env=pendulum", "+search=sac"])
    sac = {p.name: p for p in load_search_space(cfg.search, cfg.algo).for_budget(10_000).params}
    assert sac["learning_starts"].choices == (100, 1000)  # 10,000 would leave no room for updates
    fixed = SearchSpace.from_config(
        _space({"learning_rate": {"type": "float", "low": 1e-4, "high": 1e-3}}), "ppo"
    )
    with pytest.raises(ConfigError, match=r"tune.budget_steps \(20000\) must hold 4 updates of "):
        fixed.for_budget(20_000, base={"n_envs": 8, "n_steps": 4096, "batch_size": 64})
