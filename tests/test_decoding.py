"""Beam search, greedy decoding, sampling and MMI reranking (rasa_hred.core.decoding).

The models are tiny, random and seeded; their output layer is sharpened and their context
path amplified so that replies differ between contexts, vary in length and love to repeat.
"""

from __future__ import annotations

import math
import random

import pytest
import torch
from support.oracles import reference_log_probs

import rasa_hred.core.decoding as decoding
from rasa_hred.core.decoding import (
    DecodingConfig,
    DecodingError,
    Hypothesis,
    best_continuations,
    block_repeated_ngrams,
    context_seed,
    decode,
    lm_log_probs,
    mmi_rerank,
    sample_tokens,
    warp_log_probs,
)
from rasa_hred.core.model import HRED, HREDConfig
from rasa_hred.core.vocab import NUMBER, PERSON, PLACEHOLDERS, UNK, Vocabulary

WORDS = (  # noqa: SIM905
    "hello hi how are you fine thanks good bad what is your name my a the dog cat yes no "
    "maybe ok sure where when why who go come see"
).split()


pytestmark = pytest.mark.usefixtures("one_torch_thread")


@pytest.fixture(scope="module")
def vocab() -> Vocabulary:
    return Vocabulary.build([WORDS])


def make_model(
    vocab: Vocabulary,
    *,
    seed: int = 0,
    layers: int = 1,
    sharpness: float = 10.0,
    eos_bias: float = 2.0,
    context_gain: float = 3.0,
    bidirectional: bool = False,
) -> HRED:
    torch.manual_seed(seed)
    config = HREDConfig(
        vocab_size=len(vocab),
        pad_id=vocab.pad_id,
        bos_id=vocab.bos_id,
        eos_id=vocab.eos_id,
        embedding_size=16,
        utterance_hidden=20,
        context_hidden=18,
        decoder_hidden=22,
        decoder_layers=layers,
        bidirectional=bidirectional,
        tie_embeddings=False,
    )
    model = HRED(config)
    c = config
    with torch.no_grad():
        model.output.weight.mul_(sharpness)
        model.output.bias[vocab.eos_id] += eos_bias
        model.embedding.weight.mul_(3)
        model.utterance_encoder.weight_ih_l0.mul_(2)
        model.context_encoder.weight_ih_l0.mul_(context_gain)
        model.decoder_init.weight.mul_(context_gain)
        model.decoder.weight_ih_l0[:, c.embedding_size :].mul_(context_gain)
        hd, hc = c.decoder_hidden, c.context_hidden
        model.output_hidden.weight[:, hd : hd + hc].mul_(context_gain)
    return model.eval()


def make_contexts(vocab: Vocabulary, count: int, seed: int = 0) -> list[list[list[int]]]:
    rng = random.Random(seed)
    words = range(7, len(vocab))
    return [
        [
            [vocab.bos_id, *(rng.choice(words) for _ in range(rng.randint(1, 6))), vocab.eos_id]
            for _ in range(rng.randint(1 if i % 7 else 0, 3))
        ]
        for i in range(count)
    ]


@pytest.fixture(scope="module")
def model(vocab: Vocabulary) -> HRED:
    return make_model(vocab)


@pytest.fixture(scope="module")
def contexts(vocab: Vocabulary) -> list[list[list[int]]]:
    return make_contexts(vocab, 12)


def has_repeated_ngram(tokens: list[int], n: int) -> bool:
    grams = [tuple(tokens[i : i + n]) for i in range(len(tokens) - n + 1)]
    return len(grams) != len(set(grams))


# --- the slow reference: re-runs the whole prefix at every step ------------------------------


