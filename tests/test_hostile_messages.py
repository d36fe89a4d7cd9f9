"""Hostile messages (issue 14, part 4): a huge user message costs what a long normal one does.

``ResponseGenerator.prepare_context`` is the one context function the policy, the in-process
NLG and the NLG server share; it reads each utterance only up to ``max_utterance_chars``,
before and after NFKC normalisation (U+FDFA grows 18 times under NFKC). Before the bound, 10
turns of 100k U+FDFA took 10-20 s per reply, and a 1 MB message stalled the event loop as long.
"""

from __future__ import annotations

import asyncio
import time

import pytest
import torch

from rasa_hred.core.model import HRED, HREDConfig
from rasa_hred.core.vocab import Vocabulary, tokenize
from rasa_hred.serving.generator import MAX_CHARS_PER_TOKEN, ResponseGenerator

pytestmark = pytest.mark.usefixtures("one_torch_thread")

LIGATURE = "\ufdfa"  # one character, 18 after NFKC: "صلى الله عليه وسلم"
NORMAL = (
    "Well, I don't know... she said “it's 3.5 miles” to the café, didn't she? "
    "Naïve façades — 1,000 times! (Really.) Ünïcödé wörds, ＦＵＬＬＷＩＤＴＨ and Ｉ’m fine. "
)


@pytest.fixture(scope="module")
def generator() -> ResponseGenerator:
    vocab = Vocabulary.build([tokenize(NORMAL), tokenize(LIGATURE)])
    torch.manual_seed(0)
    config = HREDConfig(
        vocab_size=len(vocab),
        pad_id=vocab.pad_id,
        bos_id=vocab.bos_id,
        eos_id=vocab.eos_id,
        embedding_size=8,
        utterance_hidden=8,
        context_hidden=8,
        decoder_hidden=8,
    )
    gen = ResponseGenerator(HRED(config).eval(), vocab)  # defaults: 9 turns of 50 tokens
    yield gen
    gen.close()


def reference_context(gen: ResponseGenerator, utterances: list[str]) -> list[list[int]]:
    """The context rules without any character bound (what prepare_context did before)."""
    v = gen.vocabulary
    kept = [t for t in (tokenize(u) for u in reversed(utterances)) if t][: gen.max_turns]
    return [[v.bos_id, *v.encode(t[: gen.max_utterance_tokens]), v.eos_id] for t in kept[::-1]]


def test_the_bound_follows_max_utterance_tokens(generator):
    assert generator.max_utterance_chars == MAX_CHARS_PER_TOKEN * 50 == 1000


def test_normal_messages_are_cut_as_before(generator):
    words = NORMAL.split(" ")
    messages = [
        NORMAL * 20,  # far past 50 tokens
        " ".join(words[:7]),
        NORMAL.upper() * 3,
        "\n".join(words * 5),
        "x" * 40 + " " + NORMAL * 4,  # a long word first
    ]
    for message in messages:
        assert generator.prepare_context([message]) == reference_context(generator, [message])
    assert generator.prepare_context(messages) == reference_context(generator, messages)
    assert [len(u) for u in generator.prepare_context([NORMAL * 20])] == [52]


def test_huge_turns_cost_what_a_cut_turn_costs(generator):
    context = [LIGATURE * 100_000] * 10
    start = time.perf_counter()
    ids = generator.prepare_context(context)
    took = time.perf_counter() - start
    print(f"prepare_context, 10 turns of 100k U+FDFA: {took * 1e3:.1f} ms")
    assert len(ids) == 9 and all(len(u) == 52 for u in ids)  # 9 turns of <s> 50 tokens </s>
    assert ids == generator.prepare_context([LIGATURE * 1000] * 10)  # only the bound is read
    assert took < 1.0  # hang guard; unbounded this took 10-20 s


async def heartbeat_worst_delay(work) -> tuple[float, object]:
    """Run ``work`` (a coroutine) while a 5 ms heartbeat ticks on the same loop."""
    delays: list[float] = []
    stop = asyncio.Event()

    async def heartbeat() -> None:
        while not stop.is_set():
            start = time.perf_counter()
            await asyncio.sleep(0.005)
            delays.append(time.perf_counter() - start - 0.005)

    beat = asyncio.create_task(heartbeat())
    await asyncio.sleep(0.02)
    result = await work
    stop.set()
    await beat
    return max(delays), result


@pytest.mark.parametrize(
    "context",
    [[LIGATURE * 1_000_000], [LIGATURE * 100_000] * 10],
    ids=["1 MB message", "10 turns of 100k"],
)
async def test_a_huge_message_does_not_stall_the_event_loop(generator, context):
    await generator.agenerate(["hello"])  # warm up the worker thread
    worst, reply = await heartbeat_worst_delay(generator.agenerate(context))
    print(f"heartbeat worst delay with {len(context)} huge turn(s): {worst * 1e3:.1f} ms")
    assert reply.text
    assert worst < 1.0  # the bar is 100 ms; generous for a busy machine (was seconds)
