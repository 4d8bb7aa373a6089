"""Settings validation: unknown keys, bounds and types are errors naming the dotted field."""

from __future__ import annotations

from pathlib import Path

import pytest

from synthllm.settings import SettingsError, load_settings

REPO = Path(__file__).resolve().parents[1]


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        ({"generation.max_document": 1}, "generation.max_document: unknown setting; did you mean generation.max_documents?"),
        ({"engine.bakend": "openai"}, "engine.bakend: unknown setting; did you mean engine.backend?"),
        ({"answer.engine": {"bakend": "openai"}}, "answer.engine.bakend: unknown setting; did you mean answer.engine.backend?"),
        ({"generaton.levels": [1]}, "generaton: unknown setting; did you mean generation?"),
        ({"filter.rater_sampling.temprature": 0.5}, "did you mean filter.rater_sampling.temperature?"),
        ({"generation.max_documents": -3}, "generation.max_documents: Input should be greater than or equal to 1"),
        ({"generation.max_combinations": 0}, "generation.max_combinations: Input should be greater than or equal to 1"),
        ({"generation.levels": []}, "generation.levels: List should have at least 1 item"),
        ({"generation.max_documents": True}, "generation.max_documents: expected int | None, not a boolean"),
        ({"generation.levels": [1, True]}, "generation.levels: expected list[int], not a boolean"),
        ({"ingest.shard_size": "many"}, "ingest.shard_size: Input should be a valid integer"),
    ],
)
def test_bad_overrides_name_the_field(overrides: dict, message: str) -> None:
    with pytest.raises(SettingsError) as caught:
        load_settings(overrides=overrides)
    assert message in str(caught.value)


def test_valid_values_still_pass() -> None:
    settings = load_settings(overrides={"generation.max_documents": 3, "generation.levels": [1, 3],
                                        "filter.enabled": False, "engine.max_concurrency": "8"})
    assert settings.generation.max_documents == 3 and settings.generation.levels == [1, 3]
    assert settings.filter.enabled is False and settings.engine.max_concurrency == 8


@pytest.mark.parametrize("suffix", [".toml", ".yaml"])
def test_unknown_config_file_keys_are_errors(tmp_path: Path, suffix: str) -> None:
    path = tmp_path / f"config{suffix}"
    if suffix == ".toml":
        path.write_text('[generation]\nmax_documents = 2\nshard_sise = 10\n')
    else:
        path.write_text("generation:\n  max_documents: 2\n  shard_sise: 10\n")
    with pytest.raises(SettingsError, match="generation.shard_sise: unknown setting; did you mean generation.shard_size"):
        load_settings(path)


def test_environment_variables_are_checked(monkeypatch) -> None:
    monkeypatch.setenv("SYNTHLLM_GENERATION__MAX_DOCUMENTS", "4")
    assert load_settings().generation.max_documents == 4
    monkeypatch.setenv("SYNTHLLM_GENERATION__MAX_DOCUMENT", "4")
    with pytest.raises(SettingsError, match="generation.max_document: unknown setting.*SYNTHLLM_GENERATION__MAX_DOCUMENT"):
        load_settings()
    monkeypatch.delenv("SYNTHLLM_GENERATION__MAX_DOCUMENT")
    monkeypatch.setenv("SYNTHLLM_GENERATON__MAX_DOCUMENTS", "4")
    with pytest.raises(SettingsError, match="SYNTHLLM_GENERATON__MAX_DOCUMENTS: unknown settings section 'generaton'; "
                                            "did you mean generation"):
        load_settings()
    monkeypatch.delenv("SYNTHLLM_GENERATON__MAX_DOCUMENTS")
    monkeypatch.setenv("SYNTHLLM_MODELS_DIR", "/tmp/models")  # not a setting: no __, left alone
    assert load_settings().generation.max_documents == 4


@pytest.mark.parametrize("runner", ["dask", "ray"])
def test_a_task_runner_not_installed_names_the_setting_and_the_extra(monkeypatch, runner: str) -> None:
    """Was a bare ModuleNotFoundError for prefect_ray from inside the flow."""
    import sys

    from tasks.common import make_task_runner

    monkeypatch.setitem(sys.modules, f"prefect_{runner}", None)  # importing it now raises ImportError
    with pytest.raises(SettingsError, match=rf"orchestration.task_runner={runner} needs prefect-{runner}: "
                                            rf"pip install 'synthllm\[{runner}\]'"):
        make_task_runner(load_settings(None, {"orchestration.task_runner": runner}))


