"""Trackers of any length: a conversation of 20,000 turns, serialized as Rasa 3.6 posts it
(``support.trackers``, about 46 MB), is answered by the NLG server, and the policy's
tracker-to-context path reads only its last turns.

The request reader (``nlg_server.protocol``) decodes the events one at a time and keeps the
last ``max_events``; it must read exactly what ``json.loads`` reads, which a differential test
checks on random and broken documents.
"""

from __future__ import annotations

import asyncio
import json
import random
import statistics
import time
from collections import deque
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from rasa.core.nlg.callback import nlg_request_format
from rasa.shared.core.domain import Domain
from rasa.shared.core.trackers import DialogueStateTracker
from support import REPO
from support.nlg import nlg_server_process
from support.trackers import bot_text, long_conversation, nlg_body, user_text

from rasa_hred.integration.context import dialogue_context, tracker_context
from rasa_hred.nlg_server import defaults
from rasa_hred.nlg_server.protocol import BadRequest, RawEvents, _read_body, parse_request

TURNS = 20_000
MAX_HISTORY = 10


def expected_context(turns: int, last: int = MAX_HISTORY) -> list[str]:
    """The last ``last`` turn texts of ``long_conversation(turns)``."""
    texts = [text for turn in range(turns) for text in (user_text(turn), bot_text(turn))]
    return texts[-last:]


def test_the_long_conversation_is_what_rasa_posts() -> None:
    events = long_conversation(3, sessions=1)
    domain = Domain.load(str(REPO / "domain.yml"))
    tracker = DialogueStateTracker.from_events("long-talker", events, slots=domain.slots)
    rasa = json.loads(json.dumps(nlg_request_format("utter_hred", tracker, "rest")))
    ours = json.loads(nlg_body(events))
    assert ours["tracker"]["events"] == rasa["tracker"]["events"]
    assert set(ours["tracker"]) == set(rasa["tracker"])
    assert set(ours) == set(rasa)
    user = next(e for e in ours["tracker"]["events"] if e["event"] == "user")
    assert len(user["parse_data"]["intent_ranking"]) == 10 and user["parse_data"]["entities"]


# --- the request reader reads what json.loads reads -----------------------------------------


def random_json(rng: random.Random, depth: int = 0) -> Any:
    kinds = ["str", "int", "float", "bool", "null"] + (["list", "dict"] * 2 if depth < 4 else [])
    kind = rng.choice(kinds)
    if kind == "str":
        return rng.choice(["", "x", "é ü", "\ud800", '"quoted"', "back\\slash", "tab\there", "}]"])
    if kind == "int":
        return rng.choice([0, -1, 10**30, 7])
    if kind == "float":
        return rng.choice([0.5, -1e-300, 1e300, float("nan"), float("inf")])
    if kind == "bool":
        return rng.random() < 0.5
    if kind == "null":
        return None
    if kind == "list":
        return [random_json(rng, depth + 1) for _ in range(rng.randint(0, 4))]
    return {rng.choice(["events", "tracker", "a", "é"]): random_json(rng, depth + 1) for _ in "ab"}


def random_request(rng: random.Random) -> Any:
    events = [random_json(rng) for _ in range(rng.randint(0, 6))]
    tracker = {"events": events, "slots": random_json(rng), "tracker": random_json(rng)}
    body: dict[str, Any] = {"response": "utter_x", "tracker": tracker, "extra": random_json(rng)}
    if rng.random() < 0.2:
        body = {"tracker": body, "response": body}  # tracker and events in odd places
    return rng.choice([body, body, random_json(rng)])


def as_text(value: Any, rng: random.Random) -> str:
    indent = rng.choice([None, None, 0, 2, "\t"])
    separators = rng.choice([None, (",", ":"), (" ,\n", " :\r\n ")])
    text = json.dumps(value, indent=indent, separators=separators, ensure_ascii=rng.random() < 0.5)
    return rng.choice(["", " ", "\n\t "]) + text + rng.choice(["", " ", "\r\n"])


def read_like_json_loads(text: str) -> Any:
    """What ``_read_body`` gives for ``text`` sent as UTF-8, with the events as a list (as
    json.loads has them)."""
    value = _read_body(text.encode("utf-8", "surrogatepass"), max_events=1_000)
    tracker = value.get("tracker") if isinstance(value, dict) else None
    if isinstance(tracker, dict) and isinstance(tracker.get("events"), (deque, RawEvents)):
        tracker["events"] = list(tracker["events"])
    return value


