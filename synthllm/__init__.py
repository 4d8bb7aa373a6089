"""synthllm: corpus -> documents -> concepts -> graph -> questions -> answers -> curated dataset."""

__version__ = "0.1.0"
