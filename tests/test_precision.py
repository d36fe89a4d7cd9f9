"""Inference precision: which dtype ``auto`` picks, and that bf16 keeps a trained model's
replies and perplexity."""

from __future__ import annotations

import logging
import math

import pytest
import torch

from rasa_hred.core.batching import encode_dialogues
from rasa_hred.core.checkpoint import load_model
from rasa_hred.core.evaluation import perplexity, score
from rasa_hred.core.model import HRED, DialogueBatch, HREDConfig
from rasa_hred.core.precision import (
    BF16_ROW_MULTIPLE,
    cpu_has_bf16_units,
    resolve_dtype,
    stable_row_count,
)
from rasa_hred.core.training import TrainingConfig
from rasa_hred.core.training import autocast as training_autocast
from rasa_hred.corpora import load_corpus
from rasa_hred.errors import UserError
from rasa_hred.serving.generator import ResponseGenerator

CPU = torch.device("cpu")

pytestmark = pytest.mark.usefixtures("one_torch_thread")


def without_bf16_units(monkeypatch: pytest.MonkeyPatch) -> None:
    """Make this process's CPU probe answer as an older CPU's would."""
    monkeypatch.setattr(torch.cpu, "_is_amx_tile_supported", lambda: False, raising=False)
    monkeypatch.setattr(torch.cpu, "_is_avx512_bf16_supported", lambda: False, raising=False)


def test_auto_follows_the_cpu_probe(monkeypatch):
    expected = torch.bfloat16 if cpu_has_bf16_units() else torch.float32
    assert resolve_dtype("auto", CPU) == expected
    without_bf16_units(monkeypatch)
    assert not cpu_has_bf16_units()
    assert resolve_dtype("auto", CPU) == torch.float32


def test_a_probe_that_fails_or_is_missing_means_no_bf16(monkeypatch):
    def broken() -> bool:
        raise RuntimeError("cpuinfo unavailable")

    monkeypatch.setattr(torch.cpu, "_is_amx_tile_supported", broken, raising=False)
    monkeypatch.delattr(torch.cpu, "_is_avx512_bf16_supported", raising=False)
    assert resolve_dtype("auto", CPU) == torch.float32


def test_explicit_dtypes_and_bad_names():
    assert resolve_dtype("float32", CPU) == torch.float32
    assert resolve_dtype("bfloat16", CPU) == torch.bfloat16
    assert resolve_dtype(torch.bfloat16, CPU) == torch.bfloat16
    with pytest.raises(ValueError, match="dtype must be one of auto, float32, bfloat16"):
        resolve_dtype("fp8", CPU)


def test_load_converts_the_weights_once_and_logs_the_choice(tiny_hred, caplog, monkeypatch):
    with caplog.at_level(logging.INFO, logger="rasa_hred.serving.generator"):
        gen = ResponseGenerator.load(tiny_hred, device="cpu", dtype="bfloat16")
    assert gen.dtype == torch.bfloat16
    assert {p.dtype for p in gen.model.parameters()} == {torch.bfloat16}
    assert "inference in bfloat16 on the CPU" in caplog.text
    assert gen.generate([["hello"]])[0].text
    without_bf16_units(monkeypatch)
    assert ResponseGenerator.load(tiny_hred, device="cpu").dtype == torch.float32
    with pytest.raises(UserError, match="dtype must be one of"):
        ResponseGenerator.load(tiny_hred, device="cpu", dtype="half-ish")


def test_bf16_keeps_the_trained_models_replies_and_perplexity(tiny_hred):
    """The fidelity bars of the serving-speed issue, on a trained model: the same best reply
    for >= 90% of 200 contexts, last-utterance perplexity within 1%."""
    corpus = load_corpus(["chatterbot:english"], seed=0)
    dialogues = [d for d in (*corpus.test, *corpus.validation, *corpus.train) if len(d) >= 2]
    contexts = [list(d[:-1]) for d in dialogues[:200]]
    assert len(contexts) == 200
    replies = {}
    for dtype in ("float32", "bfloat16"):
        gen = ResponseGenerator.load(tiny_hred, device="cpu", dtype=dtype)
        replies[dtype] = [r.text for r in gen.generate(contexts)]
    same = sum(a == b for a, b in zip(replies["float32"], replies["bfloat16"], strict=True))
    print(f"same best reply: {same}/200")
    assert same >= 180

    loaded = load_model(tiny_hred, CPU)
    encoded = encode_dialogues(dialogues[:400], loaded.vocabulary)
    with torch.inference_mode():
        fp32 = perplexity(score(loaded.model, encoded, "last"))
        bf16 = perplexity(score(loaded.model.to(torch.bfloat16), encoded, "last"))
    print(f"perplexity_last fp32 {fp32:.3f} bf16 {bf16:.3f} ({bf16 / fp32:.4f}x)")
    assert math.isfinite(fp32)
    assert abs(bf16 / fp32 - 1) <= 0.01


