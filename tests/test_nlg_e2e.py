"""`rasa run` with its NLG endpoint pointing at `rasa-hred serve`, end to end.

The demo assistant is trained with ``generate: nlg_server`` (the policy only predicts
utter_hred), `rasa-hred serve` serves the trained archive (HRED, domain and policy settings
from it), and REST conversations go through `rasa run --endpoints` with the server's URL.
Run with ``pytest -s`` to see the transcript.
"""

from __future__ import annotations

import json
import subprocess
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest
from prometheus_client.parser import text_string_to_metric_families
from support import BIN, RASA_ENV
from support.models import rasa_train, write_demo_project
from support.servers import free_port, rasa_server

from rasa_hred.integration.context import dialogue_context
from rasa_hred.serving.generator import ResponseGenerator

pytestmark = pytest.mark.slow

MAX_HISTORY = 10  # HREDPolicy's default; the server takes it from the archive


def post(url: str, payload: dict) -> list | dict:
    request = urllib.request.Request(
        url, json.dumps(payload).encode(), {"Content-Type": "application/json"}
    )
    with urllib.request.urlopen(request, timeout=120) as response:
        return json.loads(response.read())


def get(url: str) -> dict:
    with urllib.request.urlopen(url, timeout=60) as response:
        return json.loads(response.read())


def requests_by_kind(nlg_url: str) -> dict[str, float]:
    with urllib.request.urlopen(f"{nlg_url}/metrics", timeout=30) as response:
        text = response.read().decode()
    counts: dict[str, float] = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            if sample.name == "rasa_hred_nlg_requests_total":
                kind = sample.labels["kind"]
                counts[kind] = counts.get(kind, 0.0) + sample.value
    return counts


@pytest.fixture(scope="module")
def nlg_model(tmp_path_factory: pytest.TempPathFactory, tiny_hred: Path, rasa_cache: Path) -> Path:
    project = write_demo_project(
        tmp_path_factory.mktemp("demo-nlg"), {"model": str(tiny_hred), "generate": "nlg_server"}
    )
    return rasa_train(project, cache=rasa_cache)


@pytest.fixture
def nlg_server(nlg_model: Path, tmp_path: Path) -> Iterator[str]:
    """`rasa-hred serve` on the trained archive, on a free loopback port."""
    port = free_port()
    log_path = tmp_path / "nlg-server.log"
    log = log_path.open("w")
    command = [BIN / "rasa-hred", "serve", "--model", nlg_model, "--port", str(port)]
    process = subprocess.Popen(
        [*command, "--device", "cpu"], env=RASA_ENV, stdout=log, stderr=subprocess.STDOUT
    )
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 120
        while True:
            assert process.poll() is None, log_path.read_text()[-3000:]
            try:
                get(f"{url}/health")
                break
            except (urllib.error.URLError, ConnectionError, OSError):
                assert time.monotonic() < deadline, "rasa-hred serve did not start"
                time.sleep(0.3)
        yield url
    finally:
        process.terminate()
        try:
            assert process.wait(timeout=60) == 0
        finally:
            if process.poll() is None:
                process.kill()
            log.close()


def test_rasa_run_speaks_through_the_nlg_server(nlg_model, nlg_server, tiny_hred, tmp_path):
    project = nlg_model.parent.parent
    endpoints = tmp_path / "endpoints.yml"
    endpoints.write_text(f'nlg:\n  url: "{nlg_server}/nlg"\n')
    health = get(f"{nlg_server}/health")
    assert health["model"] == "demo" and health["max_history"] == MAX_HISTORY
    transcript: list[str] = []

    options = ["--enable-api", "--endpoints", str(endpoints), "--credentials", "credentials.yml"]
    with rasa_server(nlg_model, project, *options) as base:

        def say(sender: str, text: str) -> list[str]:
            replies = post(f"{base}/webhooks/rest/webhook", {"sender": sender, "message": text})
            transcript.append(f"{sender} > {text}")
            transcript.extend(f"{'bot':>{len(sender)}} < {r.get('text')}" for r in replies)
            return [r.get("text", "") for r in replies]

        before = requests_by_kind(nlg_server)
        greeting = say("ann", "hello")
        after_greeting = requests_by_kind(nlg_server)
        chat = say("ann", "what do you think about life and love?")
        after_chat = requests_by_kind(nlg_server)
        chat_ben = say("ben", "tell me something funny about robots")
        tracker = get(f"{base}/conversations/ann/tracker")

    print("\n" + "\n".join(transcript))
    # The rule's utter_greet was rendered by the server (the templated path).
    assert greeting and "movie" in greeting[0].lower()
    assert after_greeting.get("template", 0) - before.get("template", 0) >= 1
    assert after_greeting.get("hred", 0) == before.get("hred", 0)
    # The chit-chat turn: the policy predicted utter_hred, the server generated its text.
    assert len(chat) == 1 and chat[0].strip() and "{" not in chat[0]
    assert after_chat.get("hred", 0) - after_greeting.get("hred", 0) == 1
    assert chat_ben and chat_ben[0].strip()
    assert requests_by_kind(nlg_server).get("hred", 0) - before.get("hred", 0) == 2
    events = tracker["events"]
    hred_actions = [
        i for i, e in enumerate(events) if e["event"] == "action" and e["name"] == "utter_hred"
    ]
    assert hred_actions and events[hred_actions[0]]["policy"] == "HREDPolicy"
    assert tracker["slots"]["hred_response"] is None  # nothing generated in-process
    # It is the HRED's reply to this conversation (what the server saw: everything
    # before the utter_hred action).
    generator = ResponseGenerator.load(tiny_hred, device="cpu", max_turns=MAX_HISTORY)
    try:
        context = dialogue_context(events[: hred_actions[0]], max_turns=MAX_HISTORY)
        assert context[-1] == "what do you think about life and love?"
        assert chat[0] == generator.generate([context])[0].text
    finally:
        generator.close()
