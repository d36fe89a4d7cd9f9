"""The NLG server (rasa_hred.nlg_server): Rasa's NLG protocol driven by Rasa's own client,
bad input, auth, body limits, concurrency with micro-batching, archives and SIGTERM.

Everything runs for real: a Sanic server on a free 127.0.0.1 port in the test's event loop
(or `rasa-hred serve` as a subprocess), the tiny trained HRED, the demo domain, aiohttp and
Rasa's ``CallbackNaturalLanguageGenerator``.
"""

from __future__ import annotations

import asyncio
import contextlib
import io
import json
import random
import signal
import subprocess
import tarfile
import threading
import time
import urllib.error
import urllib.request
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import aiohttp
import pytest
import torch
import yaml
from prometheus_client.parser import text_string_to_metric_families
from rasa.core.actions.action import ActionBotResponse
from rasa.core.channels.channel import CollectingOutputChannel
from rasa.core.nlg.callback import CallbackNaturalLanguageGenerator
from rasa.core.nlg.response import TemplatedNaturalLanguageGenerator
from rasa.shared.core.domain import Domain
from rasa.shared.core.events import (
    ActionExecuted,
    BotUttered,
    SessionStarted,
    SlotSet,
    UserUttered,
)
from rasa.shared.core.trackers import DialogueStateTracker, EventVerbosity
from rasa.utils.endpoints import EndpointConfig
from sanic import Sanic
from support import BIN, RASA_ENV, REPO
from support.servers import free_port, running

from rasa_hred.errors import UserError
from rasa_hred.integration.archive import extract_policy_model
from rasa_hred.integration.context import dialogue_context
from rasa_hred.nlg_server.app import create_app
from rasa_hred.nlg_server.command import (
    ServeOptions,
    build_generator,
    resolve_settings,
    write_nlg_config,
)
from rasa_hred.serving.generator import ResponseGenerator

MAX_HISTORY = 10
TOKEN = "s3cret-token"


@pytest.fixture(scope="module", autouse=True)
def one_torch_thread():
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def domain() -> Domain:
    return Domain.load(str(REPO / "domain.yml"))


@pytest.fixture(scope="module")
def generator(tiny_hred):
    # float32: tests compare batched replies with single ones exactly, and bf16's rounding
    # depends on the shape of the batch a context is decoded in.
    gen = ResponseGenerator.load(
        tiny_hred,
        device="cpu",
        dtype="float32",
        max_turns=MAX_HISTORY,
        batch_wait_ms=5,
        max_batch_size=32,
    )
    yield gen
    gen.close()


@contextlib.asynccontextmanager
async def client(app: Sanic) -> AsyncIterator[tuple[str, aiohttp.ClientSession]]:
    async with running(app) as base:
        timeout = aiohttp.ClientTimeout(total=60)
        async with aiohttp.ClientSession(timeout=timeout) as session:
            yield base, session


def request_body(response: str, events: list[Any], channel: str = "rest", **extra: Any) -> dict:
    tracker = {"sender_id": "t", "slots": extra.pop("slots", {}), "events": events}
    body = {"response": response, "id": None, "arguments": {}, "tracker": tracker}
    return body | {"channel": {"name": channel}} | extra


def conversation(*turns: str) -> list[Any]:
    """Rasa events for alternating user/bot turns (user first)."""
    events: list[Any] = [ActionExecuted("action_session_start"), SessionStarted()]
    for i, text in enumerate(turns):
        if i % 2 == 0:
            events += [ActionExecuted("action_listen"), UserUttered(text)]
        else:
            events += [ActionExecuted("utter_hred"), BotUttered(text)]
    return events


def as_json(events: list[Any]) -> list[dict]:
    return [event.as_dict() for event in events]


def metric_samples(text: str) -> dict[tuple[str, tuple], float]:
    samples = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            samples[(sample.name, tuple(sorted(sample.labels.items())))] = sample.value
    return samples


async def metrics_of(session: aiohttp.ClientSession, base: str, token: str | None = None):
    params = {"token": token} if token else None
    async with session.get(f"{base}/metrics", params=params) as response:
        assert response.status == 200
        return metric_samples(await response.text())


def requests_count(samples: dict, kind: str, status: int = 200) -> float:
    key = ("rasa_hred_nlg_requests_total", (("kind", kind), ("status", str(status))))
    return samples.get(key, 0.0)


# --- the protocol, through Rasa's own client --------------------------------------------------


