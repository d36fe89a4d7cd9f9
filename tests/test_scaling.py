"""Two `rasa run` replicas of the demo on a real Redis (Rasa's Redis tracker store and our
atomic Redis lock store), as docs/scaling.md describes them.

A client drives conversations that change replica on every message, sends two messages of
one conversation to both replicas at once, and, under load, kills one replica with SIGKILL
while it holds a conversation's lock. The trackers must hold every message in order, and every
HRED reply must be the HRED's answer to the conversation as the tracker held it (so a replica
saw what the other one served). Run with ``pytest -s`` to see the client's counts.
"""

from __future__ import annotations

import contextlib
import http.client
import json
import os
import signal
import subprocess
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
import redis
from rasa.core.lock_store import DEFAULT_REDIS_LOCK_STORE_KEY_PREFIX as LOCK_KEY_PREFIX
from support import BIN, RASA_ENV
from support.redis import running_redis
from support.servers import free_port, stop_process

from rasa_hred.integration.archive import extract_policy_model
from rasa_hred.integration.context import dialogue_context
from rasa_hred.integration.loading import load_policy_generator, with_defaults
from rasa_hred.serving.generator import ResponseGenerator

CONVERSATIONS = 20
MESSAGES = 6  # per conversation; the demo model's HRED sees the last 6 turns
PAIRS = 4  # conversations whose two messages go to both replicas at once
WORKERS = 4  # concurrent client requests
KILL_AFTER = 50  # answered messages of the load before one replica is killed
# Rasa's ticket lock lifetime (TICKET_LOCK_LIFETIME, default 60 s). A conversation whose
# message was in flight on the killed replica waits this long for its abandoned lock.
LOCK_LIFETIME_S = 20
REQUEST_TIMEOUT_S = 3 * LOCK_LIFETIME_S  # a message that waits longer hangs
#: The lock store the replicas use (endpoints.yml ``lock_store: type:``), as in
#: endpoints-scaled.yml.
LOCK_STORE = "rasa_hred.integration.lock_store.AtomicRedisLockStore"
# Chit-chat lines from the demo's NLU data: the HRED answers most of them.
LINES = [
    "what's your favourite film of all time?",
    "have you watched the Lord of the Rings?",
    "who is the greatest actress ever?",
    "do you think Tarantino is overrated?",
    "I watched Titanic again last night",
    "movies used to be better in the eighties",
    "what's the funniest movie you know?",
    "is Casablanca worth watching?",
    "which Bond is the best Bond?",
    "do you like Disney films?",
    "what do you think about the Oscars?",
    "I fell asleep during the movie yesterday",
]

pytestmark = pytest.mark.slow  # Redis and `rasa run` processes


def test_redis_helper_serves_on_loopback_and_stops(tmp_path: Path) -> None:
    with running_redis(tmp_path) as port:
        client = redis.Redis(host="127.0.0.1", port=port)
        client.set("greeting", "hello")
        assert client.get("greeting") == b"hello"
        client.close()
    with pytest.raises(redis.ConnectionError):
        redis.Redis(host="127.0.0.1", port=port, socket_connect_timeout=2).ping()


# --- replicas and client ----------------------------------------------------------------------


@dataclass
class Replica:
    url: str
    process: subprocess.Popen[bytes]


@contextlib.contextmanager
def rasa_replicas(
    model: Path, cwd: Path, count: int, *extra: str, startup_timeout: float = 480
) -> Iterator[list[Replica]]:
    """``count`` `rasa run` processes of ``model`` on free loopback ports, started together
    (their start-up is the slow part); logs in ``cwd/rasa-<port>.log``."""
    env = RASA_ENV | {"TICKET_LOCK_LIFETIME": str(LOCK_LIFETIME_S)}
    replicas: list[Replica] = []
    logs = []
    try:
        for _ in range(count):
            port = free_port()
            logs.append((cwd / f"rasa-{port}.log").open("w"))
            command = [
                str(BIN / "rasa"),
                "run",
                "-m",
                str(model),
                "-i",
                "127.0.0.1",
                "-p",
                str(port),
            ]
            process = subprocess.Popen(
                [*command, *extra], cwd=cwd, env=env, stdout=logs[-1], stderr=subprocess.STDOUT
            )
            replicas.append(Replica(f"http://127.0.0.1:{port}", process))
        deadline = time.monotonic() + startup_timeout
        for replica, log in zip(replicas, logs):
            while True:
                if replica.process.poll() is not None:
                    raise AssertionError(f"rasa run exited: {Path(log.name).read_text()[-3000:]}")
                try:
                    with urllib.request.urlopen(replica.url, timeout=2):
                        break
                except (urllib.error.URLError, ConnectionError, TimeoutError):
                    pass
                assert time.monotonic() < deadline, "rasa run did not start in time"
                time.sleep(0.5)
        yield replicas
    finally:
        for replica in replicas:
            replica.process.terminate()
        for replica in replicas:  # both told to stop first, then each waited for
            stop_process(replica.process, timeout=30)
        for log in logs:
            log.close()


