"""The demo assistant as a user runs it: `rasa train`, then `rasa run` (the session's
``demo_server``) and `rasa shell`."""

import json
import urllib.request

import pexpect
import pytest
from support import BIN, RASA_ENV
from support.models import demo_policy_options, demo_run_directory
from support.servers import free_port

pytestmark = pytest.mark.slow


def post(url: str, payload: dict) -> list | dict:
    request = urllib.request.Request(
        url, json.dumps(payload).encode(), {"Content-Type": "application/json"}
    )
    with urllib.request.urlopen(request, timeout=60) as response:
        return json.loads(response.read())


def get(url: str) -> dict:
    with urllib.request.urlopen(url, timeout=60) as response:
        return json.loads(response.read())


def say(base: str, sender: str, text: str) -> list[str]:
    replies = post(f"{base}/webhooks/rest/webhook", {"sender": sender, "message": text})
    return [r.get("text", "") for r in replies]


def test_rest_conversations_get_rule_and_hred_replies_with_separate_histories(demo_server):
    base = demo_server  # a moved copy of the archive, with the demo's endpoints.yml
    greeting = say(base, "ann", "hello")
    assert greeting and "movie" in greeting[0].lower()  # utter_greet, a fixed response
    chat_ann = say(base, "ann", "what do you think about life and love?")
    chat_ben = say(base, "ben", "tell me something funny about robots")
    for reply in (chat_ann, chat_ben):
        assert len(reply) == 1 and reply[0].strip()
        assert "{" not in reply[0]
    ann = get(f"{base}/conversations/ann/tracker")
    ben = get(f"{base}/conversations/ben/tracker")
    ann_texts = [e.get("text") for e in ann["events"] if e["event"] in ("user", "bot")]
    ben_texts = [e.get("text") for e in ben["events"] if e["event"] in ("user", "bot")]
    assert ann_texts[0] == "hello" and "what do you think about life and love?" in ann_texts
    assert ben_texts == ["tell me something funny about robots", chat_ben[0]]
    assert not set(ann_texts) & {"tell me something funny about robots"}
    hred_turns = [e for e in ann["events"] if e["event"] == "action" and e["name"] == "utter_hred"]
    assert hred_turns and hred_turns[0]["policy"] == "HREDPolicy"
    # generate: in_nlg: the policy only predicted utter_hred, the NLG generated the text.
    assert demo_policy_options("generate") == {"generate": "in_nlg"}
    assert ann["slots"]["hred_response"] is None and chat_ann[0] in ann_texts


def test_rasa_shell_two_turns(demo_model, tmp_path):
    options = demo_run_directory(tmp_path)
    shell = pexpect.spawn(
        str(BIN / "rasa"),
        ["shell", "-m", str(demo_model), "--port", str(free_port()), *options],
        cwd=str(tmp_path),
        env=RASA_ENV,
        encoding="utf-8",
        timeout=180,
    )
    try:
        shell.expect("Bot loaded")
        shell.expect("Your input ->")
        shell.sendline("hi")
        shell.expect("movie")
        shell.expect("Your input ->")
        shell.sendline("what is the meaning of life?")
        shell.expect(r"\r\n(.+?)\r\n", timeout=120)
        shell.expect("Your input ->")
        shell.sendline("/stop")
        shell.expect(pexpect.EOF, timeout=60)
    finally:
        shell.close(force=True)