def reference_beam_search(
    model: HRED, context: list[list[int]], config: DecodingConfig, vocab: Vocabulary
) -> list[Hypothesis]:
    """Per-hypothesis Python beam search with the same rules as ``decode``, but every
    step feeds the whole prefix through the decoder GRU (no carried state, nothing fused)."""
    c = model.config
    eos, bos = c.eos_id, c.bos_id
    banned = set(config.banned_ids(vocab, c.bos_id, c.pad_id))
    beams, keep = config.beam_size, config.num_candidates
    max_length = config.force_length or config.max_length
    min_length = config.force_length or config.min_length
    lp = config.length_normaliser
    n = config.no_repeat_ngram
    vector = model.context_vectors([context])

    def next_log_probs(prefix: list[int]) -> torch.Tensor:
        return reference_log_probs(model, torch.tensor([[bos, *prefix]]), vector)[0, -1].clone()

    def blocked(prefix: list[int]) -> set[int]:
        if n == 0 or len(prefix) < n:
            return set()
        last = prefix[len(prefix) - n + 1 :]
        return {
            prefix[i + n - 1] for i in range(len(prefix) - n + 1) if prefix[i : i + n - 1] == last
        }

    live = [([], [], torch.tensor(0.0))]  # tokens, token log-probs, total (float32)
    finished: list[tuple[float, int, Hypothesis]] = []
    for step in range(max_length):
        candidates = []
        for b, (tokens, _, total) in enumerate(live):
            log_probs = next_log_probs(tokens)
            for token in banned | blocked(tokens):
                log_probs[token] = -math.inf
            if step < min_length:
                log_probs[eos] = -math.inf
            totals = total + log_probs  # float32, as in the batched search
            for token in range(c.vocab_size):
                if totals[token] > -math.inf:
                    candidates.append((totals[token], b, token, float(log_probs[token])))
        candidates.sort(key=lambda x: -float(x[0]))
        top = candidates[: 2 * beams]
        if step >= min_length:
            for total, b, token, token_lp in top[:beams]:
                if token == eos:
                    tokens, lps, _ = live[b]
                    score = float(total) / lp(step + 1)
                    hyp = Hypothesis([*tokens, eos], float(total), [*lps, token_lp], score)
                    finished.append((score, len(finished), hyp))
        nxt = [x for x in top if x[2] != eos][:beams]
        live = [
            (live[b][0] + [token], live[b][1] + [token_lp], total)
            for total, b, token, token_lp in nxt
        ]
        if step + 1 == max_length:
            for tokens, lps, total in live:
                score = float(total) / lp(max_length)
                finished.append(
                    (score, len(finished), Hypothesis(tokens, float(total), lps, score))
                )
            break
        best_live = max(float(total) for _, _, total in live)
        scores = sorted((s for s, _, _ in finished), reverse=True)
        bound = max(best_live / lp(step + 2), best_live / lp(max_length))
        if len(finished) >= beams or (len(finished) >= keep and bound <= scores[keep - 1]):
            break
    finished.sort(key=lambda x: (-x[0], x[1]))
    return [h for _, _, h in finished[: config.n_best]]


def assert_same(got: list[Hypothesis], want: list[Hypothesis]) -> None:
    assert [h.tokens for h in got] == [h.tokens for h in want]
    for a, b in zip(got, want):
        assert a.score == pytest.approx(b.score, abs=1e-4)
        assert a.log_prob == pytest.approx(b.log_prob, abs=1e-4)
        assert a.token_log_probs == pytest.approx(b.token_log_probs, abs=1e-4)


# --- beam search ---------------------------------------------------------------------------


def test_beam_of_one_equals_greedy(model, vocab, contexts):
    greedy = decode(model, contexts, DecodingConfig(method="greedy"), vocabulary=vocab)
    beam = decode(model, contexts, DecodingConfig(beam_size=1), vocabulary=vocab)
    assert len(greedy) == len(beam) == len(contexts)
    for g, b in zip(greedy, beam):
        assert len(g) == len(b) == 1
        assert_same(b, g)
    lengths = {len(g[0].tokens) for g in greedy}
    assert len(lengths) > 1  # the model ends replies at different points


