"""Shard plans: which items a stage still has to cover, chunked into shards named by content.

A *plan* is the list of item ids of one shard, written to ``plans/<stage>/<shard_id>.parquet``
before any task runs: tasks get only a shard id (small, stable Prefect parameters), and a
rerun with the same inputs finds the same shards. What is "done" is decided once, by
coverage (rows or failures for the stage's version and model, ``sql/covered_items.sql``);
a shard's output file only stops a retried or concurrent task from writing it twice.
"""

from __future__ import annotations

from collections.abc import Collection, Sequence
from dataclasses import dataclass, field
from typing import Any, NamedTuple

import polars as pl
import pyarrow as pa

from synthllm.resources import read_sql
from synthllm.settings import Settings
from synthllm.stages.base import Stage
from synthllm.store import Store, stable_hash


def plan_path(store: Store, stage: str, shard_id: str) -> str:
    return store.path("plans", stage, f"{shard_id}.parquet")


def inputs_path(store: Store, stage: str, shard_id: str, name: str) -> str:
    """Inputs (``name``) a stage wrote beside a shard's plan (``Stage.prepare``)."""
    return store.path("plans", stage, "inputs", name, f"{shard_id}.parquet")


def covered_items(store: Store, stage: Stage, settings: Settings) -> set[str]:
    """Items ``stage`` already dealt with for its version and model (query derived from the stage)."""
    sql = read_sql("covered_items.sql").format(table=stage.table, item_column=stage.item_column,
                                                row_filter=stage.row_filter)
    params = [stage.name, stage.version(settings), stage.model(store, settings), stage.max_tokens(settings)]
    return set(store.query(sql, params, tables=[stage.table, "failures"])["item_id"].to_list())


@dataclass(frozen=True)
class ShardPlan:
    """One shard's items, and the shards of the stage's source table (and of its lookup tables)
    that hold them: a shard reads those files only, so its read time does not grow with the corpus."""

    stage: str
    shard_id: str
    item_ids: list[str]
    source_shards: list[str]
    lookup_shards: dict[str, list[str]] = field(default_factory=dict)

    def shards_of(self, table: str) -> list[str] | None:
        """The shards of a lookup table this shard reads; None (read every shard) when the plan
        recorded none, as plans written before lookups were recorded."""
        return self.lookup_shards.get(table) or None


@dataclass
class StageFiles:
    """A stage's plans and output shards in the store, listed when its planning in a run begins.

    Planning asks two things per shard: is its plan written (a rerun finds its shards planned),
    and has its output been written (then its items were uncovered again for a retry, and it gets
    a fresh id). Asked of the store, that was two HEAD requests per shard on S3; one listing of
    each folder per stage and run answers them all. Nothing else plans the stage meanwhile (the
    run holds its lease), and the plans this run writes are added as it writes them."""

    plans: set[str]
    outputs: set[str]

    @classmethod
    def listed(cls, store: Store, stage: Stage) -> StageFiles:
        plans = store.glob(plan_path(store, stage.name, "*"))
        return cls({path.rsplit("/", 1)[1].removesuffix(".parquet") for path in plans}, store.shard_ids(stage.table))


class Planned(NamedTuple):
    """The shards a planning call wrote, and how many items they hold."""

    shard_ids: list[str]
    items: int


def plan_stage(store: Store, stage: Stage, settings: Settings, candidates: Sequence[str], shard_size: int,
               files: StageFiles, skip: Collection[str] = ()) -> Planned:
    """Shards of the candidates not covered yet (nor in ``skip``: planned earlier in this run):
    new documents form new shards and finished shards are not re-planned."""
    covered = covered_items(store, stage, settings)
    return plan_items(store, stage, settings, [i for i in candidates if i not in covered and i not in skip],
                      shard_size, files)


