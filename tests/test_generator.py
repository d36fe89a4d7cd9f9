"""The reply service (rasa_hred.serving.generator): context rules, safety valves, batching."""

from __future__ import annotations

import asyncio
import json
import math
import random
import threading
import time

import pytest
import torch

from rasa_hred.core.checkpoint import CheckpointError, save_model
from rasa_hred.core.decoding import DecodingConfig
from rasa_hred.core.model import HRED, HREDConfig
from rasa_hred.core.vocab import PERSON, Vocabulary, tokenize
from rasa_hred.serving.batcher import MicroBatcher
from rasa_hred.serving.generator import Reply, ResponseGenerator

WORDS = tokenize(
    "hello hi how are you fine thanks good bad what is your name my a the dog cat yes no "
    "maybe ok sure where when why who go come see i am not it that this there here"
)


pytestmark = pytest.mark.usefixtures("one_torch_thread")


@pytest.fixture(scope="module")
def vocab() -> Vocabulary:
    return Vocabulary.build([WORDS])


def make_model(
    vocab: Vocabulary,
    *,
    seed: int = 0,
    size: int = 20,
    eos_bias: float = 2.0,
    sharpness: float = 10.0,
    gain: float = 3.0,
) -> HRED:
    torch.manual_seed(seed)
    c = HREDConfig(
        vocab_size=len(vocab),
        pad_id=vocab.pad_id,
        bos_id=vocab.bos_id,
        eos_id=vocab.eos_id,
        embedding_size=16,
        utterance_hidden=size,
        context_hidden=size,
        decoder_hidden=size,
        tie_embeddings=False,
    )
    model = HRED(c)
    with torch.no_grad():
        model.output.weight.mul_(sharpness)
        model.output.bias[vocab.eos_id] += eos_bias
        model.embedding.weight.mul_(3)
        model.utterance_encoder.weight_ih_l0.mul_(2)
        model.context_encoder.weight_ih_l0.mul_(gain)
        model.decoder_init.weight.mul_(gain)
        model.decoder.weight_ih_l0[:, c.embedding_size :].mul_(gain)
        model.output_hidden.weight[:, size : 2 * size].mul_(gain)
    return model.eval()


@pytest.fixture(scope="module")
def model(vocab: Vocabulary) -> HRED:
    return make_model(vocab)


@pytest.fixture
def generator(model: HRED, vocab: Vocabulary) -> ResponseGenerator:
    gen = ResponseGenerator(model, vocab, max_turns=3, max_utterance_tokens=8)
    yield gen
    gen.close()


def same_reply(a: Reply, b: Reply) -> bool:
    """Equal text and tokens; scores equal up to float noise of different batch sizes."""
    return (
        a.text == b.text
        and a.tokens == b.tokens
        and a.fallback == b.fallback
        and a.score == pytest.approx(b.score, abs=1e-4)
        and a.log_prob == pytest.approx(b.log_prob, abs=1e-4)
        and a.token_log_probs == pytest.approx(b.token_log_probs, abs=1e-4)
    )


def random_contexts(count: int, seed: int = 0) -> list[list[str]]:
    rng = random.Random(seed)
    return [
        [" ".join(rng.choice(WORDS) for _ in range(rng.randint(1, 7))) for _ in range(1 + i % 3)]
        for i in range(count)
    ]


# --- context rules -------------------------------------------------------------------------


def test_prepare_context_rules(generator, vocab):
    v = vocab
    ids = generator.prepare_context(["Hello", "", "   ", "How are you?", "I'm fine", "ok!"])
    # empties dropped first, then the last max_turns (3) kept, oldest first
    assert ids == [
        [v.bos_id, *v.encode(["how", "are", "you", "?"]), v.eos_id],
        [v.bos_id, *v.encode(["i", "'", "m", "fine"]), v.eos_id],
        [v.bos_id, *v.encode(["ok", "!"]), v.eos_id],
    ]
    long = "hello " * 20
    (cut,) = generator.prepare_context([long])
    assert cut == [v.bos_id, *[v.id_of("hello")] * 8, v.eos_id]  # max_utterance_tokens
    assert generator.prepare_context(["zebra"]) == [[v.bos_id, v.unk_id, v.eos_id]]
    assert generator.prepare_context([]) == []
    assert generator.prepare_context(["", " \t "]) == []
    with pytest.raises(TypeError):
        generator.prepare_context("hello there")
    with pytest.raises(TypeError):
        generator.prepare_context(["hello", None])