async def test_rasa_callback_client_gets_the_hred_reply_for_the_tracker(generator, domain):
    app = create_app(generator, domain, token=TOKEN, max_history=MAX_HISTORY)
    events = conversation("hi there", "hello! how are you?", "what is your favorite movie?")
    tracker = DialogueStateTracker.from_events("ann", events, slots=domain.slots)
    state_events = tracker.current_state(EventVerbosity.ALL)["events"]
    context = dialogue_context(state_events, max_turns=MAX_HISTORY)
    assert context == ["hi there", "hello! how are you?", "what is your favorite movie?"]
    expected = generator.generate([context])[0].text
    async with running(app) as base:
        nlg = CallbackNaturalLanguageGenerator(EndpointConfig(url=f"{base}/nlg", token=TOKEN))
        answer = await nlg.generate(
            "utter_hred", tracker, "rest", domain_responses=domain.responses
        )
        assert answer == {"text": expected}
        # Rasa's action turns it into what the user hears.
        channel = CollectingOutputChannel()
        uttered = await ActionBotResponse("utter_hred").run(channel, nlg, tracker, domain)
        assert [e.text for e in uttered] == [expected]
        # An empty conversation: the model opens it.
        empty = DialogueStateTracker.from_events("ben", [], slots=domain.slots)
        opening = await nlg.generate("utter_hred", empty, "rest")
        assert opening == {"text": generator.generate([[]])[0].text}


async def test_rasa_callback_client_gets_domain_responses_rendered_like_rasa(generator, domain):
    app = create_app(generator, domain, token=TOKEN)
    templated = TemplatedNaturalLanguageGenerator(domain.responses)
    events = [*conversation("recommend me a comedy"), SlotSet("genre", "comedy")]
    tracker = DialogueStateTracker.from_events("ann", events, slots=domain.slots)
    async with running(app) as base:
        nlg = CallbackNaturalLanguageGenerator(EndpointConfig(url=f"{base}/nlg", token=TOKEN))

        async def ask(name: str, channel: str = "rest") -> dict:
            return await nlg.generate(name, tracker, channel, domain_responses=domain.responses)

        # Slots are interpolated (two variations, picked at random as Rasa does).
        recommended = await ask("utter_recommend_movie")
        options = domain.responses["utter_recommend_movie"]
        variants = [r["text"].replace("{genre}", "comedy") for r in options]
        assert recommended["text"] in variants and "{" not in recommended["text"]
        # Channel-specific variations.
        alexa_greeting = await ask("utter_greet", "alexa")
        assert alexa_greeting == {
            "channel": "alexa",
            "text": "Hi! I'm your movie chat buddy. Ask me to recommend a film, or just talk "
            "to me about movies.",
        }
        rest_greeting = await ask("utter_greet")
        assert "channel" not in rest_greeting
        assert rest_greeting["text"] in [r["text"] for r in domain.responses["utter_greet"][:2]]
        # Buttons are kept, exactly as Rasa's own templated NLG gives them.
        help_rest = await ask("utter_help")
        assert help_rest == await templated.generate("utter_help", tracker, "rest")
        assert [b["title"] for b in help_rest["buttons"]] == [
            "Recommend a movie",
            "Let's just chat",
        ]
        help_alexa = await ask("utter_help", "alexa")
        assert help_alexa == await templated.generate("utter_help", tracker, "alexa")
        assert "buttons" not in help_alexa
        # A response the domain lacks: `{}`, and Rasa's action then says nothing.
        assert await ask("utter_no_such_response") == {}
        channel = CollectingOutputChannel()
        events = await ActionBotResponse("utter_no_such_response").run(
            channel, nlg, tracker, domain
        )
        for event in events:
            assert isinstance(event, BotUttered) and event.text is None
            await channel.send_response("ann", event.message())
        assert channel.messages == []
        async with aiohttp.ClientSession() as session:
            samples = await metrics_of(session, base, TOKEN)
    assert requests_count(samples, "template") == 5
    assert requests_count(samples, "unknown") == 2
    assert requests_count(samples, "hred") == 0


