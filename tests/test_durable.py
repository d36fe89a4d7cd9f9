"""The demo is durable: its endpoints.yml keeps conversations in SQLite, so a restarted
`rasa run` continues every conversation, and the HRED answers from the turns said before the
restart."""

from __future__ import annotations

import json
import urllib.request
from pathlib import Path
from typing import Any

import pytest
from support.models import demo_run_directory
from support.servers import rasa_server

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


def test_restarted_rasa_run_continues_each_conversation_with_its_hred_context(
    demo_model: Path, tmp_path: Path
) -> None:
    # The repository's own endpoints.yml, run from a directory laid out like the repository
    # root after `make train` (the SQLite path is relative to it).
    options = ["--enable-api", *demo_run_directory(tmp_path)]
    webhook, tracker = "/webhooks/rest/webhook", f"/conversations/{SENDER}/tracker"

    with rasa_server(demo_model, tmp_path, *options) as base:
        for text in BEFORE:
            assert post(base + webhook, {"sender": SENDER, "message": text})
        history = said(get(base + tracker)["events"])
    assert [text for event, text in history if event == "user"] == BEFORE
    assert (tmp_path / "models" / "conversations.db").stat().st_size > 0

    with rasa_server(demo_model, tmp_path, *options) as base:
        assert said(get(base + tracker)["events"]) == history  # before anyone speaks
        reply = post(base + webhook, {"sender": SENDER, "message": AFTER})
        fresh = post(base + webhook, {"sender": "newcomer", "message": AFTER})
        events = get(base + tracker)["events"]

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
        assert [r["text"] for r in reply] == [generator.generate([context])[0].text]
        assert [r["text"] for r in fresh] == [generator.generate([[AFTER]])[0].text]
    finally:
        generator.close()
    assert reply != fresh