def post(url: str, payload: dict[str, Any]) -> Any:
    request = urllib.request.Request(
        url, json.dumps(payload).encode(), {"Content-Type": "application/json"}
    )
    with urllib.request.urlopen(request, timeout=REQUEST_TIMEOUT_S) as response:
        return json.loads(response.read())


def get(url: str) -> Any:
    with urllib.request.urlopen(url, timeout=60) as response:
        return json.loads(response.read())


def unreachable(error: Exception) -> bool:
    """Whether ``error`` says that nothing listens or that the replica died mid-request (a
    slow answer is not that: the client does not fail over from a replica that hangs)."""
    reason = error.reason if isinstance(error, urllib.error.URLError) else error
    return isinstance(reason, (ConnectionError, http.client.HTTPException))


@dataclass
class Client:
    """A client in front of the replicas, like a load balancer: it sends each message to the
    replica it is given, and when that one cannot be reached it marks it down and sends the
    message to the other. A message is answered when a replica returns 200 with a reply
    (Rasa's REST channel answers 200 with no messages when handling failed); anything else,
    a timeout included, is an error, and the message goes to the other replica if it is up."""

    urls: list[str]
    victim: int  # the replica to kill
    kill_after: int  # answered messages
    kill: Callable[[str], None]  # given the conversation of a message sent to the victim
    down: set[int] = field(default_factory=set)
    sent: int = 0
    answered: int = 0
    retried: int = 0
    errors: int = 0
    errors_after_kill: int = 0
    slowest_retry_s: float = 0.0
    slowest_s: float = 0.0  # of the messages not retried
    killing: bool = False  # kill() was started
    killed: bool = False  # the victim is dead
    answered_before_kill: set[tuple[str, str]] = field(default_factory=set)
    retried_messages: set[tuple[str, str]] = field(default_factory=set)
    _answered: set[tuple[str, str]] = field(default_factory=set)
    _lock: threading.Lock = field(default_factory=threading.Lock)

    def say(self, sender: str, text: str, replica: int) -> list[dict[str, Any]] | None:
        with self._lock:
            self.sent += 1
        start = time.monotonic()
        for index in (replica, 1 - replica):
            if index in self.down:
                continue
            url = f"{self.urls[index]}/webhooks/rest/webhook"
            with self._lock:
                kill = index == self.victim and not self.killing
                kill = kill and self.answered >= self.kill_after
                self.killing |= kill
            if kill:
                threading.Thread(target=self.kill, args=(sender,), daemon=True).start()
            try:
                replies = post(url, {"sender": sender, "message": text})
            except urllib.error.HTTPError:
                replies = None
            except (urllib.error.URLError, OSError, http.client.HTTPException) as error:
                if not unreachable(error):  # no answer within REQUEST_TIMEOUT_S: an error
                    replies = None
                else:
                    with self._lock:
                        self.down.add(index)
                        self.retried += 1
                        self.retried_messages.add((sender, text))
                    continue
            with self._lock:
                if not replies:
                    self.errors += 1
                    self.errors_after_kill += self.killed
                    continue
                self.answered += 1
                self._answered.add((sender, text))
                took = time.monotonic() - start
                if (sender, text) in self.retried_messages:
                    self.slowest_retry_s = max(self.slowest_retry_s, took)
                else:
                    self.slowest_s = max(self.slowest_s, took)
            return list(replies)
        return None

    def mark_killed(self) -> None:
        with self._lock:
            self.killed = True
            self.answered_before_kill = set(self._answered)

    def say_at_once(self, sender: str, texts: tuple[str, str]) -> list[Any]:
        """``texts[i]`` to replica ``i``, both sent at the same moment."""
        barrier = threading.Barrier(2)

        def send(replica: int) -> Any:
            barrier.wait(timeout=30)
            return self.say(sender, texts[replica], replica)

        with ThreadPoolExecutor(2) as pool:
            return list(pool.map(send, (0, 1)))


# --- checks ------------------------------------------------------------------------------------


def user_texts(events: list[dict[str, Any]]) -> list[str]:
    return [e["text"] for e in events if e["event"] == "user"]


def without_retried_copies(texts: list[str], retried: set[str]) -> list[str]:
    """A message whose replica died after saving it but before answering was sent again:
    its second copy follows the first."""
    return [t for i, t in enumerate(texts) if not (i and t == texts[i - 1] and t in retried)]


def check_hred_replies(
    events: list[dict[str, Any]], generator: ResponseGenerator, max_history: int
) -> int:
    """Every HRED reply in ``events`` is the HRED's answer to the conversation before it;
    returns how many there were."""
    checked = 0
    for index, event in enumerate(events):
        if event["event"] != "action" or event["name"] != "utter_hred":
            continue
        bot = next(e for e in events[index:] if e["event"] == "bot")
        context = dialogue_context(events[:index], max_turns=max_history)
        assert bot["text"] == generator.generate([context])[0].text, context
        checked += 1
    return checked