async def test_conditional_variations_images_custom_payloads_and_arguments(generator):
    domain = Domain.from_yaml(
        """
version: "3.1"
slots:
  mood:
    type: categorical
    values: [happy, sad]
    mappings: [{type: custom}]
  genre:
    type: text
    mappings: [{type: custom}]
responses:
  utter_mood:
    - condition: [{type: slot, name: mood, value: happy}]
      text: "Glad you're happy!"
    - text: "How are you feeling?"
  utter_poster:
    - text: "Here is a {genre} poster"
      image: "https://example.org/{genre}.png"
  utter_payload:
    - custom: {kind: recommendation, genre: "{genre}", items: ["{genre} one"]}
"""
    )
    app = create_app(generator, domain)
    async with running(app) as base:
        nlg = CallbackNaturalLanguageGenerator(EndpointConfig(url=f"{base}/nlg"))

        def tracker(*events: Any) -> DialogueStateTracker:
            return DialogueStateTracker.from_events("t", list(events), slots=domain.slots)

        happy = tracker(SlotSet("mood", "happy"), SlotSet("genre", "noir"))
        plain = tracker(SlotSet("genre", "noir"))
        mood_happy = await nlg.generate("utter_mood", happy, "rest")
        assert mood_happy["text"] == "Glad you're happy!"
        assert (await nlg.generate("utter_mood", plain, "rest"))["text"] == "How are you feeling?"
        poster = await nlg.generate("utter_poster", plain, "rest")
        assert poster == {"text": "Here is a noir poster", "image": "https://example.org/noir.png"}
        payload = await nlg.generate("utter_payload", plain, "rest")
        assert payload == {
            "custom": {"kind": "recommendation", "genre": "noir", "items": ["noir one"]}
        }
        # Arguments (from a custom action's utter_message) fill placeholders too, as in Rasa;
        # ones named like the renderer's own parameters are ignored, not a crash.
        body = request_body("utter_poster", [], slots={"genre": "noir"})
        body["arguments"] = {"genre": "western", "utter_action": "x", "output_channel": 3}
        async with (
            aiohttp.ClientSession() as session,
            session.post(f"{base}/nlg", json=body) as response,
        ):
            assert response.status == 200
            assert (await response.json())["text"] == "Here is a western poster"


# --- bad input ------------------------------------------------------------------------------

NO_EVENTS = {"events": []}
BAD_INPUTS: list[tuple[str, Any, int]] = [
    ("invalid JSON", b'{"response": "utter_hred",', 400),
    ("empty body", b"", 400),
    ("not UTF-8", b'{"response": "\xff\xfe"}', 400),
    ("deeply nested JSON", b"[" * 100_000 + b"]" * 100_000, 400),
    ("body is a list", [], 400),
    ("body is a string", "utter_hred", 400),
    ("body is null", None, 400),
    ("body is a number", 42, 400),
    ("response missing", {"tracker": NO_EVENTS}, 400),
    ("response not a string", {"response": 7, "tracker": NO_EVENTS}, 400),
    ("response empty", {"response": " ", "tracker": NO_EVENTS}, 400),
    ("tracker missing", {"response": "utter_hred"}, 400),
    ("tracker not an object", {"response": "utter_hred", "tracker": []}, 400),
    ("events missing", {"response": "utter_hred", "tracker": {}}, 400),
    ("events not a list", {"response": "utter_hred", "tracker": {"events": {}}}, 400),
    ("slots not an object", {"response": "x", "tracker": {"events": [], "slots": []}}, 400),
    ("channel a string", {"response": "x", "tracker": NO_EVENTS, "channel": "rest"}, 400),
    ("channel name a number", {"response": "x", "tracker": NO_EVENTS, "channel": {"name": 5}}, 400),
    ("arguments a list", {"response": "x", "tracker": NO_EVENTS, "arguments": [1]}, 400),
]
JUNK_EVENTS = [
    {"event": "no_such_event", "text": "x"},
    5,
    "user",
    None,
    [],
    {"event": 3},
    {"event": "user", "text": 12},
    {"event": "user", "text": "what do you like?"},
]

ODD_BUT_VALID: list[tuple[str, Any]] = [
    ("events of unknown types and junk entries", request_body("utter_hred", JUNK_EVENTS)),
    ("channel and arguments left out", {"response": "utter_greet", "tracker": {"events": []}}),
    ("slots null", {"response": "utter_greet", "tracker": {"events": [], "slots": None}}),
    (
        "a slot value with a lone surrogate",
        request_body("utter_recommend_movie", [], slots={"genre": "\ud800 noir"}),
    ),
    ("an unknown response", request_body("utter_missing", [])),
]