def test_empty_context_still_gets_a_reply(generator):
    (opener,) = generator.generate([[]])
    assert opener.text.strip() and not opener.fallback
    assert generator.generate([["", "  "]])[0].text == opener.text


def test_zero_max_turns_ignores_the_context(model, vocab):
    gen = ResponseGenerator(model, vocab, max_turns=0)
    assert gen.prepare_context(["hello", "how are you"]) == []


# --- generation ----------------------------------------------------------------------------


def test_generate_many_equals_each_alone(generator):
    contexts = random_contexts(20, seed=1)
    together = generator.generate(contexts)
    assert len(together) == 20
    for context, reply in zip(contexts, together):
        (alone,) = generator.generate([context])
        assert alone.text == reply.text and alone.tokens == reply.tokens
        assert alone.score == pytest.approx(reply.score, abs=1e-4)
    assert len({r.text for r in together}) > 5  # the context matters


def test_reply_fields(generator, vocab):
    (reply,) = generator.generate([["hello there", "how are you?"]])
    assert reply.tokens and all(isinstance(t, str) for t in reply.tokens)
    assert "</s>" not in reply.tokens
    assert reply.log_prob == pytest.approx(sum(reply.token_log_probs), abs=1e-4)
    assert reply.score <= 0
    data = reply.to_dict()
    json.dumps(data)
    assert data["text"] == reply.text and data["fallback"] is False


def test_generate_n_best_is_sorted_and_overrides_apply(generator):
    contexts = random_contexts(4, seed=2)
    for replies in generator.generate_n_best(contexts, 4):
        assert 1 <= len(replies) <= 4
        scores = [r.score for r in replies]
        assert scores == sorted(scores, reverse=True)
    greedy = generator.generate(contexts, method="greedy")
    assert len(greedy) == 4
    short = generator.generate(contexts, max_length=2, min_length=2)
    assert all(len(r.tokens) <= 2 for r in short)
    with pytest.raises(ValueError, match="unknown decoding option"):
        generator.generate(contexts, beams=3)


def test_blocklist_takes_the_next_best_candidate(model, vocab):
    plain = ResponseGenerator(model, vocab)
    contexts = random_contexts(12, seed=3)
    candidates = plain.generate_n_best(contexts, plain.decoding.beam_size)
    checked = 0
    for context, cands in zip(contexts, candidates):
        words = [t for t in cands[0].tokens if t.isalpha()]
        # prefer a word that some other candidate lacks (so there is a next-best to take)
        word = next((w for w in words if any(w not in c.tokens for c in cands)), words[0])
        clean = [c for c in cands if word not in c.tokens]
        blocking = ResponseGenerator(model, vocab, blocklist=[word.upper()])  # any case
        (reply,) = blocking.generate([context])
        if clean:
            assert reply.text == clean[0].text and not reply.fallback
            assert word not in reply.tokens
            checked += 1
        else:
            assert reply.fallback
    assert checked >= 3


def test_blocklist_phrases_match_whole_tokens(model, vocab):
    gen = ResponseGenerator(model, vocab, blocklist=["how are", "dog"])
    assert gen.blocked(["how", "are", "you"])
    assert not gen.blocked(["are", "how"])
    assert gen.blocked(["the", "dog"])
    assert not gen.blocked(["dogs"])


def test_fallback_when_no_candidate_is_clean(model, vocab):
    gen = ResponseGenerator(
        model, vocab, blocklist=[*WORDS, "?", "!", ".", ","], fallback_reply="Hm."
    )
    replies = gen.generate_n_best(random_contexts(3, seed=4), 3)
    for reply_list in replies:
        assert len(reply_list) == 1
        (reply,) = reply_list
        assert reply.fallback and reply.text == "Hm."
        assert math.isnan(reply.score)
        assert reply.to_dict()["score"] is None


def test_never_an_empty_text(vocab):
    model = make_model(vocab, seed=5)
    with torch.no_grad():
        model.output.bias[vocab.id_of(PERSON)] += 50.0  # says only <person>
    # greedy: one candidate, "<person> <person> <person>", which displays as nothing
    decoding = DecodingConfig(method="greedy", allow_placeholders=True, max_length=3)
    gen = ResponseGenerator(model, vocab, decoding=decoding, fallback_reply="Say again?")
    (reply,) = gen.generate([["hello"]])
    assert reply.text == "Say again?" and reply.fallback
    named = ResponseGenerator(model, vocab, decoding=decoding, placeholders={PERSON: "Ann"})
    assert named.generate([["hello"]])[0].text == "Ann Ann Ann"


