"""Benchmark the Alexa channel: request verification, round trips, concurrent users.

    .venv/bin/python scripts/bench_alexa.py --model models/demo.tar.gz --json

Uses the throw-away test PKI of tests/support/alexa_pki.py (root -> intermediate -> leaf, real RSA
2048 signatures; test-only, hence a script and not a ``rasa-hred bench`` command):

(a) ``verify``: the cost of ``RequestVerifier.verify`` per request, in process, with the chain
    in a ``certificate_cache_dir`` and the test root as ``trusted_roots``: the first call
    (reads the cache file and validates the chain) and then ``--verify-requests`` distinct
    signed requests (chain cached in memory: signature, timestamp and skill id checks, JSON
    parsing). Bodies are signed before the timer starts.
(b) ``sequential``: ``rasa run`` with the connector configured as tests/test_alexa_e2e.py
    does (credentials naming ``alexa_connector.AlexaConnector`` with ``skill_id``,
    ``trusted_roots``, ``certificate_cache_dir``; plus ``rest:``), and ``--sequential``
    rounds of three requests, one after another, each from a fresh user: a signed
    IntentRequest answered by the HRED (chit-chat), one answered by a rule ("hello"), and the
    same "hello" over the REST channel. ``alexa_overhead_ms_p50`` (Alexa rule - REST rule)
    is what the channel (verification, envelope, SSML) adds to a turn. Trackers confirm which
    policy answered each sample.
(c) ``load``: ``--users`` concurrent Alexa users (distinct userIds) for ``--seconds``, each
    sending signed IntentRequests in a loop (fresh timestamp, body signed per request; up to
    ``--max-requests-per-user``). Errors are non-200 replies and replies without
    ``outputSpeech``; ``timeout_replies`` counts the channel's "still thinking" answers (its
    ``reply_timeout``). Afterwards every user's tracker (sender id = userId) is fetched and
    must hold exactly that user's texts: each text carries the user's own word
    (``user07``), so a leak between conversations shows.

Prints one JSON object (``--json``) or a summary. The server is stopped afterwards whatever
happens. The client (signing, threads) shares the machine's cores with the server: the
1-minute load average is reported with the figures.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import re
import statistics
import sys
import tempfile
import threading
import time
import uuid
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
for _path in (REPO, REPO / "tests"):
    if str(_path) not in sys.path:
        sys.path.insert(0, str(_path))

import requests  # noqa: E402
from support.alexa_pki import (  # noqa: E402
    CERT_URL,
    PKI,
    SKILL_ID,
    alexa_request,
    make_pki,
    sign,
    write_chain_cache,
)

from rasa_hred.bench.common import load_average, percentile, summary  # noqa: E402
from rasa_hred.bench.rasa import (  # noqa: E402
    HRED_ACTION,
    HRED_LINES,
    HRED_POLICY,
    RULE_ACTION,
    RULE_LINE,
    RULE_POLICY,
    _device,
    answered_by,
    fetch_tracker,
    rasa_run,
)

REQUEST_TIMEOUT_S = 30.0
USER_WORD = re.compile(r"\buser\d+\b")


# --- signed requests ---------------------------------------------------------------------------


def signed(pki: PKI, text: str, user_id: str) -> tuple[dict[str, str], bytes]:
    """Headers and body of a signed IntentRequest (timestamp: now) saying ``text``."""
    body = json.dumps(alexa_request("IntentRequest", text, user_id=user_id)).encode("utf-8")
    headers = {
        "Content-Type": "application/json",
        "SignatureCertChainUrl": CERT_URL,
        "Signature-256": sign(body, pki.leaf_key),
    }
    return headers, body


def user_id(tag: str) -> str:
    return f"amzn1.ask.account.BENCH{tag.upper()}"


def post_alexa(
    session: requests.Session, url: str, headers: dict[str, str], body: bytes
) -> tuple[float, int, str | None]:
    """(round-trip ms, status (0: no answer), spoken SSML or None)."""
    start = time.perf_counter()
    try:
        reply = session.post(
            f"{url}/webhooks/alexa/webhook", data=body, headers=headers, timeout=REQUEST_TIMEOUT_S
        )
    except requests.RequestException:
        return (time.perf_counter() - start) * 1000.0, 0, None
    elapsed = (time.perf_counter() - start) * 1000.0
    ssml = None
    if reply.status_code == 200:
        try:
            ssml = reply.json()["response"]["outputSpeech"]["ssml"]
        except (ValueError, KeyError, TypeError):
            ssml = None
    return elapsed, reply.status_code, ssml


# --- (a) verification cost -------------------------------------------------------------------


def bench_verify(pki: PKI, scratch: Path, count: int) -> dict[str, Any]:
    from alexa_connector.verification import RequestVerifier, VerificationError

    roots = pki.write_root(scratch / "verify-roots.pem")
    write_chain_cache(scratch / "verify-certs", CERT_URL, pki.chain_pem)
    verifier = RequestVerifier(
        SKILL_ID, trusted_roots=roots, certificate_cache_dir=scratch / "verify-certs"
    )
    signed_requests = [
        signed(pki, f"verify sample {i}", user_id(f"verify{i}")) for i in range(count + 1)
    ]

    async def measure() -> tuple[float, list[float]]:
        start = time.perf_counter()
        await verifier.verify(*signed_requests[0])
        first = (time.perf_counter() - start) * 1000.0
        times = []
        for headers, body in signed_requests[1:]:
            start = time.perf_counter()
            await verifier.verify(headers, body)
            times.append((time.perf_counter() - start) * 1000.0)
        return first, times

    async def rejects_tampered() -> bool:
        headers, body = signed_requests[0]
        try:
            await verifier.verify(headers, body.replace(b"verify sample", b"verify tamper"))
        except VerificationError:
            return True
        return False

    first, times = asyncio.run(measure())
    tampered_rejected = asyncio.run(rejects_tampered())
    return {  # tens of microseconds: 4 decimals
        "p50_ms": round(statistics.median(times), 4),
        "p95_ms": round(percentile(times, 0.95), 4),
        "mean_ms": round(statistics.fmean(times), 4),
        "n": len(times),
        "first_call_ms": round(first, 2),
        "body_bytes": len(signed_requests[1][1]),
        "tampered_body_rejected": tampered_rejected,
        "load_avg_1m": load_average(),
    }


# --- (b) sequential round trips ----------------------------------------------------------------


def bench_sequential(pki: PKI, url: str, rounds: int, run_id: str) -> dict[str, Any]:
    session = requests.Session()
    lines = iter(HRED_LINES * (rounds // len(HRED_LINES) + 2))
    for i in range(2):  # warm-up (untimed)
        post_alexa(session, url, *signed(pki, next(lines), user_id(f"{run_id}warmh{i}")))
        post_alexa(session, url, *signed(pki, RULE_LINE, user_id(f"{run_id}warmr{i}")))
    lines = iter(HRED_LINES * (rounds // len(HRED_LINES) + 2))

    rows: dict[str, list[tuple[str, float, bool]]] = {
        "alexa_hred": [],
        "alexa_rule": [],
        "rest_rule": [],
    }
    kinds = list(rows)
    for i in range(rounds):
        for kind in kinds[i % 3 :] + kinds[: i % 3]:  # rotate the order
            sender = user_id(f"{run_id}seq{kind.replace('_', '')}{i}")
            if kind == "rest_rule":
                start = time.perf_counter()
                try:
                    reply = session.post(
                        f"{url}/webhooks/rest/webhook",
                        json={"sender": sender, "message": RULE_LINE},
                        timeout=REQUEST_TIMEOUT_S,
                    )
                    ok = reply.status_code == 200 and bool(reply.json())
                except (requests.RequestException, ValueError):
                    ok = False
                elapsed = (time.perf_counter() - start) * 1000.0
            else:
                text = next(lines) if kind == "alexa_hred" else RULE_LINE
                headers, body = signed(pki, text, sender)  # signed before the timer starts
                elapsed, status, ssml = post_alexa(session, url, headers, body)
                ok = status == 200 and bool(ssml)
            rows[kind].append((sender, elapsed, ok))

    expected = {
        "alexa_hred": (HRED_ACTION, HRED_POLICY),
        "alexa_rule": (RULE_ACTION, RULE_POLICY),
        "rest_rule": (RULE_ACTION, RULE_POLICY),
    }
    result: dict[str, Any] = {}
    for kind, samples in rows.items():
        verified, errors = [], 0
        for sender, elapsed, ok in samples:
            if not ok:
                errors += 1
            elif answered_by(fetch_tracker(session, url, sender), *expected[kind]):
                verified.append(elapsed)
        result[kind] = {
            **summary(verified),
            "errors": errors,
            "answered_by_other_policy": len(samples) - errors - len(verified),
        }
    session.close()
    alexa, rest = result["alexa_rule"]["p50_ms"], result["rest_rule"]["p50_ms"]
    result["alexa_overhead_ms_p50"] = (
        None if alexa is None or rest is None else round(alexa - rest, 2)
    )
    hred, rule = result["alexa_hred"]["p50_ms"], result["alexa_rule"]["p50_ms"]
    result["hred_added_ms_p50"] = None if hred is None or rule is None else round(hred - rule, 2)
    result["load_avg_1m"] = load_average()
    return result


# --- (c) concurrent users ----------------------------------------------------------------------


def user_texts(index: int) -> list[str]:
    """The lines user ``index`` cycles through; every one carries the word ``user<index>``."""
    word = f"user{index:02d}"
    return [
        f"{word} says hello",
        f"what does {word} think about love",
        f"{word} wants to talk about movies",
        f"tell {word} your favourite film",
    ]


class _User(threading.Thread):
    def __init__(
        self, index: int, pki: PKI, url: str, run_id: str, deadline: float, max_requests: int
    ) -> None:
        super().__init__(name=f"alexa-user-{index}", daemon=True)
        self.index = index
        self.user_id = user_id(f"{run_id}load{index:02d}")
        self.pki, self.url, self.deadline, self.max_requests = pki, url, deadline, max_requests
        self.latencies: list[float] = []
        self.sent: list[str] = []
        self.answered: list[str] = []
        self.errors = 0
        self.no_answer = 0
        self.speeches: list[str] = []

    def run(self) -> None:
        texts = user_texts(self.index)
        with requests.Session() as session:
            k = 0
            while time.monotonic() < self.deadline and k < self.max_requests:
                text = f"{texts[k % len(texts)]} {k}"
                headers, body = signed(self.pki, text, self.user_id)
                elapsed, status, ssml = post_alexa(session, self.url, headers, body)
                self.sent.append(text)
                self.latencies.append(elapsed)
                if status == 0:
                    self.no_answer += 1
                if status != 200 or not ssml:
                    self.errors += 1
                else:
                    self.answered.append(text)
                    self.speeches.append(ssml)
                k += 1


def _user_texts_in(tracker: dict[str, Any]) -> list[str]:
    return [e.get("text") or "" for e in tracker.get("events", []) if e.get("event") == "user"]


def bench_load(
    pki: PKI, url: str, users: int, seconds: float, max_requests: int, run_id: str
) -> dict[str, Any]:
    from alexa_connector.settings import AlexaSettings

    load_start = load_average()
    started = time.monotonic()
    threads = [_User(i, pki, url, run_id, started + seconds, max_requests) for i in range(users)]
    for thread in threads:
        thread.start()
    for thread in threads:  # each stops at the deadline, after its request in flight
        thread.join(timeout=max(0.0, started + seconds + REQUEST_TIMEOUT_S + 10 - time.monotonic()))
    stuck = sum(thread.is_alive() for thread in threads)
    wall = time.monotonic() - started
    load_end = load_average()

    latencies = [ms for thread in threads for ms in thread.latencies]
    total = len(latencies)
    timeout_ssml = AlexaSettings().timeout_message
    timeouts = sum(timeout_ssml in s for thread in threads for s in thread.speeches)

    # Turns the channel gave up waiting for (reply_timeout) still run; wait (bounded) until
    # the trackers stop growing before checking them.
    session = requests.Session()
    settle_deadline = time.monotonic() + 60
    previous: list[int] | None = None
    trackers: dict[int, dict[str, Any]] = {}
    while True:
        trackers = {t.index: fetch_tracker(session, url, t.user_id) for t in threads}
        counts = [len(_user_texts_in(trackers[t.index])) for t in threads]
        if counts == previous and all(c >= len(t.answered) for c, t in zip(counts, threads)):
            break
        if time.monotonic() > settle_deadline:
            break
        previous = counts
        time.sleep(1.0)
    session.close()

    foreign, unknown, missing = 0, 0, 0
    for thread in threads:
        own = f"user{thread.index:02d}"
        texts = _user_texts_in(trackers[thread.index])
        sent = set(thread.sent)
        for text in texts:
            words = set(USER_WORD.findall(text))
            if words != {own}:
                foreign += 1
            elif text not in sent:
                unknown += 1
        missing += len(set(thread.answered) - set(texts))
    separate = foreign == 0 and unknown == 0 and missing == 0

    figures = summary(latencies)
    return {
        "users": users,
        "seconds": seconds,
        "wall_s": round(wall, 1),
        "requests": total,
        "requests_per_s": round(total / wall, 2) if wall else None,
        "errors": sum(t.errors for t in threads),
        "no_answer": sum(t.no_answer for t in threads),
        "timeout_replies": timeouts,
        "p50_ms": figures["p50_ms"],
        "p95_ms": figures["p95_ms"],
        "max_ms": figures["max_ms"],
        "min_requests_per_user": min((len(t.sent) for t in threads), default=0),
        "histories_separate": separate,
        "history_check": {
            "trackers": len(trackers),
            "foreign_texts": foreign,
            "unknown_texts": unknown,
            "answered_texts_missing": missing,
        },
        "threads_stuck": stuck,
        "load_avg_1m_at_start": load_start,
        "load_avg_1m": load_end,
    }


# --- main --------------------------------------------------------------------------------------


def credentials_yaml(roots: Path, certs: Path) -> str:
    return (
        "rest:\n"
        "alexa_connector.AlexaConnector:\n"
        f'  skill_id: "{SKILL_ID}"\n'
        f'  trusted_roots: "{roots}"\n'
        f'  certificate_cache_dir: "{certs}"\n'
    )


def run(args: argparse.Namespace) -> dict[str, Any]:
    run_id = uuid.uuid4().hex[:6]
    pki = make_pki()
    result: dict[str, Any] = {"load_avg_1m_at_start": load_average()}
    with tempfile.TemporaryDirectory(prefix="bench-alexa-") as scratch_name:
        scratch = Path(scratch_name)
        result["verify"] = bench_verify(pki, scratch, args.verify_requests)

        roots = pki.write_root(scratch / "roots.pem")
        write_chain_cache(scratch / "certs", CERT_URL, pki.chain_pem)
        started = time.monotonic()
        with rasa_run(
            args.model,
            credentials_yaml(roots, scratch / "certs"),
            scratch / "server",
            startup_timeout=args.startup_timeout,
        ) as url:
            result["startup_s"] = round(time.monotonic() - started, 1)
            result["sequential"] = bench_sequential(pki, url, args.sequential, run_id)
            if args.users > 0 and args.seconds > 0:
                result["load"] = bench_load(
                    pki, url, args.users, args.seconds, args.max_requests_per_user, run_id
                )
    result.update(
        model=str(args.model),
        device=_device(),
        cpu_count=os.cpu_count(),
        load_avg_1m=load_average(),
    )
    return result


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0],
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    parser.add_argument("--model", required=True, help="a Rasa model archive (.tar.gz)")
    parser.add_argument("--verify-requests", type=int, default=500, help="(a) timed verifies")
    parser.add_argument("--sequential", type=int, default=30, help="(b) rounds of 3 requests")
    parser.add_argument("--users", type=int, default=20, help="(c) concurrent Alexa users")
    parser.add_argument("--seconds", type=float, default=20.0, help="(c) load duration")
    parser.add_argument(
        "--max-requests-per-user", type=int, default=1000, help="(c) bound per user"
    )
    parser.add_argument(
        "--startup-timeout", type=float, default=300.0, help="seconds to wait for rasa run"
    )
    parser.add_argument("--json", action="store_true", help="print one JSON object")
    args = parser.parse_args(argv)
    if args.verify_requests < 1 or args.sequential < 1 or args.users < 0:
        parser.error("--verify-requests and --sequential must be >= 1, --users >= 0")
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    result = run(args)
    if args.json:
        print(json.dumps(result, indent=2))
    else:
        v, s = result["verify"], result["sequential"]
        print(f"verify: p50 {v['p50_ms']} ms, p95 {v['p95_ms']} ms (n={v['n']})")
        for kind in ("alexa_hred", "alexa_rule", "rest_rule"):
            print(f"{kind}: p50 {s[kind]['p50_ms']} ms, p95 {s[kind]['p95_ms']} ms")
        if "load" in result:
            load = result["load"]
            print(
                f"load: {load['users']} users, {load['requests']} requests, "
                f"{load['errors']} errors, p50 {load['p50_ms']} ms, p95 {load['p95_ms']} ms, "
                f"histories separate: {load['histories_separate']}"
            )
        print(f"load average {result['load_avg_1m']}")
    if "load" in result and not result["load"]["histories_separate"]:
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
