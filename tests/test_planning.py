"""Planning a stage: shards named by their content, found again by a rerun, and renamed when their
output exists but their items were uncovered again; on S3 without a request per shard."""

from __future__ import annotations

import uuid

import pytest

from synthllm.plans import StageFiles, plan_items, read_plan
from synthllm.settings import StoreSettings, load_settings
from synthllm.stages.registry import stage
from synthllm.store import Store


@pytest.mark.integration
def test_planning_on_s3_lists_a_stage_once_per_run_not_two_heads_per_shard(s3_endpoint: str, count_s3_calls) -> None:
    """The coordinator asked S3 twice per shard it planned (is the plan written? is the output?):
    two HEAD round trips per shard, through the whole run. A stage's plans and outputs are now
    listed once per run, however many times it is planned."""
    store = Store(StoreSettings(url=f"s3://synthllm-test/{uuid.uuid4().hex}", s3_endpoint_url=s3_endpoint))
    settings = load_settings(overrides={"engine.backend": "standin"}, store=store.url)
    level1, items = stage("level1"), [f"doc-{i}" for i in range(8)]

    calls = count_s3_calls()
    files = StageFiles.listed(store, level1)
    first = plan_items(store, level1, settings, items[:4], 2, files, located={}, looked_up={})
    streamed = plan_items(store, level1, settings, items[4:], 2, files, located={}, looked_up={})
    assert calls == ["list_objects_v2"] * 2 + ["put_object"] * 4, calls
    assert (len(first.shard_ids), first.items, len(streamed.shard_ids), streamed.items) == (2, 4, 2, 4)
    assert [read_plan(store, "level1", s).item_ids for s in first.shard_ids] == [items[:2], items[2:4]]

    # the next run: the first shard's output was written, and its items uncovered again (a retry)
    store.write_shard("questions", first.shard_ids[0], [])
    calls.clear()
    again = plan_items(store, level1, settings, items[:4], 2, StageFiles.listed(store, level1),
                       located={}, looked_up={})
    assert again.shard_ids == [f"{first.shard_ids[0]}-r1", first.shard_ids[1]]
    assert calls == ["list_objects_v2"] * 2 + ["put_object"], calls  # the second shard's plan is there
    assert read_plan(store, "level1", again.shard_ids[0]).item_ids == items[:2]


@pytest.mark.integration
def test_reruns_on_s3_through_an_http_server_ask_nothing_again_and_keep_their_plans(
        prefect_harness, s3_endpoint: str, sample_dir) -> None:
    """The whole synthesize on a real S3 endpoint, every prompt over HTTP. The same run again
    plans from its one listing per stage and finds everything done: it asks the server nothing
    and writes no plan. Grown to more documents, it plans the new ones beside the plans it has."""
    from openai_pipeline import openai_overrides, pipeline_server

    from flows.synthesize import synthesize_flow
    from synthllm.ingest import expand_sources, ingest_file

    url = f"s3://synthllm-test/{uuid.uuid4().hex}"
    overrides = {"store.s3_endpoint_url": s3_endpoint, "filter.enabled": False, "generation.max_documents": 3,
                 "generation.shard_size": 3, "generation.max_combinations": 3, "ingest.shard_size": 80}
    settings = load_settings(overrides=overrides, store=url)
    store = Store(settings.store)
    for source in expand_sources([str(sample_dir / "openstax-algebra.jsonl")], settings.store):
        ingest_file(store, settings, "ingest", source)

    def plans() -> dict[str, str]:
        return {path: store.fs.info(path)["LastModified"] for path in store.glob(store.path("plans", "*", "*.parquet"))}

    with pipeline_server() as server:
        run = {**overrides, **openai_overrides(server)}
        synthesize_flow(store=url, overrides=run)
        first_plans, first_asked = plans(), server.total_received
        questions = store.read_table("questions").height
        assert first_asked > 0 and questions > 0 and len(first_plans) > 3
        synthesize_flow(store=url, overrides=run)
        assert (server.total_received, plans(), store.read_table("questions").height) == (
            first_asked, first_plans, questions)
        synthesize_flow(store=url, overrides={**run, "generation.max_documents": 5})
        assert server.total_received > first_asked
    grown = plans()
    assert len(grown) > len(first_plans) and {path: grown[path] for path in first_plans} == first_plans
