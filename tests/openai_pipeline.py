"""The scripted pipeline replies behind a real HTTP server: a fake OpenAI-compatible server on
127.0.0.1 answering every SynthLLM prompt like :class:`scripted_llm.PipelineResponder`; and the
requests the engine tests send."""

from __future__ import annotations

from collections.abc import Callable

from fake_openai_server import FakeOpenAIServer
from scripted_llm import PipelineResponder
from synthllm.engines.base import ChatRequest


YES_NO_SCHEMA = {
    "type": "object",
    "properties": {"answer": {"type": "string", "enum": ["yes", "no"]}},
    "required": ["answer"],
    "additionalProperties": False,
}


def user(text: str, **kwargs) -> ChatRequest:
    """One user message as a request (``kwargs``: sampling and schema)."""
    return ChatRequest.of([{"role": "user", "content": text}], **kwargs)


def request_of(body: dict) -> ChatRequest:
    """The ChatRequest a request body came from (messages, schema, sampling)."""
    response_format = body.get("response_format") or {}
    schema = (response_format.get("json_schema") or {}).get("schema") or response_format.get("schema")
    return ChatRequest.of(body["messages"], temperature=body.get("temperature", 0.7),
                          max_tokens=body.get("max_tokens", 512), n=body.get("n", 1), seed=body.get("seed"),
                          json_schema=schema)


def pipeline_server(responder: Callable[[ChatRequest], str] | None = None, **options) -> FakeOpenAIServer:
    reply = responder or PipelineResponder()
    return FakeOpenAIServer(lambda body: reply(request_of(body)), **options)


def openai_overrides(server: FakeOpenAIServer, **extra) -> dict:
    return {"engine.backend": "openai", "engine.base_url": server.base_url, "engine.model": server.model,
            "engine.max_http_retries": 1, "engine.http_backoff_s": 0.05, **extra}
