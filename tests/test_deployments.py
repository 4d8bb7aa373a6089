"""prefect.yaml against the flows it deploys, and the infrastructure files beside it.

What `prefect deploy` and the server would reject only later (a parameter the flow does not
take, a value of the wrong type, a bad cron string, a config file that does not load) fails here.
"""

from __future__ import annotations

import importlib
import inspect
import subprocess
from pathlib import Path

import pytest
import yaml
from prefect import Flow
from prefect.client.schemas.schedules import CronSchedule
from prefect.utilities.callables import parameter_schema
from prefect.utilities.schema_tools import validate

from synthllm.settings import load_settings

REPO = Path(__file__).resolve().parents[1]
PREFECT_YAML = REPO / "prefect.yaml"
POOLS = {"synthllm-cpu", "synthllm-gpu"}


def _deployments() -> list[dict]:
    return yaml.safe_load(PREFECT_YAML.read_text(encoding="utf-8"))["deployments"]


def _load_flow(entrypoint: str) -> Flow:
    """``flows/x.py:name`` -> the Flow object, imported as a package module like workers do."""
    path, _, attribute = entrypoint.partition(":")
    assert (REPO / path).is_file(), f"entrypoint file missing: {path}"
    module = importlib.import_module(path.removesuffix(".py").replace("/", "."))
    flow = getattr(module, attribute)
    assert isinstance(flow, Flow), f"{entrypoint} is not a Prefect flow"
    return flow


def _label(deployment: dict) -> str:
    return f"{deployment['entrypoint']} ({deployment['name']})"


DEPLOYMENTS = _deployments()
IDS = [_label(d) for d in DEPLOYMENTS]


def test_every_flow_has_a_deployment_and_names_are_unique():
    flow_objects = set()
    for module_file in sorted((REPO / "flows").glob("*.py")):
        module = importlib.import_module(f"flows.{module_file.stem}")
        flow_objects |= {obj.name for obj in vars(module).values() if isinstance(obj, Flow)}
    deployed = [(_load_flow(d["entrypoint"]).name, d["name"]) for d in DEPLOYMENTS]
    assert len(deployed) == len(set(deployed)), f"duplicate flow/deployment names: {deployed}"
    assert flow_objects == {flow_name for flow_name, _ in deployed}


@pytest.mark.parametrize("deployment", DEPLOYMENTS, ids=IDS)
def test_parameters_match_the_flow_signature_and_schema(deployment):
    flow = _load_flow(deployment["entrypoint"])
    schema = parameter_schema(flow.fn)
    accepted = set(inspect.signature(flow.fn).parameters)
    assert set(schema.properties) == accepted

    parameters = deployment.get("parameters") or {}
    assert set(parameters) <= accepted, f"not flow parameters: {set(parameters) - accepted}"
    errors = validate(parameters, schema.model_dump_for_openapi(), ignore_required=True)
    assert not errors, [e.message for e in errors]
    assert deployment.get("enforce_parameter_schema") is True


@pytest.mark.parametrize("deployment", DEPLOYMENTS, ids=IDS)
def test_schedules_are_valid_cron_with_complete_parameters(deployment):
    flow = _load_flow(deployment["entrypoint"])
    schema = parameter_schema(flow.fn).model_dump_for_openapi()
    for schedule in deployment.get("schedules") or []:
        CronSchedule(cron=schedule["cron"], timezone=schedule.get("timezone"))
        merged = {**(deployment.get("parameters") or {}), **(schedule.get("parameters") or {})}
        # a scheduled run gets no parameters from anyone else: the required ones must be here
        errors = validate(merged, schema, ignore_required=False)
        assert not errors, [e.message for e in errors]