def test_an_override_of_none_clears_a_config_files_value(tmp_path: Path) -> None:
    """``{"generation.max_documents": null}`` in an ad-hoc run lifts the deployment config's limit."""
    path = tmp_path / "config.yaml"
    path.write_text("generation:\n  max_documents: 100\nanswer:\n  engine:\n    backend: openai\n")
    assert load_settings(path).generation.max_documents == 100
    cleared = load_settings(path, {"generation.max_documents": None, "answer.engine": None})
    assert cleared.generation.max_documents is None and cleared.answer.engine is None
    with pytest.raises(SettingsError, match="generation.shard_size"):
        load_settings(path, {"generation.shard_size": None})


def test_a_flows_empty_parameters_keep_the_settings_values(tmp_path: Path) -> None:
    """A flow parameter left empty (None) means "from the settings", not "set to None"."""
    from synthllm.settings import given_options, resolve_settings

    path = tmp_path / "config.yaml"
    path.write_text("ingest:\n  shard_size: 123\n")
    options = given_options({"ingest.shard_size": None, "ingest.text_field": "body"})
    settings = resolve_settings(path, options)
    assert settings.ingest.shard_size == 123 and settings.ingest.text_field == "body"


def test_a_dask_cluster_on_another_machine_needs_a_prefect_server_it_can_reach() -> None:
    """A run on the temporary API (127.0.0.1) refuses a remote scheduler before sending it any
    shard: its workers could not report the task runs, and would start Prefect servers of their own."""
    from prefect.settings import PREFECT_API_URL, temporary_settings

    from tasks.common import open_task_runner

    remote = load_settings(None, {"orchestration.task_runner": "dask", "orchestration.dask_address": "tcp://10.1.2.3:8786"})
    with temporary_settings(restore_defaults={PREFECT_API_URL}):
        assert PREFECT_API_URL.value() is None
        with pytest.raises(SettingsError, match=r"orchestration.dask_address=tcp://10.1.2.3:8786: .* set PREFECT_API_URL"):
            with open_task_runner(remote):
                pass


@pytest.mark.parametrize("config", sorted((REPO / "configs").glob("*.yaml")), ids=lambda path: path.name)
def test_every_shipped_config_loads(config: Path) -> None:
    """The example configs are documentation users copy: a renamed setting must fail here, not on a cluster."""
    settings = load_settings(str(config))
    assert settings.store.url


def test_a_dask_address_where_no_scheduler_answers_names_the_setting() -> None:
    """Was a bare connection timeout from inside the first shard's submit, naming no setting."""
    import dask

    from tasks.common import open_task_runner

    nowhere = load_settings(None, {"orchestration.task_runner": "dask", "orchestration.dask_address": "tcp://127.0.0.1:9"})
    with dask.config.set({"distributed.comm.timeouts.connect": "1s"}):
        with pytest.raises(SettingsError, match=r"orchestration.dask_address=tcp://127.0.0.1:9: no Dask scheduler "
                                                r"answered \(.*\); start one"):
            with open_task_runner(nowhere):
                pass


def test_a_shard_rebuilds_the_same_settings_from_the_payloads_json_text(monkeypatch) -> None:
    """Shard tasks get the settings as JSON text (cheap to submit); secrets still come from the
    worker's environment and never travel in the payload."""
    import json

    from synthllm.settings import settings_from_payload, settings_payload

    settings = load_settings(None, {"engine.backend": "openai", "engine.base_url": ["http://127.0.0.1:9/v1"],
                                    "engine.model": "m", "generation.levels": [1, 3]})
    payload = settings_payload(settings)
    text = json.dumps(payload)
    assert "api_key" not in text
    monkeypatch.setenv("SYNTHLLM_ENGINE__API_KEY", "sk-worker")
    from_text, from_dict = settings_from_payload(text), settings_from_payload(payload)
    assert from_text == from_dict and settings_payload(from_text) == payload
    assert from_text.engine.api_key.get_secret_value() == "sk-worker"

