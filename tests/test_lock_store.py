"""The lock store of the scaled-out replicas (rasa_hred.integration.lock_store), on a real
Redis: one holder at a time even when two clients take a conversation's lock at the same
moment, a lock abandoned by a dead holder is free after one lifetime, and `rasa run` loads it
from endpoints-scaled.yml. Rasa's own RedisLockStore fails the first check."""

from __future__ import annotations

import asyncio
import json
import threading
import time
from dataclasses import dataclass

import pytest
import redis
from rasa.core.lock_store import LockError, LockStore, RedisLockStore
from rasa.core.utils import AvailableEndpoints
from support import REPO

from rasa_hred.integration.lock_store import AtomicRedisLockStore

pytestmark = pytest.mark.slow  # each test starts a Redis server

TRIES = 200
LIFETIME_S = 2.0


@dataclass
class Overlaps:
    """What happened when two clients took the same lock at the same moment, ``TRIES`` times."""

    both_held: int = 0  # tries in which both clients were inside the lock at once
    errors: int = 0  # a LockError, or no lock within 5 lifetimes


def take_at_once(stores: tuple[LockStore, LockStore]) -> Overlaps:
    """Each store, in its own thread and event loop (like two replicas), takes the lock of
    conversation ``n`` at the same moment as the other, holds it for 5 ms and releases it,
    for n in 0..TRIES-1."""
    barrier = threading.Barrier(2, timeout=30)
    guard = threading.Lock()
    inside: dict[int, int] = {}
    result = Overlaps()

    async def hold(store: LockStore, n: int) -> None:
        async with store.lock(f"conversation-{n}", LIFETIME_S, wait_time_in_seconds=0.01):
            with guard:
                inside[n] = inside.get(n, 0) + 1
                result.both_held += inside[n] == 2
            await asyncio.sleep(0.005)
            with guard:
                inside[n] -= 1

    async def client(store: LockStore) -> None:
        for n in range(TRIES):
            barrier.wait()
            try:
                await asyncio.wait_for(hold(store, n), timeout=5 * LIFETIME_S)
            except (LockError, asyncio.TimeoutError):
                with guard:
                    result.errors += 1

    threads = [threading.Thread(target=asyncio.run, args=(client(s),)) for s in stores]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=TRIES * 6 * LIFETIME_S)
    assert not any(thread.is_alive() for thread in threads)
    return result


def test_two_clients_taking_a_lock_at_once_never_both_hold_it(redis_server: int) -> None:
    def stores(kind: type[RedisLockStore]) -> tuple[LockStore, LockStore]:
        return kind(host="127.0.0.1", port=redis_server), kind(host="127.0.0.1", port=redis_server)

    atomic = take_at_once(stores(AtomicRedisLockStore))
    rasa = take_at_once(stores(RedisLockStore))
    print(f"\nboth held the lock: atomic {atomic}, Rasa's RedisLockStore {rasa} (of {TRIES})")
    assert atomic == Overlaps(both_held=0, errors=0)
    # Rasa's store reads the lock, adds a ticket and writes it back: both clients get ticket 0.
    assert rasa.both_held > 0
    # Every lock went with its last ticket.
    assert redis.Redis(host="127.0.0.1", port=redis_server, db=1).dbsize() == 0


def test_a_lock_left_by_a_dead_holder_is_free_after_one_lifetime(redis_server: int) -> None:
    store = AtomicRedisLockStore(host="127.0.0.1", port=redis_server)
    # A holder killed mid-message leaves its ticket (first in line) in Redis, and no one
    # releases it.
    dead = AtomicRedisLockStore(host="127.0.0.1", port=redis_server)
    assert dead.issue_ticket("abandoned", LIFETIME_S) == 0
    stored = redis.Redis(host="127.0.0.1", port=redis_server, db=1).get("lock:abandoned")
    assert stored
    dead_expires = json.loads(json.loads(stored)["tickets"][0])["expires"]

    async def next_message() -> float:
        # Rasa's own poll interval (1 s): with Rasa's store, this ticket would expire with
        # the dead one before the waiter sees the lock free, and it would wait forever.
        async with store.lock("abandoned", LIFETIME_S, wait_time_in_seconds=1) as held:
            assert [ticket.number for ticket in held.tickets] == [1]
            return time.time()

    time.sleep(0.05)
    acquired = asyncio.run(asyncio.wait_for(next_message(), timeout=5 * LIFETIME_S))
    assert acquired >= dead_expires  # not before the dead holder's ticket expired
    assert redis.Redis(host="127.0.0.1", port=redis_server, db=1).dbsize() == 0


def test_rasa_loads_it_from_endpoints_scaled_yml(
    redis_server: int, monkeypatch: pytest.MonkeyPatch
) -> None:
    # What `rasa run --endpoints endpoints-scaled.yml` does with the `lock_store` block.
    monkeypatch.setenv("REDIS_PORT", str(redis_server))
    monkeypatch.setenv("NLG_PORT", "5056")
    endpoints = AvailableEndpoints.read_endpoints(str(REPO / "endpoints-scaled.yml"))
    store = LockStore.create(endpoints.lock_store)
    assert isinstance(store, AtomicRedisLockStore)
    locks = redis.Redis(host="127.0.0.1", port=redis_server, db=1)

    async def hold() -> None:
        async with store.lock("someone"):
            assert locks.exists("lock:someone")

    asyncio.run(hold())
    assert not locks.exists("lock:someone")