async def test_bad_input_gets_a_clear_4xx_and_the_server_keeps_serving(generator, domain, capsys):
    app = create_app(generator, domain, max_history=MAX_HISTORY)
    good_context = ["hello", "hi, how are you?", "tell me about films"]
    expected = generator.generate([good_context])[0].text
    good = request_body("utter_hred", as_json(conversation(*good_context)))
    table = []
    async with client(app) as (base, session):
        for name, payload, status in BAD_INPUTS:
            data = payload if isinstance(payload, bytes) else json.dumps(payload).encode()
            async with session.post(f"{base}/nlg", data=data) as response:
                answer = await response.json(content_type=None)
                table.append((name, response.status))
                assert response.status == status, (name, answer)
                assert isinstance(answer, dict) and isinstance(answer.get("error"), str), name
        for name, payload in ODD_BUT_VALID:
            async with session.post(f"{base}/nlg", json=payload) as response:
                answer = await response.json(content_type=None)
                table.append((name, response.status))
                assert response.status == 200, (name, answer)
                assert isinstance(answer, dict)
                assert "text" not in answer or isinstance(answer["text"], str), name
        odd_hred = ODD_BUT_VALID[0][1]["tracker"]["events"]
        async with session.post(f"{base}/nlg", json=ODD_BUT_VALID[0][1]) as response:
            reply = (await response.json())["text"]
        assert reply == generator.generate([dialogue_context(odd_hred)])[0].text
        for method, path, status in [("GET", "/nlg", 405), ("POST", "/elsewhere", 404)]:
            async with session.request(method, f"{base}{path}") as response:
                table.append((f"{method} {path}", response.status))
                assert response.status == status
                assert "error" in await response.json(content_type=None)
        async with session.post(f"{base}/nlg", json=good) as response:
            assert response.status == 200
            assert await response.json() == {"text": expected}
        samples = await metrics_of(session, base)
    assert requests_count(samples, "invalid", 400) == len(BAD_INPUTS)
    assert requests_count(samples, "unknown") == 1
    errors = [v for (name, _), v in samples.items() if name == "rasa_hred_nlg_errors_total"]
    assert not any(errors)
    with capsys.disabled():
        print("\nbad input -> status")
        for name, status in table:
            print(f"  {status}  {name}")


async def test_body_limit_is_413_json(generator, domain):
    app = create_app(generator, domain, max_body_bytes=20_000)
    async with client(app) as (base, session):
        huge = request_body("utter_hred", [{"event": "user", "text": "la " * 10_000}])
        async with session.post(f"{base}/nlg", json=huge) as response:
            assert response.status == 413
            assert "error" in await response.json(content_type=None)
        # A Content-Length far over the limit is refused before any body is read.
        host, port = base.removeprefix("http://").split(":")
        reader, writer = await asyncio.open_connection(host, int(port))
        writer.write(
            b"POST /nlg HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
            b"Content-Length: 5000000000\r\n\r\n"
        )
        await writer.drain()
        head = await asyncio.wait_for(reader.read(4096), 10)
        writer.close()
        assert head.startswith(b"HTTP/1.1 413")
        assert b'"error"' in head
        # A malformed Content-Length is a 400, not a 500.
        reader, writer = await asyncio.open_connection(host, int(port))
        writer.write(b"POST /nlg HTTP/1.1\r\nHost: x\r\nContent-Length: lots\r\n\r\n")
        await writer.drain()
        head = await asyncio.wait_for(reader.read(4096), 10)
        writer.close()
        assert head.startswith(b"HTTP/1.1 400"), head[:200]
        # Still serving.
        async with session.post(f"{base}/nlg", json=request_body("utter_iamabot", [])) as response:
            assert response.status == 200
            assert (await response.json())["text"].startswith("I'm a bot")


async def test_thousands_of_events_are_bounded(generator, domain):
    app = create_app(
        generator, domain, max_history=MAX_HISTORY, max_body_bytes=20_000_000, max_events=10_000
    )
    events = []
    for i in range(30_000):
        events.append({"event": "user" if i % 2 == 0 else "bot", "text": f"turn number {i}"})
        events.append({"event": "slot", "name": "genre", "value": str(i)})
    expected = generator.generate([dialogue_context(events[-10_000:], max_turns=MAX_HISTORY)])
    async with client(app) as (base, session):
        started = time.perf_counter()
        async with session.post(f"{base}/nlg", json=request_body("utter_hred", events)) as r:
            assert r.status == 200
            assert await r.json() == {"text": expected[0].text}
        assert time.perf_counter() - started < 10


async def test_a_body_far_over_the_limit_gets_413_not_a_reset(generator, domain):
    """Sanic answers 413 while the client still sends; the server then reads and drops the
    rest (a lingering close) so that the client reads the 413, whatever its HTTP library."""
    app = create_app(generator, domain, max_body_bytes=1_000_000)
    events = [{"event": "user", "text": "la " * 300}] * 6_000
    body = json.dumps(request_body("utter_hred", events)).encode()
    assert len(body) > 5_000_000
    async with client(app) as (base, session):
        async with session.post(f"{base}/nlg", data=body) as response:
            assert response.status == 413
            assert "error" in await response.json(content_type=None)

        def with_urllib() -> int:  # the standard library sends the whole body first
            request = urllib.request.Request(f"{base}/nlg", body)
            with pytest.raises(urllib.error.HTTPError) as refused:
                urllib.request.urlopen(request, timeout=30)
            return refused.value.code

        assert await asyncio.to_thread(with_urllib) == 413
        async with session.post(f"{base}/nlg", json=request_body("utter_iamabot", [])) as response:
            assert response.status == 200  # still serving
        samples = await metrics_of(session, base)
    assert requests_count(samples, "invalid", 413) == 2


