"""The store: Parquet shards in a local folder or on S3, DuckDB views over them as the catalog.

Layout under the store URL::

    tables/<table>/<shard_id>.parquet   one immutable shard per unit of work
    cache/<namespace>/part-*.parquet    LLM response cache (see synthllm.engines.cache)
    reports/ exports/ models/           files a flow publishes

Parallel tasks write whole shards (written to a temporary name, then moved into place, so a
reader never sees half a shard); a shard's existence is what marks its work done. Each read opens
a connection to the Store object's in-process DuckDB, with views over the shards listed then.

Every listing and every open asks the backend afresh (no s3fs listing cache): tasks write through
other Store objects and other processes, and a cached listing or ETag would hide their shards or
fail on a rewritten file (``FileExpired``). SQL text never embeds a path unescaped: see
:func:`sql_literal`.
"""

from __future__ import annotations

import fnmatch
import hashlib
import io
import json
import os
import re
import shutil
import sys
import tempfile
import threading
import uuid
from collections.abc import Callable, Collection, Iterable, Iterator, Sequence
from contextlib import contextmanager
from functools import cached_property
from typing import Any, BinaryIO, TypeVar

import cachetools
import duckdb
import fsspec
import fsspec.asyn
import polars as pl
import pyarrow as pa
import pyarrow.parquet as pq

from synthllm.listed_fs import ListedS3FileSystem
from synthllm.resources import read_sql
from synthllm.settings import StoreSettings

_SHARD_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.=-]*$")
_CREATE_TABLE = re.compile(r"CREATE TABLE\s+(\w+)", re.IGNORECASE)


_T = TypeVar("_T")
# A file rewritten between DuckDB's open and its reads: read the fresh object once more.
_FRESH_READ_ATTEMPTS = 3
ROW_GROUP_ROWS = 1 << 20  # pyarrow's default row group: shards written in slices keep its layout
# DuckDB errors that can come from a damaged file (a Python-side read error arrives as a plain duckdb.Error).
_FILE_ERRORS = (duckdb.IOException, duckdb.InvalidInputException)


class StoreError(RuntimeError):
    """The store cannot be reached or holds something unexpected (the message names the file)."""


class StoreAccessDenied(PermissionError):
    """The backend refused a request (S3's 403). S3 names neither the key nor the cause, and a
    HEAD's 403 has no body at all: this names the file and what to check. Not a missing file and
    not a corrupt one: nothing is re-planned or asked again because of it."""


def sql_literal(value: str) -> str:
    """``value`` as a SQL string literal: the one way a path or id enters SQL text here.

    DuckDB cannot bind parameters inside ``CREATE VIEW``, so paths are quoted instead."""
    return "'" + str(value).replace("'", "''") + "'"


def _is_expired_read(exc: BaseException) -> bool:
    return "FileExpired" in f"{type(exc).__name__}: {exc}"


# ``json.dumps`` with these options would build a new encoder on every call (ids are made per row).
_STABLE_JSON = json.JSONEncoder(sort_keys=True, ensure_ascii=False, default=str)


def stable_json(value: Any) -> str:
    """The JSON text ids are hashed from (sorted keys, default separators): ``stable_hash(*parts)``
    hashes ``stable_json(parts)``, so a caller may assemble that text from cached pieces."""
    return _STABLE_JSON.encode(value)


def hash_text(text: str, length: int = 16) -> str:
    return hashlib.sha256(text.encode("utf-8")).hexdigest()[:length]


def stable_hash(*parts: Any, length: int = 16) -> str:
    """Hex digest of JSON-serialised parts: deterministic ids for shards, rows and cache keys."""
    return hash_text(stable_json(parts), length)


class TableSchemas:
    """Arrow schemas of the tables declared in ``sql/schema.sql``."""

    def __init__(self, ddl: str) -> None:
        self.ddl = ddl
        con = duckdb.connect()
        con.execute(ddl)
        self.names = _CREATE_TABLE.findall(ddl)
        self.arrow = {name: con.sql(f"SELECT * FROM {name} LIMIT 0").to_arrow_table().schema for name in self.names}
        con.close()

    def __getitem__(self, table: str) -> pa.Schema:
        try:
            return self.arrow[table]
        except KeyError:
            raise StoreError(f"unknown table {table!r}; tables: {', '.join(self.names)}") from None


