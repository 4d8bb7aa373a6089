"""Check what a user sees in the Prefect UI after a run, with a real server and headless Chromium.

    python infra/scripts/ui_check.py --scripted --store /tmp/ui-store --screenshot run.png
    python infra/scripts/ui_check.py --deployment --screenshot run.png     # make ui-check

It starts ``prefect server start`` on 127.0.0.1 (a private PREFECT_HOME unless one is set),
runs ``synthllm-run`` against it, then asks the API for the parent run's artifacts and renders
the run page and the summary artifact in Chromium: the page must list the artifacts and the
summary must show an image. ``--scripted`` runs the flow in a subprocess with the test suite's
scripted engine (about a minute); ``--deployment`` deploys ``synthllm-run/demo``, starts a worker
on the ``synthllm-cpu`` pool and runs the deployment with the embedded model (about ten minutes
on two cores). Prints one JSON object; exits 1 when a check fails.
"""

from __future__ import annotations

import argparse
import base64
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import httpx
from websockets.sync.client import connect

REPO = Path(__file__).resolve().parents[2]
CHROMIUM = os.environ.get("CHROMIUM", "/usr/bin/chromium")
CHROMIUM_FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
                  "--disable-component-update", "--disable-sync", "--no-first-run", "--hide-scrollbars"]

SCRIPTED_RUN = """
import sys
sys.path.insert(0, {tests!r})
from scripted_llm import PipelineResponder
from synthllm.engine_pool import install_engine
from synthllm.engines.scripted import ScriptedEngine
from synthllm.settings import load_settings
from synthllm.store import Store
from flows.synthesize import run_pipeline_flow

overrides = {{"generation.max_documents": 8, "generation.shard_size": 3, "graph.epochs": 2,
             "curation.benchmarks": ["builtin:gsm8k"]}}
settings = load_settings(overrides=overrides, store={store!r})
install_engine(settings.engine, ScriptedEngine(PipelineResponder()))
state = run_pipeline_flow(sources={sources!r}, store={store!r}, overrides=overrides, return_state=True)
state.result()
print("FLOW_RUN_ID", state.state_details.flow_run_id)
"""


def run(command: list[str], env: dict[str, str], timeout: float) -> str:
    done = subprocess.run(command, env=env, cwd=REPO, capture_output=True, text=True, timeout=timeout, check=False)
    if done.returncode != 0:
        raise RuntimeError(f"{' '.join(command[:4])} failed ({done.returncode}):\n{done.stdout[-2000:]}"
                           f"\n{done.stderr[-4000:]}")
    return done.stdout


def scripted_run(env: dict[str, str], store: str) -> str:
    code = SCRIPTED_RUN.format(tests=str(REPO / "tests"), store=store,
                               sources=[str(REPO / "data/sample/openstax-algebra.jsonl")])
    out = run([sys.executable, "-c", code], env, timeout=900)
    return next(line.split()[1] for line in out.splitlines() if line.startswith("FLOW_RUN_ID"))