@pytest.mark.parametrize(
    ("layers", "settings"),
    [
        (1, {"beam_size": 3, "n_best": 2}),
        (2, {"beam_size": 4, "n_best": 3, "length_penalty": "mean", "min_length": 3}),
        (1, {"beam_size": 5, "n_best": 1, "length_penalty": 0.0, "no_repeat_ngram": 2}),
        (1, {"beam_size": 4, "n_best": 2, "mmi_lambda": 0.0, "max_length": 8}),
    ],
)
def test_carried_state_beam_search_equals_prefix_rerunning_reference(vocab, layers, settings):
    model = make_model(vocab, layers=layers, seed=layers)
    config = DecodingConfig(**settings)
    contexts = make_contexts(vocab, 6, seed=layers)
    got = decode(model, contexts, config, vocabulary=vocab)
    with torch.inference_mode():
        for context, hyps in zip(contexts, got):
            assert_same(hyps, reference_beam_search(model, context, config, vocab))


@pytest.mark.parametrize("vocab_size", [640, 1000])  # whole blocks only; a partial last one
@pytest.mark.parametrize(("beams", "k"), [(1, 2), (5, 10), (20, 40), (4, 4)])
def test_best_continuations_are_the_best_totals_over_all_beams_and_tokens(vocab_size, beams, k):
    generator = torch.Generator().manual_seed(vocab_size + beams)
    items = 6
    log_probs = torch.randn(items * beams, vocab_size, generator=generator).log_softmax(1)
    log_probs[log_probs < -9.0] = float("-inf")  # masked tokens
    log_probs[3, :] = float("-inf")  # a beam with nothing allowed
    scores = torch.randn(items, beams, generator=generator) * 3
    scores[0, 1:] = float("-inf")  # dead beams (the first step)
    totals = (scores.reshape(-1, 1) + log_probs).view(items, beams * vocab_size)
    want_scores, want_index = totals.topk(k, dim=1)
    got_scores, got_beams, got_tokens = best_continuations(log_probs, scores, k)
    assert torch.equal(got_scores, want_scores)
    real = want_scores > float("-inf")  # which -inf entries fill up a short list is arbitrary
    assert int(real.sum()) > items * k // 2
    assert torch.equal(got_beams[real], (want_index // vocab_size)[real])
    assert torch.equal(got_tokens[real], (want_index % vocab_size)[real])
    assert (got_tokens < vocab_size).all() and (got_beams < beams).all()


def test_block_search_decodes_as_the_reference(vocab, monkeypatch):
    """The tests' vocabularies are too small for blocks of 64: with blocks of 4 the block
    search of best_continuations runs inside decode and must not change a reply."""
    import rasa_hred.core.decoding as decoding

    monkeypatch.setattr(decoding, "CANDIDATE_BLOCK", 4)
    model = make_model(vocab, seed=7)
    config = DecodingConfig(beam_size=4, n_best=2)
    contexts = make_contexts(vocab, 6, seed=7)
    got = decode(model, contexts, config, vocabulary=vocab)
    with torch.inference_mode():
        for context, hyps in zip(contexts, got):
            assert_same(hyps, reference_beam_search(model, context, config, vocab))


def test_batched_equals_one_at_a_time(model, vocab):
    contexts = make_contexts(vocab, 16, seed=3)
    config = DecodingConfig(beam_size=4, n_best=2)
    batched = decode(model, contexts, config, vocabulary=vocab)
    for context, hyps in zip(contexts, batched):
        assert_same(hyps, decode(model, [context], config, vocabulary=vocab)[0])
    assert len({tuple(h[0].tokens) for h in batched}) > 4  # contexts matter


def test_seeded_sampling_gives_a_context_the_same_replies_in_any_batch(model, vocab):
    """The NLG server batches conversations: with a seed, what is decoded beside a context
    (and which rows end first) must not change its replies."""
    contexts = make_contexts(vocab, 12, seed=8)
    config = DecodingConfig(method="sample", n_best=3, top_p=0.9, seed=11)
    batched = decode(model, contexts, config, vocabulary=vocab)
    for context, hyps in zip(contexts, batched):
        assert_same(hyps, decode(model, [context], config, vocabulary=vocab)[0])
    assert len({tuple(h.tokens) for hyps in batched for h in hyps}) > 12  # still random
    reseeded = decode(model, contexts, config.replace(seed=12), vocabulary=vocab)
    assert [h[0].tokens for h in reseeded] != [h[0].tokens for h in batched]


def test_each_context_draws_its_own_random_numbers(vocab):
    """One seed for every context would give each one-context call (the policy's) the same
    draws: nearly the same reply to everything (here, with a model whose context barely
    matters, 2 distinct replies to 12 contexts)."""
    model = make_model(vocab, context_gain=0.3)
    contexts = make_contexts(vocab, 12, seed=9)
    assert context_seed(0, contexts[0]) == context_seed(0, [list(u) for u in contexts[0]])
    assert len({context_seed(0, context) for context in contexts}) == 12
    assert context_seed(1, contexts[0]) != context_seed(0, contexts[0])
    config = DecodingConfig(method="sample", top_p=0.9, seed=0)
    alone = [decode(model, [context], config, vocabulary=vocab)[0][0] for context in contexts]
    assert len({tuple(h.tokens) for h in alone}) >= 10


def test_chunked_decoding_equals_one_batch(model, vocab, monkeypatch):
    import rasa_hred.core.decoding as decoding

    contexts = make_contexts(vocab, 10, seed=4)
    config = DecodingConfig(beam_size=3)
    whole = decode(model, contexts, config, vocabulary=vocab)
    monkeypatch.setattr(decoding, "MAX_ROWS", 7)  # two contexts per chunk
    for a, b in zip(decode(model, contexts, config, vocabulary=vocab), whole):
        assert_same(a, b)


def test_hypotheses_are_sorted_and_scored(model, vocab, contexts):
    config = DecodingConfig(beam_size=5, n_best=5)
    for hyps in decode(model, contexts, config, vocabulary=vocab):
        assert len(hyps) == 5
        scores = [h.score for h in hyps]
        assert scores == sorted(scores, reverse=True)
        for h in hyps:
            assert len(h.tokens) == len(h.token_log_probs)
            assert h.log_prob == pytest.approx(sum(h.token_log_probs), abs=1e-4)
            assert h.score == pytest.approx(h.log_prob / ((5 + len(h.tokens)) / 6), abs=1e-4)
            assert vocab.eos_id not in h.tokens[:-1]


def test_no_repeated_trigram_with_blocking(vocab):
    model = make_model(vocab, seed=5, eos_bias=-2.0)  # long replies
    contexts = make_contexts(vocab, 40, seed=5)
    unblocked = decode(model, contexts, DecodingConfig(no_repeat_ngram=0), vocabulary=vocab)
    assert sum(has_repeated_ngram(h[0].tokens, 3) for h in unblocked) > 10  # it loves to
    for method in ("beam", "greedy", "sample"):
        config = DecodingConfig(method=method, n_best=1, seed=1)
        for hyps in decode(model, contexts, config, vocabulary=vocab):
            for h in hyps:
                assert not has_repeated_ngram(h.tokens, 3), h.tokens
    bigrams = DecodingConfig(no_repeat_ngram=2, n_best=3)
    for hyps in decode(model, contexts, bigrams, vocabulary=vocab):
        for h in hyps:
            assert not has_repeated_ngram(h.tokens, 2), h.tokens


def test_block_repeated_ngrams_masks_exactly_the_completing_tokens():
    history = torch.tensor([[5, 6, 7, 5, 6], [1, 2, 3, 4, 5], [9, 9, 9, 9, 9]])
    log_probs = torch.zeros(3, 12)
    block_repeated_ngrams(log_probs, history, 3)
    assert torch.isinf(log_probs[0]).nonzero().flatten().tolist() == [7]  # "5 6 7" again
    assert not torch.isinf(log_probs[1]).any()
    assert torch.isinf(log_probs[2]).nonzero().flatten().tolist() == [9]
    log_probs = torch.zeros(1, 12)
    block_repeated_ngrams(log_probs, torch.tensor([[3, 4, 3]]), 1)
    assert torch.isinf(log_probs[0]).nonzero().flatten().tolist() == [3, 4]


def test_banned_tokens_never_appear(vocab):
    model = make_model(vocab, seed=6)
    favourites = [vocab.unk_id, vocab.id_of(PERSON), vocab.id_of(NUMBER), vocab.pad_id]
    with torch.no_grad():
        model.output.bias[favourites] += 6.0  # the model would love to say them
    contexts = make_contexts(vocab, 10, seed=6)
    allowed = decode(
        model,
        contexts,
        DecodingConfig(allow_placeholders=True, banned_tokens=()),
        vocabulary=vocab,
    )
    assert any(set(h[0].tokens) & set(favourites) for h in allowed)
    banned_ids = {vocab.unk_id, vocab.pad_id, vocab.bos_id} | {vocab.id_of(p) for p in PLACEHOLDERS}
    for method in ("beam", "greedy", "sample"):
        config = DecodingConfig(method=method, seed=0, n_best=1)
        for hyps in decode(model, contexts, config, vocabulary=vocab):
            assert not set(hyps[0].tokens) & banned_ids
    extra = DecodingConfig(banned_tokens=(UNK, "dog", "cat"))
    assert set(extra.banned_ids(vocab, vocab.bos_id, vocab.pad_id)) == {
        vocab.unk_id,
        vocab.id_of("dog"),
        vocab.id_of("cat"),
        *(vocab.id_of(p) for p in PLACEHOLDERS),
    }


def test_min_and_max_length(vocab):
    eager = make_model(vocab, seed=7, eos_bias=8.0)  # would stop at once
    contexts = make_contexts(vocab, 8, seed=7)
    short = decode(eager, contexts, DecodingConfig(n_best=3), vocabulary=vocab)
    assert all(len(h.tokens) == 2 for hyps in short for h in hyps[:1])  # one word and </s>
    for method in ("beam", "greedy", "sample"):
        config = DecodingConfig(method=method, min_length=4, seed=0)
        for hyps in decode(eager, contexts, config, vocabulary=vocab):
            assert len(hyps[0].tokens) == 5 and hyps[0].tokens[-1] == vocab.eos_id
    chatty = make_model(vocab, seed=7, eos_bias=-8.0)  # would never stop
    for method in ("beam", "greedy", "sample"):
        config = DecodingConfig(method=method, max_length=6, seed=0)
        for hyps in decode(chatty, contexts, config, vocabulary=vocab):
            assert len(hyps[0].tokens) == 6 and vocab.eos_id not in hyps[0].tokens


def test_force_length_runs_exactly_that_many_steps(vocab):
    eager = make_model(vocab, seed=8, eos_bias=8.0)
    contexts = make_contexts(vocab, 6, seed=8)
    for beam in (1, 4):
        config = DecodingConfig(beam_size=beam, n_best=min(beam, 2), force_length=9, max_length=3)
        for hyps in decode(eager, contexts, config, vocabulary=vocab):
            for h in hyps:
                assert len(h.tokens) == 9 and vocab.eos_id not in h.tokens
                assert h.score == pytest.approx(h.log_prob / ((5 + 9) / 6))


def test_decoding_runs_in_eval_mode_and_restores_training_mode(vocab, contexts):
    model = make_model(vocab, seed=9)
    want = decode(model, contexts, DecodingConfig(), vocabulary=vocab)
    model.train()
    got = decode(model, contexts, DecodingConfig(), vocabulary=vocab)
    assert model.training
    for a, b in zip(got, want):
        assert_same(a, b)


def test_decoding_follows_weights_changed_in_place(vocab, contexts):
    model = make_model(vocab, seed=10)
    config = DecodingConfig(beam_size=3, n_best=2)
    before = decode(model, contexts[:4], config, vocabulary=vocab)  # weights cached now
    with torch.no_grad():
        model.load_state_dict(make_model(vocab, seed=12).state_dict())
    got = decode(model, contexts[:4], config, vocabulary=vocab)
    with torch.inference_mode():
        for context, hyps in zip(contexts[:4], got):
            assert_same(hyps, reference_beam_search(model, context, config, vocab))
    assert [h.tokens for hs in got for h in hs] != [h.tokens for hs in before for h in hs]


# --- sampling ------------------------------------------------------------------------------


def test_sampling_is_seeded_and_reproducible(model, vocab, contexts):
    config = DecodingConfig(method="sample", seed=42, n_best=3, temperature=1.3)
    first = decode(model, contexts, config, vocabulary=vocab)
    again = decode(model, contexts, config, vocabulary=vocab)
    assert [[h.tokens for h in hs] for hs in first] == [[h.tokens for h in hs] for hs in again]
    other = decode(model, contexts, config.replace(seed=7), vocabulary=vocab)
    assert [[h.tokens for h in hs] for hs in first] != [[h.tokens for h in hs] for hs in other]
    for hyps in first:
        assert [h.score for h in hyps] == sorted((h.score for h in hyps), reverse=True)


def test_top_k_only_draws_the_k_likeliest_tokens():
    probs = torch.tensor([0.02, 0.30, 0.05, 0.25, 0.08, 0.20, 0.10])
    log_probs = probs.log().expand(4000, -1).contiguous()
    generator = torch.Generator().manual_seed(0)
    drawn = sample_tokens(log_probs, top_k=3, generator=generator)
    assert set(drawn.tolist()) == {1, 3, 5}
    frequencies = torch.bincount(drawn, minlength=7).float() / len(drawn)
    assert frequencies[1] == pytest.approx(0.30 / 0.75, abs=0.03)  # renormalised
    everything = sample_tokens(log_probs, generator=generator)
    assert set(everything.tolist()) == set(range(7))


def test_top_p_and_temperature():
    log_probs = torch.tensor([[0.5, 0.3, 0.15, 0.05]]).log()
    kept = torch.isfinite(warp_log_probs(log_probs, top_p=0.7))[0].tolist()
    assert kept == [True, True, False, False]
    kept = torch.isfinite(warp_log_probs(log_probs, top_p=0.81))[0].tolist()
    assert kept == [True, True, True, False]
    assert torch.isfinite(warp_log_probs(log_probs, top_p=0.01)).sum() == 1  # never empty
    cold = warp_log_probs(log_probs, temperature=0.5).softmax(-1)[0]
    assert cold[0] > 0.5 and torch.allclose(cold.sum(), torch.tensor(1.0))
    generator = torch.Generator().manual_seed(1)
    drawn = sample_tokens(log_probs.expand(2000, -1), top_p=0.7, generator=generator)
    assert set(drawn.tolist()) == {0, 1}


def reference_nucleus(log_weights: torch.Tensor, top_p: float) -> torch.Tensor:
    """The nucleus by a full sort of each row (what _nucleus finds without sorting)."""
    ordered, order = log_weights.sort(dim=-1, descending=True)
    probs = ordered.softmax(dim=-1)
    keep_sorted = probs.cumsum(dim=-1) - probs < top_p
    return torch.zeros_like(keep_sorted).scatter_(-1, order, keep_sorted)


@pytest.mark.parametrize("top_p", [0.3, 0.8, 0.99])
def test_the_nucleus_is_the_sorted_definition_also_when_it_is_wide(top_p):
    """Peaked rows have a nucleus of a few tokens; a flat row needs hundreds, far more than
    _nucleus looks at first."""
    generator = torch.Generator().manual_seed(int(top_p * 100))
    spread = torch.tensor([[8.0], [3.0], [1.0], [0.05], [0.0]])  # 0: equal weights but for noise
    log_weights = torch.randn(5, 1000, generator=generator) * spread + 1e-4 * torch.rand(
        5, 1000, generator=generator
    )
    log_weights[1, 500:] = float("-inf")  # half the vocabulary masked
    log_probs = log_weights.log_softmax(-1)
    got = torch.isfinite(warp_log_probs(log_probs, top_p=top_p))
    want = reference_nucleus(log_probs, top_p)
    for row in range(5):  # the same log-probs kept (tied tokens are interchangeable), but
        # for the one at the edge, where two float sums of equal mass may fall either side
        kept = log_probs[row][got[row]].sort(descending=True).values
        wanted = log_probs[row][want[row]].sort(descending=True).values
        assert abs(len(kept) - len(wanted)) <= 1
        shared = min(len(kept), len(wanted))
        assert torch.equal(kept[:shared], wanted[:shared])
    assert want[3].sum() > 4 * decoding.NUCLEUS_FIRST_LOOK or top_p < 0.5  # it had to grow


def test_sampling_follows_the_distribution_and_never_draws_a_masked_token():
    probs = torch.tensor([0.1, 0.0, 0.4, 0.2, 0.3, 0.0, 0.0])
    log_probs = probs.log().expand(20000, -1).contiguous()
    drawn = sample_tokens(log_probs, generator=torch.Generator().manual_seed(5))
    frequencies = torch.bincount(drawn, minlength=7).float() / len(drawn)
    assert frequencies[[1, 5, 6]].sum() == 0  # the last drawable token is 4, not 6
    torch.testing.assert_close(frequencies, probs, atol=0.015, rtol=0)
    per_row = [torch.Generator().manual_seed(i) for i in range(3)]
    rows = sample_tokens(log_probs[:3], generator=per_row)
    again = [torch.Generator().manual_seed(i) for i in range(3)]
    assert torch.equal(rows, sample_tokens(log_probs[:3], generator=again))


@pytest.mark.parametrize("draws", [decoding.NUCLEUS_DRAWS, 0], ids=["rejection", "explicit"])
def test_top_p_sampling_follows_the_renormalised_nucleus(monkeypatch, draws):
    """Draws outside the nucleus are drawn again (or, after NUCLEUS_DRAWS, the nucleus is
    computed): either way the tokens follow the tempered distribution renormalised over the
    nucleus, and masked tokens never come. 100 tokens: the last block of the inverse CDF is
    partial."""
    monkeypatch.setattr(decoding, "NUCLEUS_DRAWS", draws)
    weights = torch.zeros(100)
    weights[[3, 40, 70, 97, 99]] = torch.tensor([0.3, 0.25, 0.2, 0.15, 0.1])
    weights[[10, 98]] = 0.0  # masked below
    log_probs = weights.log()
    temperature, top_p = 0.8, 0.7
    tempered = (log_probs / temperature).softmax(-1)
    nucleus = reference_nucleus(log_probs.unsqueeze(0) / temperature, top_p)[0]
    expected = torch.where(nucleus, tempered, 0.0)
    expected /= expected.sum()
    generator = torch.Generator().manual_seed(11)
    drawn = sample_tokens(
        log_probs.expand(20000, -1).contiguous(), temperature, top_p=top_p, generator=generator
    )
    frequencies = torch.bincount(drawn, minlength=100).float() / len(drawn)
    assert set(drawn.tolist()) == set(nucleus.nonzero().squeeze(1).tolist())
    torch.testing.assert_close(frequencies, expected, atol=0.015, rtol=0)


def test_every_token_of_a_partial_last_block_can_be_drawn():
    probs = torch.full((130,), 1 / 130)  # blocks of 64: 64 + 64 + 2
    drawn = sample_tokens(probs.log().expand(40000, -1), generator=torch.Generator().manual_seed(3))
    counts = torch.bincount(drawn, minlength=130)
    assert counts.numel() == 130 and bool((counts > 150).all())


# --- MMI-antiLM ----------------------------------------------------------------------------


def test_mmi_rerank_moves_the_less_generic_reply_up():
    generic = Hypothesis([10, 3], -2.0, [-1.0, -1.0], -1.0)  # "i don't know."
    specific = Hypothesis([11, 12, 3], -3.0, [-1.0, -1.0, -1.0], -1.5)
    lm = [-1.0, -6.0]  # the generic reply is likely without any context
    assert mmi_rerank([generic, specific], lm, 0.0) == [generic, specific]
    reranked = mmi_rerank([generic, specific], lm, 0.5)
    assert [h.tokens for h in reranked] == [specific.tokens, generic.tokens]
    assert reranked[0].score == pytest.approx(-1.5 + 0.5 * 6.0)
    assert reranked[1].score == pytest.approx(-1.0 + 0.5 * 1.0)
    assert reranked[0].lm_log_prob == -6.0


def test_mmi_end_to_end_subtracts_lambda_times_the_lm_log_prob(model, vocab, contexts):
    plain = decode(model, contexts, DecodingConfig(beam_size=4, n_best=4), vocabulary=vocab)
    mmi = decode(
        model,
        contexts,
        DecodingConfig(beam_size=4, n_best=4, mmi_lambda=0.7, mmi_tokens=3),
        vocabulary=vocab,
    )
    changed = False
    zero = torch.zeros(1, model.config.context_hidden)
    for base, reranked in zip(plain, mmi):
        assert sorted(map(tuple, (h.tokens for h in base))) == sorted(
            map(tuple, (h.tokens for h in reranked))
        )
        by_tokens = {tuple(h.tokens): h for h in base}
        for h in reranked:
            # the LM: the decoder with a zero context, re-run over the first 3 tokens
            with torch.inference_mode():
                inputs = torch.tensor([[vocab.bos_id, *h.tokens[:2]]])
                lps = reference_log_probs(model, inputs, zero)[0]
                want_lm = sum(float(lps[i, t]) for i, t in enumerate(h.tokens[:3]))
            assert h.lm_log_prob == pytest.approx(want_lm, abs=1e-4)
            assert h.score == pytest.approx(
                by_tokens[tuple(h.tokens)].score - 0.7 * want_lm, abs=1e-4
            )
        assert [h.score for h in reranked] == sorted((h.score for h in reranked), reverse=True)
        changed |= [h.tokens for h in reranked] != [h.tokens for h in base]
    assert changed  # the reranking did reorder some n-best lists


def test_mmi_collects_beam_size_candidates_for_one_reply(model, vocab, contexts):
    config = DecodingConfig(beam_size=4, n_best=1, mmi_lambda=0.5)
    assert config.num_candidates == 4
    for hyps in decode(model, contexts, config, vocabulary=vocab):
        assert len(hyps) == 1 and hyps[0].lm_log_prob is not None


def test_lm_log_probs_of_empty_and_short_sequences(model):
    values = lm_log_probs(model, [[], [8], [8, 9, 10, 11, 12, 13]], 3)
    assert values[0] == 0.0 and values[1] < 0 and values[2] < values[1]


# --- configuration -------------------------------------------------------------------------


def test_config_validation_and_round_trip():
    config = DecodingConfig(method="sample", top_k=5, seed=3, length_penalty="mean")
    assert DecodingConfig.from_dict(config.to_dict()) == config
    with pytest.raises(DecodingError, match="method"):
        DecodingConfig(method="viterbi")
    with pytest.raises(ValueError, match="n_best"):
        DecodingConfig(beam_size=2, n_best=3)
    with pytest.raises(DecodingError, match="unknown decoding option"):
        DecodingConfig.from_dict({"beams": 3})
    with pytest.raises(DecodingError, match="length_penalty"):
        DecodingConfig(length_penalty="long")
    with pytest.raises(DecodingError, match="top_p"):
        DecodingConfig().replace(top_p=0.0)


def test_empty_input_and_empty_context(model, vocab):
    assert decode(model, [], DecodingConfig(), vocabulary=vocab) == []
    (hyps,) = decode(model, [[]], DecodingConfig(), vocabulary=vocab)
    assert hyps and hyps[0].tokens


@pytest.mark.cuda
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
def test_cuda_matches_cpu(vocab, contexts):
    model = make_model(vocab, seed=11)
    config = DecodingConfig(beam_size=4, n_best=2)
    cpu = decode(model, contexts, config, vocabulary=vocab)
    gpu = decode(model.to("cuda"), contexts, config, vocabulary=vocab)
    for a, b in zip(gpu, cpu):
        assert [h.tokens for h in a] == [h.tokens for h in b]
        assert [h.score for h in a] == pytest.approx([h.score for h in b], abs=1e-3)
