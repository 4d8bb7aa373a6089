"""Store leases on a local folder and on a real S3 endpoint: one holder at a time, renewal,
takeover of an expired lease, a clear message naming the holder."""

from __future__ import annotations

import threading
import time

import pytest

from synthllm.lease import LeaseHeld, LeaseRecord, acquire, holder, lease_path
from synthllm.settings import StoreSettings
from synthllm.store import Store


@pytest.fixture
def store(store_settings: StoreSettings) -> Store:
    return Store(store_settings)


def test_held_lease_names_its_owner_and_is_released(store: Store) -> None:
    with acquire(store, "answer", "run-a", ttl_s=30) as lease:
        assert holder(store, "answer").owner == "run-a" and not lease.lost.is_set()
        with pytest.raises(LeaseHeld, match=r"lease 'answer' on store .* is held by run-a since \d{4}-"):
            with acquire(Store(store.settings), "answer", "run-b", ttl_s=30):
                pass
        with acquire(store, "level1", "run-b", ttl_s=30):  # another stage: its own lease
            assert holder(store, "level1").owner == "run-b"
    assert holder(store, "answer") is None and not store.exists(lease_path(store, "answer"))


def test_two_concurrent_acquirers_take_turns(store: Store) -> None:
    start = threading.Barrier(2)
    inside: list[str] = []
    overlaps: list[tuple[str, ...]] = []
    errors: list[BaseException] = []
    guard = threading.Lock()

    def run(owner: str) -> None:
        try:
            start.wait()
            with acquire(Store(store.settings), "answer", owner, ttl_s=30, wait_s=30, poll_s=0.05):
                with guard:
                    inside.append(owner)
                    if len(inside) > 1:
                        overlaps.append(tuple(inside))
                time.sleep(0.5)
                with guard:
                    inside.remove(owner)
        except BaseException as exc:  # noqa: BLE001 - reported by the assertion below
            errors.append(exc)

    threads = [threading.Thread(target=run, args=(f"run-{i}",)) for i in range(2)]
    began = time.monotonic()
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(60)
    assert not errors and not overlaps
    assert time.monotonic() - began >= 1.0  # the second waited for the first
    assert holder(store, "answer") is None


def test_an_expired_lease_is_taken_over(store: Store) -> None:
    dead = LeaseRecord("answer", "killed-run", "t0", "2024-01-01T00:00:00+00:00", "2024-01-01T00:01:00+00:00")
    store.write_bytes(lease_path(store, "answer"), dead.encode())
    with acquire(store, "answer", "run-b", ttl_s=30):
        assert holder(store, "answer").owner == "run-b"


def test_renewal_keeps_a_short_lease_alive(store: Store) -> None:
    # ttl 3 s: renewals every second leave room for slow S3 calls on a loaded machine (0.9 s and
    # 1.5 s were each flaky in CI: two renewals in a row lagged and the lease looked expired)
    with acquire(store, "answer", "run-a", ttl_s=3.0) as lease:
        time.sleep(6.5)  # two ttl's: without renewal it would have expired
        assert not holder(store, "answer").expired
        with pytest.raises(LeaseHeld, match="run-a"):
            with acquire(Store(store.settings), "answer", "run-b", ttl_s=30):
                pass
        assert not lease.lost.is_set()


def test_a_swap_or_release_on_a_version_that_changed_is_refused_not_raised(store: Store) -> None:
    """Two runs race to take over a killed run's lease; the loser's conditional write fails. On S3
    that is a 412 to ``If-Match``, which s3fs raises as a plain OSError (EINVAL), not the
    FileExistsError it gives for ``If-None-Match``: the loser's acquire crashed instead of
    finding the lease held, and a release on a changed version crashed the run at its end."""
    from synthllm.lease import _lease_file

    dead = LeaseRecord("answer", "killed-run", "t0", "2024-01-01T00:00:00+00:00", "2024-01-01T00:01:00+00:00")
    store.write_bytes(lease_path(store, "answer"), dead.encode())
    lease_file = _lease_file(store, "answer")
    _, seen = lease_file.read()  # what the losing run read
    with acquire(store, "answer", "run-a", ttl_s=30):  # the winner takes it over: a new version
        late = LeaseRecord("answer", "run-b", "tb", dead.acquired_at, "2999-01-01T00:00:00+00:00")
        assert lease_file.swap(late.encode(), seen) is False
        lease_file.delete(seen)  # a release on the old version leaves the winner's lease alone
        assert holder(store, "answer").owner == "run-a"


def test_a_lease_taken_from_its_holder_is_flagged_lost(store: Store) -> None:
    with acquire(store, "answer", "run-a", ttl_s=0.6) as lease:
        thief = LeaseRecord("answer", "run-z", "tz", "2024-01-01T00:00:00+00:00", "2999-01-01T00:00:00+00:00")
        store.write_bytes(lease_path(store, "answer"), thief.encode())
        assert lease.lost.wait(5)
    assert holder(store, "answer").owner == "run-z"  # not deleted by the one who lost it


def test_a_lease_taken_between_a_renewals_read_and_write_names_the_taker(store: Store, monkeypatch) -> None:
    """Another run writes the lease after the holder's renewal read it: the renewal's conditional
    write fails, and the lease is lost to that run by name (not "changed during renewal")."""
    from synthllm.lease import _lease_file

    kind = type(_lease_file(store, "answer"))
    real_swap = kind.swap
    thief = LeaseRecord("answer", "run-z", "tz", "2024-01-01T00:00:00+00:00", "2999-01-01T00:00:00+00:00")

    def taken_just_before(self, data: bytes, version: str) -> bool:
        store.write_bytes(lease_path(store, "answer"), thief.encode())
        return real_swap(self, data, version)

    monkeypatch.setattr(kind, "swap", taken_just_before)
    with acquire(store, "answer", "run-a", ttl_s=0.6) as lease:
        assert lease.lost.wait(5)
        assert lease.reason == "taken over by run-z"
    assert holder(store, "answer").owner == "run-z"


def test_the_same_owner_may_take_its_lease_again(store: Store) -> None:
    with acquire(store, "answer", "run-a", ttl_s=30):
        with acquire(Store(store.settings), "answer", "run-a", ttl_s=30):  # a retried task of run-a
            assert holder(store, "answer").owner == "run-a"


def test_a_renewal_that_landed_but_reported_a_conflict_keeps_the_lease(store: Store, monkeypatch) -> None:
    """An S3 put whose reply was lost is retried and the retry gets 412 on the version the first
    attempt wrote: the renewal landed, and the lease must not be flagged lost (the run would stop)."""
    from synthllm.lease import _lease_file

    kind = type(_lease_file(store, "answer"))
    real_swap, conflicts = kind.swap, []

    def landed_then_conflict(self, data: bytes, version: str) -> bool:
        assert real_swap(self, data, version)  # the write lands ...
        conflicts.append(version)
        return False  # ... but the retried request reports the changed version

    monkeypatch.setattr(kind, "swap", landed_then_conflict)
    with acquire(store, "answer", "run-a", ttl_s=0.6) as lease:
        time.sleep(1.0)
        assert len(conflicts) >= 2 and not lease.lost.is_set()
        assert holder(store, "answer").expires_at == lease.record.expires_at
    assert holder(store, "answer") is None  # still ours at the end: released