# --- the end-to-end test -----------------------------------------------------------------------


# Two replicas start for minutes on 2 busy cores, after the session's demo model is trained.
@pytest.mark.timeout(1500)
def test_two_replicas_on_redis_share_conversations_and_survive_a_sigkill(
    demo_model: Path, redis_server: int, tmp_path: Path
) -> None:
    endpoints = tmp_path / "endpoints.yml"
    endpoints.write_text(
        "tracker_store:\n  type: redis\n  url: 127.0.0.1\n"
        f"  port: {redis_server}\n  db: 0\n"
        f"lock_store:\n  type: {LOCK_STORE}\n  url: 127.0.0.1\n"
        f"  port: {redis_server}\n  db: 1\n"
    )
    (tmp_path / "credentials.yml").write_text("rest:\n")
    extracted = extract_policy_model(demo_model, tmp_path / "policy")
    config = with_defaults(extracted.policy_config)
    max_history = config["max_history"]
    texts = {
        f"user-{c}": [LINES[(c + n) % len(LINES)] for n in range(MESSAGES)]
        for c in range(CONVERSATIONS)
    }
    options = ["--enable-api", "--endpoints", str(endpoints), "--credentials", "credentials.yml"]
    started = time.monotonic()
    with rasa_replicas(demo_model, tmp_path, 2, *options) as replicas:
        victim = replicas[1]
        locks = redis.Redis(host="127.0.0.1", port=redis_server, db=1)

        def kill_holding_lock(sender: str) -> None:
            """SIGKILL the victim as soon as it holds ``sender``'s lock: it dies in the middle
            of a message and leaves the lock behind."""
            deadline = time.monotonic() + 30
            while not locks.exists(LOCK_KEY_PREFIX + sender) and time.monotonic() < deadline:
                time.sleep(0.002)
            os.kill(victim.process.pid, signal.SIGKILL)
            client.mark_killed()

        client = Client(
            [replica.url for replica in replicas],
            victim=1,
            kill_after=2 * PAIRS + KILL_AFTER,
            kill=kill_holding_lock,
        )
        ready = time.monotonic()

        # Two messages of one conversation at once, one to each replica: the lock store
        # makes one wait for the other.
        pairs = {f"pair-{p}": (LINES[2 * p], LINES[2 * p + 1]) for p in range(PAIRS)}
        for sender, both in pairs.items():
            assert all(client.say_at_once(sender, both))

        # The load: each conversation changes replica on every message. Once KILL_AFTER of
        # these messages were answered, the next message to the victim kills it mid-way.
        def say(sender: str, n: int) -> None:
            client.say(sender, texts[sender][n], (int(sender.split("-")[1]) + n) % 2)

        with ThreadPoolExecutor(WORKERS) as pool:
            for n in range(MESSAGES):
                list(pool.map(say, texts, [n] * CONVERSATIONS))
        loaded = time.monotonic()
        survivor = replicas[0].url
        trackers = {
            sender: get(f"{survivor}/conversations/{sender}/tracker")["events"]
            for sender in [*pairs, *texts]
        }
        assert victim.process.wait(timeout=10) == -signal.SIGKILL
        assert replicas[0].process.poll() is None

    total = 2 * PAIRS + CONVERSATIONS * MESSAGES
    lost = client.sent - client.answered
    print(
        f"\nreplicas: sent {client.sent}, answered {client.answered}, retried {client.retried},"
        f" lost {lost}, errors {client.errors} ({client.errors_after_kill} after the kill),"
        f" answered before the kill {len(client.answered_before_kill)},"
        f" slowest retried message {client.slowest_retry_s:.1f} s,"
        f" slowest other message {client.slowest_s:.1f} s;"
        f" start-up {ready - started:.0f} s, load {loaded - ready:.0f} s"
    )
    assert client.sent == total and lost == 0 and client.errors == 0
    assert client.killed and client.down == {1} and client.retried >= 1

    for sender, (first, second) in pairs.items():
        events = trackers[sender]
        assert sorted(user_texts(events)) == sorted([first, second])
        # One after the other: the first message's reply and listen come before the second.
        users = [i for i, e in enumerate(events) if e["event"] == "user"]
        between = [e["event"] for e in events[users[0] : users[1]]]
        assert "bot" in between and between[-1] == "action", between
    for sender, sent in texts.items():
        held = user_texts(trackers[sender])
        retried = {text for s, text in client.retried_messages if s == sender}
        assert without_retried_copies(held, retried) == sent, sender
        assert {t for s, t in client.answered_before_kill if s == sender} <= set(held)
    generator = load_policy_generator(extracted.directory, config)
    try:
        hred_replies = sum(
            check_hred_replies(events, generator, max_history) for events in trackers.values()
        )
    finally:
        generator.close()
    print(f"HRED replies checked against their context: {hred_replies}")
    assert hred_replies >= total // 2
