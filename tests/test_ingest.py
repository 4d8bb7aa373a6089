"""Ingest: formats, sources (local, glob, S3), bad records, exact dedup, resume, status."""

from __future__ import annotations

import gzip
import json
import subprocess
import sys
import threading
import time
from pathlib import Path

import polars as pl
import pytest
from conftest import command_env
from typer.testing import CliRunner

from synthllm.ingest import IngestError, add_file_summary, expand_sources, ingest_file
from synthllm.settings import StoreSettings, load_settings
from synthllm.store import Store, StoreError

REPO = Path(__file__).resolve().parents[1]


def ingest_paths(store_url: str, sources: list[str], **overrides) -> dict[str, int]:
    """The flow's work without Prefect: every file in order, summed."""
    settings = load_settings(overrides=overrides, store=store_url)
    store = Store(settings.store)
    totals: dict[str, int] = {}
    for source in expand_sources(sources, settings.store):
        add_file_summary(totals, ingest_file(store, settings, "test-run", source), "test-run")
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
    assert totals == {"shards": 1, "skipped_shards": 0, "documents": 2, "failures": 9, "records": 11, "unreadable": 0}
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
        ingest_file(store, settings, "s3-run", source)
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
    # a re-ingest: Prefect returns the cached task results; the run wrote nothing and says so
    result = runner.invoke(app, ["ingest", str(sample_dir / "openstax-intermediate-algebra.jsonl"), str(bad),
                                 "--store", store_url])
    assert result.exit_code == 0, result.output
    report = json.loads(runner.invoke(app, ["status", "--store", store_url, "--json"]).output)
    summary = report["runs"][0]["summary"]
    assert summary["documents"] == 0 and summary["cached_files"] == 2 and summary["files"] == 2
    assert report["tables"]["documents"] == 84


# --------------------------------------------------------------------------- reliability (issue 11)
@pytest.fixture(params=["local", pytest.param("s3", marks=pytest.mark.integration)])
def place(request, tmp_path: Path):
    """Where a test's store and source files live: a local folder, or a real S3 endpoint (moto)
    for both. Returns (store settings, put(name, bytes) -> source URI)."""
    if request.param == "local":
        def put_local(name: str, data: bytes) -> str:
            (tmp_path / name).write_bytes(data)
            return str(tmp_path / name)

        return StoreSettings(url=str(tmp_path / "store")), put_local
    import uuid

    import fsspec

    endpoint = request.getfixturevalue("s3_endpoint")
    prefix = f"synthllm-test/{uuid.uuid4().hex}"
    fs = fsspec.filesystem("s3", client_kwargs={"endpoint_url": endpoint}, skip_instance_cache=True)

    def put_s3(name: str, data: bytes) -> str:
        fs.pipe_file(f"{prefix}/corpus/{name}", data)
        return f"s3://{prefix}/corpus/{name}"

    return StoreSettings(url=f"s3://{prefix}/store", s3_endpoint_url=endpoint), put_s3


def ingest_into(store_settings: StoreSettings, sources: list[str], run_id: str = "test-run", **overrides):
    settings = load_settings(overrides={"store": store_settings.model_dump(), **overrides})
    store = Store(settings.store)
    totals: dict[str, int] = {}
    for source in expand_sources(sources, settings.store):
        add_file_summary(totals, ingest_file(store, settings, run_id, source), run_id)
    return store, totals


def jsonl(*records: dict | str) -> bytes:
    return b"".join((r if isinstance(r, str) else json.dumps(r)).encode() + b"\n" for r in records)


GATED_INGEST = """
import pathlib, sys, time
import synthllm.ingest as ingest
name, source, store, gate = sys.argv[1:5]
gate = pathlib.Path(gate)
process_shard = ingest.process_shard

def gated(*args, **kwargs):  # hold the shard until the test opens the gate
    (gate / f"entered-{name}").touch()
    deadline = time.monotonic() + 120
    while not (gate / "open").exists() and time.monotonic() < deadline:
        time.sleep(0.05)
    return process_shard(*args, **kwargs)

ingest.process_shard = gated
from flows.ingest import ingest_flow
ingest_flow([source], store=store)
"""