def test_max_reply_chars_cuts_at_a_word_boundary_or_skips(vocab):
    model = make_model(vocab, seed=6, eos_bias=-5.0)  # long replies
    contexts = random_contexts(5, seed=6)
    full = ResponseGenerator(model, vocab, max_reply_chars=None).generate(contexts)
    cut = ResponseGenerator(model, vocab, max_reply_chars=20).generate(contexts)
    for a, b in zip(full, cut):
        assert len(a.text) > 20
        assert len(b.text) <= 20 and b.text
        assert a.text.startswith(b.text)
        assert a.text[len(b.text)] in " ,.!?;:'"  # at a word boundary
    skipped = ResponseGenerator(
        model, vocab, max_reply_chars=20, overlong="skip", fallback_reply="Too long."
    ).generate(contexts)
    assert all(r.text == "Too long." for r in skipped)


def test_thread_safe_generate(generator):
    contexts = random_contexts(8, seed=7)
    want = [r.text for r in generator.generate(contexts)]
    results: dict[int, list[str]] = {}

    def work(i: int) -> None:
        results[i] = [generator.generate([c])[0].text for c in contexts]

    threads = [threading.Thread(target=work, args=(i,)) for i in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert all(results[i] == want for i in range(4))


# --- loading -------------------------------------------------------------------------------


def test_load_takes_defaults_from_the_model_directory(tmp_path, model, vocab):
    extra = {
        "training": {"max_turns": 4, "max_utterance_tokens": 7, "bf16": True},
        "decoding": {"beam_size": 3, "max_length": 12, "no_repeat_ngram": 2},
    }
    save_model(tmp_path / "m", model, vocab, extra=extra)
    gen = ResponseGenerator.load(tmp_path / "m", device="cpu", dtype="float32", blocklist=["dog"])
    assert gen.decoding == DecodingConfig(beam_size=3, max_length=12, no_repeat_ngram=2)
    assert (gen.max_turns, gen.max_utterance_tokens) == (3, 7)
    assert gen.dtype == torch.float32
    assert gen.blocklist == [("dog",)]
    context = ["hello there", "how are you"]
    mine = ResponseGenerator(
        model, vocab, decoding=gen.decoding, max_turns=3, max_utterance_tokens=7, blocklist=["dog"]
    )
    assert gen.generate([context])[0].text == mine.generate([context])[0].text
    custom = ResponseGenerator.load(tmp_path / "m", device="cpu", decoding=DecodingConfig())
    assert custom.decoding == DecodingConfig()


def test_load_errors_are_checkpoint_errors(tmp_path, model, vocab):
    with pytest.raises(CheckpointError, match="no such model directory"):
        ResponseGenerator.load(tmp_path / "missing", device="cpu")
    save_model(tmp_path / "bad", model, vocab, extra={"decoding": {"beams": 3}})
    with pytest.raises(CheckpointError, match="decoding"):
        ResponseGenerator.load(tmp_path / "bad", device="cpu")
    for training in ({"max_turns": -5}, {"max_turns": "ten"}, {"max_utterance_tokens": 0}, [4]):
        save_model(tmp_path / "bad", model, vocab, extra={"training": training})
        with pytest.raises(CheckpointError, match="training") as info:
            ResponseGenerator.load(tmp_path / "bad", device="cpu")
        assert "bad" in str(info.value)


# --- the asyncio micro-batcher -------------------------------------------------------------


async def test_concurrent_requests_get_their_own_replies_in_batches(model, vocab):
    gen = ResponseGenerator(model, vocab, max_batch_size=32, batch_wait_ms=5)
    contexts = random_contexts(300, seed=8)
    contexts = [[*c, f"request {i}"] for i, c in enumerate(contexts)]  # all distinct
    replies = await asyncio.gather(*(gen.agenerate(c) for c in contexts))
    stats = gen.stats.to_dict()
    assert stats["requests"] == 300
    assert stats["batches"] < 300 and stats["largest_batch"] > 1
    assert max(gen.stats.sizes) <= 32
    for context, reply in zip(contexts, replies):
        assert same_reply(reply, gen.generate([context])[0])
    assert len({r.text for r in replies}) > 20
    gen.close()


async def test_the_event_loop_stays_responsive_during_a_batch(vocab):
    big = make_model(vocab, seed=9, size=384, eos_bias=-5.0)
    decoding = DecodingConfig(beam_size=16, force_length=40)
    gen = ResponseGenerator(big, vocab, decoding=decoding, max_batch_size=64)
    contexts = random_contexts(64, seed=9)
    await gen.agenerate(contexts[0])  # warm up the worker thread

    delays: list[float] = []
    stop = asyncio.Event()

    async def heartbeat() -> None:
        while not stop.is_set():
            start = time.perf_counter()
            await asyncio.sleep(0.005)
            delays.append(time.perf_counter() - start - 0.005)

    beat = asyncio.create_task(heartbeat())
    await asyncio.sleep(0.02)
    start = time.perf_counter()
    await asyncio.gather(*(gen.agenerate(c) for c in contexts))
    duration = time.perf_counter() - start
    stop.set()
    await beat
    gen.close()
    assert gen.stats.last_sizes[-1] == 64  # one big batch
    assert duration > 0.2  # a batch slow enough to matter
    assert len(delays) > 10
    print(f"heartbeat max delay {max(delays) * 1e3:.1f} ms, batch {duration * 1e3:.0f} ms")
    assert max(delays) < duration / 4, (max(delays), duration)


async def test_bad_contexts_and_failing_batches_raise_for_their_callers_only(generator):
    with pytest.raises(TypeError):
        await generator.agenerate("not a list")
    original = generator._generate_ids
    poison = generator.prepare_context(["poison"])

    def flaky(contexts, n, config):
        if poison in contexts:
            raise RuntimeError("boom")
        return original(contexts, n, config)

    generator._generate_ids = flaky
    contexts = [["hello"], ["poison"], ["how are you"], ["poison"], ["fine"]]
    results = await asyncio.gather(
        *(generator.agenerate(c) for c in contexts), return_exceptions=True
    )
    assert isinstance(results[1], RuntimeError) and isinstance(results[3], RuntimeError)
    for i in (0, 2, 4):
        alone = original([generator.prepare_context(contexts[i])], 1, generator.decoding)
        assert same_reply(results[i], alone[0][0])


async def test_unbatched_mode_runs_every_request_alone(model, vocab):
    gen = ResponseGenerator(model, vocab, batching=False)
    contexts = random_contexts(10, seed=10)
    replies = await asyncio.gather(*(gen.agenerate(c) for c in contexts))
    assert gen.stats.batches == 10 and gen.stats.largest_batch == 1
    assert [r.text for r in replies] == [r.text for r in gen.generate(contexts)]
    gen.close()


def test_the_batcher_works_across_event_loops(generator):
    contexts = random_contexts(6, seed=11)
    want = [r.text for r in generator.generate(contexts)]

    async def ask() -> list[str]:
        replies = await asyncio.gather(*(generator.agenerate(c) for c in contexts))
        return [r.text for r in replies]

    assert asyncio.run(ask()) == want
    assert asyncio.run(ask()) == want  # a second loop

    results: list[list[str]] = []
    thread = threading.Thread(target=lambda: results.append(asyncio.run(ask())))
    thread.start()
    thread.join()
    assert results == [want]


async def test_the_batcher_gathers_requests_of_any_kind():
    calls: list[list[int]] = []

    def square(numbers: list[int]) -> list[int]:
        calls.append(numbers)
        return [n * n for n in numbers]

    batcher = MicroBatcher(square, max_batch_size=4, batch_wait_ms=50)
    assert await asyncio.gather(*(batcher.submit(n) for n in range(10))) == [
        n * n for n in range(10)
    ]
    assert calls == [[0, 1, 2, 3], [4, 5, 6, 7], [8, 9]]  # full batches need not wait
    assert batcher.stats.to_dict()["sizes"] == {2: 1, 4: 2}
    batcher.close()
    with pytest.raises(RuntimeError, match="closed"):
        await batcher.submit(1)
    with pytest.raises(ValueError, match="max_batch_size"):
        MicroBatcher(square, max_batch_size=0)


async def test_closed_generator_refuses_requests(model, vocab):
    gen = ResponseGenerator(model, vocab)
    await gen.agenerate(["hello"])
    gen.close()
    gen.close()
    with pytest.raises(RuntimeError, match="closed"):
        await gen.agenerate(["hello"])