def plan_items(store: Store, stage: Stage, settings: Settings, pending: list[str], shard_size: int,
               files: StageFiles, located: dict[str, str] | None = None,
               looked_up: dict[str, tuple[str, ...]] | None = None) -> Planned:
    """Shards of items known to be uncovered, grouped by the source shard holding them.
    ``located`` / ``looked_up``: where the items' rows are, when the caller knows (a shard
    streamed from, ``upstream_locations``); the table scans of ``locate`` and
    ``locate_lookups`` are left out then."""
    if located is None:
        located = locate(store, stage, pending)
    if looked_up is None:
        looked_up = locate_lookups(store, stage, pending)

    groups: dict[tuple[str, tuple[str, ...]], list[str]] = {}
    for item in pending:  # one pass: the coordinator plans every item of the run
        groups.setdefault((located.get(item, ""), looked_up.get(item, ())), []).append(item)
    pending = [item for members in groups.values() for item in members]  # first-seen groups, candidate order within
    shard_ids = write_plans(store, stage, pending, shard_size, stage.plan_key(settings), files, located, looked_up)
    stage.prepare(store, settings, shard_ids)
    return Planned(shard_ids, len(pending))


def upstream_locations(store: Store, stage: Stage, upstream: Stage, shard_id: str, item_ids: Sequence[str]
                       ) -> tuple[dict[str, str] | None, dict[str, tuple[str, ...]] | None]:
    """Where items streamed from ``upstream``'s shard ``shard_id`` have their rows, as far as
    that shard and its plan tell (None: not known, scan): in the shard itself when it is the
    stage's source or lookup table, or in the upstream plan's source shards when both stages
    read the same source (level 2 after concepts: the same documents shards)."""
    located = None
    if stage.source is not None and stage.source[0] == upstream.table:
        located = dict.fromkeys(item_ids, shard_id)
    elif stage.source is not None and stage.source == upstream.source:
        plan = store.read_parquet_files([plan_path(store, upstream.name, shard_id)])
        sources = dict(zip(plan.column("item_id").to_pylist(), plan.column("source_shard").to_pylist(), strict=True))
        located = {item: sources[item] for item in item_ids if sources.get(item) is not None}
        if len(located) < len(item_ids):
            located = None
    looked_up = None
    if all(lookup.via is None and lookup.table == upstream.table for lookup in stage.lookups):
        # one tuple shared by every item: planning makes nothing per item it does not need
        looked_up = dict.fromkeys(item_ids, (f"{upstream.table}:{shard_id}",)) if stage.lookups else {}
    return located, looked_up


def _select_in(store: Store, table: str, select: str, key: str, ids: Sequence[str], group_by: str = "") -> list:
    """``SELECT select FROM table WHERE key IN ids`` (one scan of the table's files)."""
    con = store.connect([table])
    try:
        con.register("_wanted", pa.table({"id": pa.array(list(ids), pa.string())}))
        return con.sql(f"SELECT {select} FROM {table} WHERE {key} IN (SELECT id FROM _wanted) {group_by}").fetchall()
    finally:
        con.close()


def locate(store: Store, stage: Stage, item_ids: Sequence[str]) -> dict[str, str]:
    """The source shard of each item (one scan of the source table's key column per stage and run)."""
    if stage.source is None or not item_ids:
        return {}
    table, key = stage.source
    return dict(_select_in(store, table, f"{key}, any_value(shard_id)", key, item_ids, f"GROUP BY {key}"))


def locate_lookups(store: Store, stage: Stage, item_ids: Sequence[str]) -> dict[str, tuple[str, ...]]:
    """Per item, the ``table:shard`` files holding the rows its stage's lookups read (one scan of
    each lookup table's key column per stage and run)."""
    found: dict[str, set[str]] = {}
    for lookup in stage.lookups if item_ids else ():
        if lookup.via is None:
            keys_of = {item: [item] for item in item_ids}
        else:
            table, key = stage.source
            keys_of = {item: (keys if isinstance(keys, list) else [keys]) for item, keys in
                       _select_in(store, table, f"{key}, {lookup.via}", key, item_ids) if keys is not None}
        wanted = sorted({k for keys in keys_of.values() for k in keys})
        shards = dict(_select_in(store, lookup.table, f"{lookup.key}, list(DISTINCT shard_id)", lookup.key, wanted,
                                 f"GROUP BY {lookup.key}")) if wanted else {}
        for item, keys in keys_of.items():
            found.setdefault(item, set()).update(f"{lookup.table}:{s}" for k in keys for s in shards.get(k, ()))
    return {item: tuple(sorted(names)) for item, names in found.items()}


