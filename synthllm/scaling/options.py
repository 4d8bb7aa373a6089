"""The scaling options as one object: every field of ``ScalingSettings``, optional.

The CLI commands and ``scaling_fit_flow`` take their options from here, so a new setting is
declared once, in ``ScalingSettings`` (type, bounds, description), and reaches both. Options
left None fall back to the settings (config file, environment).
"""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel, ConfigDict, Field, create_model

from synthllm.settings import ScalingSettings

# The options that say how to read points: all that ``synthllm scaling add`` needs.
POINT_OPTIONS = ("series_col", "tokens_col", "metric_col", "metric_kind", "tokens_per_unit")


class _Overrides(BaseModel):
    model_config = ConfigDict(extra="forbid")

    def overrides(self) -> dict[str, Any]:
        """The options given, as dotted settings overrides (``scaling.<field>``)."""
        return {f"scaling.{name}": value for name, value in self.model_dump(exclude_none=True).items()}


ScalingOptions = create_model(
    "ScalingOptions",
    __base__=_Overrides,
    __doc__="Overrides of the ``scaling`` settings; None: from the settings.",
    **{name: (field.annotation | None, Field(None, description=field.description))
       for name, field in ScalingSettings.model_fields.items()},
)
