"""The ``tracker-store:ENDPOINTS_YML`` corpus: a bot's own conversations, read from a real
SQLite tracker store through Rasa's TrackerStore API (written by Rasa's API here; a store a
real ``rasa run`` filled trains a model in tests/test_durable.py)."""

from __future__ import annotations

import asyncio
import json
import logging
from pathlib import Path

import pytest
from rasa.core.tracker_store import SQLTrackerStore
from rasa.shared.core.domain import Domain
from rasa.shared.core.events import (
    ActionExecuted,
    BotUttered,
    Event,
    Restarted,
    SessionStarted,
    SlotSet,
    UserUttered,
)
from rasa.shared.core.trackers import DialogueStateTracker

from rasa_hred.cli import main
from rasa_hred.cli.common import TRACKER_STORE, TrackerStoreSource
from rasa_hred.corpora import CorpusError, load_corpus
from rasa_hred.corpora.base import DialogueCollector
from rasa_hred.integration.tracker_corpus import read_tracker_store

DOMAIN = Domain.from_yaml(
    """
version: "3.1"
slots:
  hred_response:
    type: text
    influence_conversation: false
    mappings: [{type: custom}]
"""
)
SQLITE_ENDPOINTS = "tracker_store:\n  type: SQL\n  dialect: sqlite\n  db: trackers.db\n"


def start() -> list[Event]:
    return [
        ActionExecuted("action_session_start"),
        SessionStarted(),
        ActionExecuted("action_listen"),
    ]


def user(text: str) -> UserUttered:
    return UserUttered(text, {"name": "chitchat", "confidence": 1.0})


def bot(text: str) -> list[Event]:
    return [ActionExecuted("utter_hred"), BotUttered(text), ActionExecuted("action_listen")]


def exchange(user_text: str, bot_text: str) -> list[Event]:
    return [user(user_text), *bot(bot_text)]


ANN = [  # two sessions; a button payload in the first; a slot set as the policy does
    *start(),
    *exchange("hi there", "hello what films do you like"),
    user('/inform{"genre": "drama"}'),
    *bot("drama it is"),
    *exchange("tell me about space", "space is big"),
    *start(),
    user("back again"),
    SlotSet("hred_response", "welcome back"),
    *bot("welcome back"),
]
BEN = [  # a restart starts afresh too; the /restart payload itself is no text
    *start(),
    *exchange("good morning", "morning to you"),
    user("/restart"),
    ActionExecuted("action_restart"),
    Restarted(),
    *exchange("who are you", "just a bot"),
    user("and a third turn"),
]
SHORT = [*start(), user("anyone there")]  # one turn


def write_store(directory: Path, conversations: dict[str, list[Event]]) -> Path:
    """Trackers saved by Rasa's SQLTrackerStore into ``directory/trackers.db``; the
    endpoints.yml naming it (relative, so it is read from ``directory``)."""
    store = SQLTrackerStore(DOMAIN, dialect="sqlite", db=str(directory / "trackers.db"))
    for sender, events in conversations.items():
        tracker = DialogueStateTracker.from_events(sender, events, slots=DOMAIN.slots)
        asyncio.run(store.save(tracker))
    store.engine.dispose()
    endpoints = directory / "endpoints.yml"
    endpoints.write_text(SQLITE_ENDPOINTS)
    return endpoints


def read(
    endpoints: str, *, min_turns: int = 2, exclude: tuple[str, ...] = ()
) -> tuple[list[list[str]], dict[str, int]]:
    collector = DialogueCollector(map_numbers=True)
    dialogues, _ = read_tracker_store(
        endpoints, collector, min_turns=min_turns, exclude_senders=exclude
    )
    return dialogues, collector.skipped


