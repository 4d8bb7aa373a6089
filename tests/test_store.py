"""Store: fresh listings across Store objects (local and S3), SQL-safe paths, corrupt shards."""

from __future__ import annotations

import json
import os
import tempfile
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from datetime import datetime
from pathlib import Path

import duckdb
import polars as pl
import pyarrow.parquet as pq
import pytest
from typer.testing import CliRunner

import synthllm.store
from synthllm.settings import SettingsError, StoreSettings, load_settings
from synthllm.status import store_status
from synthllm.store import Store, StoreAccessDenied, StoreError, sql_literal


def failure_rows(reason: str, n: int = 1) -> list[dict]:
    return [
        {"stage": "s", "item_id": f"{reason}-{i}", "reason": reason, "shard_id": "x", "run_id": "r",
         "created_at": datetime(2024, 1, 1)}
        for i in range(n)
    ]


def test_a_second_store_object_sees_new_and_rewritten_shards(store_settings: StoreSettings) -> None:
    """A flow holds one Store for the whole run while tasks write through others."""
    writer, reader = Store(store_settings), Store(store_settings)
    writer.write_shard("failures", "all", failure_rows("old"))
    assert reader.shard_ids("failures") == {"all"}
    assert reader.query("SELECT reason FROM failures")["reason"].to_list() == ["old"]
    assert reader.exists(reader.shard_path("failures", "all"))
    assert not reader.exists(reader.shard_path("failures", "extra"))

    writer.write_shard("failures", "extra", failure_rows("extra"))
    writer.write_shard("failures", "all", failure_rows("rewritten", 3))  # same file, new content
    assert reader.shard_ids("failures") == {"all", "extra"}
    assert reader.has_shard("failures", "extra")
    counts = reader.query("SELECT reason, count(*) AS n FROM failures GROUP BY reason ORDER BY reason")
    assert counts.rows() == [("extra", 1), ("rewritten", 3)]
    assert sorted(reader.read_table("failures")["reason"].to_list()) == ["extra"] + ["rewritten"] * 3
    con = reader.connect(["failures"])  # the connection path the stages use
    try:
        assert con.sql("SELECT count(*) FROM failures").fetchall() == [(4,)]
    finally:
        con.close()


def test_a_shard_larger_than_a_row_group_is_written_in_slices_and_reads_back_whole(
        store_settings: StoreSettings, monkeypatch) -> None:
    """The concept graph's edges shard has millions of rows: it is cast to the schema a row group at
    a time (``ROW_GROUP_ROWS``, made small here), with its constant columns, into one file."""
    monkeypatch.setattr(synthllm.store, "ROW_GROUP_ROWS", 4)
    store = Store(store_settings)
    edges = pl.DataFrame({"subset": [0] * 10, "kind": ["kc-kc"] * 10, "src": [f"kc:{i}" for i in range(10)],
                          "dst": [f"kc:{i + 1}" for i in range(10)], "count": list(range(10))})
    assert store.write_shard("concept_edges", "edges-x", edges, constants={"shard_id": "edges-x", "run_id": "r1"}) == 10
    with store.fs.open(store.shard_path("concept_edges", "edges-x"), "rb") as handle:
        layout = pq.ParquetFile(handle).metadata
    assert [layout.row_group(i).num_rows for i in range(layout.num_row_groups)] == [4, 4, 2]
    back = store.read_table("concept_edges")
    assert back.drop("shard_id", "run_id").equals(edges.with_columns(pl.col("subset", "count").cast(pl.Int32)))
    assert set(back["shard_id"]) == {"edges-x"} and set(back["run_id"]) == {"r1"}
    with pytest.raises(StoreError, match="extra"):  # each slice is checked against the schema
        store.write_shard("concept_edges", "edges-y", edges.with_columns(extra=pl.lit(1)),
                          constants={"shard_id": "edges-y", "run_id": "r1"})


