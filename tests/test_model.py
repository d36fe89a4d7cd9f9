"""The HRED itself: causality, no target leakage, context use, and the step API."""

import copy
import math
import random

import pytest
import torch
from support.oracles import reference_log_probs, reference_step

import rasa_hred.core.model as model_module
from rasa_hred.core import training
from rasa_hred.core.batching import DialogueIds, encode_dialogues
from rasa_hred.core.evaluation import evaluate
from rasa_hred.core.model import HRED, DialogueBatch, HREDConfig, Memory
from rasa_hred.core.training import Trainer, TrainingConfig
from rasa_hred.core.vocab import Vocabulary

pytestmark = pytest.mark.usefixtures("one_torch_thread")


def tiny_config(vocab_size=50, **overrides) -> HREDConfig:
    values = dict(
        vocab_size=vocab_size,
        embedding_size=16,
        utterance_hidden=24,
        context_hidden=20,
        decoder_hidden=28,
        dropout=0.0,
    )
    return HREDConfig(**(values | overrides))


def random_dialogues(count: int, vocab_size: int, seed: int = 0) -> list[DialogueIds]:
    rng = random.Random(seed)
    return [
        [
            [2, *(rng.randrange(7, vocab_size) for _ in range(rng.randint(1, 8))), 3]
            for _ in range(rng.randint(2, 5))
        ]
        for _ in range(count)
    ]


@pytest.mark.parametrize("bidirectional", [False, True])
@pytest.mark.parametrize("maxout", [False, True])
def test_untrained_loss_is_close_to_log_vocabulary(bidirectional, maxout):
    torch.manual_seed(0)
    vocab_size = 500
    model = HRED(tiny_config(vocab_size, bidirectional=bidirectional, maxout=maxout)).eval()
    batch = DialogueBatch.from_ids(random_dialogues(32, vocab_size), pad_id=0)
    with torch.no_grad():
        out = model(batch)
    mean = float(out["loss_sum"] / out["tokens"])
    # A model that could see its targets would score far below ln V before any training.
    assert abs(mean - math.log(vocab_size)) < 0.1 * math.log(vocab_size)


@pytest.mark.parametrize("attention", [False, True])
def test_outputs_before_t_do_not_depend_on_tokens_at_or_after_t(attention):
    torch.manual_seed(0)
    model = HRED(tiny_config(attention=attention)).eval()
    dialogues = random_dialogues(6, 50, seed=1)
    for d in dialogues:
        d[-1] = [2, *range(10, 22), 3]  # a long last utterance to edit
    before, mask = model.token_log_probs(DialogueBatch.from_ids(dialogues, 0), "last")
    t = 5
    edited = [[*d[:-1], d[-1][: t + 1] + [40] * (len(d[-1]) - t - 2) + [3]] for d in dialogues]
    after, _ = model.token_log_probs(DialogueBatch.from_ids(edited, 0), "last")
    # Target position k predicts token k + 1 from tokens 0..k; tokens >= t + 1 were changed.
    torch.testing.assert_close(before[:, :t], after[:, :t])
    assert not torch.allclose(before[:, t + 1 :], after[:, t + 1 :])
    assert mask.all()