HEADERS_NOT_UTF8 = [
    ("Authorization: Bearer \xff\xfe", 401),
    ("Authorization: \xff\xfe s3cret-token", 401),
    ("Host: \xff", 200),
    ("Content-Type: application/\xff", 200),
    ("Connection: \xff", 200),
    ("X-Forwarded-For: \xff", 200),
    ("Transfer-Encoding: \xff", 200),
    ("Expect: \xff", 417),
    ("Content-Length: \xff", 400),
]


async def test_headers_and_urls_that_are_not_utf8_get_4xx_and_no_traceback(
    generator, domain, caplog
):
    app = create_app(generator, domain, token=TOKEN)
    body = json.dumps(request_body("utter_iamabot", [])).encode()
    async with running(app) as base:
        host, port = base.removeprefix("http://").split(":")

        async def status(head: bytes, target: bytes = b"/nlg") -> bytes:
            reader, writer = await asyncio.open_connection(host, int(port))
            length = b"" if b"Content-Length" in head else b"Content-Length: %d\r\n" % len(body)
            writer.write(b"POST %s HTTP/1.1\r\n%s\r\n%s\r\n%s" % (target, head, length, body))
            await writer.drain()
            answer = await asyncio.wait_for(reader.read(65536), 10)
            writer.close()
            assert b'"error"' in answer or b'"text"' in answer, answer
            return answer.split(b" ", 2)[1]

        authorized = f"Authorization: Bearer {TOKEN}".encode()
        for header, expected in HEADERS_NOT_UTF8:
            raw = header.encode("latin-1")
            if not raw.startswith(b"Authorization"):
                raw += b"\r\n" + authorized
            assert await status(raw) == str(expected).encode(), header
        token = f"token={TOKEN}".encode()
        assert await status(b"Host: x", b"/nlg?token=\xff\xfe") == b"400"
        assert await status(b"Host: x", b"/n\xfflg?" + token) == b"400"
        assert await status(b"Host: x", b"/nlg?token=%ff%fe") == b"401"
        assert await status(b"Host: x", b"/nlg?" + token) == b"200"
    assert not [r for r in caplog.records if r.levelname in ("ERROR", "CRITICAL")]


async def test_what_a_client_sent_is_logged_short(generator, domain, caplog):
    app = create_app(generator, domain)
    name = "utter_" + "x" * 300_000 + "\n\ud800"
    async with client(app) as (base, session):
        for _ in range(2):
            body = request_body(name, [], channel="c" * 300_000)
            async with session.post(f"{base}/nlg", json=body) as response:
                assert response.status == 200 and await response.json() == {}
    warnings = [r.getMessage() for r in caplog.records if "has no response" in r.getMessage()]
    assert len(warnings) == 2
    assert all(len(message) < 1_000 for message in warnings)
    assert all("\n" not in message and "(300008 characters)" in message for message in warnings)


def test_the_access_log_says_what_sanic_logs_without_the_token():
    """Sanic leaves the access record's message empty (its extras carry the request), which
    a plain format such as `rasa-hred serve`'s prints as an empty line."""
    import logging

    from rasa_hred.nlg_server.connections import AccessLine

    extra = {"status": 200, "byte": 17, "host": "127.0.0.1:5000"}
    extra["request"] = f"POST http://127.0.0.1:5056/nlg?a=1&token={TOKEN}&b=\ud800"
    record = logging.getLogger("sanic.access").makeRecord(
        "sanic.access", logging.INFO, __file__, 1, "", (), None, extra=extra
    )
    assert AccessLine().filter(record)
    assert record.getMessage() == (
        '127.0.0.1:5000 "POST http://127.0.0.1:5056/nlg?a=1&token=<hidden>&b=\\ud800" 200 17'
    )


async def test_max_events_above_ten_thousand_is_honoured(generator, domain):
    """--max-events is the one cap on the events read: above 10,000 too."""
    without = generator.generate([[]])[0].text
    # a user message that changes the tiny model's reply (which one depends on its training)
    candidates = ["tell me about jaws", "hello", "what is your name?", "do you like movies?"]
    replies = {text: generator.generate([[text]])[0].text for text in candidates}
    text, with_it = next((t, r) for t, r in replies.items() if r != without)
    events = [{"event": "user", "text": text}]
    events += [{"event": "slot", "name": "genre", "value": str(i)} for i in range(15_000)]
    body = request_body("utter_hred", events)
    for max_events, expected in [(20_000, with_it), (10_000, without)]:
        app = create_app(generator, domain, max_events=max_events)
        async with client(app) as (base, session), session.post(f"{base}/nlg", json=body) as r:
            assert await r.json() == {"text": expected}, max_events