@pytest.mark.parametrize("deployment", DEPLOYMENTS, ids=IDS)
def test_config_parameter_loads(deployment, monkeypatch):
    """The config file exists and, with the pool's environment applied, validates as Settings."""
    config = (deployment.get("parameters") or {}).get("config")
    assert config, "every deployment names its config file"
    assert (REPO / config).is_file(), config
    pool = deployment["work_pool"]
    for key, value in pool.get("job_variables", {}).get("env", {}).items():
        monkeypatch.setenv(key, value)
    settings = load_settings(REPO / config)
    if pool["name"] == "synthllm-gpu":
        assert settings.engine.backend == "vllm"
        assert settings.orchestration.task_workers == 1
    if "openai" in deployment.get("tags", []):
        assert settings.engine.backend == "openai" and settings.engine.base_url


@pytest.mark.parametrize("deployment", DEPLOYMENTS, ids=IDS)
def test_work_pool_and_job_environment(deployment):
    pool = deployment["work_pool"]
    assert pool["name"] in POOLS
    env = pool.get("job_variables", {}).get("env", {})
    assert all(isinstance(v, str) for v in env.values()), "process job env values must be strings"
    # the job env overrides the worker's: a GPU pinned here would put every worker on one GPU
    assert "CUDA_VISIBLE_DEVICES" not in env


def test_pull_step_enters_the_code_directory():
    document = yaml.safe_load(PREFECT_YAML.read_text(encoding="utf-8"))
    (step,) = document["pull"]
    (name, arguments), = step.items()
    module_name, _, function = name.rpartition(".")
    assert callable(getattr(importlib.import_module(module_name), function))
    assert name == "prefect.deployments.steps.set_working_directory"
    assert arguments["directory"] == "{{ $SYNTHLLM_HOME }}"


@pytest.mark.parametrize(
    "relative", ["infra/compose.yaml", "infra/k8s/vllm.yaml", "infra/k8s/server-values.yaml",
                 "infra/k8s/worker-cpu-values.yaml", "infra/k8s/worker-gpu-values.yaml",
                 "infra/ray/cluster.yaml"],
)
def test_infrastructure_yaml_parses(relative):
    documents = [d for d in yaml.safe_load_all((REPO / relative).read_text(encoding="utf-8")) if d]
    assert documents


def test_compose_server_on_postgres_and_gpu_workers_reserve_one_gpu():
    services = yaml.safe_load((REPO / "infra/compose.yaml").read_text(encoding="utf-8"))["services"]
    url = services["prefect-server"]["environment"]["PREFECT_API_DATABASE_CONNECTION_URL"]
    assert url.startswith("postgresql+asyncpg://")
    gpu_workers = [s for name, s in services.items() if name.startswith("worker-gpu")]
    assert gpu_workers
    for service in gpu_workers:
        (device,) = service["deploy"]["resources"]["reservations"]["devices"]
        assert device["driver"] == "nvidia" and len(device["device_ids"]) == 1
        assert service["command"][-2:] == ["--limit", "1"]


def test_the_dask_config_points_at_the_compose_dask_cluster():
    """configs/dask.yaml and infra/compose.yaml's dask profile are one example: the address the
    config names is the scheduler service's, the workers connect to it, one thread per process."""
    from urllib.parse import urlsplit

    services = yaml.safe_load((REPO / "infra/compose.yaml").read_text(encoding="utf-8"))["services"]
    address = urlsplit(load_settings(REPO / "configs/dask.yaml").orchestration.dask_address)
    scheduler, worker = services[address.hostname], services["dask-worker"]
    assert scheduler["command"][:2] == ["dask", "scheduler"]
    assert scheduler["command"][scheduler["command"].index("--port") + 1] == str(address.port)
    assert worker["command"][:3] == ["dask", "worker", f"tcp://{address.hostname}:{address.port}"]
    assert worker["command"][worker["command"].index("--nthreads") + 1] == "1"
    assert "dask" in scheduler["build"]["args"]["EXTRAS"].split(",")
    assert worker["environment"]["SYNTHLLM_STORE__URL"]  # the store's settings, as every synthllm container


