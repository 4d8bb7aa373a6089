"""Ingest: formats, sources (local, glob, S3), bad records, exact dedup, resume, status."""

from __future__ import annotations

import gzip
import json
from pathlib import Path

import polars as pl
import pytest
from typer.testing import CliRunner

from synthllm.ingest import IngestError, expand_sources
from synthllm.settings import StoreSettings, load_settings, settings_payload
from synthllm.store import Store, StoreError
from tasks.ingest import ingest_file


def ingest_paths(store_url: str, sources: list[str], **overrides) -> dict[str, int]:
    """The flow's work without Prefect: every file in order, summed."""
    settings = load_settings(overrides=overrides, store=store_url)
    store = Store(settings.store)
    totals: dict[str, int] = {}
    for source in expand_sources(sources, settings.store):
        for key, value in ingest_file(store, source, settings_payload(settings), "test-run").items():
            totals[key] = totals.get(key, 0) + value
    return totals


def write_lines(path: Path, lines: list[bytes]) -> Path:
    path.write_bytes(b"\n".join(lines) + b"\n")
    return path


def test_sample_corpus_is_ingested_once(store_url: str, sample_dir: Path) -> None:
    first = ingest_paths(store_url, [str(sample_dir / "*.jsonl")])
    expected = sum(1 for f in sample_dir.glob("*.jsonl") for line in f.open() if line.strip())
    assert first["documents"] == expected == first["records"]
    again = ingest_paths(store_url, [str(sample_dir / "*.jsonl")])
    assert again["documents"] == 0 and again["skipped_shards"] == first["shards"]
    docs = Store(store_url).read_table("documents")
    assert docs.height == expected
    assert docs["doc_id"].n_unique() == expected
    row = docs.filter(pl.col("doc_id") == "openstax-elementary-algebra-2e-m82630").row(0, named=True)
    assert row["n_tokens_est"] == -(-row["n_chars"] // 4)
    assert json.loads(row["meta_json"])["book"] == "Elementary Algebra 2e"
    assert row["source"].endswith("openstax-algebra.jsonl")


def test_bad_records_go_to_failures_with_reason(store_url: str, tmp_path: Path) -> None:
    long_text = "x" * 500
    source = write_lines(
        tmp_path / "bad.jsonl",
        [
            json.dumps({"id": "good-1", "text": "Solve 2x + 3 = 7."}).encode(),
            b'{"id": "broken", "text": "unterminated',
            b'{"id": "latin1", "text": "caf\xe9"}',
            json.dumps({"id": "no-text", "body": "hello"}).encode(),
            json.dumps({"id": "empty", "text": "   \n "}).encode(),
            json.dumps({"id": "number", "text": 42}).encode(),
            json.dumps(["not", "an", "object"]).encode(),
            json.dumps({"id": "huge", "text": long_text}).encode(),
            json.dumps({"id": "good-1", "text": "A different text with the same id."}).encode(),
            json.dumps({"id": "copy", "text": "Solve 2x + 3 = 7."}).encode(),
            b"",
            json.dumps({"id": "good-2", "text": "Factor x^2 - 1."}).encode(),
        ],
    )
    totals = ingest_paths(store_url, [str(source)], **{"ingest.max_chars": 400})
    assert totals == {"shards": 1, "skipped_shards": 0, "documents": 2, "failures": 9, "records": 11}
    store = Store(store_url)
    failures = store.read_table("failures").sort("item_id", nulls_last=True)
    reasons = dict(zip(failures["raw"].to_list(), failures["reason"].to_list(), strict=True))
    assert sorted(failures["reason"].to_list()) == sorted(
        ["invalid_json", "invalid_utf8", "missing_text", "empty_text", "text_not_string", "not_an_object",
         "oversized", "duplicate_id", "duplicate_content"]
    )
    assert reasons['{"id": "broken", "text": "unterminated'] == "invalid_json"
    assert reasons['{"id": "latin1", "text": "caf\\xe9"}'] == "invalid_utf8"
    copy = failures.filter(pl.col("reason") == "duplicate_content").row(0, named=True)
    assert copy["item_id"] == "copy" and "good-1" in copy["detail"]
    assert all(failures["source"].str.contains("bad.jsonl#"))
    assert sorted(store.read_table("documents")["doc_id"].to_list()) == ["good-1", "good-2"]
    # a rerun neither duplicates documents nor failures
    ingest_paths(store_url, [str(source)], **{"ingest.max_chars": 400})
    assert store.read_table("failures").height == 9
    assert store.read_table("documents").height == 2


def test_gzip_parquet_custom_fields_and_unicode(store_url: str, tmp_path: Path) -> None:
    with gzip.open(tmp_path / "a.jsonl.gz", "wt", encoding="utf-8") as handle:
        handle.write(json.dumps({"key": "g1", "body": "Cafe\u0301 costs x\u00b2 dollars\r\nLine two"}) + "\n")
    pl.DataFrame({"key": ["p1", "p2"], "body": ["Parquet one", "Parquet two"]}).write_parquet(tmp_path / "b.parquet")
    totals = ingest_paths(
        store_url, [str(tmp_path / "a.jsonl.gz"), str(tmp_path / "b.parquet")],
        **{"ingest.id_field": "key", "ingest.text_field": "body"},
    )
    assert totals["documents"] == 3
    docs = Store(store_url).read_table("documents").sort("doc_id")
    assert docs["doc_id"].to_list() == ["g1", "p1", "p2"]
    # NFC composes e + combining accent; superscript two survives (NFKC would make it "2")
    assert docs["text"][0] == "Caf\u00e9 costs x\u00b2 dollars\nLine two"


def test_documents_without_ids_get_content_ids(store_url: str, tmp_path: Path) -> None:
    source = write_lines(tmp_path / "noid.jsonl", [json.dumps({"text": t}).encode() for t in ("one", "two", "one")])
    totals = ingest_paths(store_url, [str(source)])
    assert totals["documents"] == 2 and totals["failures"] == 1
    docs = Store(store_url).read_table("documents")
    assert (docs["doc_id"] == docs["content_hash"]).all()


def test_resume_rewrites_only_missing_shards(store_url: str, sample_dir: Path) -> None:
    source = str(sample_dir / "fineweb-edu-sample.jsonl")
    first = ingest_paths(store_url, [source], **{"ingest.shard_size": 40})
    assert first["shards"] == 4
    store = Store(store_url)
    victim = sorted(store.shard_ids("documents"))[2]
    store.fs.rm(store.shard_path("documents", victim))  # as if the run died before this shard
    again = ingest_paths(store_url, [source], **{"ingest.shard_size": 40})
    assert again["shards"] == 1 and again["skipped_shards"] == 3 and again["documents"] == 40
    docs = store.read_table("documents")
    assert docs.height == 150 and docs["doc_id"].n_unique() == 150


def test_missing_source_is_a_clear_error(tmp_path: Path) -> None:
    with pytest.raises(IngestError, match="matches no file"):
        expand_sources([str(tmp_path / "nothing-*.jsonl")], StoreSettings())
    bad = tmp_path / "corpus.csv"
    bad.write_text("id,text\n1,hello\n")
    with pytest.raises(IngestError, match="unknown format"):
        [s.format for s in expand_sources([str(bad)], StoreSettings())]


@pytest.mark.integration
def test_ingest_from_and_into_s3(s3_endpoint: str, sample_dir: Path) -> None:
    import fsspec

    fs = fsspec.filesystem("s3", client_kwargs={"endpoint_url": s3_endpoint}, skip_instance_cache=True)
    fs.put(str(sample_dir / "fineweb-edu-sample.jsonl"), "synthllm-test/corpus/part-0.jsonl")
    fs.put(str(sample_dir / "openstax-intermediate-algebra.jsonl"), "synthllm-test/corpus/part-1.jsonl")
    store_settings = {"store": {"url": "s3://synthllm-test/stores/a", "s3_endpoint_url": s3_endpoint}}
    settings = load_settings(overrides=store_settings)
    store = Store(settings.store)
    for source in expand_sources(["s3://synthllm-test/corpus/*.jsonl"], settings.store):
        assert source.uri.startswith("s3://")
        ingest_file(store, source, settings_payload(settings), "s3-run")
    counts = store.query("SELECT count(*) AS n, count(DISTINCT source) AS sources FROM documents").row(0)
    assert counts == (233, 2)
    assert fs.glob("synthllm-test/stores/a/tables/documents/*.parquet")


@pytest.mark.integration
def test_unreachable_bucket_is_a_clear_error(s3_endpoint: str) -> None:
    store = Store(StoreSettings(url="s3://no-such-bucket/x", s3_endpoint_url=s3_endpoint))
    with pytest.raises(StoreError, match="no-such-bucket.*unreachable"):
        store.check_reachable()
    with pytest.raises(IngestError, match="cannot read source|matches no file"):
        expand_sources(["s3://no-such-bucket/corpus/*.jsonl"], StoreSettings(s3_endpoint_url=s3_endpoint))


def test_flow_and_status_cli(prefect_harness, store_url: str, sample_dir: Path, tmp_path: Path) -> None:
    from synthllm.cli import app

    bad = write_lines(tmp_path / "bad.jsonl", [b"{not json", json.dumps({"id": "ok", "text": "2+2=4"}).encode()])
    runner = CliRunner()
    result = runner.invoke(app, ["ingest", str(sample_dir / "openstax-intermediate-algebra.jsonl"), str(bad),
                                 "--store", store_url])
    assert result.exit_code == 0, result.output
    result = runner.invoke(app, ["status", "--store", store_url, "--json"])
    assert result.exit_code == 0, result.output
    report = json.loads(result.output)
    assert report["tables"]["documents"] == 84
    assert report["failures"] == [{"stage": "ingest", "reason": "invalid_json", "n": 1, "example": report["failures"][0]["example"]}]
    assert report["runs"][0]["flow"] == "ingest" and report["runs"][0]["status"] == "finished"
    assert report["runs"][0]["summary"]["documents"] == 84
    assert Path(store_url, "catalog.duckdb").exists()