def test_two_ingests_at_once_store_a_shared_document_once(store_url: str, tmp_path: Path) -> None:
    """Two runs ingest files that share a document at the same time: exact dedup across files
    still holds, because a run waits for the other's ``ingest`` lease before reading what is stored.

    The first run to reach a shard is held there until the other run either waits for the lease
    (it says so) or has read the stored ids and reached its own shard (no lease: both then write
    the shared document)."""
    shared = json.dumps({"id": "shared", "text": "The angles of a triangle add up to 180 degrees."}).encode()
    files = [write_lines(tmp_path / f"{name}.jsonl",
                         [shared, json.dumps({"id": f"only-{name}", "text": name}).encode()])
             for name in ("a", "b")]
    gate = tmp_path / "gate"
    gate.mkdir()
    script = tmp_path / "gated_ingest.py"
    script.write_text(GATED_INGEST)
    runs = [subprocess.Popen([sys.executable, str(script), name, str(path), store_url, str(gate)],
                             env={**command_env(tmp_path / f"prefect-{name}"), "PYTHONPATH": str(REPO)},
                             stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
             for name, path in zip(("a", "b"), files, strict=True)]
    waiting = threading.Event()
    logs: list[list[str]] = [[], []]

    def read(run: subprocess.Popen, lines: list[str]) -> None:
        for line in run.stdout:
            lines.append(line)
            if "is being run by" in line:
                waiting.set()

    readers = [threading.Thread(target=read, args=pair) for pair in zip(runs, logs, strict=True)]
    for reader in readers:
        reader.start()
    deadline = time.monotonic() + 300
    while time.monotonic() < deadline and not (waiting.is_set() or len(list(gate.glob("entered-*"))) == 2):
        time.sleep(0.1)
    (gate / "open").touch()
    for run in runs:
        run.wait(timeout=300)
    for reader in readers:
        reader.join(30)
    assert [run.returncode for run in runs] == [0, 0], "".join(logs[0][-40:] + logs[1][-40:])
    documents = Store(store_url).read_table("documents")
    assert sorted(documents["doc_id"].to_list()) == ["only-a", "only-b", "shared"]
    assert waiting.is_set()


def test_lone_surrogates_are_invalid_utf8_failures(place) -> None:
    store_settings, put = place
    source = put("surrogates.jsonl", jsonl(
        {"id": "good-1", "text": "Solve x + 1 = 2."},
        '{"id": "bad-text", "text": "half a pair \\ud800 here"}',
        '{"id": "bad-\\udc00-id", "text": "a fine text"}',
        '{"id": "bad-meta", "text": "another fine text", "title": "\\ud83d"}',
        {"id": "good-2", "text": "Factor x^2 - 4."},
    ))
    store, totals = ingest_into(store_settings, [source])
    assert totals["documents"] == 2 and totals["failures"] == 3
    assert sorted(store.read_table("documents")["doc_id"].to_list()) == ["good-1", "good-2"]
    failures = store.read_table("failures").sort("item_id")
    assert failures["reason"].to_list() == ["invalid_utf8"] * 3
    detail = dict(zip(failures["item_id"].to_list(), failures["detail"].to_list(), strict=True))
    assert detail["bad-text"].startswith("field 'text'")
    assert detail["bad-\\udc00-id"].startswith("field 'id'")
    assert detail["bad-meta"].startswith("field 'title'")
    assert all("\\ud" in raw for raw in failures["raw"].to_list())  # the record kept whole, as escaped


def gzip_truncated(records: int) -> bytes:
    whole = gzip.compress(jsonl(*[{"id": f"g{i}", "text": f"gzip record {i} " + "x" * 200} for i in range(records)]))
    return whole[: len(whole) // 2]


def test_corrupt_gzip_keeps_earlier_records_and_the_next_file(place) -> None:
    store_settings, put = place
    broken = put("a-broken.jsonl.gz", gzip_truncated(2000))
    not_gzip = put("b-not-gzip.jsonl.gz", b"this was never gzip")
    fine = put("c-fine.jsonl", jsonl({"id": "fine", "text": "After the broken files."}))
    store, totals = ingest_into(store_settings, [broken, not_gzip, fine], **{"ingest.shard_size": 500})
    failures = store.read_table("failures").filter(pl.col("reason") == "unreadable_source").sort("item_id")
    assert failures["item_id"].to_list() == [broken, not_gzip]
    assert "EOFError" in failures["detail"][0] and "BadGzipFile" in failures["detail"][1]
    docs = store.read_table("documents")
    kept = docs.filter(pl.col("source") == broken).height
    assert 500 < kept < 2000  # what came before the break, across several shards
    assert "fine" in docs["doc_id"].to_list()
    assert totals["unreadable"] == 2 and totals["documents"] == kept + 1
    recorded = store.read_table("failures").height
    _, again = ingest_into(store_settings, [broken, not_gzip, fine], **{"ingest.shard_size": 500})
    assert again["documents"] == 0 and again["skipped_shards"] == totals["shards"]
    assert store.read_table("failures").height == recorded


def test_damaged_and_truncated_parquet(place, tmp_path: Path) -> None:
    import pyarrow as pa
    import pyarrow.parquet as pq

    store_settings, put = place
    table = pa.table({"id": [f"p{i}" for i in range(300)], "text": [f"parquet row {i}" for i in range(300)]})
    pq.write_table(table, tmp_path / "whole.parquet", row_group_size=100, compression="zstd")
    whole = (tmp_path / "whole.parquet").read_bytes()
    column = pq.read_metadata(tmp_path / "whole.parquet").row_group(1).column(1)
    damaged = bytearray(whole)
    damaged[column.data_page_offset: column.data_page_offset + 40] = b"\xff" * 40  # row group 1's text pages
    damaged_uri = put("damaged.parquet", bytes(damaged))
    truncated_uri = put("truncated.parquet", whole[: len(whole) // 2])
    store, totals = ingest_into(store_settings, [damaged_uri, truncated_uri])
    docs = store.read_table("documents")
    assert sorted(docs["line_no"].to_list()) == list(range(1, 101)) + list(range(201, 301))
    failures = store.read_table("failures").sort("item_id")
    assert failures.select("item_id", "reason").rows() == [
        (damaged_uri, "unreadable_source"), (truncated_uri, "unreadable_source")]
    assert "row group 1" in failures["detail"][0] and "footer" in failures["detail"][1]


def test_unknown_format_and_connection_errors_are_the_only_retried(tmp_path: Path) -> None:
    from prefect.states import Failed

    from synthllm.ingest import TransientReadError
    from tasks.common import retry_transient

    def retried(exc: Exception) -> bool:
        return retry_transient(None, None, Failed(data=exc))

    assert not retried(IngestError("corpus.csv: unknown format"))
    assert retried(TransientReadError("s3://b/x.jsonl: cannot read: ConnectionError: reset"))
    assert retried(RuntimeError("anything else"))


def test_transient_read_error_names_the_file(tmp_path: Path, monkeypatch) -> None:
    from synthllm import ingest as ingest_module
    from synthllm.ingest import SourceFile, TransientReadError, iter_records

    source = tmp_path / "x.jsonl"
    source.write_bytes(jsonl({"id": "a", "text": "b"}))

    def flaky(*args, **kwargs):
        raise ConnectionResetError("connection reset by peer")

    monkeypatch.setattr(ingest_module, "_parse_lines", flaky)
    with pytest.raises(TransientReadError, match=f"{source}.*ConnectionResetError"):
        list(iter_records(SourceFile(str(source), "1"), StoreSettings()))


def test_summary_counts_only_what_this_run_wrote() -> None:
    totals: dict[str, int] = {}
    written = {"shards": 2, "skipped_shards": 0, "documents": 7, "failures": 1, "records": 8, "unreadable": 0}
    add_file_summary(totals, {**written, "run_id": "now"}, "now")
    add_file_summary(totals, {**written, "run_id": "earlier"}, "now")  # a cached task result
    assert totals["documents"] == 7 and totals["cached_files"] == 1 and totals["shards"] == 2