def test_the_compose_dask_cluster_runs_with_the_shard_task_settings():
    """A running cluster's scheduler and workers read infra/dask (DASK_CONFIG), which the image
    copies; it holds what a temporary local cluster gets (tasks.dask_runner.SHARD_TASK_DASK_CONFIG)."""
    import dask.config

    from tasks.dask_runner import SHARD_TASK_DASK_CONFIG

    nested: dict = {}
    dask.config.set(SHARD_TASK_DASK_CONFIG, config=nested)  # Dask nests the dotted keys into this dict
    assert yaml.safe_load((REPO / "infra/dask/distributed.yaml").read_text(encoding="utf-8")) == nested
    services = yaml.safe_load((REPO / "infra/compose.yaml").read_text(encoding="utf-8"))["services"]
    dockerfile = (REPO / "infra/Dockerfile").read_text(encoding="utf-8")
    workdir = dockerfile.split("WORKDIR ", 1)[1].split()[0]
    assert "COPY --chown=1001:1001 infra/dask infra/dask" in dockerfile
    assert "!infra/dask" in (REPO / "infra/Dockerfile.dockerignore").read_text(encoding="utf-8").splitlines()
    for name in ("dask-scheduler", "dask-worker"):
        assert services[name]["environment"]["DASK_CONFIG"] == f"{workdir}/infra/dask", name


@pytest.mark.parametrize("script", sorted((REPO / "infra/scripts").glob("*.sh")), ids=lambda p: p.name)
def test_scripts_parse_and_reject_missing_arguments(script):
    subprocess.run(["bash", "-n", str(script)], check=True)
    result = subprocess.run(["bash", str(script)], capture_output=True, text=True, env={"PATH": "/usr/bin:/bin"})
    assert result.returncode == 2, result.stderr


LLM_ENTRYPOINTS = {"flows/filter_references.py:filter_references_flow", "flows/synthesize.py:synthesize_flow",
                   "flows/synthesize.py:run_pipeline_flow"}


def _settings_on_pool(deployment: dict, monkeypatch):
    for key, value in deployment["work_pool"].get("job_variables", {}).get("env", {}).items():
        monkeypatch.setenv(key, value)
    return load_settings(REPO / deployment["parameters"]["config"])


def test_deployment_names_say_what_they_do():
    assert not [d["entrypoint"] for d in DEPLOYMENTS if d["name"] == "default"]


@pytest.mark.parametrize("deployment", DEPLOYMENTS, ids=IDS)
def test_tags_name_the_backend_the_config_runs(deployment, monkeypatch):
    """A llama.cpp run is not tagged openai, a CPU deployment not gpu: the tag is the backend."""
    tags = set(deployment["tags"])
    assert "gpu" not in tags, "the pool says where a run goes; tags name the backend"
    if deployment["entrypoint"] in LLM_ENTRYPOINTS:
        backend = _settings_on_pool(deployment, monkeypatch).engine.backend
        assert backend in tags and not tags & ({"vllm", "openai", "llamacpp"} - {backend})
    else:
        assert "cpu" in tags


def test_demo_deployment_runs_on_one_machine(monkeypatch):
    """The first click in the UI: CPU pool, the embedded engine, a local store, files in the repo."""
    (demo,) = [d for d in DEPLOYMENTS if d["name"] == "demo"]
    assert _load_flow(demo["entrypoint"]).name == "synthllm-run"
    assert demo["work_pool"]["name"] == "synthllm-cpu"
    settings = _settings_on_pool(demo, monkeypatch)
    assert settings.engine.backend == "llamacpp" and not settings.store.url.startswith("s3://")
    for pattern in demo["parameters"]["sources"]:
        assert sorted(REPO.glob(pattern)), pattern


def test_every_flow_parameter_is_documented_for_the_run_form():
    """The UI's run form shows each parameter's description, parsed from the docstring's Args."""
    for module_file in sorted((REPO / "flows").glob("*.py")):
        module = importlib.import_module(f"flows.{module_file.stem}")
        for flow in (obj for obj in vars(module).values() if isinstance(obj, Flow)):
            properties = parameter_schema(flow.fn).properties
            undocumented = [name for name, spec in properties.items() if not spec.get("description")]
            assert not undocumented, f"{flow.name}: no Args entry for {undocumented}"
