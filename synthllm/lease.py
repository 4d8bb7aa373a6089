"""Store-level leases: one run at a time works on a stage of a store (local folder or S3).

Two runs on one store would otherwise ask the LLM for the same items twice. A lease is a small
JSON object at ``<store>/leases/<name>.json`` naming its owner and when it expires; the holder
renews it from a background thread, and a lease nobody renewed in time (a killed run) is taken
over. Every change is a compare-and-swap, so two acquirers never both win:

* S3: conditional writes (``If-None-Match: *`` to create, ``If-Match: <ETag>`` to renew, take
  over or release); AWS S3, MinIO and moto's server support them.
* local folder: read-compare-write under an OS file lock next to the lease.
"""

from __future__ import annotations

import json
import logging
import re
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass
from datetime import UTC, datetime

from filelock import FileLock

from synthllm.store import Store, StoreError

log = logging.getLogger(__name__)

_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.=-]*$")


class LeaseHeld(RuntimeError):
    """Another owner holds the lease (and kept renewing it while we waited)."""

    def __init__(self, store: Store, holder: LeaseRecord) -> None:
        self.holder = holder
        super().__init__(
            f"lease {holder.name!r} on store {store.url} is held by {holder.owner} since {holder.acquired_at} "
            f"(renewed until {holder.expires_at}); wait for that run to finish, or stop it"
        )


@dataclass(frozen=True)
class LeaseRecord:
    name: str
    owner: str
    token: str  # unique per acquisition: tells our lease from a later one of the same owner
    acquired_at: str
    expires_at: str

    @property
    def expired(self) -> bool:
        return datetime.fromisoformat(self.expires_at) <= datetime.now(UTC)

    def renewed(self, ttl_s: float) -> LeaseRecord:
        return LeaseRecord(self.name, self.owner, self.token, self.acquired_at, _iso_in(ttl_s))

    def encode(self) -> bytes:
        return json.dumps(asdict(self), sort_keys=True).encode("utf-8")


def _iso_in(seconds: float) -> str:
    return datetime.fromtimestamp(time.time() + seconds, UTC).isoformat()


class _LeaseFile:
    """Compare-and-swap on one object; ``version`` is what a swap must still find."""

    def __init__(self, store: Store, path: str) -> None:
        self.store = store
        self.path = path

    def read(self) -> tuple[LeaseRecord, str] | None:
        raise NotImplementedError

    def create(self, data: bytes) -> bool:
        raise NotImplementedError

    def swap(self, data: bytes, version: str) -> bool:
        raise NotImplementedError

    def delete(self, version: str) -> None:
        raise NotImplementedError

    def _decode(self, data: bytes) -> LeaseRecord:
        try:
            return LeaseRecord(**json.loads(data))
        except (ValueError, TypeError) as exc:
            raise StoreError(f"{self.path}: not a lease record ({exc}); delete it if no run is active") from exc


class _LocalLeaseFile(_LeaseFile):
    def __init__(self, store: Store, path: str) -> None:
        super().__init__(store, path)
        store.fs.makedirs(path.rsplit("/", 1)[0], exist_ok=True)
        self.lock = FileLock(f"{path}.lock")

    def _current(self) -> bytes | None:
        return self.store.read_bytes(self.path) if self.store.exists(self.path) else None

    def read(self) -> tuple[LeaseRecord, str] | None:
        with self.lock:
            data = self._current()
        return None if data is None else (self._decode(data), data.decode("utf-8"))

    def create(self, data: bytes) -> bool:
        with self.lock:
            if self._current() is not None:
                return False
            self.store.write_bytes(self.path, data)
            return True

    def swap(self, data: bytes, version: str) -> bool:
        with self.lock:
            current = self._current()
            if current is None or current.decode("utf-8") != version:
                return False
            self.store.write_bytes(self.path, data)
            return True

    def delete(self, version: str) -> None:
        with self.lock:
            current = self._current()
            if current is not None and current.decode("utf-8") == version:
                self.store.fs.rm(self.path)


class _S3LeaseFile(_LeaseFile):
    def __init__(self, store: Store, path: str) -> None:
        super().__init__(store, path)
        self.bucket, self.key = path.removeprefix("s3://").split("/", 1)

    def read(self) -> tuple[LeaseRecord, str] | None:
        # The ETag and the bytes of one version: s3fs reads with If-Match on the ETag it opened.
        for _ in range(5):
            try:
                with self.store.fs.open(self.path, "rb") as handle:
                    etag, data = handle.details["ETag"], handle.read()
                return self._decode(data), etag
            except FileNotFoundError:
                return None
            except OSError as exc:  # FileExpired: replaced while we read; read the new one
                if "FileExpired" not in type(exc).__name__:
                    raise
        raise StoreError(f"{self.path}: lease keeps changing while being read")

    def _put(self, data: bytes, **condition: str) -> str | None:
        """The new ETag, or None when the condition did not hold (HTTP 412)."""
        try:
            reply = self.store.fs.call_s3("put_object", Bucket=self.bucket, Key=self.key, Body=data, **condition)
        except OSError as exc:
            if _precondition_failed(exc):
                return None
            raise
        return reply["ETag"]

    def create(self, data: bytes) -> bool:
        return self._put(data, IfNoneMatch="*") is not None

    def swap(self, data: bytes, version: str) -> bool:
        try:
            return self._put(data, IfMatch=version) is not None
        except FileNotFoundError:
            return False

    def delete(self, version: str) -> None:
        try:
            self.store.fs.call_s3("delete_object", Bucket=self.bucket, Key=self.key, IfMatch=version)
        except FileNotFoundError:
            pass  # gone: nothing to delete
        except OSError as exc:
            if not _precondition_failed(exc):
                raise  # otherwise taken over: not ours to delete


