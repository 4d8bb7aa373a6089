"""Locate the shipped SQL and prompt files, in a checkout or an installed wheel."""

from __future__ import annotations

from functools import cache
from pathlib import Path

_PACKAGE_DIR = Path(__file__).resolve().parent


@cache
def resource_dir(name: str) -> Path:
    """``sql`` or ``prompts``: the repo's top-level folder, else the copy inside the wheel."""
    for candidate in (_PACKAGE_DIR.parent / name, _PACKAGE_DIR / "_resources" / name):
        if candidate.is_dir():
            return candidate
    raise FileNotFoundError(f"resource folder {name!r} not found next to {_PACKAGE_DIR}")


def read_sql(name: str) -> str:
    return (resource_dir("sql") / name).read_text(encoding="utf-8")
