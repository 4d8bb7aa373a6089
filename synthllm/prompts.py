"""Versioned prompt files: ``prompts/<name>.yaml`` holds ``name``, ``version``, ``system``, ``user``, ``schema``.

A prompt's ``version`` (``"<name>@<n>"``) is written into every row it produced and into the
response-cache key, so editing a prompt without bumping its version is the one thing to avoid.
Templates are filled with :meth:`str.format`: values may hold any text (braces included), and a
literal brace in the template itself is written ``{{`` / ``}}``.
"""

from __future__ import annotations

import re
import string
from dataclasses import dataclass
from functools import cache, lru_cache
from pathlib import Path
from typing import Any

import yaml

from synthllm.resources import resource_dir

_VERSION = re.compile(r"^(?P<name>[a-z0-9_]+)@(?P<number>[0-9]+)$")
_REQUIRED_KEYS = ("name", "version", "system", "user")


class PromptError(ValueError):
    """A prompt file is missing or malformed, or a template was rendered with the wrong values."""


@lru_cache(maxsize=256)
def _placeholders(template: str) -> frozenset[str]:
    """Cached: every request renders its stage's prompt, and parsing the template cost more than filling it."""
    return frozenset(field for _, field, _, _ in string.Formatter().parse(template) if field is not None)


@dataclass(frozen=True)
class Prompt:
    """One versioned prompt. ``schema`` is the JSON schema of the expected reply (None: free text)."""

    name: str
    version: str
    system: str
    user: str
    schema: dict[str, Any] | None = None

    @property
    def placeholders(self) -> frozenset[str]:
        return _placeholders(self.system) | _placeholders(self.user)

    def render(self, **values: Any) -> list[dict[str, str]]:
        """Chat messages with every placeholder filled; a missing or unknown value is an error."""
        missing = self.placeholders - values.keys()
        unknown = values.keys() - self.placeholders
        if missing or unknown:
            raise PromptError(
                f"prompt {self.version}: missing values {sorted(missing)}, unknown values {sorted(unknown)}"
            )
        messages = []
        if self.system:
            messages.append({"role": "system", "content": self.system.format(**values)})
        messages.append({"role": "user", "content": self.user.format(**values)})
        return messages


@cache
def load_prompt(name: str) -> Prompt:
    """Read and check ``prompts/<name>.yaml`` (or a ``.yaml`` file given by path) once per process."""
    path = Path(name) if name.endswith(".yaml") else resource_dir("prompts") / f"{name}.yaml"
    name = path.stem
    if not path.is_file():
        raise PromptError(f"no prompt file {path}")
    data = yaml.safe_load(path.read_text(encoding="utf-8"))
    if not isinstance(data, dict):
        raise PromptError(f"{path}: expected a mapping at the top level")
    missing = [key for key in _REQUIRED_KEYS if not isinstance(data.get(key), str)]
    if missing:
        raise PromptError(f"{path}: missing or non-string keys {missing}")
    unknown = set(data) - {*_REQUIRED_KEYS, "schema"}
    if unknown:
        raise PromptError(f"{path}: unknown keys {sorted(unknown)}")
    version = _VERSION.match(data["version"])
    if data["name"] != name or not version or version["name"] != name:
        raise PromptError(
            f"{path}: name must be {name!r} and version '{name}@<n>', got {data['name']!r}, {data['version']!r}"
        )
    schema = data.get("schema")
    if schema is not None and not isinstance(schema, dict):
        raise PromptError(f"{path}: schema must be a mapping (a JSON schema)")
    prompt = Prompt(name=name, version=data["version"], system=data["system"], user=data["user"], schema=schema)
    try:  # unbalanced braces fail here, when the file is read, not in the middle of a run
        fields = prompt.placeholders
    except ValueError as exc:
        raise PromptError(f"{path}: bad template: {exc}") from exc
    if not all(field.isidentifier() for field in fields):
        raise PromptError(f"{path}: placeholders must be plain names, got {sorted(fields)}")
    return prompt
