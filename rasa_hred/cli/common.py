"""What every command module shares: handlers imported on first use, and the corpus sources
that are not files (the Rasa tracker store) with their flags."""

from __future__ import annotations

import argparse
import importlib
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from rasa_hred.corpora.base import Dialogue, DialogueCollector
    from rasa_hred.integration.tracker_corpus import TrackerStoreReport

Handler = Callable[[argparse.Namespace], int | None]

#: The spec prefix of a Rasa tracker store: ``tracker-store:ENDPOINTS_YML``.
TRACKER_STORE = "tracker-store"
DEFAULT_MIN_TURNS = 2


def lazy(module: str, function: str) -> Handler:
    """A handler that imports ``module`` only when its command runs (torch and Rasa are slow
    to import, and ``--help`` should be instant)."""

    def handler(args: argparse.Namespace) -> int | None:
        result: int | None = getattr(importlib.import_module(module), function)(args)
        return result

    return handler


@dataclass
class TrackerStoreSource:
    """The ``tracker-store:`` loader with a command's options bound. Rasa is imported when a
    spec uses it (seconds), never for ``--help`` or file specs. ``reports`` holds what each
    store read gave."""

    min_turns: int = DEFAULT_MIN_TURNS
    exclude_senders: frozenset[str] = frozenset()
    reports: list[TrackerStoreReport] = field(default_factory=list)

    def __call__(self, endpoints: str, collector: DialogueCollector) -> list[Dialogue]:
        from rasa_hred.integration.tracker_corpus import read_tracker_store

        dialogues, report = read_tracker_store(
            endpoints, collector, min_turns=self.min_turns, exclude_senders=self.exclude_senders
        )
        self.reports.append(report)
        return dialogues


def add_corpus_source_options(parser: argparse.ArgumentParser) -> None:
    """The flags of ``corpus_sources`` on a command that reads corpus specs."""
    group = parser.add_argument_group(
        f"{TRACKER_STORE}:ENDPOINTS_YML specs",
        "Your bot's own conversations: every conversation in the tracker store that "
        "the Rasa endpoints.yml configures (SQL/SQLite, Redis, Mongo, ...), read through "
        "Rasa's TrackerStore API. Paths in it, such as an SQLite db, are relative to the "
        "current directory, as for `rasa run`. Each session is one dialogue of the user and "
        "bot texts the HRED policy sees as context; button payloads (/intent) are left out.",
    )
    group.add_argument(
        "--exclude-sender",
        dest="tracker_exclude_senders",
        action="append",
        default=[],
        metavar="ID",
        help="leave out this sender's conversations (repeatable)",
    )
    group.add_argument(
        "--min-turns",
        dest="tracker_min_turns",
        type=int,
        default=DEFAULT_MIN_TURNS,
        metavar="N",
        help=f"keep sessions of at least N turns [{DEFAULT_MIN_TURNS}]",
    )


def corpus_sources(args: argparse.Namespace) -> dict[str, TrackerStoreSource]:
    """The loaders for ``load_corpus(sources=...)``, with the flags of
    ``add_corpus_source_options`` bound."""
    source = TrackerStoreSource(
        min_turns=args.tracker_min_turns,
        exclude_senders=frozenset(args.tracker_exclude_senders),
    )
    return {TRACKER_STORE: source}
