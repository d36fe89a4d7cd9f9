"""A Redis lock store for several `rasa run` replicas: every change of a lock is one Redis
transaction, and a waiting ticket stays alive while it waits.

Replicas take turns on a conversation through the lock store. Rasa 3.6's RedisLockStore has
two faults there (docs/scaling.md):

- Taking a ticket reads the lock, changes it and writes it back. Two replicas taking the lock
  of one conversation at the same moment can both get ticket 0 and both hold it; the tracker
  store then keeps only one of their two messages.
- A ticket's lifetime counts from when it was issued, waiting included. A message waiting
  behind the ticket of a killed replica sees its own ticket expire at about the same moment,
  and from then on it waits forever (a lock without tickets counts as held by ticket 0).

Here every change of a lock (issue a ticket, poll, release) runs under WATCH/MULTI/EXEC, and
every poll renews the waiting ticket, so a waiting message keeps its place and a killed
holder's ticket frees the lock one lifetime after it was taken. A lock without tickets is
deleted, and a stored lock expires in Redis with its last ticket. The lock format and keys
are Rasa's. In endpoints.yml (``url`` is the Redis host; the other keys are RedisLockStore's)::

    lock_store:
      type: rasa_hred.integration.lock_store.AtomicRedisLockStore
      url: localhost
      port: 6379
      db: 1
"""

from __future__ import annotations

import asyncio
import json
import math
import time
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from typing import Any, TypeVar

import redis
from rasa.core.lock import Ticket, TicketLock
from rasa.core.lock_store import LOCK_LIFETIME, LockError, RedisLockStore
from rasa.utils.endpoints import EndpointConfig

T = TypeVar("T")

#: A lock that other clients change under every one of this many transactions in a row is
#: an error rather than an endless retry.
MAX_TRANSACTION_TRIES = 100


class AtomicRedisLockStore(RedisLockStore):
    """Rasa's RedisLockStore with atomic lock changes and waiting tickets that stay alive."""

    def __init__(self, endpoint_config: EndpointConfig | None = None, **kwargs: Any) -> None:
        """Rasa passes endpoints.yml's ``lock_store`` block as ``endpoint_config`` to a lock
        store it loads by module path; keyword arguments are RedisLockStore's."""
        if endpoint_config is not None:
            host = endpoint_config.url or "localhost"
            kwargs = {"host": host, **endpoint_config.kwargs, **kwargs}
        super().__init__(**kwargs)

    def _change(self, conversation_id: str, change: Callable[[TicketLock], T]) -> T:
        """Apply ``change`` to the conversation's lock (expired tickets removed; an empty
        lock if there is none) and store the result, all as one transaction: if another
        client changed the lock in between, start again."""
        key = self.key_prefix + conversation_id
        for _ in range(MAX_TRANSACTION_TRIES):
            with self.red.pipeline() as pipe:
                try:
                    pipe.watch(key)
                    stored = pipe.get(key)
                    lock = TicketLock(conversation_id)
                    if stored:
                        lock = TicketLock.from_dict(json.loads(stored))
                    lock.remove_expired_tickets()
                    result = change(lock)
                    pipe.multi()
                    if lock.tickets:
                        lifetime = max(ticket.expires for ticket in lock.tickets) - time.time()
                        pipe.set(key, lock.dumps(), px=max(1, math.ceil(lifetime * 1000)))
                    else:
                        pipe.delete(key)
                    pipe.execute()
                    return result
                except redis.WatchError:
                    continue
        raise LockError(f"The lock of conversation '{conversation_id}' kept changing.")

    def _take_ticket(self, conversation_id: str, lifetime: float) -> Ticket:
        """Issue a ticket at the end of the line, atomically; returns a copy of it."""

        def take(lock: TicketLock) -> Ticket:
            lock.issue_ticket(lifetime)
            return Ticket(lock.tickets[-1].number, lock.tickets[-1].expires)

        return self._change(conversation_id, take)

    def issue_ticket(self, conversation_id: str, lock_lifetime: float = LOCK_LIFETIME) -> int:
        """Issue a ticket at the end of the line, atomically."""
        return self._take_ticket(conversation_id, lock_lifetime).number

    def _poll(self, conversation_id: str, mine: Ticket, lifetime: float) -> TicketLock | None:
        """Renew the waiting ticket ``mine`` for another ``lifetime``; the lock if the ticket
        is first in line (then it holds the lock for at most ``lifetime``)."""
        expires = time.time() + lifetime

        def renew(lock: TicketLock) -> TicketLock | None:
            stored = _find(lock, mine)
            if stored is None:  # not polled for a whole lifetime (a stalled event loop)
                raise LockError(
                    f"Ticket {mine.number} for conversation '{conversation_id}' expired while "
                    "it waited."
                )
            stored.expires = expires
            return lock if lock.tickets[0] is stored else None

        held = self._change(conversation_id, renew)
        mine.expires = expires  # only once Redis has it
        return held

    def _release(self, conversation_id: str, mine: Ticket) -> None:
        """Remove ``mine``, atomically; the lock goes with its last ticket. A ticket that
        expired is gone already, and a later ticket with its number is not removed."""

        def remove(lock: TicketLock) -> None:
            if (stored := _find(lock, mine)) is not None:
                lock.tickets.remove(stored)

        self._change(conversation_id, remove)

    def finish_serving(self, conversation_id: str, ticket_number: int) -> None:
        """Remove the ticket, atomically; the lock goes with its last ticket."""
        self._change(conversation_id, lambda lock: lock.remove_ticket_for(ticket_number))

    def cleanup(self, conversation_id: str, ticket_number: int) -> None:
        """Release the ticket (Rasa's cleanup reads, then deletes: not atomic)."""
        self.finish_serving(conversation_id, ticket_number)

    def update_lock(self, conversation_id: str) -> None:
        """Remove expired tickets, atomically."""
        self._change(conversation_id, lambda lock: None)

    @asynccontextmanager
    async def lock(
        self,
        conversation_id: str,
        lock_lifetime: float = LOCK_LIFETIME,
        wait_time_in_seconds: float = 1,
    ) -> AsyncIterator[TicketLock]:
        """Hold the conversation's lock: take a ticket, and poll every
        ``wait_time_in_seconds`` (renewing the ticket) until it is first in line."""
        mine = self._take_ticket(conversation_id, lock_lifetime)
        try:
            while (held := self._poll(conversation_id, mine, lock_lifetime)) is None:
                await asyncio.sleep(wait_time_in_seconds)
            yield held
        finally:
            self._release(conversation_id, mine)


def _find(lock: TicketLock, mine: Ticket) -> Ticket | None:
    """``mine`` in ``lock``, by number and expiry: numbers start again at 0 once a lock has
    no tickets left, so a number alone may be someone else's later ticket."""
    return next(
        (t for t in lock.tickets if (t.number, t.expires) == (mine.number, mine.expires)),
        None,
    )