def test_read_table_decodes_only_the_columns_asked_for(store_settings: StoreSettings) -> None:
    store = Store(store_settings)
    store.write_shard("failures", "a", failure_rows("a", 2))
    store.write_shard("failures", "b", failure_rows("b", 1))
    frame = store.read_table("failures", ["a", "b"], columns=["item_id", "reason"])
    assert frame.columns == ["item_id", "reason"]
    assert sorted(frame.rows()) == [("a-0", "a"), ("a-1", "a"), ("b-0", "b")]
    assert store.read_table("failures", [], columns=["reason"]).columns == ["reason"]  # no shard: still those columns


def test_a_stores_reads_share_one_database_and_each_connection_has_its_own_views(
        store_settings: StoreSettings, monkeypatch) -> None:
    """Opening a DuckDB database costs about 13 ms of CPU and the flow plans with hundreds of
    queries, so a Store object opens one and each read connects to it. Views are each
    connection's own: two open at once over different shards, from different threads, each see
    theirs, and a closed one leaves the other working."""
    import threading

    import synthllm.store

    synthllm.store.schemas()  # the table schemas, built once per process
    opened: list[str] = []
    connect = duckdb.connect
    monkeypatch.setattr(synthllm.store.duckdb, "connect", lambda *a, **kw: opened.append("db") or connect(*a, **kw))
    store = Store(store_settings)
    store.write_shard("failures", "a", failure_rows("a", 2))
    store.write_shard("failures", "b", failure_rows("b", 3))
    for _ in range(3):
        assert store.query("SELECT count(*) AS n FROM failures")["n"].to_list() == [5]
    only_b = store.connect(["failures"], exclude=[store.shard_path("failures", "a")])
    both = store.connect(["failures"])
    try:
        assert only_b.sql("SELECT count(*) FROM failures").fetchall() == [(3,)]
        assert both.sql("SELECT count(*) FROM failures").fetchall() == [(5,)]
        only_b.close()
        assert both.sql("SELECT count(*) FROM failures").fetchall() == [(5,)]
    finally:
        both.close()
    counts: list[int] = []

    def query_in_a_thread() -> None:
        for _ in range(5):
            counts.append(store.query("SELECT count(*) AS n FROM failures")["n"].item())

    threads = [threading.Thread(target=query_in_a_thread) for _ in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert counts == [5] * 20
    assert opened == ["db"]


def test_a_query_in_its_own_database_closes_it_and_leaves_the_shared_one_alone(
        store_settings: StoreSettings, monkeypatch) -> None:
    """A one-off aggregation over a whole table (the concepts table) runs in a database of its own,
    closed after, so the memory it worked in does not stay with the process's shared database."""
    store = Store(store_settings)
    store.write_shard("failures", "a", failure_rows("a", 2))
    store.write_shard("failures", "b", failure_rows("b", 3))
    opened: list[duckdb.DuckDBPyConnection] = []
    connect = duckdb.connect
    monkeypatch.setattr(synthllm.store.duckdb, "connect",
                        lambda *a, **kw: opened.append(connect(*a, **kw)) or opened[-1])
    sql = "SELECT reason, count(*) AS n FROM failures GROUP BY reason ORDER BY reason"
    own = store.query(sql, tables=["failures"], own_database=True)
    assert own.rows() == [("a", 2), ("b", 3)]
    assert len(opened) == 1 and "_database" not in vars(store)
    with pytest.raises(duckdb.ConnectionException):
        opened[0].sql("SELECT 1")  # closed when the query ended
    with pytest.raises(duckdb.Error):
        store.query("SELECT no_such_column FROM failures", tables=["failures"], own_database=True)
    with pytest.raises(duckdb.ConnectionException):
        opened[1].sql("SELECT 1")  # also when it failed
    assert store.query(sql, tables=["failures"]).equals(own) and len(opened) == 3


SPILLING_QUERY = ("SELECT count(*) AS groups FROM (SELECT i % 3000000 AS k, list(i) AS l FROM range(6000000) t(i) "
                  "GROUP BY k ORDER BY k)")


def test_a_query_over_its_memory_limit_spills_to_the_spill_folder_not_the_working_directory(
        store_settings: StoreSettings, tmp_path: Path, monkeypatch) -> None:
    """Each process's DuckDB held up to 80 % of the machine, and spilled past it into ``.tmp`` in
    the working directory, which a worker image may have read-only: ``store.duckdb_memory_limit``
    and ``store.duckdb_temp_dir`` set both, on a local store and on S3."""
    workdir, spill = tmp_path / "workdir", tmp_path / "spill"
    workdir.mkdir()
    monkeypatch.chdir(workdir)
    settings = store_settings.model_copy(update={"duckdb_memory_limit": "64MB", "duckdb_temp_dir": str(spill)})
    store = Store(settings)
    store.write_shard("failures", "a", failure_rows("a", 2))
    limits = store.query("SELECT current_setting('memory_limit') AS m, current_setting('temp_directory') AS t, "
                         "count(*) AS n FROM failures", tables=["failures"])
    assert limits.rows() == [("61.0 MiB", str(spill), 2)]
    spilled: set[str] = set()
    done = threading.Event()

    def watch() -> None:
        while not done.is_set():
            spilled.update(path.name for path in spill.glob("*"))
            time.sleep(0.002)

    watcher = threading.Thread(target=watch)
    watcher.start()
    try:
        assert store.query(SPILLING_QUERY, tables=[]).rows() == [(3_000_000,)]
    finally:
        done.set()
        watcher.join()
    assert any(name.endswith(".tmp") for name in spilled), spilled  # it did spill, and there
    assert list(workdir.iterdir()) == []


def test_the_spill_folder_defaults_to_the_system_temporary_folder(tmp_path: Path, monkeypatch) -> None:
    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path))  # what TMPDIR sets
    store = Store(StoreSettings(url=str(tmp_path / "store")))
    folder = store.query("SELECT current_setting('temp_directory') AS t", tables=[])["t"][0]
    assert Path(folder).parent == tmp_path and Path(folder).name.startswith("synthllm-duckdb-")


