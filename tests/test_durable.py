"""The demo is durable: its endpoints.yml keeps conversations in SQLite, so a restarted
`rasa run` continues every conversation, and the HRED answers from the turns said before the
restart; and the conversations it kept train a new HRED (``tracker-store:`` corpus)."""

from __future__ import annotations

import json
import subprocess
import urllib.request
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from support import BIN
from support.models import demo_run_directory
from support.servers import rasa_server

from rasa_hred.cli.common import TRACKER_STORE
from rasa_hred.core.vocab import Vocabulary
from rasa_hred.integration.archive import extract_policy_model
from rasa_hred.integration.context import dialogue_context
from rasa_hred.integration.loading import load_policy_generator, with_defaults

# Slow, and first in line for the session's trained demo model (minutes on 2 busy cores).
pytestmark = [pytest.mark.slow, pytest.mark.timeout(1200)]

SENDER = "durable-user"
BEFORE = ["hello", "have you watched the Lord of the Rings?", "who is the greatest actress ever?"]
AFTER = "do you think Tarantino is overrated?"


def post(url: str, payload: dict[str, Any]) -> Any:
    request = urllib.request.Request(
        url, json.dumps(payload).encode(), {"Content-Type": "application/json"}
    )
    with urllib.request.urlopen(request, timeout=120) as response:
        return json.loads(response.read())


def get(url: str) -> Any:
    with urllib.request.urlopen(url, timeout=60) as response:
        return json.loads(response.read())


def said(events: list[dict[str, Any]]) -> list[tuple[str, str]]:
    """The conversation's user and bot texts, in order."""
    return [(e["event"], e.get("text") or "") for e in events if e["event"] in ("user", "bot")]


@dataclass
class DurableRun:
    """What the demo said before and after its restart (``durable_run``)."""

    directory: Path  # laid out like the repository root: endpoints.yml, models/conversations.db
    history: list[tuple[str, str]]  # SENDER's conversation before the restart
    reply: Any  # the answer to AFTER after the restart, and a newcomer's to the same text
    fresh: Any
    events: list[dict[str, Any]]  # SENDER's tracker at the end


# Conversations for the tracker-store corpus (each: the HRED's reply, then utter_greet to a
# button payload), and one of a sender the training excludes.
PAYLOAD = '/greet{"genre": "kumquatz"}'  # answered by utter_greet, which names no genre
CORPUS = {f"user{i}": [f"my quokka {i} likes zanzibar", PAYLOAD] for i in range(3)}
CORPUS["tester"] = ["the axolotl test message"]


@pytest.fixture(scope="module")
def durable_run(demo_model: Path, tmp_path_factory: pytest.TempPathFactory) -> DurableRun:
    """The demo's ``rasa run`` with the repository's endpoints.yml, from a directory laid out
    like the repository root after `make train` (the SQLite path is relative to it): SENDER
    says BEFORE (and CORPUS's senders theirs), the server stops, starts again, and SENDER
    and a newcomer say AFTER. One run for the tests below: each start costs a minute."""
    directory = tmp_path_factory.mktemp("durable")
    options = ["--enable-api", *demo_run_directory(directory)]
    webhook, tracker = "/webhooks/rest/webhook", f"/conversations/{SENDER}/tracker"

    with rasa_server(demo_model, directory, *options) as base:
        for text in BEFORE:
            assert post(base + webhook, {"sender": SENDER, "message": text})
        for sender, texts in CORPUS.items():
            for text in texts:
                post(base + webhook, {"sender": sender, "message": text})
        history = said(get(base + tracker)["events"])
    assert [text for event, text in history if event == "user"] == BEFORE
    assert (directory / "models" / "conversations.db").stat().st_size > 0

    with rasa_server(demo_model, directory, *options) as base:
        assert said(get(base + tracker)["events"]) == history  # before anyone speaks
        reply = post(base + webhook, {"sender": SENDER, "message": AFTER})
        fresh = post(base + webhook, {"sender": "newcomer", "message": AFTER})
        events = get(base + tracker)["events"]
    return DurableRun(directory, history, reply, fresh, events)


def test_restarted_rasa_run_continues_each_conversation_with_its_hred_context(
    demo_model: Path, durable_run: DurableRun, tmp_path: Path
) -> None:
    history, events = durable_run.history, durable_run.events
    assert said(events)[: len(history)] == history
    assert said(events)[len(history)] == ("user", AFTER)
    # The reply after the restart is the HRED's answer to the whole conversation: the context
    # holds the turns from before the restart, and it is not the answer a newcomer gets.
    hred = [i for i, e in enumerate(events) if e["event"] == "action" and e["name"] == "utter_hred"]
    assert hred and hred[-1] > len(events) - 5, "the HRED did not answer the last message"
    extracted = extract_policy_model(demo_model, tmp_path / "policy")
    config = with_defaults(extracted.policy_config)
    context = dialogue_context(events[: hred[-1]], max_turns=config["max_history"])
    assert context[-1] == AFTER and {BEFORE[-1], history[-1][1]} <= set(context)
    generator = load_policy_generator(extracted.directory, config)
    try:
        assert [r["text"] for r in durable_run.reply] == [generator.generate([context])[0].text]
        assert [r["text"] for r in durable_run.fresh] == [generator.generate([[AFTER]])[0].text]
    finally:
        generator.close()
    assert durable_run.reply != durable_run.fresh


def test_train_on_the_conversations_the_store_kept(durable_run: DurableRun, tmp_path: Path):
    """``rasa-hred train --corpus tracker-store:endpoints.yml`` on the store the demo filled."""
    out = tmp_path / "model"
    run = subprocess.run(
        [
            *(BIN / "rasa-hred", "train", "--corpus", f"{TRACKER_STORE}:endpoints.yml"),
            *("--exclude-sender", "tester", "--out", str(out), "--epochs", "1"),
            *("--embedding-size", "16", "--hidden-size", "32", "--device", "cpu", "--no-progress"),
        ],
        cwd=durable_run.directory,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert run.returncode == 0, run.stderr[-3000:]
    vocabulary = Vocabulary.load(out / "vocab.json")
    assert all(word in vocabulary for word in ("quokka", "zanzibar", "tarantino"))  # kept
    assert "axolotl" not in vocabulary  # the excluded sender's
    skipped = json.loads((out / "config.json").read_text())["corpus"]["skipped"]
    assert skipped == {"endpoints.yml (SQLTrackerStore): conversation of an excluded sender": 1}
    assert "kumquatz" not in vocabulary  # a button payload is no text
