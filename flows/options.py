"""Task options the flows set on top of ``tasks/common.py``."""

from __future__ import annotations

from synthllm.settings import Settings


def cpu_tags(settings: Settings) -> list[str]:
    """Tags for CPU tasks (ingest, graph, curation): ``cpu`` only when ``orchestration.tag_tasks``
    is set. A tagged task run looks up tag concurrency limits (a round trip to the API) even when
    none exists, and the tasks' decorators carry ``cpu``: an empty list replaces it."""
    return ["cpu"] if settings.orchestration.tag_tasks else []