def duckdb_resources(settings: StoreSettings) -> dict[str, str]:
    """The memory limit and spill folder of a DuckDB database a process queries the store in
    (``store.duckdb_memory_limit`` and ``store.duckdb_temp_dir``; the defaults are described there).

    Each process has its own database, and DuckDB's default lets each hold 80 % of the machine:
    two Dask workers, the flow and a query of their own could each take that much before any spills."""
    user = os.getuid() if hasattr(os, "getuid") else os.getlogin()  # a folder another user made is not ours to write
    config = {"temp_directory": settings.duckdb_temp_dir or os.path.join(tempfile.gettempdir(), f"synthllm-duckdb-{user}")}
    limit = settings.duckdb_memory_limit or _dask_worker_share()
    if limit:
        config["memory_limit"] = limit
    return config


def _dask_worker_share() -> str | None:
    """Half the memory limit of the Dask worker this code runs in; None outside one, or with no limit."""
    distributed = sys.modules.get("distributed")  # never imported for this: a Dask worker has it loaded
    if distributed is None:
        return None
    try:
        worker = distributed.get_worker()
    except ValueError:
        return None
    limit = getattr(getattr(worker, "memory_manager", None), "memory_limit", None)
    return f"{limit // 2 // 2**20}MiB" if limit else None


_SCHEMAS: TableSchemas | None = None


def schemas() -> TableSchemas:
    global _SCHEMAS
    if _SCHEMAS is None:
        _SCHEMAS = TableSchemas(read_sql("schema.sql"))
    return _SCHEMAS


def conform(table: str, rows: pl.DataFrame | pa.Table | list[dict[str, Any]],
            constants: dict[str, Any] | None = None) -> pa.Table:
    """Cast rows to the table's schema: missing nullable columns become NULL, extras are an error.
    ``constants``: columns with one value on every row (``shard_id``, ``run_id``), added without
    copying each row."""
    schema = schemas()[table]
    if isinstance(rows, list):
        data = pa.Table.from_pylist(rows) if rows else pa.Table.from_pylist([], schema=schema)
    elif isinstance(rows, pl.DataFrame):
        data = rows.to_arrow()
    else:
        data = rows
    for name, value in (constants or {}).items():
        if name in data.column_names:
            data = data.drop_columns([name])
        data = data.append_column(name, pa.array([value] * data.num_rows, schema.field(name).type))
    extra = set(data.column_names) - set(schema.names)
    if extra:
        raise StoreError(f"{table}: columns not in sql/schema.sql: {sorted(extra)}")
    columns = []
    for field in schema:
        if field.name in data.column_names:
            column = data.column(field.name)
            if pa.types.is_large_string(column.type) and pa.types.is_string(field.type):
                column = column.cast(pa.string())
            columns.append(column.cast(field.type))
        elif field.nullable:
            columns.append(pa.nulls(data.num_rows, type=field.type))
        else:
            raise StoreError(f"{table}: required column {field.name!r} missing")
    return pa.Table.from_arrays(columns, schema=schema)