def deployment_run(env: dict[str, str], api: str) -> str:
    """Pools, the demo deployment, one worker, one run of it: what a UI user's first click does."""
    bin_dir = Path(sys.executable).parent
    env = {**env, "PATH": f"{bin_dir}:{env.get('PATH', '')}"}
    run(["bash", "infra/scripts/setup-pools.sh", "--gpus", "1"], env, timeout=120)
    run([str(bin_dir / "prefect"), "--no-prompt", "deploy", "--name", "demo"], env, timeout=300)
    worker = subprocess.Popen([str(bin_dir / "prefect"), "worker", "start", "--pool", "synthllm-cpu", "--limit", "1"],
                              env={**env, "SYNTHLLM_HOME": str(REPO)}, cwd=REPO,
                              stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
    try:
        deployment = httpx.get(f"{api}/deployments/name/synthllm-run/demo", timeout=10).json()
        flow_run = httpx.post(f"{api}/deployments/{deployment['id']}/create_flow_run", json={}, timeout=10).json()
        deadline = time.monotonic() + 1800
        while time.monotonic() < deadline:
            state = httpx.get(f"{api}/flow_runs/{flow_run['id']}", timeout=10).json()["state"]["type"]
            if state in ("COMPLETED", "FAILED", "CRASHED", "CANCELLED"):
                if state != "COMPLETED":
                    logs = httpx.post(f"{api}/logs/filter", timeout=10, json={
                        "logs": {"flow_run_id": {"any_": [flow_run["id"]]}}, "sort": "TIMESTAMP_ASC"}).json()
                    tail = "\n".join(entry["message"][-1500:] for entry in logs[-8:])
                    raise RuntimeError(f"the demo run ended {state}; its last log lines:\n{tail}")
                return flow_run["id"]
            time.sleep(5)
        raise RuntimeError("the demo run did not finish in 30 minutes")
    finally:
        worker.terminate()
        worker.wait(timeout=30)


def artifacts_of(api: str, flow_run_id: str) -> list[dict]:
    body = {"artifacts": {"flow_run_id": {"any_": [flow_run_id]}}}
    return httpx.post(f"{api}/artifacts/filter", json=body, timeout=10).json()


class Browser:
    """Headless Chromium driven over the DevTools protocol: navigate, click, read text, screenshot."""

    def __init__(self, profile: str) -> None:
        self.process = subprocess.Popen([CHROMIUM, *CHROMIUM_FLAGS, f"--user-data-dir={profile}",
                                         "--remote-debugging-port=0", "--window-size=1400,1800", "about:blank"],
                                        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        port_file = Path(profile) / "DevToolsActivePort"
        deadline = time.monotonic() + 60
        while not port_file.exists() or not port_file.read_text().strip():
            if time.monotonic() > deadline:
                raise RuntimeError("chromium did not open its DevTools port")
            time.sleep(0.2)
        port = port_file.read_text().split()[0]
        page = next(t for t in httpx.get(f"http://127.0.0.1:{port}/json", timeout=10).json() if t["type"] == "page")
        self.socket = connect(page["webSocketDebuggerUrl"], max_size=None)
        self.next_id = 0

    def call(self, method: str, **params) -> dict:
        self.next_id += 1
        self.socket.send(json.dumps({"id": self.next_id, "method": method, "params": params}))
        while True:
            message = json.loads(self.socket.recv(timeout=120))
            if message.get("id") == self.next_id:
                return message.get("result", {})

    def evaluate(self, expression: str):
        return self.call("Runtime.evaluate", expression=expression, returnByValue=True)["result"].get("value")

    def wait_for(self, expression: str, timeout_s: float = 60) -> bool:
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if self.evaluate(expression):
                return True
            time.sleep(0.5)
        return False

    def open(self, url: str) -> None:
        self.call("Page.navigate", url=url)

    def screenshot(self, path: Path) -> None:
        path.write_bytes(base64.b64decode(self.call("Page.captureScreenshot", format="png")["data"]))

    def close(self) -> None:
        self.socket.close()
        self.process.terminate()
        self.process.wait(timeout=30)


def check_pages(ui_url: str, flow_run_id: str, summary_id: str | None, screenshot: Path) -> dict:
    """The run page's Artifacts tab lists both artifacts; the summary artifact's page shows an image."""
    browser = Browser(tempfile.mkdtemp(prefix="synthllm-chromium-"))
    try:
        browser.open(f"{ui_url}/runs/flow-run/{flow_run_id}")
        click = "document.querySelector('li.p-tab#artifacts')?.click()"
        browser.wait_for(f"({click}, document.body.innerText.includes('synthllm-run-summary'))")
        listed = browser.evaluate("document.body.innerText")
        browser.screenshot(screenshot.with_name(screenshot.stem + "-artifacts.png"))
        result = {"page_lists_artifacts": all(k in listed for k in ("synthllm-run-progress", "synthllm-run-summary"))}
        if summary_id:
            browser.open(f"{ui_url}/artifacts/artifact/{summary_id}")
            shown = ("[...document.images].some(i => i.src.startsWith('data:image/png') && i.complete"
                     " && i.naturalWidth > 100)")
            result["summary_shows_image"] = browser.wait_for(shown)
            browser.evaluate("[...document.images].find(i => i.src.startsWith('data:image/png'))?.scrollIntoView()")
            browser.screenshot(screenshot)
        return result
    finally:
        browser.close()


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    mode = parser.add_mutually_exclusive_group(required=True)
    mode.add_argument("--scripted", action="store_true", help="run the flow with the scripted engine")
    mode.add_argument("--deployment", action="store_true", help="run the synthllm-run/demo deployment on a worker")
    parser.add_argument("--store", default=None, help="store of the scripted run (default: a temporary folder)")
    parser.add_argument("--screenshot", default="synthllm-data/ui-check/run-page.png", help="PNG of the summary artifact page")
    args = parser.parse_args()

    home = os.environ.get("PREFECT_HOME") or tempfile.mkdtemp(prefix="synthllm-ui-home-")
    os.environ["PREFECT_HOME"] = home
    sys.path.insert(0, str(REPO))
    from synthllm.commands.server import start_server, stop_server

    record = start_server()
    env = {**os.environ, "PREFECT_API_URL": record["api_url"], "PREFECT_SERVER_ANALYTICS_ENABLED": "false",
           "HF_HUB_OFFLINE": "1"}
    report: dict = {"ui": record["ui_url"]}
    try:
        started = time.monotonic()
        flow_run_id = (deployment_run(env, record["api_url"]) if args.deployment
                       else scripted_run(env, args.store or tempfile.mkdtemp(prefix="synthllm-ui-store-")))
        report["run_s"] = round(time.monotonic() - started, 1)
        found = {a["key"]: a for a in artifacts_of(record["api_url"], flow_run_id)}
        report["artifacts"] = sorted(found)
        summary = found.get("synthllm-run-summary")
        screenshot = Path(args.screenshot).resolve()
        screenshot.parent.mkdir(parents=True, exist_ok=True)
        report.update(check_pages(record["ui_url"], flow_run_id, summary and summary["id"], screenshot))
        report["screenshots"] = [str(screenshot.with_name(screenshot.stem + "-artifacts.png")), str(screenshot)]
        report["ok"] = bool(summary) and report["page_lists_artifacts"] and report.get("summary_shows_image", False)
    finally:
        stop_server()
    print(json.dumps(report))
    return 0 if report.get("ok") else 1


if __name__ == "__main__":
    sys.exit(main())
