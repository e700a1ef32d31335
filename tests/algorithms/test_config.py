"""PPOConfig rejects invalid values with a message naming the field, before any env exists."""

import itertools

import pytest

from algorithms import ConfigError, PPOConfig, build_config, get_algorithm
from algorithms.ppo import SCHEDULABLE_FIELDS


@pytest.mark.parametrize(
    ("kwargs", "fragment"),
    [
        ({"learning_rate": 0.0}, "learning_rate"),
        ({"learning_rate": -1e-3}, "learning_rate"),
        ({"clip_range": 0.0}, "clip_range"),
        ({"gae_lambda": 1.5}, "gae_lambda"),
        ({"gamma": -0.1}, "gamma"),
        ({"batch_size": 4096, "n_steps": 128, "n_envs": 4}, "batch_size"),
        ({"n_epochs": 0}, "n_epochs"),
        ({"n_envs": 2.5}, "n_envs"),
        ({"ent_coef": -0.01}, "ent_coef"),
        ({"max_grad_norm": 0.0}, "max_grad_norm"),
        ({"target_kl": 0.0}, "target_kl"),
        ({"activation": "swish"}, "activation"),
        ({"policy_dist": "poisson"}, "policy_dist"),
        ({"net_arch": ()}, "net_arch"),
        ({"vectorization": "threads"}, "vectorization"),
    ],
)
def test_invalid_values_raise_config_error_naming_the_field(kwargs: dict, fragment: str) -> None:
    with pytest.raises(ConfigError, match=fragment):
        PPOConfig(**kwargs)


def test_batch_larger_than_rollout_message_shows_the_arithmetic() -> None:
    with pytest.raises(ConfigError, match=r"n_envs \* n_steps = 2 \* 16 = 32"):
        PPOConfig(n_envs=2, n_steps=16, batch_size=64)


def test_unknown_key_is_named_with_a_suggestion() -> None:
    with pytest.raises(ConfigError, match=r"'learning_rat'.*did you mean 'learning_rate'"):
        build_config("ppo", {"learning_rat": 1e-3})


def test_unknown_algorithm_lists_valid_choices() -> None:
    with pytest.raises(ConfigError, match=r"unknown algorithm 'ppp'.*ppo"):
        get_algorithm("ppp")


def test_lists_become_tuples_so_the_config_stays_hashable() -> None:
    cfg = build_config("ppo", {"net_arch": [32, 32]})
    assert cfg.net_arch == (32, 32)
    hash(cfg)


def test_every_field_is_documented() -> None:
    import ast
    import inspect

    from algorithms import ppo

    tree = ast.parse(inspect.getsource(ppo.PPOConfig))
    body = tree.body[0].body
    documented = {
        stmt.target.id
        for stmt, nxt in itertools.pairwise(body)
        if isinstance(stmt, ast.AnnAssign)
        and isinstance(nxt, ast.Expr)
        and isinstance(nxt.value, ast.Constant)
        and isinstance(nxt.value.value, str)
        and len(nxt.value.value) > 15
    }
    fields = {f for f in PPOConfig.__dataclass_fields__}
    assert fields == documented


@pytest.mark.parametrize("algo", ["ppo", "sac", "td3", "d3qn", "sacd"])
@pytest.mark.parametrize(
    ("field", "value", "expected"),
    [
        ("learning_rate", "abc", "learning_rate must be a number, got 'abc'"),
        ("learning_rate", None, "learning_rate must be a number, got None"),
        ("learning_rate", True, "learning_rate must be a number, got True"),
        ("gamma", "0.9", "gamma must be a number, got '0.9'"),
        ("batch_size", 64.0, "batch_size must be an integer, got 64.0"),
        ("n_envs", "4", "n_envs must be an integer, got '4'"),
        ("net_arch", [64, "wide"], "net_arch must be a list of integers, got [64, 'wide']"),
        ("vectorization", 1, "vectorization must be a string, got 1"),
    ],
)
def test_a_value_of_the_wrong_type_is_named_before_any_range_check(
    algo: str, field: str, value: object, expected: str
) -> None:
    """A range check that compares first would raise TypeError ('>' between str and int) instead.
    PPO's schedulable fields also take a schedule, and say so."""
    if algo == "ppo" and field in SCHEDULABLE_FIELDS:
        expected = expected.replace("a number,", "a number or a list of [from_step, value] pairs,")
    with pytest.raises(ConfigError) as caught:
        build_config(algo, {field: value})
    assert str(caught.value) == expected


def test_optional_and_union_fields_take_each_of_their_types() -> None:
    assert (
        build_config("ppo", {"clip_range_vf": None, "target_kl": 0.02, "learning_rate": 1}).learning_rate == 1
    )
    assert build_config("sac", {"ent_coef": "auto_0.1"}).learn_ent_coef
    assert build_config("sac", {"ent_coef": 0.2}).ent_coef == 0.2
    with pytest.raises(ConfigError, match=r"^clip_range_vf must be a number or null, got 'x'$"):
        build_config("ppo", {"clip_range_vf": "x"})
    with pytest.raises(ConfigError, match=r"^ent_coef must be a string or a number, got \[1\]$"):
        build_config("sac", {"ent_coef": [1]})
    with pytest.raises(ConfigError, match=r"^anneal_lr must be true or false, got 'yes'$"):
        build_config("ppo", {"anneal_lr": "yes"})
