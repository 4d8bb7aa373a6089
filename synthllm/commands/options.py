"""The options every command shares, so ``--store``, ``--config`` and ``--set`` read the same everywhere."""

from __future__ import annotations

from typing import Annotated

import typer

StoreOption = Annotated[str | None, typer.Option("--store", help="Store URL: a folder or s3://bucket/prefix.")]
ConfigOption = Annotated[str | None, typer.Option("--config", help="YAML or TOML settings file.")]
SetOption = Annotated[
    list[str] | None,
    typer.Option("--set", help="Override a setting: dotted.key=value (YAML value), repeatable."),
]
