"""Masking secrets before anything is printed, logged or stored: passwords in URLs become ``***``."""

from __future__ import annotations

import re
from collections.abc import Mapping
from typing import Any

MASK = "***"

# scheme://userinfo@ where userinfo runs to the last "@" of the authority (as URL parsers read it).
_URL_USERINFO = re.compile(r"(?P<scheme>\b[A-Za-z][A-Za-z0-9+.\-]*://)(?P<userinfo>[^/?#\s]*)@")


def mask_secrets(value: Any) -> Any:
    """``value`` with the password of every URL in it (``scheme://user:password@host``) replaced by ``***``.

    Strings are masked, mappings, lists and tuples are copied with their items masked, anything else is
    returned unchanged.
    """
    if isinstance(value, str):
        return _URL_USERINFO.sub(_mask_userinfo, value)
    if isinstance(value, Mapping):
        return {key: mask_secrets(item) for key, item in value.items()}
    if isinstance(value, list | tuple):
        return type(value)(mask_secrets(item) for item in value)
    return value


def _mask_userinfo(match: re.Match[str]) -> str:
    user, colon, _password = match["userinfo"].partition(":")
    return f"{match['scheme']}{user}{colon}{MASK if colon else ''}@"
