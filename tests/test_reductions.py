"""Beam search's row reductions: the C code (both its AVX-512 and plain loops) against
PyTorch, and beam search with it against beam search without it."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
import torch

from rasa_hred.core import reductions
from rasa_hred.core.decoding import DecodingConfig, decode
from rasa_hred.core.model import HRED, HREDConfig

INF = float("inf")


def test_the_extension_is_built() -> None:
    # setup.py marks it optional, so a failed build would otherwise pass unnoticed
    assert reductions.compiled()


@pytest.fixture(params=[True, False], ids=["avx512", "plain"])
def loops(request: pytest.FixtureRequest) -> Iterator[bool]:
    in_use = reductions.choose_avx512(request.param)
    if request.param and not in_use:
        pytest.skip("this CPU has no AVX-512")  # the plain loops are still checked
    yield in_use
    reductions.choose_avx512(None)


def logits_like(rows: int, vocab: int, dtype: torch.dtype, seed: int = 0) -> torch.Tensor:
    generator = torch.Generator().manual_seed(seed)
    # a trained output layer's spread: logits from about -30 to +15
    return (torch.randn(rows, vocab, generator=generator) * 6).to(dtype)


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float32])
@pytest.mark.parametrize("vocab", [1, 7, 16, 33, 64, 1000, 10004])
def test_logsumexp_matches_float64(loops: bool, dtype: torch.dtype, vocab: int) -> None:
    logits = logits_like(9, vocab, dtype)
    if vocab > 3:
        logits[1, 3] = -INF  # a masked token
        logits[2, -1] = 200.0  # one token far above the rest: exp(x - max) must not overflow
    logits[4] = -INF  # nothing possible: -inf, not nan
    reference = torch.logsumexp(logits.double(), dim=1)
    found = reductions.logsumexp(logits)
    assert found.dtype == torch.float32 and found.shape == (9,)
    assert found[4] == -INF
    finite = reference.isfinite()
    assert torch.allclose(found[finite].double(), reference[finite], rtol=1e-6, atol=2e-6)


def test_logsumexp_reads_strided_rows(loops: bool) -> None:
    wide = logits_like(6, 1050, torch.bfloat16)
    view = wide[:, 20:1020]  # rows 1050 elements apart
    assert not view.is_contiguous()
    found = reductions.logsumexp(view)
    assert torch.allclose(found.double(), torch.logsumexp(view.double(), dim=1), atol=2e-6)


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float32])
@pytest.mark.parametrize(
    ("vocab", "block"), [(10004, 64), (130, 64), (128, 64), (100, 16), (50, 64)]
)
def test_block_max_is_exact(loops: bool, dtype: torch.dtype, vocab: int, block: int) -> None:
    logits = logits_like(5, vocab, dtype, seed=1)
    logits[0, :block] = -INF  # a block with nothing possible
    logits[1, min(block + 3, vocab - 1)] = -INF
    blocks = -(-vocab // block)  # the last one partial
    expected = torch.stack(
        [logits[:, b * block : (b + 1) * block].float().amax(1) for b in range(blocks)], dim=1
    )
    found = reductions.block_max(logits, block)
    assert found.shape == (5, blocks)
    assert torch.equal(found, expected)
    assert torch.equal(reductions.block_max(logits, block, native=False), expected)


def test_pytorch_fallback_agrees() -> None:
    logits = logits_like(4, 999, torch.bfloat16)
    assert torch.allclose(
        reductions.logsumexp(logits), reductions.logsumexp(logits, native=False), atol=2e-6
    )


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_beam_search_is_the_same_without_the_c_code(
    monkeypatch: pytest.MonkeyPatch, dtype: torch.dtype
) -> None:
    torch.manual_seed(3)
    config = HREDConfig(
        vocab_size=300,
        embedding_size=24,
        utterance_hidden=32,
        context_hidden=32,
        decoder_hidden=32,
        attention=True,
    )
    model = HRED(config).to(dtype).eval()
    with torch.no_grad():  # a peaked output layer, as a trained model has
        model.output.weight.mul_(8)
    contexts = [[[2, 7 + i, 20 + 3 * i, 3], [2, 40 + i, 3]] for i in range(12)]
    settings = DecodingConfig(beam_size=4, n_best=3, max_length=12, no_repeat_ngram=2)
    with_c = decode(model, contexts, settings)
    monkeypatch.setattr(reductions, "compiled", lambda: False)
    without = decode(model, contexts, settings)
    for found, expected in zip(with_c, without, strict=True):
        assert [h.tokens for h in found] == [h.tokens for h in expected]
        for h, e in zip(found, expected, strict=True):
            assert h.score == pytest.approx(e.score, abs=1e-4)
            assert h.token_log_probs == pytest.approx(e.token_log_probs, abs=1e-4)


@pytest.mark.parametrize("vocab", [5, 16, 8007])
def test_mass_above_matches_pytorch(vocab: int) -> None:
    probs = logits_like(7, vocab, torch.float32, seed=2).softmax(dim=1)
    threshold = probs[:, 0].clone()
    threshold[3] = -1.0  # everything is above it
    threshold[4] = 2.0  # nothing is
    found = reductions.mass_above(probs, threshold)
    expected = reductions.mass_above(probs, threshold, native=False)
    torch.testing.assert_close(found, expected, atol=1e-6, rtol=1e-5)
    assert found[3] == pytest.approx(1.0, abs=1e-5) and found[4] == 0.0