def _precondition_failed(exc: OSError) -> bool:
    """Whether S3 answered 412 Precondition Failed. s3fs turns a failed ``If-None-Match`` into
    FileExistsError, but a failed ``If-Match`` into a plain OSError (EINVAL) with the reply as cause."""
    reply = getattr(exc.__cause__, "response", None) or {}
    return isinstance(exc, FileExistsError) or reply.get("Error", {}).get("Code") == "PreconditionFailed"


def lease_path(store: Store, name: str) -> str:
    if not _NAME.match(name):
        raise ValueError(f"invalid lease name {name!r}")
    return store.path("leases", f"{name}.json")


def _lease_file(store: Store, name: str) -> _LeaseFile:
    path = lease_path(store, name)
    return _S3LeaseFile(store, path) if store.is_s3 else _LocalLeaseFile(store, path)


class LeaseLost(RuntimeError):
    """Our lease was taken over (renewals lapsed): another run may be doing its work now."""


@dataclass
class Lease:
    """A held lease. ``lost`` is set when a renewal found it taken over (we were too slow)."""

    store_url: str
    record: LeaseRecord
    lost: threading.Event
    reason: str = ""

    def check(self) -> None:
        """Raise :class:`LeaseLost` once the lease is lost: its holder must not start more work."""
        if self.lost.is_set():
            raise LeaseLost(
                f"lease {self.record.name!r} on store {self.store_url} was lost ({self.reason}): another run "
                "may be doing this work now, so this run starts no more of it; rerun to finish what is not "
                "stored (orchestration.lease_ttl_s sets how long renewals may lapse)")


def holder(store: Store, name: str) -> LeaseRecord | None:
    """Who holds the lease now (expired or not)."""
    current = _lease_file(store, name).read()
    return current[0] if current else None


def held_leases(store: Store) -> list[LeaseRecord]:
    """Every lease on the store (expired ones too: a killed run's, until the next run takes it), for status."""
    names = sorted(path.rsplit("/", 1)[-1].removesuffix(".json") for path in store.glob(store.path("leases", "*.json")))
    return [record for record in (holder(store, name) for name in names) if record is not None]


@contextmanager
def acquire(
    store: Store, name: str, owner: str, ttl_s: float = 60.0, wait_s: float = 0.0, poll_s: float = 1.0,
    on_held: Callable[[LeaseRecord], None] | None = None,
) -> Iterator[Lease]:
    """Hold lease ``name`` for the ``with`` block, renewed every ``ttl_s / 3`` seconds.

    Waits up to ``wait_s`` for a live lease of another owner, then raises :class:`LeaseHeld`
    naming it; ``on_held`` hears of that holder once, when first found (a log line saying who
    is waited for). An expired lease is taken over; so is one of the same ``owner`` (a retried
    task of the same run)."""
    if ttl_s <= 0:
        raise ValueError(f"ttl_s must be positive, got {ttl_s}")
    lease_file = _lease_file(store, name)
    mine = LeaseRecord(name, owner, uuid.uuid4().hex, datetime.now(UTC).isoformat(), _iso_in(ttl_s))
    deadline = time.monotonic() + wait_s
    while True:
        current = lease_file.read()
        if current is None:
            won = lease_file.create(mine.encode())
        elif current[0].expired or current[0].owner == owner:
            won = lease_file.swap(mine.encode(), current[1])
        else:
            won = False
            if on_held is not None:
                on_held(current[0])
                on_held = None
        if won:
            break
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            latest = lease_file.read()
            if latest is None or latest[0].expired:
                continue  # released or lapsed since: one more attempt at once
            raise LeaseHeld(store, latest[0])
        time.sleep(min(poll_s, remaining))
    lease = Lease(store.url, mine, threading.Event())
    stop = threading.Event()
    renewer = threading.Thread(
        target=_renew, args=(lease_file, lease, ttl_s, stop), name=f"lease-{name}", daemon=True
    )
    renewer.start()
    try:
        yield lease
    finally:
        stop.set()
        renewer.join()
        if not lease.lost.is_set():
            current = lease_file.read()
            if current is not None and current[0].token == lease.record.token:
                lease_file.delete(current[1])


def _renew(lease_file: _LeaseFile, lease: Lease, ttl_s: float, stop: threading.Event) -> None:
    while not stop.wait(ttl_s / 3):
        try:
            current = lease_file.read()
            if lost := _lost_to(current, lease):
                raise StoreError(lost)
            renewed = lease.record.renewed(ttl_s)
            if not lease_file.swap(renewed.encode(), current[1]):
                # A put whose reply was lost is retried by the S3 client, and the retry fails its
                # condition on the version the first attempt wrote: the renewal landed if the store
                # holds exactly it. Else another run wrote between the read and the swap.
                latest = lease_file.read()
                if latest is None or latest[0] != renewed:
                    raise StoreError(_lost_to(latest, lease) or "changed during renewal")
            lease.record = renewed
        except Exception as exc:  # noqa: BLE001 - a failed renewal must not kill the run, only flag it
            if isinstance(exc, StoreError):
                lease.reason = str(exc)
                lease.lost.set()
                log.warning("lease %r of %s lost: %s", lease.record.name, lease.record.owner, exc)
                return
            log.warning("lease %r renewal failed, will retry: %s", lease.record.name, exc)


def _lost_to(current: tuple[LeaseRecord, str] | None, lease: Lease) -> str | None:
    """Why the stored lease is no longer ``lease`` (another run's, or deleted); None while it is."""
    if current is None:
        return "taken over by nobody (deleted)"
    return None if current[0].token == lease.record.token else f"taken over by {current[0].owner}"