@pytest.mark.parametrize("attention", [False, True])
def test_each_dialogue_is_decoded_with_its_own_context(attention):
    torch.manual_seed(0)
    model = HRED(tiny_config(attention=attention)).eval()
    dialogues = random_dialogues(8, 50, seed=2)
    together, _ = model.token_log_probs(DialogueBatch.from_ids(dialogues, 0), "all")
    rows = []
    for d in dialogues:
        alone, alone_mask = model.token_log_probs(DialogueBatch.from_ids([d], 0), "all")
        rows.extend(zip(alone, alone_mask))
    for row, (alone, alone_mask) in zip(together, rows):
        n = int(alone_mask.sum(-1))
        torch.testing.assert_close(row[:n], alone[:n], atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("attention", [False, True])
def test_step_api_matches_teacher_forcing(attention):
    """Decoding reads the context (and its words) as training does."""
    torch.manual_seed(0)
    model = randomise_biases(HRED(tiny_config(bidirectional=True, attention=attention))).eval()
    dialogue = [[2, 7, 8, 9, 3], [2, 10, 11, 3], *random_dialogues(1, 50, seed=3)[0]]
    forced, _ = model.token_log_probs(DialogueBatch.from_ids([dialogue], 0), "last")
    with torch.no_grad():
        context, memory = model.encode_contexts([dialogue[:-1]])
        assert (memory is not None) == attention
        decoder = model.start_decoding(context, memory)
        hidden = decoder.initial_hidden()
        target = dialogue[-1]
        stepped = []
        for k in range(len(target) - 1):
            log_probs, hidden = decoder.step(torch.tensor([target[k]]), hidden)
            stepped.append(float(log_probs[0, target[k + 1]]))
    torch.testing.assert_close(forced[0, : len(stepped)], torch.tensor(stepped), atol=1e-5, rtol=0)


def randomise_biases(model: HRED) -> HRED:
    """HRED starts with zero biases; a wrongly placed bias would then go unnoticed."""
    with torch.no_grad():
        for name, parameter in model.named_parameters():
            if "bias" in name:
                parameter.normal_(std=0.5)
    return model


@pytest.mark.parametrize(
    ("layers", "maxout", "tie", "dtype", "attention"),
    [
        (1, True, True, torch.float32, False),  # oneDNN-prepacked weights (CPUs with oneDNN)
        (2, True, False, torch.float32, False),
        (1, False, False, torch.float32, False),
        (3, False, True, torch.float32, False),
        (2, True, False, torch.float64, False),  # plain matrix products
        (1, False, True, torch.float64, False),
        (1, True, True, torch.float32, True),
        (2, False, False, torch.float64, True),
    ],
)
def test_decoder_step_equals_the_full_gru_reference(layers, maxout, tie, dtype, attention):
    torch.manual_seed(layers)
    config = tiny_config(
        decoder_layers=layers, maxout=maxout, tie_embeddings=tie, attention=attention
    )
    model = randomise_biases(HRED(config)).to(dtype).eval()
    tolerance = {"atol": 1e-5, "rtol": 1e-5} if dtype == torch.float32 else {}
    with torch.inference_mode():
        # the first context is empty: its row attends to nothing
        context, memory = model.encode_contexts([[], [[2, 9, 10, 3]], [[2, 5, 3], [2, 7, 8, 3]]])
        decoder = model.start_decoding(context, memory)
        decoder.repeat(2)
        rows = context.repeat_interleave(2, dim=0)
        row_memory = memory.select(torch.arange(3).repeat_interleave(2)) if memory else None
        hidden = decoder.initial_hidden()
        want_hidden = model.initial_decoder_state(rows)
        torch.testing.assert_close(hidden, want_hidden)
        previous = torch.tensor([2, 2, 9, 17, 30, 49])
        for order in ([0, 1, 2, 3, 4, 5], [5, 5, 0, 3, 1, 2], [1, 0, 4]):
            got, hidden = decoder.step(previous, hidden)
            want, want_hidden = reference_step(model, previous, want_hidden, rows, row_memory)
            assert got.dtype == torch.float32 and got.shape == (len(previous), config.vocab_size)
            torch.testing.assert_close(got, want, **tolerance)
            torch.testing.assert_close(hidden, want_hidden, **tolerance)
            # as beam search does: keep, reorder and repeat rows between steps
            index = torch.tensor(order)
            decoder.select(index)
            rows = rows[index]
            row_memory = row_memory.select(index) if row_memory else None
            hidden, want_hidden = hidden.index_select(1, index), want_hidden.index_select(1, index)
            previous = got.argmax(-1)[index]


def test_decoder_step_follows_weights_changed_in_place():
    torch.manual_seed(0)
    model = randomise_biases(HRED(tiny_config(decoder_layers=2, tie_embeddings=False))).eval()
    other = randomise_biases(HRED(model.config)).eval()
    context = torch.randn(4, model.config.context_hidden)
    previous = torch.tensor([2, 5, 9, 11])

    def step_and_reference():
        with torch.inference_mode():
            decoder = model.start_decoding(context)
            hidden = decoder.initial_hidden()
            got, _ = decoder.step(previous, hidden)
            want, _ = reference_step(model, previous, hidden, context)
        return got, want

    before, _ = step_and_reference()  # weights (prepacked on oneDNN CPUs) are cached now
    with torch.no_grad():
        for parameter in model.parameters():
            parameter.mul_(1.5)
    got, want = step_and_reference()
    torch.testing.assert_close(got, want, atol=1e-5, rtol=1e-5)
    assert not torch.allclose(got, before)
    model.load_state_dict(other.state_dict())
    got, want = step_and_reference()
    torch.testing.assert_close(got, want, atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("tiled", [False, True], ids=["few-rows", "tiled"])
@pytest.mark.parametrize("attention", [False, True])
def test_decoder_step_with_bf16_weights_stays_close_to_the_reference(attention, tiled, monkeypatch):
    """bf16 weights run prepacked on CPUs with bf16 units (from TILED_FROM_ROWS rows on,
    padded to whole tiles) and as plain products elsewhere; either way the step is the
    float64 reference of the same (bf16-rounded) weights, up to bf16 rounding of the
    activations."""
    monkeypatch.setattr(model_module, "TILED_FROM_ROWS", 1 if tiled else 10**9)
    torch.manual_seed(3)
    model = randomise_biases(HRED(tiny_config(decoder_layers=2, attention=attention)))
    model = model.to(torch.bfloat16).eval()
    exact = copy.deepcopy(model).to(torch.float64)
    contexts = [[[2, 9, 10, 3]], [[2, 5, 3], [2, 7, 8, 3]], []]
    previous = torch.tensor([2, 2, 9])
    with torch.inference_mode():
        context, memory = model.encode_contexts(contexts)
        decoder = model.start_decoding(context, memory)
        hidden = decoder.initial_hidden()
        rows = context.double()
        row_memory = Memory(memory.states.double(), memory.mask) if memory else None
        want_hidden = hidden.double()
        for _ in range(3):
            got, hidden = decoder.step(previous, hidden)
            want, want_hidden = reference_step(exact, previous, want_hidden, rows, row_memory)
            assert got.dtype == torch.float32 and hidden.dtype == torch.bfloat16
            torch.testing.assert_close(got.double(), want.double(), atol=6e-2, rtol=2e-2)
            torch.testing.assert_close(hidden.double(), want_hidden.double(), atol=3e-2, rtol=2e-2)
            assert torch.equal(got.argmax(-1), want.argmax(-1))
            previous = got.argmax(-1)


def test_decoder_step_under_bf16_autocast_stays_close_to_the_reference():
    torch.manual_seed(0)
    model = randomise_biases(HRED(tiny_config(decoder_layers=2))).eval()
    context = torch.randn(4, model.config.context_hidden)
    previous = torch.tensor([2, 5, 9, 11])
    with torch.inference_mode(), torch.autocast("cpu", dtype=torch.bfloat16):
        decoder = model.start_decoding(context)
        hidden = decoder.initial_hidden()
        got, _ = decoder.step(previous, hidden)
    with torch.inference_mode():
        want, _ = reference_step(model, previous, hidden.float(), context)
    torch.testing.assert_close(got, want, atol=5e-2, rtol=1e-2)


@pytest.mark.parametrize("attention", [False, True])
def test_teacher_forced_pass_equals_the_unpacked_reference(attention):
    torch.manual_seed(0)
    model = randomise_biases(HRED(tiny_config(decoder_layers=2, attention=attention))).eval()
    lengths = [5, 0, 2, 7]  # a row with nothing to predict is allowed (MMI scores empty replies)
    inputs = torch.randint(7, 50, (len(lengths), max(lengths)))
    inputs[:, 0] = 2
    targets = torch.randint(7, 50, inputs.shape)
    mask = torch.arange(inputs.size(1)) < torch.tensor(lengths).unsqueeze(1)
    with torch.inference_mode():
        context, memory = model.encode_contexts(
            [[[2, 9, 3]], [[2, 11, 12, 3]], [], [[2, 5, 3], [2, 6, 7, 8, 3]]]
        )
        got = model.target_log_probs(inputs, targets, mask, context, memory)
        reference = reference_log_probs(model, inputs, context, memory)
    want = reference.gather(2, targets.unsqueeze(2)).squeeze(2) * mask
    torch.testing.assert_close(got, want, atol=1e-5, rtol=1e-5)
    with torch.inference_mode():
        nothing = model.target_log_probs(
            inputs[1:2],
            targets[1:2],
            mask[1:2],
            context[1:2],
            memory.select(torch.tensor([1])) if memory else None,
        )
    assert nothing.shape == (1, inputs.size(1)) and not nothing.any()


def test_empty_context_gives_zero_context_vector():
    model = HRED(tiny_config()).eval()
    vectors = model.context_vectors([[], [[2, 9, 3]]])
    assert torch.count_nonzero(vectors[0]) == 0
    assert torch.count_nonzero(vectors[1]) > 0


def test_attention_memory_holds_every_context_word_and_nothing_else():
    model = HRED(tiny_config(attention=True)).eval()
    contexts = [[], [[2, 9, 3]], [[2, 9, 10, 11, 3], [2, 12, 3]]]
    with torch.no_grad():
        _, memory = model.encode_contexts(contexts)
    assert memory is not None
    assert memory.mask.sum(1).tolist() == [0, 3, 8]  # <s> and </s> are words the encoder read
    assert torch.count_nonzero(memory.states[0]) == 0
    assert model.encode_contexts([[], []])[1] is None
    assert HRED(tiny_config()).encode_contexts(contexts)[1] is None  # no attention, no memory


def test_attention_memory_knows_how_many_turns_back_a_word_was_said():
    """The encoder reads each utterance alone: the same utterance said one and two turns
    back must still differ in memory, and by nothing but the distance."""
    model = HRED(tiny_config(attention=True)).eval()
    said = [2, 9, 10, 3]
    with torch.no_grad():
        _, memory = model.encode_contexts([[said, said]])
    assert memory is not None
    older, latest = memory.states[0][memory.mask[0]].view(2, len(said), -1)
    distances = model.turn_distance.weight
    torch.testing.assert_close(older - distances[1], latest - distances[0])
    assert not torch.allclose(older, latest)


def test_a_target_turn_attends_only_to_the_turns_before_it():
    """Training decodes every turn of a dialogue at once: turn 1 must not read the words of
    turns 2 and 3, which the same memory holds for the later targets."""
    torch.manual_seed(0)
    model = randomise_biases(HRED(tiny_config(attention=True))).eval()
    dialogue = [[2, 7, 8, 3], [2, 9, 10, 11, 3], [2, 12, 13, 3], [2, 14, 15, 16, 3]]
    edited = [dialogue[0], dialogue[1], [2, 40, 41, 42, 43, 44, 3], dialogue[3]]
    with torch.no_grad():
        before, mask = model.token_log_probs(DialogueBatch.from_ids([dialogue], 0), "all")
        after, _ = model.token_log_probs(DialogueBatch.from_ids([edited], 0), "all")
    turn_1 = int(mask[0].sum())
    torch.testing.assert_close(before[0, :turn_1], after[0, :turn_1])
    assert not torch.allclose(before[2, :4], after[2, :4])  # turn 3 reads the edited turn 2


def test_attention_reaches_the_reply_beyond_the_context_state():
    """With the context vector held fixed, the words in memory still change the reply's
    scores (and with no memory the attended words are zeros, as for an empty context)."""
    torch.manual_seed(0)
    model = randomise_biases(HRED(tiny_config(attention=True))).eval()
    with torch.no_grad():
        context, memory = model.encode_contexts([[[2, 9, 10, 3]], [[2, 30, 31, 32, 3]]])
        assert memory is not None
        swapped = memory.select(torch.tensor([1, 0]))
        previous = torch.tensor([2, 2])
        steps = model.start_decoding(context, memory)
        own, _ = steps.step(previous, steps.initial_hidden())
        steps = model.start_decoding(context, swapped)
        other, _ = steps.step(previous, steps.initial_hidden())
        steps = model.start_decoding(context, None)
        none, _ = steps.step(previous, steps.initial_hidden())
        want, _ = reference_step(model, previous, model.initial_decoder_state(context), context)
    assert not torch.allclose(own, other)
    torch.testing.assert_close(none, want, atol=1e-5, rtol=1e-5)


def test_loss_on_last_scores_only_last_utterances():
    dialogues = random_dialogues(5, 50, seed=4)
    model = HRED(tiny_config()).eval()
    out = model(DialogueBatch.from_ids(dialogues, 0), loss_on="last")
    assert int(out["tokens"]) == sum(len(d[-1]) - 1 for d in dialogues)
    out = model(DialogueBatch.from_ids(dialogues, 0), loss_on="all")
    assert int(out["tokens"]) == sum(len(u) - 1 for d in dialogues for u in d[1:])


def test_scheduled_sampling_keeps_targets_and_changes_inputs():
    torch.manual_seed(0)
    model = HRED(tiny_config())
    batch = DialogueBatch.from_ids(random_dialogues(16, 50, seed=5), 0)
    forced = model(batch, sampling_prob=0.0)
    sampled = model(batch, sampling_prob=1.0)
    assert int(sampled["tokens"]) == int(forced["tokens"])
    assert not torch.isclose(sampled["loss_sum"], forced["loss_sum"])


def _code_corpus(count: int, seed: int) -> list[list[str]]:
    """The reply is determined by the first utterance; the middle one is noise."""
    rng = random.Random(seed)
    codes = [f"c{i}" for i in range(12)]
    fillers = [f"f{i}" for i in range(30)]
    dialogues = []
    for _ in range(count):
        code = rng.randrange(len(codes))
        noise = " ".join(rng.choices(fillers, k=rng.randint(2, 5)))
        dialogues.append([f"say {codes[code]}", noise, f"r{code} ok"])
    return dialogues


@pytest.fixture
def no_plots(monkeypatch):
    """The per-epoch training plot (matplotlib) costs far more than these tiny epochs."""
    monkeypatch.setattr(training, "plot_metrics", lambda metrics_file, image: None)


@pytest.mark.usefixtures("no_plots")
def test_trained_model_uses_its_context(tmp_path):
    train, test = _code_corpus(600, seed=0), _code_corpus(100, seed=1)
    config = TrainingConfig(
        out=str(tmp_path / "m"),
        embedding_size=24,
        hidden_size=48,
        bidirectional=False,
        dropout=0.0,
        epochs=8,
        batch_size=32,
        lr=5e-3,
        early_stopping=0,
        device="cpu",
        progress=False,
    )
    trainer = Trainer(config, train, test[:20])
    trainer.fit()
    ids = encode_dialogues(test, trainer.vocabulary)
    result = evaluate(trainer.model, ids)
    # With its own context the reply code is known (ppl_last near 1.5); after a foreign
    # context it is a guess among 12 codes. A model ignoring its context scores both alike.
    assert result["perplexity_last"] < 2.0
    assert result["perplexity_last_shuffled_context"] > 2 * result["perplexity_last"]


@pytest.mark.usefixtures("no_plots")
def test_small_model_memorises_a_tiny_corpus(tmp_path):
    dialogues = [
        ["hello there", "hi , how are you ?", "fine thanks"],
        ["what film did you see ?", "a western with horses"],
        ["do you like jazz ?", "only on sundays", "me too"],
    ]
    config = TrainingConfig(
        out=str(tmp_path / "m"),
        embedding_size=32,
        hidden_size=64,
        dropout=0.0,
        epochs=60,
        batch_size=3,
        lr=1e-2,
        early_stopping=0,
        device="cpu",
        progress=False,
    )
    trainer = Trainer(config, dialogues, [])
    trainer.fit()
    vocab: Vocabulary = trainer.vocabulary
    result = evaluate(trainer.model, encode_dialogues(dialogues, vocab))
    assert result["perplexity"] < 1.1
    assert result["error_rate"] == 0.0


def test_diversity_counts_distinct_ngrams_and_unique_replies():
    from rasa_hred.core.evaluation import diversity

    figures = diversity([["i", "am", "fine"], ["i", "am", "fine"], ["no"]])
    assert figures["replies"] == 3
    assert figures["distinct_1"] == pytest.approx(4 / 7)
    assert figures["distinct_2"] == pytest.approx(2 / 4)
    assert figures["unique_reply_share"] == pytest.approx(2 / 3)
