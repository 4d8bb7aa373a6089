"""Prefect runtime costs that bought synthllm nothing, trimmed: each patch names what it measured.

Every shard is one Prefect task, so what Prefect spends per task and per flow run is paid
thousands of times in a run, by the flow process and by every Dask or Ray worker. Each function
here patches one Prefect internal without changing what a task receives or reports, and steps
aside when a Prefect release no longer has what it patches. ``tasks.common`` applies them on
import: every flow module imports it, and so does every shard task a worker unpickles.
"""

from __future__ import annotations

import functools
import inspect
import json
import ssl
import threading
from contextlib import contextmanager
from typing import Any

import cachetools
import certifi
import prefect.client.orchestration
import prefect.flow_engine
import prefect.task_engine
from prefect.context import SettingsContext
from prefect.settings import PREFECT_API_SSL_CERT_FILE, PREFECT_API_TLS_INSECURE_SKIP_VERIFY


def end_flow_runs_without_waiting_for_heartbeats() -> None:
    """A flow run ends when its work does, not up to a second later.

    Prefect's flow-run heartbeat thread sleeps in whole-second steps, and a sync flow run's exit
    joins it, so every flow and subflow run waited for the current step to end: a flow run that
    does nothing took 1.09 s (0.09 s without the wait), and ``synthllm run``'s five subflows up to
    5 s. Heartbeats still go out every ``PREFECT_FLOWS_HEARTBEAT_FREQUENCY`` seconds; the thread
    is told to stop and ends at its next step, unjoined, as Prefect's async engine already does
    (``join_on_exit=False``). Left alone if a Prefect release renames that hook."""
    send = getattr(prefect.flow_engine, "_send_heartbeats", None)
    if send is None or getattr(send, "unjoined", False) or "join_on_exit" not in inspect.signature(send).parameters:
        return

    @contextmanager
    def send_heartbeats(engine, join_on_exit: bool = True):
        with send(engine, join_on_exit=False):
            yield

    send_heartbeats.unjoined = True
    prefect.flow_engine._send_heartbeats = send_heartbeats


def serialize_settings_once() -> None:
    """Serialize each Prefect settings context once per process, not on every submit.

    prefect-dask and prefect-ray send the flow's Prefect context with each task, and serializing
    its settings part (the whole Prefect settings model) cost about 14 ms of the flow process's
    CPU per submit (``bench/submit_cost.py``): seconds of coordinator CPU over a run's shards.
    A context and its settings are not changed once entered (``temporary_settings`` enters a new
    one), so the last context's serialization is kept and reused while that same context is asked.
    """
    original = SettingsContext.serialize
    if getattr(original, "serialized_once", False):
        return
    last: tuple[tuple[Any, ...], dict[str, Any]] | None = None

    @functools.wraps(original)
    def serialize(self: SettingsContext, include_secrets: bool = True) -> dict[str, Any]:
        nonlocal last
        key = (self, self.settings, self.profile, include_secrets)
        entry = last  # one read: another thread may replace it meanwhile
        if entry is None or any(a is not b for a, b in zip(entry[0], key, strict=True)):
            entry = last = (key, original(self, include_secrets=include_secrets))
        return entry[1]

    serialize.serialized_once = True
    SettingsContext.serialize = serialize


def _settings_key(serialized: dict[str, Any]) -> str:
    return json.dumps(serialized, sort_keys=True, default=str)


@cachetools.cached(cachetools.LRUCache(maxsize=8), key=_settings_key, lock=threading.Lock())
def _built_settings(serialized: dict[str, Any]) -> Any:
    """The Prefect settings a worker built from the serialized settings its tasks brought, by
    their content (the last few: one per flow run's settings context in practice)."""
    return SettingsContext(**serialized).settings


def hydrate_settings_once() -> None:
    """A worker builds the Prefect settings a flow sends with its tasks once, not for every task.

    A task sent to a Dask or Ray worker carries the flow's Prefect context, and Prefect enters it
    (``hydrated_context``) by validating the whole settings model again, reading the worker's
    environment and dotenv files on the way: 24 ms of the worker's CPU for every shard task.
    The settings are the same for every task of a flow run, and Prefect never changes a settings
    object once built, so the one built for the first task with those settings serves the next.
    The worker's environment is read then, as Prefect reads it for each task; a worker's
    environment does not change between tasks."""
    original = getattr(prefect.task_engine, "hydrated_context", None)
    if original is None or getattr(original, "settings_once", False):
        return

    @functools.wraps(original)
    def hydrated_context(serialized_context: dict[str, Any] | None = None, client=None):
        serialized = (serialized_context or {}).get("settings_context")
        if isinstance(serialized, dict) and isinstance(serialized.get("settings"), dict):
            built = {**serialized, "settings": _built_settings(serialized)}
            serialized_context = {**serialized_context, "settings_context": built}
        return original(serialized_context, client)

    hydrated_context.settings_once = True
    prefect.task_engine.hydrated_context = hydrated_context


@functools.lru_cache(maxsize=4)
def _api_tls_context(insecure: bool, cert_file: str | None) -> ssl.SSLContext:
    """The TLS context Prefect's clients build for its API (``PREFECT_API_TLS_INSECURE_SKIP_VERIFY``,
    ``PREFECT_API_SSL_CERT_FILE``, else certifi's bundle), built once per process for each setting."""
    if insecure:
        context = ssl.create_default_context()
        context.check_hostname, context.verify_mode = False, ssl.CERT_NONE
        return context
    return ssl.create_default_context(cafile=cert_file or certifi.where())


def share_api_tls_context() -> None:
    """Prefect's API clients share one TLS context per process instead of loading the certificate
    bundle for each client.

    Every Prefect client builds a TLS context from the whole CA bundle, 14-20 ms of CPU, even for
    an ``http://`` API, and a task run on a Dask or Ray worker makes two clients: 40 ms of the
    worker's CPU for every shard task. A TLS context can be shared by any number of connections.
    A client given its own ``verify`` keeps it; the bundle is read once per process, so a worker
    sees a changed bundle when it restarts."""
    orchestration = prefect.client.orchestration
    for client_class in (orchestration.PrefectClient, orchestration.SyncPrefectClient):
        original = client_class.__init__
        if not getattr(original, "shared_tls", False) and "httpx_settings" in inspect.signature(original).parameters:
            client_class.__init__ = _with_shared_tls_context(original)


def _with_shared_tls_context(original):
    @functools.wraps(original)
    def __init__(self, api, *args, httpx_settings: dict[str, Any] | None = None, **kwargs) -> None:
        httpx_settings = dict(httpx_settings or {})
        if "verify" not in httpx_settings:
            httpx_settings["verify"] = _api_tls_context(bool(PREFECT_API_TLS_INSECURE_SKIP_VERIFY.value()),
                                                        PREFECT_API_SSL_CERT_FILE.value() or None)
        original(self, api, *args, httpx_settings=httpx_settings, **kwargs)

    __init__.shared_tls = True
    return __init__


def trim_prefect_costs() -> None:
    """The patches every process gets (``serialize_settings_once`` only where tasks are sent to processes)."""
    end_flow_runs_without_waiting_for_heartbeats()
    hydrate_settings_once()
    share_api_tls_context()