def test_a_memory_limit_that_is_no_amount_names_the_setting() -> None:
    with pytest.raises(SettingsError, match="store.duckdb_memory_limit.*'lots' is not an amount of memory"):
        load_settings(None, {"store.duckdb_memory_limit": "lots"})
    assert load_settings(None, {"store.duckdb_memory_limit": "50%"}).store.duckdb_memory_limit == "50%"


def test_a_dask_worker_gives_duckdb_half_its_memory_limit_unless_the_setting_says(tmp_path: Path) -> None:
    """A Dask worker's nanny restarts it past 95 % of its memory limit; DuckDB, left to its default,
    would have held 80 % of the machine before spilling."""
    from distributed import Client, LocalCluster

    url = str(tmp_path / "store")

    def limit_in_worker(setting: str | None) -> str:
        store = Store(StoreSettings(url=url, duckdb_memory_limit=setting))
        return store.query("SELECT current_setting('memory_limit') AS m", tables=[])["m"][0]

    with LocalCluster(n_workers=1, threads_per_worker=1, processes=True, memory_limit="2GiB",
                      dashboard_address=None) as cluster, Client(cluster) as client:
        assert client.submit(limit_in_worker, None, pure=False).result() == "1.0 GiB"
        assert client.submit(limit_in_worker, "300MB", pure=False).result() == "286.1 MiB"
    assert limit_in_worker(None) == duckdb.sql("SELECT current_setting('memory_limit')").fetchall()[0][0]