def test_the_policy_takes_dtype_and_threads_options(tiny_hred):
    from rasa_hred.integration.loading import (
        HREDPolicyError,
        load_policy_generator,
        validate_policy_config,
        with_defaults,
    )

    gen = load_policy_generator(tiny_hred, {"model": str(tiny_hred), "dtype": "float32"})
    assert gen.dtype == torch.float32
    gen = load_policy_generator(tiny_hred, {"model": str(tiny_hred), "dtype": "bfloat16"})
    assert gen.dtype == torch.bfloat16
    for bad in ({"dtype": "fp8"}, {"threads": 0}, {"threads": "two"}):
        with pytest.raises(HREDPolicyError, match=r"dtype|threads"):
            validate_policy_config(with_defaults({"model": str(tiny_hred), **bad}))


@pytest.mark.parametrize(
    ("cpu_bf16", "expected"), [(True, True), (False, False), ("auto", cpu_has_bf16_units())]
)
def test_training_autocast_on_the_cpu_follows_cpu_bf16(
    cpu_bf16: bool | str, expected: bool
) -> None:
    config = TrainingConfig.from_dict({"cpu_bf16": cpu_bf16})
    with training_autocast(torch.device("cpu"), cpu_bf16=config.cpu_bf16):
        assert torch.is_autocast_cpu_enabled() is expected


def test_training_refuses_other_cpu_bf16_values() -> None:
    with pytest.raises(UserError, match="cpu_bf16 must be true, false or auto, not 'sometimes'"):
        TrainingConfig.from_dict({"cpu_bf16": "sometimes"})


def test_bf16_products_on_the_cpu_are_rounded_to_few_row_counts():
    fp32, bf16 = torch.zeros(2), torch.zeros(2, dtype=torch.bfloat16)
    assert [stable_row_count(n, fp32) for n in (0, 1, 65)] == [0, 1, 65]
    assert [stable_row_count(n, bf16) for n in (0, 1, 64, 65)] == [0, 64, 64, 128]
    with torch.autocast("cpu", dtype=torch.bfloat16):
        assert stable_row_count(65, fp32) == 2 * BF16_ROW_MULTIPLE
    if torch.cuda.is_available():  # cuBLAS has no per-shape compile to avoid
        assert stable_row_count(65, bf16.cuda()) == 65


def tiny_model_and_batch() -> tuple[HRED, DialogueBatch]:
    """A model without dropout and a batch with 11 modelled tokens after the first turns."""
    torch.manual_seed(0)
    config = HREDConfig(
        vocab_size=40,
        embedding_size=8,
        utterance_hidden=12,
        context_hidden=12,
        decoder_hidden=12,
        dropout=0.0,
    )
    batch = DialogueBatch.from_ids(
        [[[2, 5, 6, 3], [2, 7, 8, 9, 3], [2, 10, 3]], [[2, 11, 3], [2, 12, 13, 14, 15, 3]]],
        config.pad_id,
    )
    return HRED(config), batch


def test_padded_bf16_output_rows_give_the_unpadded_logits_and_gradients(monkeypatch):
    """Under bf16 autocast the output layer runs on a multiple of BF16_ROW_MULTIPLE rows; the
    real rows' logits and every gradient are those of the real rows alone."""
    model, batch = tiny_model_and_batch()
    rows_seen: list[int] = []
    model.output.register_forward_hook(lambda _m, args, _out: rows_seen.append(len(args[0])))

    def logits_and_grads() -> tuple[torch.Tensor, list[torch.Tensor]]:
        model.zero_grad()
        context, utterances, _ = model._decoded_utterances(batch, "all")
        inputs, _, mask = model._shift(utterances)
        with torch.autocast("cpu", dtype=torch.bfloat16):
            logits = model.teacher_forced_logits(inputs, mask, context)
        logits.float().square().sum().backward()
        return logits.detach().float(), [p.grad.clone() for p in model.parameters()]

    padded, padded_grads = logits_and_grads()
    real_rows = len(padded)  # the modelled tokens: 2 + 4 + 5 after the first turns
    assert real_rows == 11
    assert rows_seen == [BF16_ROW_MULTIPLE]
    monkeypatch.setattr("rasa_hred.core.precision.BF16_ROW_MULTIPLE", 1)
    alone, alone_grads = logits_and_grads()
    assert rows_seen[-1] == real_rows
    torch.testing.assert_close(padded, alone)
    for with_padding, without in zip(padded_grads, alone_grads):
        torch.testing.assert_close(with_padding, without)