def write_plans(store: Store, stage: Stage, item_ids: Sequence[str], shard_size: int, key: Any, files: StageFiles,
                located: dict[str, str] | None = None, looked_up: dict[str, tuple[str, ...]] | None = None
                ) -> list[str]:
    """Chunk item ids into shards named by their content and ``key``.

    A shard whose output already exists but whose items are uncovered again (their failures were
    cleared for a retry) gets a fresh id, so the retry is not mistaken for finished work."""
    located, looked_up = located or {}, looked_up or {}
    shard_ids = []
    for start in range(0, len(item_ids), shard_size):
        chunk = list(item_ids[start : start + shard_size])
        base = f"{stage.name}-{stable_hash(chunk, key)}"
        shard_id, attempt = base, 1
        while shard_id in files.outputs:
            shard_id, attempt = f"{base}-r{attempt}", attempt + 1
        if shard_id not in files.plans:
            store.write_parquet(plan_path(store, stage.name, shard_id), pa.table({
                "item_id": pa.array(chunk, pa.string()),
                "source_shard": pa.array([located.get(i) for i in chunk], pa.string()),
                "lookup_shards": pa.array([looked_up.get(i, ()) for i in chunk], pa.list_(pa.string()))}))
            files.plans.add(shard_id)
        shard_ids.append(shard_id)
    return shard_ids


def read_plan(store: Store, stage: str, shard_id: str) -> ShardPlan:
    table = store.read_parquet_files([plan_path(store, stage, shard_id)])
    sources = table.column("source_shard").to_pylist() if "source_shard" in table.column_names else []
    lookups: dict[str, set[str]] = {}
    if "lookup_shards" in table.column_names:
        for name in {n for names in table.column("lookup_shards").to_pylist() for n in names or ()}:
            lookup_table, _, shard = name.partition(":")
            lookups.setdefault(lookup_table, set()).add(shard)
    return ShardPlan(stage, shard_id, table.column("item_id").to_pylist(),
                     sorted({s for s in sources if s is not None}),
                     {t: sorted(shards) for t, shards in lookups.items()})


def select_documents(store: Store, settings: Settings) -> list[str]:
    """Documents to generate from: the reference set when filtering ran, else every document;
    a deterministic pseudo-random order (by seeded hash) so a budget takes an unbiased sample."""
    use_references = settings.filter.enabled and store.table_files("document_scores")
    sql = read_sql("reference_documents.sql") if use_references else "SELECT doc_id FROM documents"
    doc_ids = store.query(sql)["doc_id"].to_list()
    doc_ids.sort(key=lambda d: stable_hash(settings.generation.sampling.seed, d))
    budget = settings.generation.max_documents
    return doc_ids[:budget] if budget is not None else doc_ids


def fetch_rows(store: Store, table: str, key_column: str, ids: list[str], columns: str = "*",
               shards: list[str] | None = None) -> pl.DataFrame:
    """Rows of ``table`` whose key is in ``ids``; with ``shards``, read only those shards' files."""
    if shards:
        frame = store.read_table(table, shards).filter(pl.col(key_column).is_in(ids))
        return pl.SQLContext(frame=frame).execute(f"SELECT {columns} FROM frame", eager=True)
    con = store.connect([table])
    try:
        con.register("_wanted", pa.table({"id": pa.array(ids, pa.string())}))
        return con.sql(f"SELECT {columns} FROM {table} WHERE {key_column} IN (SELECT id FROM _wanted)").pl()
    finally:
        con.close()


def fetch_source(store: Store, stage: Stage, plan: ShardPlan, columns: str = "*") -> pl.DataFrame:
    """The rows of the stage's source table for a shard's items, from the plan's source shards."""
    table, key = stage.source
    return fetch_rows(store, table, key, plan.item_ids, columns, plan.source_shards or None)