class Store:
    """A store URL opened through fsspec. Cheap to create; picklable by its settings."""

    def __init__(self, settings: StoreSettings | str) -> None:
        self.settings = StoreSettings(url=settings) if isinstance(settings, str) else settings
        self.url = self.settings.url.rstrip("/")
        self.is_s3 = self.url.startswith("s3://")
        self._connecting = threading.Lock()

    @classmethod
    def shared(cls, settings: StoreSettings) -> Store:
        """The Store a process's tasks share for ``settings``: one DuckDB database a process, where
        each task's own Store opened one at its first query (about 18 ms of CPU, against 1.7 for a
        task's open and query on a shared one)."""
        return _shared_store(settings)

    def __reduce__(self):
        return (Store, (self.settings,))

    def __repr__(self) -> str:
        return f"Store({self.url!r})"

    @cached_property
    def fs(self) -> fsspec.AbstractFileSystem:
        if self.is_s3:
            return fsspec.filesystem("s3", **self._s3_options())
        fs = fsspec.filesystem("file")
        fs.makedirs(self.url, exist_ok=True)
        return fs

    @cached_property
    def _duckdb_fs(self) -> ListedS3FileSystem:
        """What DuckDB reads S3 shards through: the details of listed files come from the listing."""
        return ListedS3FileSystem(**self._s3_options())

    @cached_property
    def _database(self) -> duckdb.DuckDBPyConnection:
        """The in-memory DuckDB this Store object's reads run in, each on a connection of its own
        (:meth:`_connect`). Opening a database costs about 13 ms of CPU (its thread pool, its
        buffer manager), and planning runs hundreds of queries a run; a connection to an open one,
        0.7 ms."""
        return self._open_database()

    def _open_database(self) -> duckdb.DuckDBPyConnection:
        """A new in-memory DuckDB; its cache of file blocks is off: shards are rewritten and
        removed between reads."""
        database = duckdb.connect(config={"enable_external_file_cache": False, **duckdb_resources(self.settings)})
        if self.is_s3:
            database.register_filesystem(self._duckdb_fs)
        return database

    def _s3_options(self) -> dict[str, Any]:
        client_kwargs = {}
        if self.settings.s3_endpoint_url:
            client_kwargs["endpoint_url"] = self.settings.s3_endpoint_url
        if self.settings.s3_region:
            client_kwargs["region_name"] = self.settings.s3_region
        # Fresh listings and file details on every call: other writers change the store.
        return {"client_kwargs": client_kwargs, "skip_instance_cache": True, "use_listings_cache": False,
                "version_aware": False}

    # ----------------------------------------------------------------- paths and files
    def path(self, *parts: str) -> str:
        return "/".join([self.url, *[p.strip("/") for p in parts]])

    def check_reachable(self) -> None:
        """Fail early with a clear message when the bucket or folder cannot be used."""
        try:
            if self.is_s3:
                bucket = self.url.removeprefix("s3://").split("/", 1)[0]
                self.fs.ls(bucket)
            else:
                self.fs.makedirs(self.url, exist_ok=True)
        except Exception as exc:  # noqa: BLE001 - any backend error means unreachable
            raise StoreError(f"store {self.url} is unreachable: {type(exc).__name__}: {exc}") from exc

    @contextmanager
    def _naming_denials(self, path: str) -> Iterator[None]:
        try:
            yield
        except StoreAccessDenied:
            raise
        except PermissionError as exc:
            raise StoreAccessDenied(f"{path}: access denied ({exc}); check the credentials and the bucket "
                                    f"policy or folder permissions for store {self.url}") from exc

    def exists(self, path: str) -> bool:
        """Whether the file ``path`` exists: on S3 one HEAD request. (s3fs's ``exists`` follows a
        missing key with a listing, to tell a folder, and every check here is for a file.) A check
        refused is :class:`StoreAccessDenied`, not "missing": in a folder the process may not search,
        fsspec's ``isfile`` said False, and a shard done by another user's run was done again."""
        try:
            with self._naming_denials(path):
                if not self.is_s3:
                    return self.fs.info(path)["type"] == "file"
                bucket, key, _ = self.fs.split_path(path)
                self.fs.call_s3("head_object", Bucket=bucket, Key=key)
        except (FileNotFoundError, NotADirectoryError):
            return False
        return True

    def write_bytes(self, path: str, data: bytes) -> None:
        """Write a whole file atomically (local: :meth:`open_atomic`'s temp + rename; S3: one PUT,
        atomic by itself)."""
        if self.is_s3:
            with self._naming_denials(path):
                self.fs.pipe_file(path, data)
            return
        with self.open_atomic(path) as handle:
            handle.write(data)

    @contextmanager
    def open_atomic(self, path: str) -> Iterator[BinaryIO]:
        """A file to write ``path`` through piece by piece, for files too big to hold in memory (an
        export): it appears whole when the block ends, and not at all when the block raises (local:
        a temporary name, renamed; S3: a multipart upload, completed at the end or aborted)."""
        with self._naming_denials(path):
            if self.is_s3:
                handle = self.fs.open(path, "wb")
                try:
                    yield handle
                except BaseException:
                    handle.discard()
                    handle.closed = True  # not committed when it is collected either
                    raise
                handle.close()
                return
            parent = path.rsplit("/", 1)[0]
            self.fs.makedirs(parent, exist_ok=True)
            tmp = f"{parent}/.{uuid.uuid4().hex}.tmp"
            try:
                with open(tmp, "wb") as handle:
                    yield handle
                os.replace(tmp, path)
            finally:
                if os.path.exists(tmp):
                    os.remove(tmp)

    def copy_to(self, path: str, destination: Store, destination_path: str, chunk_bytes: int = 16 * 2**20) -> None:
        """Copy one file to another store, ``chunk_bytes`` at a time (written atomically there)."""
        with self._naming_denials(path), self.fs.open(path, "rb") as source:
            with destination.open_atomic(destination_path) as target:
                shutil.copyfileobj(source, target, chunk_bytes)

    def read_bytes(self, path: str) -> bytes:
        # S3: one GET. With more than one connection per file s3fs asks the size first (a HEAD),
        # to split large files; the store's files are shards, plans and records.
        with self._naming_denials(path):
            return self.fs.cat_file(path, max_concurrency=1) if self.is_s3 else self.fs.cat_file(path)

    def write_text(self, path: str, text: str) -> None:
        self.write_bytes(path, text.encode("utf-8"))

    def glob(self, pattern: str) -> list[str]:
        """Files matching ``pattern``. Wildcards in the file name only (what the pipeline asks): one
        listing of the folder, taken as written; wildcards in a folder below the store's: fsspec's glob."""
        folder, _, name = pattern.rpartition("/")
        if any(char in folder.removeprefix(self.url) for char in "*?["):
            found = self.fs.glob(pattern)
            return sorted(f"s3://{p}" if self.is_s3 and not p.startswith("s3://") else p for p in found)
        return sorted(path for path in self._files_in(folder) if fnmatch.fnmatchcase(path.rsplit("/", 1)[1], name))

    def _files_in(self, folder: str) -> dict[str, dict[str, Any]]:
        """The files directly in ``folder`` with their details (none when it is not there yet). On S3
        one listing request (a page per 1,000 files): s3fs's ``find`` made three for a folder not
        there yet, its ``glob`` five, its ``ls`` two, each a round trip."""
        with self._naming_denials(folder):
            if self.is_s3:
                entries = fsspec.asyn.sync(self.fs.loop, self.fs._lsdir, self.fs._strip_protocol(folder).rstrip("/"),
                                           refresh=True)
                return {f"s3://{entry['name']}": entry for entry in entries if entry["type"] == "file"}
            try:
                return {entry["name"]: entry for entry in self.fs.ls(folder, detail=True) if entry["type"] == "file"}
            except FileNotFoundError:
                return {}

    def write_parquet(self, path: str, table: pa.Table) -> None:
        buffer = io.BytesIO()
        pq.write_table(table, buffer, compression="zstd")
        self.write_bytes(path, buffer.getvalue())

    def read_parquet_file(self, path: str, columns: Sequence[str] | None = None) -> pa.Table:
        """One Parquet file (only ``columns``, when given); a corrupt one is a :class:`StoreError` naming it."""
        data = self.read_bytes(path)
        try:
            return pq.read_table(io.BytesIO(data), columns=None if columns is None else list(columns))
        except (pa.ArrowException, OSError) as exc:
            raise StoreError(f"{path}: unreadable Parquet file: {exc}") from exc

    def read_parquet_files(self, paths: Iterable[str], schema: pa.Schema | None = None,
                           columns: Sequence[str] | None = None) -> pa.Table:
        tables = [self.read_parquet_file(p, columns) for p in paths]
        if not tables:
            if schema is None:
                return pa.table({})
            return schema.empty_table().select(list(columns)) if columns is not None else schema.empty_table()
        return pa.concat_tables(tables, promote_options="default")

    # ----------------------------------------------------------------- table shards
    def shard_path(self, table: str, shard_id: str) -> str:
        if not _SHARD_ID.match(shard_id):
            raise StoreError(f"invalid shard id {shard_id!r}")
        schemas()[table]
        return self.path("tables", table, f"{shard_id}.parquet")

    def has_shard(self, table: str, shard_id: str) -> bool:
        return self.exists(self.shard_path(table, shard_id))

    def shard_ids(self, table: str) -> set[str]:
        return {p.rsplit("/", 1)[1].removesuffix(".parquet") for p in self.table_files(table)}

    def table_files(self, table: str) -> list[str]:
        schemas()[table]
        folder = self.path("tables", table)
        found = {path: info for path, info in self._files_in(folder).items() if path.endswith(".parquet")}
        if self.is_s3:
            self._duckdb_fs.remember(folder, found)  # the listing's details answer DuckDB's reads
        return sorted(found)

    def write_shard(self, table: str, shard_id: str, rows: pl.DataFrame | pa.Table | list[dict],
                    constants: dict[str, Any] | None = None) -> int:
        """Write (or replace) one shard of a table; returns the row count. ``constants``: see :func:`conform`.

        A frame is cast to the table's schema one row group at a time: a shard of millions of rows
        (the concept graph's edges) never has a whole second copy in memory. The file is the one
        ``pq.write_table`` would write (an empty frame too: one empty slice)."""
        if isinstance(rows, list):  # Python rows become one Arrow table, constants included
            rows, constants = conform(table, rows, constants), None
        buffer = io.BytesIO()
        with pq.ParquetWriter(buffer, schemas()[table], compression="zstd") as writer:
            for start in range(0, max(len(rows), 1), ROW_GROUP_ROWS):
                writer.write_table(conform(table, rows.slice(start, ROW_GROUP_ROWS), constants))
        self.write_bytes(self.shard_path(table, shard_id), buffer.getvalue())
        return len(rows)

    def read_table(self, table: str, shard_ids: Iterable[str] | None = None,
                   columns: Sequence[str] | None = None) -> pl.DataFrame:
        """A whole table (or some shards of it) as a polars DataFrame; only ``columns``, when given
        (a wide table's other columns are never decoded)."""
        paths = (
            [self.shard_path(table, s) for s in shard_ids] if shard_ids is not None else self.table_files(table)
        )
        return pl.from_arrow(self.read_parquet_files(paths, schemas()[table], columns=columns))  # type: ignore[return-value]

    def check_file(self, path: str) -> str | None:
        """Why a Parquet file cannot be read (footer and every row group), or None if it can."""
        try:
            with self._naming_denials(path), self.fs.open(path, "rb") as handle:
                parquet = pq.ParquetFile(handle)
                for index in range(parquet.num_row_groups):
                    parquet.read_row_group(index)
        except StoreAccessDenied:
            raise  # a refused read says nothing about the file
        except Exception as exc:  # noqa: BLE001 - any decoding or I/O error makes the file unusable
            return f"{type(exc).__name__}: {exc}"
        return None

    def corrupt_files(self, tables: Iterable[str] | None = None) -> dict[str, str]:
        """Shards that cannot be read, path -> error. Reads every shard: for error paths only."""
        found: dict[str, str] = {}
        for name in tables if tables is not None else schemas().names:
            for path in self.table_files(name):
                error = self.check_file(path)
                if error:
                    found[path] = error
        return found

    def _explain(self, exc: Exception, tables: Iterable[str] | None) -> None:
        """Turn a read error into a StoreError naming the corrupt shards, when that is the cause."""
        corrupt = self.corrupt_files(tables)
        if corrupt:
            listing = "; ".join(f"{path}: {error}" for path, error in sorted(corrupt.items()))
            raise StoreError(f"corrupt table shard(s) in store {self.url}: {listing}") from exc

    def _fresh(self, read: Callable[[], _T], tables: Iterable[str] | None) -> _T:
        """Run a read; retry when a file changed under it; name corrupt shards when one fails."""
        for attempt in range(_FRESH_READ_ATTEMPTS):
            try:
                return read()
            except duckdb.Error as exc:
                if _is_expired_read(exc) and attempt + 1 < _FRESH_READ_ATTEMPTS:
                    continue
                if isinstance(exc, _FILE_ERRORS):  # not for SQL mistakes: scanning shards is slow
                    self._explain(exc, tables)
                raise
        raise AssertionError("unreachable")

    # ----------------------------------------------------------------- DuckDB catalog
    def connect(
        self, tables: Iterable[str] | None = None, exclude: Collection[str] = ()
    ) -> duckdb.DuckDBPyConnection:
        """An in-memory DuckDB whose views cover every shard (or an empty typed table).

        ``exclude``: shard paths to leave out (``status`` reports corrupt ones this way)."""
        names = list(tables) if tables is not None else schemas().names
        return self._fresh(lambda: self._connect(names, set(exclude)), names)

    def _connect(self, names: list[str], exclude: set[str],
                 database: duckdb.DuckDBPyConnection | None = None) -> duckdb.DuckDBPyConnection:
        """A new connection to this Store's database (or ``database``) with the tables as its own
        (temporary) views: connections in other threads see theirs, and closing it drops them."""
        with self._connecting:
            con = (database if database is not None else self._database).cursor()
        try:
            for name in names:
                files = [f for f in self.table_files(name) if f not in exclude]
                if files:
                    file_list = ", ".join(sql_literal(f) for f in files)
                    con.execute(
                        f"CREATE TEMP VIEW {name} AS SELECT * FROM read_parquet([{file_list}], union_by_name = true)"
                    )
                else:
                    con.register(f"_{name}_empty", schemas()[name].empty_table())
                    con.execute(f"CREATE TEMP VIEW {name} AS SELECT * FROM _{name}_empty")
        except BaseException:
            con.close()
            raise
        return con

    @contextmanager
    def query_batches(self, sql: str, params: list | None = None, tables: Iterable[str] | None = None,
                      batch_rows: int = 50_000) -> Iterator[pa.RecordBatchReader]:
        """Run one query over fresh views and read its result ``batch_rows`` rows at a time, for
        results too big to hold in memory (DuckDB sorts and joins within its memory limit, spilling
        past it: ``duckdb_resources``)."""
        names = list(tables) if tables is not None else schemas().names

        def start() -> tuple[duckdb.DuckDBPyConnection, pa.RecordBatchReader]:
            con = self._connect(names, set())
            try:
                return con, con.sql(sql, params=params or None).to_arrow_reader(batch_rows)
            except BaseException:
                con.close()
                raise

        con, reader = self._fresh(start, names)
        try:
            yield reader
        finally:
            con.close()

    def query(self, sql: str, params: list | None = None, tables: Iterable[str] | None = None,
              own_database: bool = False) -> pl.DataFrame:
        """Run one query over fresh views; values go in ``params``, never into ``sql``.

        ``own_database``: in a DuckDB database of its own, closed when the query ends. For a
        one-off aggregation over a whole table: the memory it worked in goes back to the system
        then, where the Store's database (one per process and store, ``Store.shared``) keeps it
        as long as the process lives (0.9 GB after the concepts table of 1M documents)."""
        names = list(tables) if tables is not None else None

        def run() -> pl.DataFrame:
            database = self._open_database() if own_database else None
            try:
                con = self._connect(names if names is not None else schemas().names, set(), database)
                try:
                    return con.sql(sql, params=params or None).pl()
                finally:
                    con.close()
            finally:
                if database is not None:
                    database.close()

        return self._fresh(run, names)

    def write_catalog(self) -> str | None:
        """Persist the views into ``catalog.duckdb`` (local stores) for the duckdb CLI and notebooks."""
        if self.is_s3:
            return None
        target = self.path("catalog.duckdb")
        tmp = self.path(f".catalog-{uuid.uuid4().hex}.duckdb")
        con = duckdb.connect(tmp)
        try:
            con.execute(schemas().ddl.replace("CREATE TABLE ", "CREATE TABLE _empty_"))
            for name in schemas().names:
                if self.table_files(name):
                    glob = sql_literal(self.path("tables", name, "*.parquet"))
                    create = f"CREATE VIEW {name} AS SELECT * FROM read_parquet({glob}, union_by_name = true)"
                    self._fresh(lambda create=create: con.execute(create), [name])
                else:
                    con.execute(f"CREATE VIEW {name} AS SELECT * FROM _empty_{name}")
        except BaseException:
            con.close()
            self.fs.rm(tmp)
            raise
        con.close()
        self.fs.mv(tmp, target)
        return target


@cachetools.cached(cachetools.LRUCache(maxsize=8), lock=threading.Lock(), key=lambda settings: settings.model_dump_json())
def _shared_store(settings: StoreSettings) -> Store:
    return Store(settings)