def json_loads_of_body(text: str) -> Any:
    """The reference: ``json.loads`` of the body's UTF-8 text (a lone surrogate, which
    ``json.dumps(ensure_ascii=False)`` writes as itself, is not UTF-8: both refuse it)."""
    return json.loads(text.encode("utf-8", "surrogatepass").decode("utf-8"))


def same_reading(text: str) -> None:
    """``_read_body`` and the reference read ``text`` alike: the same value (the members
    ``parse_request`` reads), or both refuse it."""
    try:
        expected = json_loads_of_body(text)
    except ValueError:
        with pytest.raises(ValueError):
            read_like_json_loads(text)
        return
    # repr() compares NaN with NaN, which == does not.
    assert repr(read_members(read_like_json_loads(text))) == repr(read_members(expected))


def read_members(value: Any) -> Any:
    """The members ``parse_request`` reads, where ``value`` has the shape Rasa sends (the
    reader checks the others, then skips them); any other ``value`` whole."""
    tracker = value.get("tracker") if isinstance(value, dict) else None
    if not (isinstance(tracker, dict) and isinstance(tracker.get("events"), list)):
        return value
    return {key: value.get(key) for key in ("response", "channel", "arguments")} | {
        "tracker": {key: tracker.get(key) for key in ("events", "slots")}
    }


@pytest.mark.parametrize("seed", range(300))
def test_the_reader_reads_what_json_loads_reads(seed: int) -> None:
    rng = random.Random(seed)
    text = as_text(random_request(rng), rng)
    same_reading(text)
    for _ in range(5):  # broken documents: both refuse them, or read them alike
        cut = rng.randrange(len(text))
        same_reading(rng.choice([text[:cut], text[:cut] + rng.choice('{}[],:"x') + text[cut:]]))


@pytest.mark.parametrize(
    "text",
    [
        '{"tracker": {"events": [NaN, -Infinity]}, "response": "x"}',  # json's extensions
        '{"tracker": {"events": ["\\ud800", {"\\udc00": 1}]}}',  # lone surrogates, escaped
        '{"tracker": {"events": [1]}, "tracker": {"events": [2]}}',  # the last one counts
        '{"tracker": {"events": [1], "events": [2, 3]}}',
        '{"tracker": 5, "tracker": {"events": [4]}}',
        '{"tracker": {"events": [5]}, "tracker": 5}',
        '{"tracker": {"events": [10000000000000000000000000000, 1e999, -0, 1E-400]}}',
        '{"tracker": {"events": ["a\x01b"]}}',  # a raw control character
        '{"tracker": {"events": [01]}}',
        '{"tracker": {"events": [{"a": 1,}]}}',
        '{"tracker": {"events": []}, "x": [1,]}',  # a skipped member is still checked
        '{"tracker": {"events": []}} x',
        '\ufeff{"tracker": {"events": []}}',
        '{"tracker": {"events": ["é", "\\u00e9"]}, "slots": {"é": "ü"}}',
    ],
)
def test_the_reader_reads_edge_cases_as_json_loads_does(text: str) -> None:
    same_reading(text)


def test_the_reader_checks_the_utf8_of_events_it_does_not_decode() -> None:
    body = b'{"response": "utter_x", "tracker": {"events": ["\xff", {"event": "user"}]}}'
    with pytest.raises(BadRequest, match="not UTF-8"):
        parse_request(body, max_events=1)


def test_the_reader_keeps_the_last_max_events_and_reports_json_errors() -> None:
    events = [{"event": "user", "text": str(i)} for i in range(30_000)]
    body = json.dumps({"response": "utter_hred", "tracker": {"events": events}}).encode()
    assert list(parse_request(body, max_events=25_000).events) == events[-25_000:]
    assert list(parse_request(body, max_events=0).events) == []
    assert list(parse_request(body, max_events=40_000).events) == events
    with pytest.raises(BadRequest, match=r"invalid JSON: Expecting ',' delimiter: line 1"):
        parse_request(body[:-2] + b" 1}", max_events=10)
    with pytest.raises(BadRequest, match="nested too deeply"):
        parse_request(b'{"tracker": {"events": [' + b"[" * 100_000 + b"]}}", max_events=10)


