"""A bot's own conversations as a corpus: the ``tracker-store:ENDPOINTS_YML`` spec.

The store is the one the endpoints file's ``tracker_store`` configures, opened by Rasa's own
``TrackerStore.create``, so whatever Rasa supports works (SQL including SQLite, Redis, Mongo,
Dynamo, a custom class). Paths in it (an SQLite ``db``) mean what they mean to ``rasa run``:
relative to the current directory.

Each conversation is cut where its HRED context starts afresh (``session_started``,
``restart``), and each session becomes one dialogue of the turns ``integration.context`` gives
the policy: user and bot texts, one speaker's consecutive texts merged, rewinds applied, button
payloads (``/intent{...}``) left out. A part without any text (what precedes
``session_started``) is not a session. Sessions with fewer than ``min_turns`` turns and the
conversations of excluded senders are skipped and counted, by reason, in the collector.
"""

from __future__ import annotations

import asyncio
import contextlib
import inspect
import logging
from collections.abc import Collection, Iterator
from dataclasses import dataclass
from pathlib import Path

from rasa.core.tracker_store import InMemoryTrackerStore, SQLTrackerStore, TrackerStore
from rasa.shared.exceptions import RasaException
from rasa.utils.endpoints import EndpointConfig, read_endpoint_config

from rasa_hred.corpora.base import CorpusError, Dialogue, DialogueCollector
from rasa_hred.integration.context import dialogue_context, split_sessions

__all__ = ["TrackerStoreReport", "open_tracker_store", "read_tracker_store"]

_ENDPOINT = "tracker_store"


@dataclass
class TrackerStoreReport:
    """What one tracker store gave (``rasa-hred corpus stats`` prints it)."""

    endpoints: str
    store: str  # the tracker store class Rasa chose
    conversations: int = 0  # read; excluded senders' are not
    sessions: int = 0  # with any text
    kept: int = 0  # dialogues


def read_tracker_store(
    endpoints: str,
    collector: DialogueCollector,
    *,
    min_turns: int,
    exclude_senders: Collection[str] = (),
) -> tuple[list[Dialogue], TrackerStoreReport]:
    """Every session of every conversation in the tracker store of ``endpoints`` (an
    endpoints.yml) as a dialogue, in sender-id order; see the module docstring.

    Raises:
        CorpusError: ``min_turns`` < 2, no readable endpoints file, no (persistent) tracker
            store in it, a store that cannot be read or holds no conversations.
    """
    if min_turns < 2:
        raise CorpusError(f"--min-turns must be >= 2 (a dialogue has two turns), not {min_turns}")
    store = open_tracker_store(endpoints)
    report = TrackerStoreReport(endpoints, type(store).__name__)
    try:
        with _unknown_slots_quiet():
            dialogues = asyncio.run(
                _read(store, collector, report, min_turns, frozenset(exclude_senders))
            )
    except CorpusError:
        raise
    except Exception as error:  # the store's own I/O errors (SQL, Redis, Mongo, ...)
        raise CorpusError(
            f"{endpoints}: cannot read the {report.store}: {type(error).__name__}: {error}"
        ) from error
    return dialogues, report


def open_tracker_store(endpoints: str) -> TrackerStore:
    """The tracker store an endpoints.yml configures, as ``rasa run`` would open it."""
    path = Path(endpoints)
    if not path.is_file():
        raise CorpusError(f"tracker store: no endpoints file {path} (in {Path.cwd()})")
    try:
        config = read_endpoint_config(str(path), _ENDPOINT)
    except (RasaException, TypeError) as error:
        raise CorpusError(f"{path}: not a valid endpoints file: {error}") from None
    if config is None or config.type is None:
        raise CorpusError(
            f"{path}: no tracker_store with a type; Rasa would keep conversations in memory, "
            "where nothing outlives `rasa run` to be read"
        )
    sqlite = _sqlite_file(config)
    if sqlite is not None and not sqlite.is_file():
        raise CorpusError(
            f"{path}: its SQLite tracker store {sqlite} does not exist ({sqlite.absolute()}: "
            "a relative db is relative to the current directory, as for `rasa run`)"
        )
    try:
        store = TrackerStore.create(config)
    except RasaException as error:
        raise CorpusError(f"{path}: cannot open the tracker store: {error}") from None
    if isinstance(store, InMemoryTrackerStore):
        raise CorpusError(
            f"{path}: tracker_store type {config.type!r} is Rasa's in-memory store, "
            "where nothing outlives `rasa run` to be read"
        )
    return store


async def _read(
    store: TrackerStore,
    collector: DialogueCollector,
    report: TrackerStoreReport,
    min_turns: int,
    excluded: frozenset[str],
) -> list[Dialogue]:
    senders = sorted(await store.keys())  # sorted: the seeded split stays reproducible
    if not senders:
        raise CorpusError(f"{report.endpoints}: the {report.store} holds no conversations")
    source = f"{report.endpoints} ({report.store})"
    dialogues: list[Dialogue] = []
    for sender in senders:
        if sender in excluded:
            collector.skip(f"{source}: conversation of an excluded sender")
            continue
        tracker = await store.retrieve_full_tracker(sender)
        if tracker is None:
            continue
        report.conversations += 1
        for part in split_sessions(tracker.events):
            turns = dialogue_context(part)
            if not turns:
                continue
            report.sessions += 1
            if len(turns) < min_turns:
                collector.skip(f"{source}: session with fewer than {min_turns} turns")
                continue
            dialogue = collector.dialogue(turns, source, "session")
            if dialogue is not None:
                dialogues.append(dialogue)
                report.kept += 1
    return dialogues


def _sqlite_file(config: EndpointConfig) -> Path | None:
    """The SQLite file an SQL tracker store would open, ``None`` for other stores: SQLAlchemy
    would create a missing one, and the user would get an empty store instead of the error."""
    if str(config.type).lower() != "sql" or (config.url and "://" in config.url):
        return None
    defaults = inspect.signature(SQLTrackerStore).parameters  # Rasa's own defaults
    if config.kwargs.get("dialect", defaults["dialect"].default) != "sqlite":
        return None
    db = str(config.kwargs.get("db", defaults["db"].default))
    return None if db in ("", ":memory:") else Path(db)


@contextlib.contextmanager
def _unknown_slots_quiet() -> Iterator[None]:
    """Trackers are rebuilt without the bot's domain (slots do not matter for texts), so Rasa
    would log an error for every ``slot`` event; those lines only are dropped."""
    logger = logging.getLogger("rasa.shared.core.trackers")

    def keep(record: logging.LogRecord) -> bool:
        return not record.getMessage().startswith("Tried to set non existent slot")

    logger.addFilter(keep)
    try:
        yield
    finally:
        logger.removeFilter(keep)