def test_a_file_written_piece_by_piece_appears_whole_or_not_at_all(store_settings: StoreSettings) -> None:
    """An export is written a batch at a time (``Store.open_atomic``): readers see the last whole
    file until the new one is complete, and a write that fails leaves nothing behind."""
    store = Store(store_settings)
    path = store.path("exports", "x", "data.jsonl")
    store.write_text(path, "old\n")
    with pytest.raises(RuntimeError, match="stopped"):
        with store.open_atomic(path) as handle:
            handle.write(b"new\n")
            raise RuntimeError("stopped")
    assert store.read_bytes(path) == b"old\n" and store.glob(store.path("exports", "x", "*")) == [path]
    with store.open_atomic(path) as handle:
        handle.write(b"new\n")
        assert store.read_bytes(path) == b"old\n"  # not yet
        handle.write(b"more\n")
    assert store.read_bytes(path) == b"new\nmore\n"


@pytest.mark.integration
def test_a_large_file_on_s3_is_a_multipart_upload_completed_or_aborted(s3_endpoint: str) -> None:
    """Past s3fs's 50 MB block the file goes up in parts: a failed write aborts the upload (S3 would
    otherwise keep, and bill, its parts), a finished one completes it."""
    store = Store(StoreSettings(url=f"s3://synthllm-test/{uuid.uuid4().hex}", s3_endpoint_url=s3_endpoint))
    path, block = store.path("big.bin"), b"x" * 2**20
    with pytest.raises(RuntimeError, match="stopped"):
        with store.open_atomic(path) as handle:
            for _ in range(60):
                handle.write(block)
            assert handle.mpu is not None  # a part is up already
            raise RuntimeError("stopped")
    assert not store.exists(path)
    assert [u for u in store.fs.list_multipart_uploads("synthllm-test") if path.endswith(u["Key"])] == []
    with store.open_atomic(path) as handle:
        for _ in range(60):
            handle.write(block)
    assert store.fs.info(path)["size"] == 60 * 2**20


@pytest.mark.integration
def test_a_query_over_s3_shards_asks_for_no_file_details_the_listing_gave(s3_endpoint: str, count_s3_calls) -> None:
    """DuckDB asked s3fs for each shard's details again and again while it bound a view and ran a
    query: 18 HEAD requests per shard per query (91 over five shards), each a round trip on S3.
    The one listing request the query starts with has them all, and a shard rewritten since is
    read anew."""
    store = Store(StoreSettings(url="s3://synthllm-test/details", s3_endpoint_url=s3_endpoint))
    for shard in range(5):
        store.write_shard("failures", f"s{shard}", failure_rows(f"r{shard}", shard + 1))
    calls = count_s3_calls()
    counts = store.query("SELECT reason, count(*) AS n FROM failures GROUP BY reason ORDER BY reason",
                         tables=["failures"])
    assert counts.rows() == [(f"r{shard}", shard + 1) for shard in range(5)]
    assert "head_object" not in calls and calls.count("list_objects_v2") == 1, calls
    store.write_shard("failures", "s0", failure_rows("rewritten", 7))  # the same file, longer
    calls.clear()
    assert store.query("SELECT count(*) AS n FROM failures WHERE reason = 'rewritten'",
                       tables=["failures"]).rows() == [(7,)]
    assert "head_object" not in calls and calls.count("list_objects_v2") == 1, calls


