"""A shard reads only the files holding its inputs: level 2 the concept shards of its documents,
level 3 the documents shards of its references (recorded in the plan), never a whole table."""

from __future__ import annotations

import dataclasses

import pytest

from flows.synthesize import synthesize_flow
from synthllm.plans import read_plan
from synthllm.settings import load_settings
from synthllm.stages.registry import stage
from synthllm.store import Store

OVERRIDES = {"engine.backend": "standin", "filter.enabled": False, "generation.max_documents": 24,
             "generation.shard_size": 3, "generation.max_combinations": 12, "ingest.shard_size": 80}


@pytest.fixture(scope="module")
def run_store(prefect_harness, tmp_path_factory, sample_dir) -> str:
    url = str(tmp_path_factory.mktemp("reads") / "store")
    settings = load_settings(overrides={"ingest.shard_size": 80}, store=url)
    assert settings.ingest.shard_size == 80
    from synthllm.ingest import expand_sources, ingest_file

    for source in expand_sources([str(sample_dir / "openstax-algebra.jsonl")], settings.store):
        ingest_file(Store(settings.store), settings, "ingest", source)
    synthesize_flow(store=url, overrides=OVERRIDES)
    return url


def _whole_table_scans(monkeypatch, store: Store) -> list[str]:
    scanned: list[str] = []
    connect = Store.connect

    def recording(self, tables=None, exclude=()):
        scanned.extend(tables or ["<all>"])
        return connect(self, tables, exclude)

    monkeypatch.setattr(Store, "connect", recording)
    return scanned


@pytest.mark.parametrize(("stage_name", "lookup_table"), [("level2", "document_concepts"), ("level3", "documents")])
def test_shard_reads_only_the_files_its_plan_names(run_store, monkeypatch, stage_name, lookup_table) -> None:
    store, settings = Store(run_store), load_settings(overrides=OVERRIDES, store=run_store)
    all_shards = store.shard_ids(lookup_table)
    assert len(all_shards) > 1, "the test needs several shards of the lookup table"
    plans = [read_plan(store, stage_name, path.rsplit("/", 1)[1].removesuffix(".parquet"))
             for path in store.glob(store.path("plans", stage_name, "*.parquet"))]
    assert plans
    narrower = 0
    for plan in plans:
        named = plan.shards_of(lookup_table)
        assert named and set(named) <= all_shards
        narrower += len(named) < len(all_shards)
        scanned = _whole_table_scans(monkeypatch, store)
        inputs = stage(stage_name).load(store, settings, plan)
        assert lookup_table not in scanned
        monkeypatch.undo()
        everything = stage(stage_name).load(store, settings, dataclasses.replace(plan, lookup_shards={}))
        assert inputs.items == everything.items and len(inputs.failures) == len(everything.failures)
    assert narrower, "some shard must read fewer files than the whole table"


def test_level3_shard_reads_prepared_references_not_documents(run_store, monkeypatch) -> None:
    """A level-3 shard's references and concepts come from the whole corpus: planning writes the
    documents' heads and the concepts' names beside the plan, so the shard opens no documents
    shard and scans no concepts table (today's main opened every documents shard holding a
    reference and scanned all concepts: per-shard reads grew with the corpus)."""
    store, settings = Store(run_store), load_settings(overrides=OVERRIDES, store=run_store)
    level3 = stage("level3")
    plans = [read_plan(store, "level3", path.rsplit("/", 1)[1].removesuffix(".parquet"))
             for path in store.glob(store.path("plans", "level3", "*.parquet"))]
    assert plans
    for plan in plans:
        read: list[str] = []
        read_files = Store.read_parquet_files

        def recording(self, paths, schema=None, columns=None, *, read=read, read_files=read_files):
            paths = list(paths)
            read.extend(paths)
            return read_files(self, paths, schema, columns)

        monkeypatch.setattr(Store, "read_parquet_files", recording)
        scanned = _whole_table_scans(monkeypatch, store)
        inputs = level3.load(store, settings, plan)
        monkeypatch.undo()
        assert not [p for p in read if "/tables/documents/" in p] and "documents" not in scanned
        assert "concepts" not in scanned
        assert any(item["references"] for item in inputs.items)
        # the same prompts as from the documents themselves
        texts = dict(store.read_table("documents").select("doc_id", "text").iter_rows())
        for item in inputs.items:
            want = [texts[d] for d in item["ref_doc_ids"] if d in texts]
            assert level3.request(item, settings) == level3.request({**item, "references": want}, settings)
