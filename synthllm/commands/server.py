"""``synthllm server start | stop | status``: one Prefect server that every later command reuses.

Without ``PREFECT_API_URL``, each Prefect command would start a temporary API server first
(13-25 s before any work). ``synthllm server start`` starts ``prefect server start`` in the
background once and records its URL under the Prefect home; a command that finds that server
reachable points ``PREFECT_API_URL`` at it before Prefect is imported, so its flows start at once
and their runs show in the UI. This module must not import Prefect: settings are read at import.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
import tomllib
from pathlib import Path
from typing import Annotated, Any

import httpx
import typer
from rich.console import Console

app = typer.Typer(help="A background Prefect server (UI and API) that synthllm commands reuse.", no_args_is_help=True)
console = Console()

RECORD_NAME = "synthllm-server.json"

# For a Prefect server that synthllm starts: ``synthllm server start``, or the temporary API of a
# run without PREFECT_API_URL (it inherits this process's environment). Its task-run recorder
# writes one transaction per task-run state unless told to batch: about 60 % of the API's CPU in a
# 10k-document Dask run, about half as much CPU with batches (docs/orchestration.md). A state reaches the UI
# within ``FLUSH_INTERVAL`` seconds. Values the user set win.
SERVER_ENV = {
    "PREFECT_SERVER_ANALYTICS_ENABLED": "false",
    "PREFECT_SERVER_SERVICES_TASK_RUN_RECORDER_BATCH_SIZE": "100",
    "PREFECT_SERVER_SERVICES_TASK_RUN_RECORDER_READ_BATCH_SIZE": "100",
    "PREFECT_SERVER_SERVICES_TASK_RUN_RECORDER_FLUSH_INTERVAL": "1",
}


def default_server_environment() -> None:
    """Put ``SERVER_ENV`` into this process's environment where the user has not set a value."""
    for name, value in SERVER_ENV.items():
        os.environ.setdefault(name, value)


def prefect_home() -> Path:
    return Path(os.environ.get("PREFECT_HOME", "~/.prefect")).expanduser()


def record_path() -> Path:
    return prefect_home() / RECORD_NAME


def read_record() -> dict[str, Any] | None:
    try:
        return json.loads(record_path().read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None


def reachable(api_url: str, timeout_s: float = 1.0) -> bool:
    try:
        return httpx.get(f"{api_url.rstrip('/')}/health", timeout=timeout_s).status_code == 200
    except httpx.HTTPError:
        return False


def configured_api_url() -> str | None:
    """``PREFECT_API_URL`` from the environment or the active Prefect profile, if any."""
    if os.environ.get("PREFECT_API_URL"):
        return os.environ["PREFECT_API_URL"]
    profiles = prefect_home() / "profiles.toml"
    try:
        data = tomllib.loads(profiles.read_text(encoding="utf-8"))
    except (OSError, tomllib.TOMLDecodeError):
        return None
    active = os.environ.get("PREFECT_PROFILE") or data.get("active", "ephemeral")
    return (data.get("profiles", {}).get(active) or {}).get("PREFECT_API_URL")


def use_running_server() -> str | None:
    """Point this process at a configured or recorded server; None leaves Prefect's default
    (a temporary server per command). Call before anything imports Prefect."""
    configured = configured_api_url()
    if configured:
        return configured
    record = read_record()
    if record and reachable(record["api_url"], timeout_s=0.5):
        os.environ["PREFECT_API_URL"] = record["api_url"]
        return record["api_url"]
    return None


def _free_port(host: str) -> int:
    with socket.socket() as sock:
        sock.bind((host, 0))
        return sock.getsockname()[1]


def start_server(host: str = "127.0.0.1", port: int | None = None, wait_s: float = 180.0) -> dict[str, Any]:
    """Start ``prefect server start`` detached (it outlives this command), wait for its health
    check, and record its URL and process id; an already recorded live server is returned."""
    record = read_record()
    if record and reachable(record["api_url"]):
        return record
    port = port or _free_port(host)
    home = prefect_home()
    home.mkdir(parents=True, exist_ok=True)
    log = home / "synthllm-server.log"
    # the UI asks the server for its API address: without these it would point at port 4200
    env = {**SERVER_ENV, **os.environ, "PREFECT_SERVER_API_HOST": host,
           "PREFECT_SERVER_API_PORT": str(port), "PREFECT_UI_API_URL": f"http://{host}:{port}/api"}
    env.pop("PREFECT_API_URL", None)
    with log.open("ab") as out:
        process = subprocess.Popen(
            [sys.executable, "-m", "prefect", "server", "start", "--host", host, "--port", str(port)],
            stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, env=env, start_new_session=True)
    record = {"api_url": f"http://{host}:{port}/api", "ui_url": f"http://{host}:{port}", "pid": process.pid,
              "log": str(log)}
    deadline = time.monotonic() + wait_s
    while not reachable(record["api_url"]):
        if process.poll() is not None or time.monotonic() > deadline:
            process.kill()
            raise RuntimeError(f"prefect server did not come up on {record['ui_url']} (see {log})")
        time.sleep(0.5)
    record_path().write_text(json.dumps(record), encoding="utf-8")
    return record


def stop_server() -> dict[str, Any] | None:
    """Stop the recorded server (its whole process group) and forget it."""
    record = read_record()
    if record is None:
        return None
    try:
        os.killpg(record["pid"], signal.SIGTERM)
    except (ProcessLookupError, PermissionError):
        pass
    record_path().unlink(missing_ok=True)
    return record


@app.command()
def start(
    host: Annotated[str, typer.Option(help="Interface to listen on.")] = "127.0.0.1",
    port: Annotated[int | None, typer.Option(help="Port (default: a free one).")] = None,
) -> None:
    """Start the Prefect server in the background; later synthllm commands use it."""
    record = start_server(host, port)
    console.print(f"Prefect UI: {record['ui_url']}  (API {record['api_url']}, pid {record['pid']}, log {record['log']})")
    console.print(f"other tools (prefect deploy, workers): export PREFECT_API_URL={record['api_url']}")


@app.command()
def stop() -> None:
    """Stop the server `synthllm server start` started."""
    record = stop_server()
    console.print(f"stopped {record['ui_url']} (pid {record['pid']})" if record else "no recorded server")


@app.command()
def status() -> None:
    """Which Prefect API synthllm commands will use."""
    configured = configured_api_url()
    record = read_record()
    if configured:
        console.print(f"PREFECT_API_URL is set: {configured} ({'up' if reachable(configured) else 'unreachable'})")
    elif record:
        state = "up" if reachable(record["api_url"]) else "not reachable (commands start a temporary server)"
        console.print(f"recorded server {record['ui_url']}: {state}")
    else:
        console.print("no server: each command starts a temporary one (`synthllm server start` to keep one)")