@pytest.mark.integration
def test_a_query_reads_each_small_s3_shard_once_and_a_rewritten_one_anew(
        s3_endpoint: str, count_s3_calls, monkeypatch) -> None:
    """DuckDB 2.0 opens each shard three times a query, and each open of a small file read all of
    it: four GETs a shard. A small shard's bytes are kept by name and ETag: one GET the first time,
    none while it is unchanged, one for a shard rewritten since; and a shard rewritten between the
    listing and its first read fails that read (If-Match), and the query lists and reads anew."""
    from synthllm.listed_fs import ListedS3FileSystem

    store = Store(StoreSettings(url="s3://synthllm-test/kept", s3_endpoint_url=s3_endpoint))
    for shard in range(5):
        store.write_shard("failures", f"s{shard}", failure_rows(f"r{shard}", shard + 1))
    calls = count_s3_calls()
    sql = "SELECT reason, count(*) AS n FROM failures GROUP BY reason ORDER BY reason"
    assert store.query(sql, tables=["failures"]).rows() == [(f"r{shard}", shard + 1) for shard in range(5)]
    assert calls.count("get_object") == 5, calls
    calls.clear()
    assert store.query(sql, tables=["failures"]).height == 5
    assert calls == ["list_objects_v2"], calls
    store.write_shard("failures", "s0", failure_rows("rewritten", 7))
    calls.clear()
    assert store.query(sql, tables=["failures"]).rows()[-1] == ("rewritten", 7)
    assert calls == ["list_objects_v2", "get_object"], calls

    store.write_shard("failures", "s5", failure_rows("new", 2))  # not read yet: nothing kept
    remember = ListedS3FileSystem.remember
    rewrites = [("s5", failure_rows("between", 3))]

    def rewrite_after_listing(self, folder, details):
        remember(self, folder, details)
        while rewrites:
            store.write_shard("failures", *rewrites.pop())

    monkeypatch.setattr(ListedS3FileSystem, "remember", rewrite_after_listing)
    calls.clear()
    assert ("between", 3) in store.query(sql, tables=["failures"]).rows()
    assert calls.count("list_objects_v2") == 2, calls  # the read that found s5 changed, then anew