async def test_token_query_parameter_or_bearer_header(generator, domain):
    app = create_app(generator, domain, token=TOKEN)
    body = request_body("utter_iamabot", [])
    async with client(app) as (base, session):

        async def status(path: str = "/nlg", **kwargs: Any) -> int:
            if path == "/nlg":
                kwargs["json"] = body
            method = "POST" if path == "/nlg" else "GET"
            async with session.request(method, f"{base}{path}", **kwargs) as r:
                answer = await r.read()
                if r.status == 401:
                    assert "error" in json.loads(answer)
                return r.status

        assert await status(params={"token": TOKEN}) == 200
        assert await status(headers={"Authorization": f"Bearer {TOKEN}"}) == 200
        assert await status(headers={"Authorization": f"bearer {TOKEN}"}) == 200
        assert await status() == 401
        assert await status(params={"token": "wrong"}) == 401
        assert await status(params={"token": ""}) == 401
        assert await status(headers={"Authorization": "Bearer wrong"}) == 401
        assert await status(headers={"Authorization": f"Basic {TOKEN}"}) == 401
        assert await status("/health") == 200
        assert await status("/metrics") == 401
        assert await status("/metrics", params={"token": TOKEN}) == 200
        samples = await metrics_of(session, base, TOKEN)
    assert requests_count(samples, "unauthorized", 401) == 5
    assert requests_count(samples, "template") == 3


async def test_health_reports_the_model_and_batching(generator, domain, tiny_hred):
    app = create_app(generator, domain, model_name=tiny_hred.name)
    async with client(app) as (base, session), session.get(f"{base}/health") as response:
        health = await response.json()
    assert health["model"] == tiny_hred.name
    assert health["device"] == "cpu"
    assert health["vocabulary_size"] == len(generator.vocabulary)
    assert health["uptime_seconds"] >= 0
    assert health["batching"]["enabled"] is True
    assert health["batching"]["max_batch_size"] == 32


async def test_generation_failure_answers_the_fallback_response(tiny_hred, domain):
    broken = ResponseGenerator.load(tiny_hred, device="cpu")
    broken.close()  # agenerate now raises
    app = create_app(broken, domain)
    fallbacks = [r["text"] for r in domain.responses["utter_hred_fallback"]]
    async with client(app) as (base, session):
        async with session.post(f"{base}/nlg", json=request_body("utter_hred", [])) as response:
            assert response.status == 200
            assert (await response.json())["text"] in fallbacks
        samples = await metrics_of(session, base)
    assert samples[("rasa_hred_nlg_errors_total", (("type", "generation"),))] == 1
    assert samples[("rasa_hred_nlg_fallback_replies_total", ())] == 1


# --- concurrency ----------------------------------------------------------------------------


async def test_200_concurrent_conversations_each_get_their_own_reply_in_batches(generator, domain):
    rng = random.Random(7)
    vocabulary = generator.vocabulary
    words = [w for w in (vocabulary.token_of(i) for i in range(7, 400)) if w.isalpha()]
    contexts = []
    for i in range(200):
        turns = [" ".join(rng.choices(words, k=rng.randint(3, 9))) for _ in range(1 + i % 3)]
        contexts.append(turns)
    assert len({tuple(c) for c in contexts}) == 200
    expected = [generator.generate([c])[0].text for c in contexts]
    assert len(set(expected)) >= 5  # replies differ, so a mix-up would show
    app = create_app(generator, domain, max_history=MAX_HISTORY)
    before = generator.stats.to_dict()
    async with running(app) as base:
        connector = aiohttp.TCPConnector(limit=0)
        timeout = aiohttp.ClientTimeout(total=120)
        async with aiohttp.ClientSession(connector=connector, timeout=timeout) as session:

            async def ask(context: list[str]) -> str:
                body = request_body("utter_hred", as_json(conversation(*context)))
                async with session.post(f"{base}/nlg", json=body) as response:
                    assert response.status == 200
                    return (await response.json())["text"]

            replies = await asyncio.wait_for(asyncio.gather(*(ask(c) for c in contexts)), 120)
            samples = await metrics_of(session, base)
    assert replies == expected
    after = generator.stats.to_dict()
    assert after["requests"] - before["requests"] == 200
    assert after["batches"] - before["batches"] < 200  # some batches held several requests
    assert samples[("rasa_hred_nlg_largest_batch", ())] > 1
    # The batch histogram: most contexts were decoded in batches of more than one.
    single = samples[("rasa_hred_nlg_batch_size_bucket", (("le", "1.0"),))]
    total = samples[("rasa_hred_nlg_batch_size_count", ())]
    assert total > single
    assert requests_count(samples, "hred") == 200
    assert samples[("rasa_hred_nlg_generated_replies_total", ())] == 200


# --- archives and the command line -----------------------------------------------------------


