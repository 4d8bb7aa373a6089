"""The S3 filesystem DuckDB reads table shards through: file details come from the listing.

DuckDB's fsspec bridge asks for each file's details again and again while it binds a view and
runs a query (a glob of the literal path, ``info``, ``size``, the details an opened file needs):
through s3fs each is a HEAD request, 18 per file per query (91 for a five-shard table). On S3 a
query over a table of thousands of shards paid that many round trips before reading a byte.

A store lists a table's shards once per query anyway (``Store.table_files``); the listing carries
every file's details, so they are kept here and DuckDB's asks are answered from them. Each
listing of a folder replaces what the last one kept for it (a shard removed since is forgotten,
and what is kept is one listing per folder), so a query sees its own listing: what a shard held
when it was listed. Everything else goes to S3.

DuckDB 2.0 also opens each file three times a query, and each open of a small file read all of it:
four GETs a shard. A small listed file's bytes are kept by its name and ETag (S3's mark of the
content), so the later opens, and later queries while the file is unchanged, read them from
memory. The first read checks the listed ETag as every read here does (``If-Match``): a file
rewritten since its listing fails the read (``FileExpired``) and the store lists and reads anew.
"""

from __future__ import annotations

import threading
from typing import Any

from cachetools import LRUCache
from s3fs import S3FileSystem

SMALL_FILE_BYTES = 8 << 20  # a file this size or smaller is read whole, once per content
KEPT_BYTES = 64 << 20  # the most bytes of small files kept (the least recently read go first)


class ListedS3FileSystem(S3FileSystem):
    """s3fs, with the details of the files the latest listings named served without a request.

    Registered with DuckDB only (``Store._connect``): the store's own ``exists`` and reads go to
    a plain s3fs instance, so a shard written or removed since a listing is seen there at once."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._listed: dict[str, dict[str, dict[str, Any]]] = {}  # folder -> file -> details
        self._kept: LRUCache[tuple[str, str], bytes] = LRUCache(KEPT_BYTES, getsizeof=len)  # (file, ETag) -> bytes
        self._kept_lock = threading.Lock()

    def remember(self, folder: str, details: dict[str, dict[str, Any]]) -> None:
        """Keep the details a listing of ``folder`` returned (``Store.table_files``)."""
        self._listed[self._strip_protocol(folder).rstrip("/")] = {
            self._strip_protocol(path): info for path, info in details.items()}

    def _known(self, path: str) -> dict[str, Any] | None:
        name = self._strip_protocol(path)
        return self._listed.get(name.rsplit("/", 1)[0], {}).get(name)

    async def _info(self, path: str, **kwargs: Any) -> dict[str, Any]:
        info = self._known(path)
        return dict(info) if info is not None else await super()._info(path, **kwargs)

    async def _glob(self, path: str, **kwargs: Any):
        info = self._known(path)
        if info is None:
            return await super()._glob(path, **kwargs)
        name = self._strip_protocol(path)
        return {name: dict(info)} if kwargs.get("detail") else [name]

    def _open(self, path: str, mode: str = "rb", **kwargs: Any):
        """A small listed file opens on its kept bytes; the first open reads it whole and keeps them."""
        info = self._known(path) if mode == "rb" else None
        if info is None or info.get("size", SMALL_FILE_BYTES + 1) > SMALL_FILE_BYTES or not info.get("ETag"):
            return super()._open(path, mode, **kwargs)
        key = (self._strip_protocol(path), info["ETag"])
        with self._kept_lock:
            data = self._kept.get(key)
        if data is None:
            with super()._open(path, mode, **kwargs) as whole:  # one GET, If-Match the listed ETag
                data = whole.read()
            with self._kept_lock:
                self._kept[key] = data
        return super()._open(path, mode, **{**kwargs, "cache_type": "all", "cache_options": {"data": data}})