def test_padded_bf16_output_rows_leave_the_training_loss_and_its_gradients_alone(monkeypatch):
    """The training loss keeps the padding rows and leaves them out by their target (a
    slice would cost a [K, V] fill and copy in the backward pass): loss and gradients are
    those of the real rows alone."""
    model, batch = tiny_model_and_batch()

    def loss_and_grads() -> tuple[torch.Tensor, int, list[torch.Tensor]]:
        model.zero_grad()
        with torch.autocast("cpu", dtype=torch.bfloat16):
            out = model(batch, loss_on="all")
        out["loss_sum"].backward()
        return (
            out["loss_sum"].detach(),
            int(out["tokens"]),
            [p.grad.clone() for p in model.parameters()],
        )

    padded, tokens, padded_grads = loss_and_grads()
    assert tokens == 11 and padded > 0
    monkeypatch.setattr("rasa_hred.core.precision.BF16_ROW_MULTIPLE", 1)
    alone, _, alone_grads = loss_and_grads()
    torch.testing.assert_close(padded, alone)
    for with_padding, without in zip(padded_grads, alone_grads, strict=True):
        torch.testing.assert_close(with_padding, without)


def bf16_model_with_trained_logit_sizes() -> HRED:
    """An untrained bf16 HRED whose logits reach about 15, as a trained model's do: bf16
    rounds them in steps of 1/16 there."""
    torch.manual_seed(0)
    model = HRED(HREDConfig(vocab_size=500, embedding_size=32, decoder_hidden=32)).eval()
    with torch.no_grad():
        model.output.weight.mul_(6)
    return model.to(torch.bfloat16)


def test_bf16_beam_candidates_get_float32_log_probs():
    """A bf16 product rounds logits to 8 bits; beam search recomputes its candidates' logits
    in float32 and corrects each row's logsumexp, so their log-probs are close to those of
    float32 arithmetic on the same features and weights (the other tokens' rounding stays in
    the logsumexp)."""
    from rasa_hred.core.decoding import _float32_log_probs, best_continuations
    from rasa_hred.core.kernels import logsumexp

    model = bf16_model_with_trained_logit_sizes()
    config = model.config
    context = torch.randn(6, config.context_hidden).to(torch.bfloat16)
    with torch.inference_mode():
        decoder = model.start_decoding(context)
        logits, _ = decoder.logits(torch.full((6,), config.bos_id), decoder.initial_hidden())
        assert decoder.features is not None
        reference = torch.log_softmax(
            decoder.features.float() @ model.output.weight.float().T + model.output.bias.float(),
            dim=1,
        )
        log_norm = logsumexp(logits)
        scores = torch.zeros(2, 3)
        top, source, tokens = best_continuations(logits, scores - log_norm.view(2, 3), 6)
        rows = torch.arange(2).unsqueeze(1) * 3 + source
        expected = reference[rows, tokens]
        rounded = logits[rows, tokens].float() - log_norm[rows]
        found = _float32_log_probs(decoder, logits, log_norm, rows, tokens, top > -math.inf)
    assert (rounded - expected).abs().max() > 0.01  # the case is one rounding matters in
    assert (found - expected).abs().max() < 0.005


def test_bf16_beam_search_ranks_on_float32_logits():
    """Candidates that bf16 rounding ties (the same rounded logit) come out in their float32
    order, with float32 log-probs."""
    from rasa_hred.core.decoding import DecodingConfig, decode

    model = bf16_model_with_trained_logit_sizes()
    config = model.config
    contexts = [[[2, 10 + i, 20 + i, 3]] for i in range(6)]
    with torch.inference_mode():
        vectors, memory = model.encode_contexts(contexts)
        decoder = model.start_decoding(vectors, memory)
        logits, _ = decoder.logits(torch.full((6,), config.bos_id), decoder.initial_hidden())
        assert decoder.features is not None
        weight, bias = model.output.weight.float(), model.output.bias.float()
        reference = torch.log_softmax(decoder.features.float() @ weight.T + bias, dim=1)
        rounded = torch.log_softmax(logits.float(), dim=1)
    found = decode(model, contexts, DecodingConfig(beam_size=3, n_best=3, max_length=1))
    worst_rounded = 0.0
    for row, hypotheses in enumerate(found):
        tokens = [h.tokens[0] for h in hypotheses]
        exact = [reference[row, t].item() for t in tokens]
        assert exact == sorted(exact, reverse=True)
        for hypothesis, token in zip(hypotheses, tokens):
            assert hypothesis.token_log_probs[0] == pytest.approx(reference[row, token], abs=1e-3)
            worst_rounded = max(worst_rounded, abs(rounded[row, token] - reference[row, token]))
    assert worst_rounded > 3e-3  # rounding matters here: bf16 log-probs would fail above
