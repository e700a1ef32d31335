"""tuner.secrets: URL passwords are masked wherever they appear, and nothing else changes."""

from __future__ import annotations

import pytest

from tuner.secrets import mask_secrets


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("postgresql://alice:hunter2@db:5432/mlflow", "postgresql://alice:***@db:5432/mlflow"),
        ("postgresql://alice:hun@ter2@db/mlflow", "postgresql://alice:***@db/mlflow"),
        ("uri redis://:hunter2@cache:6379 and mysql+pymysql://bob:x@h/d", "uri redis://:***@cache:6379 and "
         "mysql+pymysql://bob:***@h/d"),
        ("https://alice@host/path", "https://alice@host/path"),
        ("https://host/path?mail=a:b@c", "https://host/path?mail=a:b@c"),
        ("sqlite:////abs/runs/mlflow.db", "sqlite:////abs/runs/mlflow.db"),
        ("no url here: a:b@c", "no url here: a:b@c"),
    ],
)  # fmt: skip
def test_mask_secrets_hides_url_passwords_only(text: str, expected: str) -> None:
    assert mask_secrets(text) == expected


def test_mask_secrets_walks_containers_and_keeps_other_values() -> None:
    value = {"a": ["x://u:hunter2@h", 3], "b": ("y://:hunter2@h",), "c": None, "d": 1.5}
    assert mask_secrets(value) == {"a": ["x://u:***@h", 3], "b": ("y://:***@h",), "c": None, "d": 1.5}