# --- 20,000 turns ----------------------------------------------------------------------------


def test_tracker_context_of_a_20000_turn_tracker_reads_only_its_end() -> None:
    """The policy's path (and the in-process NLG's): a live tracker of 20,000 turns."""
    events = long_conversation(TURNS)
    tracker = DialogueStateTracker.from_events("long-talker", events)
    assert len(tracker.events) > 100_000
    started = time.perf_counter()
    context = tracker_context(tracker, max_turns=MAX_HISTORY)
    seconds = time.perf_counter() - started
    assert context == expected_context(TURNS)
    assert seconds < 0.5  # a hang guard; it reads about 50 of the events
    started = time.perf_counter()
    everything = tracker_context(tracker)
    all_seconds = time.perf_counter() - started
    assert len(everything) == 2 * TURNS and everything[-MAX_HISTORY:] == context
    print(
        f"\ntracker_context of {len(tracker.events):,} events: {seconds * 1000:.2f} ms for the "
        f"last {MAX_HISTORY} turns, {all_seconds * 1000:.0f} ms for all {2 * TURNS:,}"
    )


@pytest.mark.slow
def test_a_20000_turn_tracker_is_answered(tiny_hred: Path, tmp_path: Path) -> None:
    """A `rasa-hred serve`-like server process with the default limits answers a 20,000-turn
    conversation (46 MB) with the reply to its last turns; p99 latency and the server's peak
    RSS are printed, with the latency of /health (another client) meanwhile."""
    body = nlg_body(long_conversation(TURNS))
    assert defaults.MAX_BODY_BYTES > len(body) > 30_000_000
    # The same last turns, alone: the reply the long request must get.
    turns = [
        {"event": "user" if i % 2 == 0 else "bot", "text": text}
        for i, text in enumerate(expected_context(TURNS))
    ]
    short = {"response": "utter_hred", "tracker": {"events": turns}}
    latencies: list[float] = []
    health: list[float] = []

    async def measure(url: str, requests: int = 5) -> None:
        timeout = aiohttp.ClientTimeout(total=120)
        async with aiohttp.ClientSession(timeout=timeout) as session:
            async with session.post(f"{url}/nlg", json=short) as response:
                expected = (await response.json())["text"]

            async def other_client(done: asyncio.Event) -> None:
                while not done.is_set():
                    started = time.perf_counter()
                    async with session.get(f"{url}/health") as response:
                        assert response.status == 200
                    health.append(time.perf_counter() - started)
                    await asyncio.sleep(0.02)

            for _ in range(requests):
                done = asyncio.Event()
                probe = asyncio.create_task(other_client(done))
                started = time.perf_counter()
                async with session.post(f"{url}/nlg", data=body) as response:
                    assert response.status == 200
                    assert await response.json() == {"text": expected}
                latencies.append(time.perf_counter() - started)
                done.set()
                await probe

    with nlg_server_process(tiny_hred, tmp_path / "server.log", max_history=MAX_HISTORY) as server:
        idle_rss = server.peak_rss_mb()
        asyncio.run(measure(server.url))
        peak_rss = server.peak_rss_mb()
        assert "Traceback" not in server.log_text()
    assert peak_rss - idle_rss < 1_000  # a generous bound; the figures are printed
    print(
        f"\n{TURNS:,} turns ({len(body) / 1e6:.1f} MB): p50 {statistics.median(latencies):.2f} s,"
        f" p99 {max(latencies):.2f} s over {len(latencies)} requests; server peak RSS "
        f"{idle_rss:.0f} MB idle, {peak_rss:.0f} MB after; /health meanwhile: max "
        f"{max(health) * 1000:.0f} ms, median {statistics.median(health) * 1000:.0f} ms"
    )


def test_dialogue_context_of_the_parsed_request_is_the_conversations_end() -> None:
    body = nlg_body(long_conversation(2_000, sessions=2))
    request = parse_request(body, max_events=defaults.MAX_EVENTS)
    assert len(request.events) == defaults.MAX_EVENTS
    assert dialogue_context(request.events, max_turns=MAX_HISTORY) == expected_context(2_000)