@pytest.fixture
def store_dir(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """The store's directory, made the current one (relative paths resolve as for rasa run)."""
    write_store(tmp_path, {"ann": ANN, "ben": BEN, "short": SHORT})
    monkeypatch.chdir(tmp_path)
    return tmp_path


def test_each_session_is_a_dialogue_of_user_and_bot_texts(store_dir, caplog):
    with caplog.at_level(logging.INFO):
        dialogues, skipped = read("endpoints.yml")
    assert dialogues == [
        # ann, session 1: the payload is left out, the bot's turns around it merge
        [
            "hi there",
            "hello what films do you like drama it is",
            "tell me about space",
            "space is big",
        ],
        ["back again", "welcome back"],  # ann, session 2
        ["good morning", "morning to you"],  # ben, before the restart
        ["who are you", "just a bot", "and a third turn"],  # ben, after it
    ]
    assert skipped == {"endpoints.yml (SQLTrackerStore): session with fewer than 2 turns": 1}
    assert "non existent slot" not in caplog.text  # read without the bot's domain, quietly


def test_min_turns_and_excluded_senders_are_skipped_and_counted(store_dir):
    dialogues, skipped = read("endpoints.yml", min_turns=3, exclude=("ann",))
    assert dialogues == [["who are you", "just a bot", "and a third turn"]]
    source = "endpoints.yml (SQLTrackerStore)"
    assert skipped == {
        f"{source}: conversation of an excluded sender": 1,
        f"{source}: session with fewer than 3 turns": 2,  # ben's first, short's only
    }
    with pytest.raises(CorpusError, match="min-turns must be >= 2"):
        read("endpoints.yml", min_turns=1)


def test_load_corpus_reads_the_spec_with_the_cli_loader(store_dir):
    source = TrackerStoreSource(exclude_senders=frozenset({"short"}))
    corpus = load_corpus(f"{TRACKER_STORE}:endpoints.yml", sources={TRACKER_STORE: source})
    everything = corpus.train + corpus.validation + corpus.test
    assert sorted(everything) == sorted(read("endpoints.yml")[0])
    assert [(r.conversations, r.sessions, r.kept) for r in source.reports] == [(2, 4, 4)]


def test_corpus_stats_reports_sessions_read_kept_and_skipped(store_dir, capsys):
    assert main(["corpus", "stats", f"{TRACKER_STORE}:endpoints.yml", "--json"]) == 0
    stats = json.loads(capsys.readouterr().out)
    assert stats["tracker_stores"] == [
        {
            "endpoints": "endpoints.yml",
            "store": "SQLTrackerStore",
            "conversations": 3,
            "sessions": 5,
            "kept": 4,
        }
    ]
    assert stats["skipped"] == {
        "endpoints.yml (SQLTrackerStore): session with fewer than 2 turns": 1
    }
    assert sum(split["dialogues"] for split in stats["splits"].values()) == 4

    args = ["corpus", "stats", f"{TRACKER_STORE}:endpoints.yml", "--exclude-sender", "ann"]
    assert main([*args, "--exclude-sender", "ben", "--min-turns", "2"]) == 2  # nothing left
    assert "empty corpus" in capsys.readouterr().err
    assert main(["corpus", "stats", f"{TRACKER_STORE}:endpoints.yml", "--min-turns", "3"]) == 0
    out = capsys.readouterr().out
    assert "(SQLTrackerStore): 3 conversations, 5 sessions read, 2 kept" in out
    assert "session with fewer than 3 turns" in out


def test_an_empty_store_is_an_error(tmp_path, monkeypatch):
    write_store(tmp_path, {})
    monkeypatch.chdir(tmp_path)
    with pytest.raises(CorpusError, match="SQLTrackerStore holds no conversations"):
        read("endpoints.yml")


@pytest.mark.parametrize(
    "content",
    [
        "action_endpoint:\n  url: http://localhost:5055/webhook\n",  # no tracker_store
        "tracker_store:\n  url: localhost\n",  # no type: Rasa's in-memory default
        "",
    ],
)
def test_endpoints_without_a_persistent_tracker_store_are_an_error(tmp_path, content):
    endpoints = tmp_path / "endpoints.yml"
    endpoints.write_text(content)
    with pytest.raises(CorpusError, match=r"no tracker_store with a type.*in memory"):
        read(str(endpoints))


def test_missing_files_are_errors_that_say_where_paths_resolve(tmp_path, monkeypatch):
    endpoints = write_store(tmp_path, {"ann": ANN})
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    monkeypatch.chdir(elsewhere)
    with pytest.raises(CorpusError, match=r"trackers\.db does not exist.*current directory"):
        read(str(endpoints))  # the db is relative to the current directory, as for rasa run
    assert not (elsewhere / "trackers.db").exists()  # and no empty database was made
    assert main(["corpus", "stats", f"{TRACKER_STORE}:missing.yml"]) == 2