@pytest.fixture
def refusing_s3(monkeypatch):
    """An S3 endpoint on 127.0.0.1 that refuses every request (403), as S3 does for a key the
    credentials or the bucket policy do not allow: a HEAD's reply has no body, the others name
    neither the key nor the cause."""
    import threading
    from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

    class Refusing(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def _refuse(self) -> None:
            self.rfile.read(int(self.headers.get("Content-Length") or 0))
            body = b"" if self.command == "HEAD" else (
                b"<?xml version='1.0' encoding='UTF-8'?><Error><Code>AccessDenied</Code>"
                b"<Message>Access Denied</Message></Error>")
            self.send_response(403)
            self.send_header("Content-Type", "application/xml")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        do_HEAD = do_GET = do_PUT = do_POST = do_DELETE = _refuse

        def log_message(self, *args) -> None:
            pass

    for name, value in {"AWS_ACCESS_KEY_ID": "testing", "AWS_SECRET_ACCESS_KEY": "testing",
                        "AWS_DEFAULT_REGION": "us-east-1"}.items():
        monkeypatch.setenv(name, value)
    server = ThreadingHTTPServer(("127.0.0.1", 0), Refusing)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    yield f"http://127.0.0.1:{server.server_address[1]}"
    server.shutdown()


@pytest.mark.integration
def test_a_refused_s3_request_names_the_file_and_is_not_read_as_missing(refusing_s3: str) -> None:
    """S3 answers a HEAD it refuses with a bare 403: s3fs raised "Forbidden", naming no key and no
    cause. A check, read, write or listing refused now names the file and what to check, and a
    refused check is not taken for a missing file (planning would take a shard for not done)."""
    store = Store(StoreSettings(url="s3://synthllm-denied/run", s3_endpoint_url=refusing_s3))
    plan = store.path("plans", "level1", "level1-abc.parquet")
    attempts = {
        plan: lambda: store.exists(plan),
        store.shard_path("questions", "level1-abc"): lambda: store.has_shard("questions", "level1-abc"),
        store.path("runs", "a.json"): lambda: store.read_bytes(store.path("runs", "a.json")),
        store.path("runs", "b.json"): lambda: store.write_bytes(store.path("runs", "b.json"), b"{}"),
        store.path("tables", "failures"): lambda: store.table_files("failures"),
    }
    for path, attempt in attempts.items():
        with pytest.raises(StoreAccessDenied) as refused:
            attempt()
        assert str(refused.value).startswith(f"{path}: access denied"), refused.value
        assert "bucket policy" in str(refused.value) and isinstance(refused.value, PermissionError)


def checks_as_another_user(checks: Callable[[], object]) -> object:
    """``checks()`` in a process that folder permissions apply to: as root (which they do not stop),
    a forked child that becomes ``nobody`` first and sends back what it returned or raised."""
    if os.geteuid() != 0:
        try:
            return checks()
        except Exception as exc:  # noqa: BLE001 - handed back like the child's
            return exc
    import pickle

    read_end, write_end = os.pipe()
    pid = os.fork()
    if pid == 0:  # the child: no pytest machinery from here on, and always exits
        code = 0
        try:
            os.setgid(65534)
            os.setuid(65534)
            try:
                outcome = checks()
            except Exception as exc:  # noqa: BLE001 - handed back to the parent
                outcome = exc
            os.write(write_end, pickle.dumps(outcome))
        except BaseException:  # noqa: BLE001 - the parent reports an empty reply
            code = 1
        finally:
            os._exit(code)
    os.close(write_end)
    with os.fdopen(read_end, "rb") as reply:
        data = reply.read()
    os.waitpid(pid, 0)
    assert data, "the child process checking as another user sent nothing back"
    return pickle.loads(data)


@pytest.fixture
def shared_folder() -> Iterator[Path]:
    """A folder every user may search (pytest's own temporary folders are their owner's only)."""
    import shutil
    import tempfile

    folder = Path(tempfile.mkdtemp(prefix="synthllm-shared-"))
    folder.chmod(0o755)
    yield folder
    shutil.rmtree(folder, ignore_errors=True)


def test_a_file_check_refused_in_a_local_folder_names_the_file_and_is_not_read_as_missing(shared_folder: Path) -> None:
    """On a local folder the process may not search, fsspec's ``isfile`` answered False, so a done
    shard looked missing and was asked of the engine again. The check now raises
    ``StoreAccessDenied`` naming the file; a file that is not there is still False."""
    store = Store(StoreSettings(url=str(shared_folder / "store")))
    store.write_shard("failures", "done", failure_rows("r", 1))
    store.write_bytes(store.path("notes", "a.json"), b"{}")
    done = store.shard_path("failures", "done")
    tables = store.path("tables")
    for folder in Path(store.url).rglob("*"):
        if folder.is_dir():
            folder.chmod(0o755)
    Path(tables).chmod(0o700 if os.geteuid() == 0 else 0o000)  # its owner (root) only, or no one
    try:
        outcome = checks_as_another_user(lambda: (store.exists(store.path("notes", "a.json")),
                                                  store.exists(store.path("notes", "none.json"))))
        assert outcome == (True, False), outcome
        refused = checks_as_another_user(lambda: store.exists(done))
        assert isinstance(refused, StoreAccessDenied), refused
        assert str(refused).startswith(f"{done}: access denied") and "folder permissions" in str(refused), refused
        refused = checks_as_another_user(lambda: store.has_shard("failures", "done"))
        assert isinstance(refused, StoreAccessDenied), refused
    finally:
        Path(tables).chmod(0o755)
    assert store.exists(done)


@pytest.mark.integration
def test_a_file_check_read_or_listing_on_s3_is_one_request(s3_endpoint: str, count_s3_calls) -> None:
    """s3fs follows a HEAD that finds no key with a listing (is it a folder?), and asks a file's size
    (a HEAD) before reading it: a missing plan, shard or failure file cost two round trips and each
    read two. A coordinator checks two per planned shard, and a shard task reads its plan, inputs
    and rows. Listing a folder not there yet (a shard's response cache, an empty table) took three
    to five. Every check, read and listing is now one request."""
    store = Store(StoreSettings(url="s3://synthllm-test/one-request", s3_endpoint_url=s3_endpoint))
    store.write_shard("failures", "here", failure_rows("r", 2))
    store.write_bytes(store.path("notes", "a.json"), b'{"a": 1}')
    calls = count_s3_calls()
    checks = [store.has_shard("failures", "here"), store.has_shard("failures", "missing"),
              store.exists(store.path("notes", "a.json")), store.exists(store.path("notes", "none.json")),
              store.exists(store.path("notes"))]  # a folder is not a file
    assert calls == ["head_object"] * 5, calls
    assert checks == [True, False, True, False, False]
    calls.clear()
    assert store.read_bytes(store.path("notes", "a.json")) == b'{"a": 1}'
    assert store.read_parquet_file(store.shard_path("failures", "here")).num_rows == 2
    assert calls == ["get_object"] * 2, calls
    with pytest.raises(FileNotFoundError):
        store.read_bytes(store.path("notes", "none.json"))
    calls.clear()
    assert store.glob(store.path("notes", "*.json")) == [store.path("notes", "a.json")]
    assert store.glob(store.path("nothing-yet", "*.parquet")) == []
    assert store.table_files("failures") == [store.shard_path("failures", "here")]
    assert store.table_files("questions") == []
    assert calls == ["list_objects_v2"] * 4, calls


def test_sql_literal_escapes_quotes() -> None:
    assert sql_literal("it's") == "'it''s'"
    con = duckdb.connect()
    assert con.sql(f"SELECT {sql_literal(chr(39) + '); DROP TABLE x; --')}").fetchall() == [("'); DROP TABLE x; --",)]


@pytest.mark.parametrize(
    "folder",
    ["it's a store", "x', union_by_name = true); COPY (SELECT 42 AS pwned) TO 'PWNED.csv'; SELECT * FROM read_parquet('x"],
)
def test_store_path_cannot_break_or_inject_sql(tmp_path: Path, folder: str, monkeypatch) -> None:
    monkeypatch.chdir(tmp_path)
    store = Store(str(tmp_path / folder))
    store.write_shard("failures", "one", failure_rows("quoted"))
    assert store.query("SELECT reason FROM failures")["reason"].to_list() == ["quoted"]
    catalog = store.write_catalog()
    assert not list(tmp_path.rglob("PWNED.csv"))
    con = duckdb.connect(catalog, read_only=True)
    try:
        assert con.sql("SELECT reason FROM failures").fetchall() == [("quoted",)]
    finally:
        con.close()


def truncate(store: Store, table: str, shard_id: str) -> str:
    path = store.shard_path(table, shard_id)
    data = store.read_bytes(path)
    store.write_bytes(path, data[: len(data) // 2])
    return path


def test_corrupt_shard_is_named(store_settings: StoreSettings) -> None:
    store = Store(store_settings)
    store.write_shard("failures", "good", failure_rows("good"))
    store.write_shard("failures", "bad", failure_rows("bad"))
    bad = truncate(store, "failures", "bad")
    with pytest.raises(StoreError, match=f"corrupt table shard.*{bad}"):
        store.query("SELECT count(*) FROM failures")
    with pytest.raises(StoreError, match=bad):
        store.read_table("failures")
    with pytest.raises(StoreError, match=bad):
        store.connect(["failures"])
    assert set(store.corrupt_files()) == {bad}


def test_query_errors_that_are_not_corruption_stay_as_they_are(store_settings: StoreSettings) -> None:
    store = Store(store_settings)
    store.write_shard("failures", "good", failure_rows("good"))
    with pytest.raises(duckdb.BinderException):
        store.query("SELECT no_such_column FROM failures")


def test_status_reports_corrupt_files_and_counts_the_rest(store_settings: StoreSettings) -> None:
    store = Store(store_settings)
    store.write_shard("failures", "good", failure_rows("good", 2))
    store.write_shard("failures", "bad", failure_rows("bad"))
    bad = truncate(store, "failures", "bad")
    report = store_status(store)
    assert report["tables"]["failures"] == 2
    assert [(c["table"], c["path"]) for c in report["corrupt_files"]] == [("failures", bad)]
    assert "Parquet" in report["corrupt_files"][0]["error"] or "parquet" in report["corrupt_files"][0]["error"]
    assert store_status(Store(store_settings)) == report


def test_status_cli_lists_corrupt_files(store_url: str) -> None:
    from synthllm.cli import app

    store = Store(store_url)
    store.write_shard("failures", "bad", failure_rows("bad"))
    bad = truncate(store, "failures", "bad")
    result = CliRunner().invoke(app, ["status", "--store", store_url, "--json"])
    assert result.exit_code == 0, result.output
    assert [c["path"] for c in json.loads(result.output)["corrupt_files"]] == [bad]
    assert store_status(store)["corrupt_files"][0]["path"] == bad


FREEZE_CHECK = """
import gc, json, sys
from synthllm.runs import GC_THRESHOLDS, open_run
from synthllm.settings import load_settings
from tasks.common import open_payload
from synthllm.settings import settings_payload

settings = load_settings(None, {"filter.enabled": False}, sys.argv[1])
out = {"before": gc.get_freeze_count(), "default_threshold": list(gc.get_threshold())}
if sys.argv[2] == "flow":
    with open_run("freeze-check", settings):
        pass
else:  # a worker process: its first task
    open_payload(settings_payload(settings))
out["after"] = gc.get_freeze_count()
gc.collect()
junk = [[] for _ in range(1000)]
open_payload(settings_payload(settings))  # once per process: later objects are not frozen
out["after_second_call"] = gc.get_freeze_count()
out["threshold"] = list(gc.get_threshold())
out["expected_threshold"] = list(GC_THRESHOLDS)
print(json.dumps(out))
"""


@pytest.mark.parametrize("entry", ["flow", "task"])
def test_a_process_freezes_its_startup_objects_once(tmp_path: Path, entry: str) -> None:
    """Full GC collections walked the ~400k objects of modules, pydantic and Prefect 30-odd times
    a 10k-document run (8.8 CPU-s): a flow's ``open_run`` and a worker's first task freeze them."""
    import subprocess
    import sys

    repo = Path(__file__).resolve().parents[1]
    proc = subprocess.run([sys.executable, "-c", FREEZE_CHECK, str(tmp_path / "store"), entry], cwd=repo,
                          capture_output=True, text=True, timeout=120, check=False)
    assert proc.returncode == 0, proc.stderr[-2000:]
    out = json.loads(proc.stdout.strip().splitlines()[-1])
    assert out["before"] == 0 and out["default_threshold"] == [700, 10, 10]
    assert out["after"] > 50_000  # the imported libraries' objects
    assert out["after_second_call"] == out["after"]
    assert out["threshold"] == out["expected_threshold"]


def test_a_process_s_shard_tasks_share_one_store_and_its_database(tmp_path: Path, monkeypatch) -> None:
    """Each shard task opened a Store of its own, and with its first query a DuckDB database (about
    18 ms of CPU): the tasks a worker process runs for one store now share one; a task for another
    store gets that store's."""
    from synthllm.settings import load_settings, settings_payload
    from tasks.common import open_payload

    opened = []
    connect = duckdb.connect
    monkeypatch.setattr(duckdb, "connect", lambda *args, **kwargs: opened.append(1) or connect(*args, **kwargs))
    here = settings_payload(load_settings(None, {"filter.enabled": False}, str(tmp_path / "here")))
    there = settings_payload(load_settings(None, {"filter.enabled": False}, str(tmp_path / "there")))
    Store(StoreSettings(url=str(tmp_path / "here"))).write_shard("failures", "f", failure_rows("r", 2))
    Store(StoreSettings(url=str(tmp_path / "there"))).write_shard("failures", "f", failure_rows("r", 1))

    def failures(store: Store) -> int:
        con = store.connect(["failures"])
        try:
            return con.execute("SELECT count(*) FROM failures").fetchone()[0]
        finally:
            con.close()

    opened.clear()
    for payload in (here, json.dumps(here)):  # two shard tasks, the payload as a dict and as JSON text
        _, store = open_payload(payload)
        assert failures(store) == 2
    assert len(opened) == 1
    _, elsewhere = open_payload(there)
    assert elsewhere.url == str(tmp_path / "there") and failures(elsewhere) == 1
    assert len(opened) == 2
