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
"""

from __future__ import annotations

from typing import Any

from s3fs import S3FileSystem


class ListedS3FileSystem(S3FileSystem):
    """s3fs, with the details of the files the latest listings named served without a request.

    Registered with DuckDB only (``Store._connect``): the store's own ``exists`` and reads go to
    a plain s3fs instance, so a shard written or removed since a listing is seen there at once."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._listed: dict[str, dict[str, dict[str, Any]]] = {}  # folder -> file -> details

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