def add_bytes(tar: tarfile.TarFile, name: str, data: bytes, **info: Any) -> None:
    member = tarfile.TarInfo(name)
    member.size = len(data)
    for key, value in info.items():
        setattr(member, key, value)
    tar.addfile(member, io.BytesIO(data))


def make_archive(path: Path, model_dir: Path, policy: dict[str, Any], *, extra=None) -> Path:
    """A Rasa-like model archive: a "/" root entry, components/, metadata.json last."""
    resource = "train_rasa_hred.HREDPolicy2"
    node = {
        "uses": "rasa_hred.integration.policy.HREDPolicy",
        "config": policy,
        "resource": {"name": resource, "output_fingerprint": "x"},
    }
    metadata = {"predict_schema": {"nodes": {"run_rasa_hred.HREDPolicy2": node}}}
    with tarfile.open(path, "w:gz") as tar:
        root = tarfile.TarInfo("/")
        root.type = tarfile.DIRTYPE
        tar.addfile(root)
        add_bytes(tar, "components/domain_provider/domain.yml", (REPO / "domain.yml").read_bytes())
        for file in ("config.json", "vocab.json", "model.safetensors"):
            add_bytes(tar, f"components/{resource}/{file}", (model_dir / file).read_bytes())
        for name, data, info in extra or []:
            add_bytes(tar, name, data, **info)
        add_bytes(tar, "metadata.json", json.dumps(metadata).encode())
    return path


def test_policy_model_and_domain_come_out_of_an_archive(tiny_hred, tmp_path):
    archive = make_archive(tmp_path / "demo.tar.gz", tiny_hred, {"max_history": 4})
    extracted = extract_policy_model(archive, tmp_path / "out")
    for file in ("config.json", "vocab.json", "model.safetensors"):
        assert (extracted.directory / file).read_bytes() == (tiny_hred / file).read_bytes()
    assert extracted.policy_config == {"max_history": 4}
    assert Domain.load(str(extracted.domain_file)).responses["utter_hred"]
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == ["domain.yml", "model"]


@pytest.mark.parametrize(
    "member, info",
    [
        ("../escaped.txt", {}),
        ("/tmp/absolute.txt", {}),
        ("components/../../escaped.txt", {}),
    ],
)
def test_archives_with_unsafe_members_are_refused(tiny_hred, tmp_path, member, info):
    archive = make_archive(tmp_path / "evil.tar.gz", tiny_hred, {}, extra=[(member, b"x", info)])
    with pytest.raises(UserError, match="unsafe member"):
        extract_policy_model(archive, tmp_path / "out" / "deep")
    assert not (tmp_path / "escaped.txt").exists()
    assert not (tmp_path / "out" / "deep" / "model").exists()


def test_a_linked_model_file_is_refused(tiny_hred, tmp_path):
    archive = tmp_path / "link.tar.gz"
    with tarfile.open(archive, "w:gz") as tar:
        for file in ("config.json", "vocab.json"):
            add_bytes(tar, f"components/p/{file}", (tiny_hred / file).read_bytes())
        link = tarfile.TarInfo("components/p/model.safetensors")
        link.type = tarfile.SYMTYPE
        link.linkname = "/etc/passwd"
        tar.addfile(link)
    with pytest.raises(UserError, match="not a regular file"):
        extract_policy_model(archive, tmp_path / "out")
    with pytest.raises(UserError, match="not a readable"):
        extract_policy_model(REPO / "domain.yml", tmp_path / "out2")


def test_nlg_config_switches_the_policy_to_the_server(tiny_hred, tmp_path):
    archive = make_archive(tmp_path / "demo.tar.gz", tiny_hred, {"max_history": 6})
    out = tmp_path / "nlg"
    assert write_nlg_config(archive, REPO / "config.yml", out) == out / "config.yml"
    config = yaml.safe_load((out / "config.yml").read_text())
    original = yaml.safe_load((REPO / "config.yml").read_text())
    (hred,) = [p for p in config["policies"] if p["name"] == "rasa_hred.HREDPolicy"]
    (before,) = [p for p in original["policies"] if p["name"] == "rasa_hred.HREDPolicy"]
    assert hred == before | {"generate": "nlg_server", "model": str(out / "hred")}
    assert config["pipeline"] == original["pipeline"]
    assert ResponseGenerator.load(out / "hred", device="cpu").vocabulary


def test_the_server_generates_with_the_archived_policys_settings(tiny_hred, tmp_path):
    """From an archive, the generator is the one HREDPolicy.load builds (its max_history and
    decoding), and the policy's own response names are answered."""
    policy = {
        "max_history": 4,
        "decoding": {"beam_size": 3, "max_length": 12},
        "response": "utter_chat",
        "fallback_response": "utter_sorry",
    }
    archive = make_archive(tmp_path / "demo.tar.gz", tiny_hred, policy)
    options = ServeOptions(model=archive, device="cpu", decoding={"max_length": 9})
    settings = resolve_settings(options, tmp_path / "scratch")
    assert settings.responses == ["utter_chat"] and settings.fallback_response == "utter_sorry"
    assert settings.max_history == 4 and settings.model_name == "demo"
    generator = build_generator(options, settings)
    try:
        assert generator.max_turns == 4
        assert generator.decoding.beam_size == 3  # the policy's decoding
        assert generator.decoding.max_length == 9  # the server's override on top
        assert generator.batching is True
    finally:
        generator.close()


def test_a_bad_decoding_config_in_the_archive_is_a_user_error(tiny_hred, tmp_path):
    archive = make_archive(tmp_path / "demo.tar.gz", tiny_hred, {"decoding": {"beams": 3}})
    options = ServeOptions(model=archive, device="cpu")
    with pytest.raises(UserError, match=r"unknown decoding option.*beams"):
        settings = resolve_settings(options, tmp_path / "scratch")  # the archive's policy
        build_generator(options, settings)


def _get(url: str) -> dict:
    with urllib.request.urlopen(url, timeout=5) as response:
        return json.loads(response.read())


@pytest.mark.slow
def test_sigterm_lets_the_request_in_flight_finish(tiny_hred, tmp_path):
    """`rasa-hred serve` from an archive (domain and max_history from it); a slow request
    (beam 64, 600 forced tokens) is in flight when SIGTERM arrives: it still gets its 200,
    then the process exits 0."""
    archive = make_archive(tmp_path / "demo.tar.gz", tiny_hred, {"max_history": 4})
    port = free_port()
    log = (tmp_path / "serve.log").open("w")
    slow = json.dumps({"force_length": 600, "max_length": 600})
    command = [BIN / "rasa-hred", "serve", "--model", archive, "--port", str(port)]
    command += ["--device", "cpu", "--threads", "1", "--beam-size", "64", "--decoding", slow]
    process = subprocess.Popen(command, env=RASA_ENV, stdout=log, stderr=subprocess.STDOUT)
    base = f"http://127.0.0.1:{port}"
    result: dict[str, Any] = {}
    try:
        deadline = time.monotonic() + 120
        while True:
            assert process.poll() is None, (tmp_path / "serve.log").read_text()[-3000:]
            try:
                health = _get(f"{base}/health")
                break
            except (urllib.error.URLError, ConnectionError, OSError):
                assert time.monotonic() < deadline, "the server did not start"
                time.sleep(0.3)
        assert health["max_history"] == 4 and health["model"] == "demo"

        def slow_request() -> None:
            body = json.dumps(request_body("utter_hred", [{"event": "user", "text": "hi"}]))
            request = urllib.request.Request(
                f"{base}/nlg", body.encode(), {"Content-Type": "application/json"}
            )
            started = time.monotonic()
            try:
                with urllib.request.urlopen(request, timeout=120) as response:
                    result["status"] = response.status
                    result["body"] = json.loads(response.read())
            except Exception as error:  # reported by the assertions below
                result["error"] = repr(error)
            result["seconds"] = time.monotonic() - started

        thread = threading.Thread(target=slow_request)
        thread.start()
        deadline = time.monotonic() + 30
        while _get(f"{base}/health")["in_flight"] < 1:
            assert time.monotonic() < deadline and thread.is_alive(), result
            time.sleep(0.02)
        process.send_signal(signal.SIGTERM)
        terminated = time.monotonic()
        thread.join(timeout=120)
        assert result.get("status") == 200, result
        assert isinstance(result["body"]["text"], str) and result["body"]["text"]
        assert process.wait(timeout=60) == 0
        assert time.monotonic() - terminated > 0.05  # it really was still working
        with pytest.raises((urllib.error.URLError, ConnectionError, OSError)):
            _get(f"{base}/health")
    finally:
        if process.poll() is None:
            process.kill()
            process.wait(timeout=10)
        log.close()
    print(f"\nslow request: {result['seconds']:.2f} s; SIGTERM came while it ran")


def test_serve_refuses_bad_settings_clearly(tmp_path):
    from rasa_hred.cli import main

    with pytest.raises(SystemExit):
        main(["serve"])  # --model is required
    assert main(["serve", "--model", str(tmp_path / "nothing")]) == 2
    (tmp_path / "model").mkdir()
    assert main(["serve", "--model", str(tmp_path / "model")]) == 2  # no --domain
    assert main(["serve", "--model", str(tmp_path), "--max-body-bytes", "0"]) == 2


def test_unique_app_names(generator, domain):
    names = {create_app(generator, domain).name for _ in range(3)}
    assert len(names) == 3 and all(n.startswith("rasa_hred_nlg_") for n in names)
