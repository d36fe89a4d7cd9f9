"""The C kernels (both their AVX-512 and plain loops) against PyTorch: beam search's row
reductions, and beam search with them against beam search without them; training's softmax
cross-entropy and dropout."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from rasa_hred.core import kernels
from rasa_hred.core.decoding import DecodingConfig, decode
from rasa_hred.core.model import HRED, HREDConfig

INF = float("inf")


def test_the_extension_is_built() -> None:
    # setup.py marks it optional, so a failed build would otherwise pass unnoticed
    assert kernels.compiled()


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
    found = kernels.logsumexp(logits)
    assert found.dtype == torch.float32 and found.shape == (9,)
    assert found[4] == -INF
    finite = reference.isfinite()
    assert torch.allclose(found[finite].double(), reference[finite], rtol=1e-6, atol=2e-6)


def test_logsumexp_reads_strided_rows(loops: bool) -> None:
    wide = logits_like(6, 1050, torch.bfloat16)
    view = wide[:, 20:1020]  # rows 1050 elements apart
    assert not view.is_contiguous()
    found = kernels.logsumexp(view)
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
    found = kernels.block_max(logits, block)
    assert found.shape == (5, blocks)
    assert torch.equal(found, expected)
    assert torch.equal(kernels.block_max(logits, block, native=False), expected)


def test_pytorch_fallback_agrees() -> None:
    logits = logits_like(4, 999, torch.bfloat16)
    assert torch.allclose(
        kernels.logsumexp(logits), kernels.logsumexp(logits, native=False), atol=2e-6
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
    monkeypatch.setattr(kernels, "compiled", lambda: False)
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
    found = kernels.mass_above(probs, threshold)
    expected = kernels.mass_above(probs, threshold, native=False)
    torch.testing.assert_close(found, expected, atol=1e-6, rtol=1e-5)
    assert found[3] == pytest.approx(1.0, abs=1e-5) and found[4] == 0.0


# --- training: the output layer and its cross-entropy --------------------------------------


def output_layer(rows: int, vocab: int, size: int = 24, seed: int = 0) -> tuple[torch.Tensor, ...]:
    generator = torch.Generator().manual_seed(seed)
    features = torch.randn(rows, size, generator=generator).requires_grad_()
    weight = (torch.randn(vocab, size, generator=generator) * 0.7).requires_grad_()
    bias = torch.randn(vocab, generator=generator).requires_grad_()
    targets = torch.randint(0, vocab, (rows,), generator=generator)
    targets[[4, rows - 1]] = -100  # ignored rows (the output layer's padding rows)
    return features, weight, bias, targets


@pytest.mark.parametrize("vocab", [3, 16, 1000, 10004])
def test_linear_cross_entropy_and_its_gradients_match_float64(loops: bool, vocab: int) -> None:
    features, weight, bias, targets = output_layer(150, vocab)
    found = kernels.linear_cross_entropy(features, weight, bias, targets)
    grads = torch.autograd.grad(found * 0.5, (features, weight, bias))
    double = [t.detach().double().requires_grad_() for t in (features, weight, bias)]
    expected = F.cross_entropy(F.linear(*double), targets, reduction="sum")
    expected_grads = torch.autograd.grad(expected * 0.5, double)
    assert found.dtype == torch.float32
    assert found.item() == pytest.approx(expected.item(), rel=1e-5)
    for grad, reference, tensor in zip(grads, expected_grads, (features, weight, bias)):
        assert grad.dtype == tensor.dtype and grad.shape == tensor.shape
        torch.testing.assert_close(grad.double(), reference, atol=1e-5, rtol=1e-4)


def test_linear_cross_entropy_under_bf16_autocast_matches_pytorchs() -> None:
    features, weight, bias, targets = output_layer(200, 1000)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        found = kernels.linear_cross_entropy(features, weight, bias, targets)
        logits = F.linear(features, weight, bias)
    expected = F.cross_entropy(logits.float(), targets, reduction="sum")
    grads = torch.autograd.grad(found, (features, weight, bias))
    expected_grads = torch.autograd.grad(expected, (features, weight, bias))
    assert found.item() == pytest.approx(expected.item(), rel=2e-3)
    for grad, reference in zip(grads, expected_grads):
        assert grad.dtype == torch.float32  # the parameters' dtype, as autocast gives
        scale = reference.abs().max().item()
        torch.testing.assert_close(grad, reference, atol=0.02 * scale, rtol=0.0)


def test_linear_cross_entropy_without_a_bias_and_ignored_rows_get_no_gradient() -> None:
    features, weight, _, targets = output_layer(90, 50)
    found = kernels.linear_cross_entropy(features, weight, None, targets)
    grad_features, grad_weight = torch.autograd.grad(found, (features, weight))
    expected = F.cross_entropy(F.linear(features, weight), targets, reduction="sum")
    assert found.item() == pytest.approx(expected.item(), rel=1e-5)
    assert not grad_features[[4, 89]].any() and grad_features[5].any()
    torch.testing.assert_close(grad_weight, torch.autograd.grad(expected, weight)[0])


def test_linear_cross_entropy_runs_in_several_threads_alike() -> None:
    features, weight, bias, targets = output_layer(700, 500)
    threads = torch.get_num_threads()
    results = []
    try:
        for count in (1, 3):  # 3 parts of 233-234 rows, each with its own bias sums
            torch.set_num_threads(count)
            loss = kernels.linear_cross_entropy(features, weight, bias, targets)
            results.append((loss.item(), *torch.autograd.grad(loss, (features, bias))))
    finally:
        torch.set_num_threads(threads)
    assert results[0][0] == pytest.approx(results[1][0], rel=1e-6)
    torch.testing.assert_close(results[0][1], results[1][1])
    torch.testing.assert_close(results[0][2], results[1][2], atol=1e-6, rtol=1e-5)


def test_the_workspace_is_reused_only_when_no_graph_needs_it() -> None:
    features, weight, bias, targets = output_layer(64, 100)
    workspace = kernels.Workspace()
    other = (features * -2.0).detach()

    def loss(inputs: torch.Tensor, space: kernels.Workspace | None = None) -> torch.Tensor:
        return kernels.linear_cross_entropy(inputs, weight, bias, targets, workspace=space)

    # a second forward pass while the first one's graph still waits for its backward pass
    together = loss(features, workspace) + loss(other, workspace)
    (found,) = torch.autograd.grad(together, weight)
    (first,) = torch.autograd.grad(loss(features), weight)
    (second,) = torch.autograd.grad(loss(other), weight)
    torch.testing.assert_close(found, first + second)
    # the memory is lent to one user at a time, until it releases it or is gone
    user = Holder()
    memory = workspace.take(64, 100, torch.float32, user)
    assert workspace.take(64, 100, torch.float32, Holder()).data_ptr() != memory.data_ptr()
    workspace.release(user)
    assert workspace.take(64, 100, torch.float32, Holder()).data_ptr() == memory.data_ptr()
    assert workspace.take(64, 100, torch.float32, user).data_ptr() == memory.data_ptr()
    del user  # a graph dropped without its backward pass
    assert workspace.take(64, 100, torch.float32, Holder()).data_ptr() == memory.data_ptr()


class Holder:
    """Something a weak reference can point at, as the autograd node is."""


def test_linear_cross_entropy_refuses_a_second_backward_pass() -> None:
    features, weight, bias, targets = output_layer(30, 40)
    loss = kernels.linear_cross_entropy(features, weight, bias, targets)
    loss.backward(retain_graph=True)
    with pytest.raises(RuntimeError, match="backwards only once"):
        loss.backward()


def test_linear_cross_entropy_refuses_a_target_outside_the_vocabulary() -> None:
    features, weight, bias, _ = output_layer(6, 10)
    targets = torch.tensor([1, 2, 10, -100, 0, 9])
    with pytest.raises(IndexError, match="target 10 is out of bounds for 10 classes"):
        kernels.linear_cross_entropy(features, weight, bias, targets)


def test_linear_cross_entropy_falls_back_to_pytorch_without_the_c_code(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    features, weight, bias, targets = output_layer(20, 64)
    native = kernels.linear_cross_entropy(features, weight, bias, targets)
    monkeypatch.setattr(kernels, "compiled", lambda: False)
    fallback = kernels.linear_cross_entropy(features, weight, bias, targets)
    assert "NllLoss" in type(fallback.grad_fn).__name__
    assert native.item() == pytest.approx(fallback.item(), rel=1e-5)


# --- training: dropout ---------------------------------------------------------------------


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_dropout_keeps_each_element_with_probability_1_minus_p(
    loops: bool, dtype: torch.dtype
) -> None:
    torch.manual_seed(0)
    x = (torch.rand(400, 1001) + 0.5).to(dtype)  # no zeros of its own
    out = kernels.dropout(x, 0.3)
    kept = out != 0
    # 400,400 draws: the kept fraction's standard deviation is 0.0007
    assert kept.float().mean().item() == pytest.approx(0.7, abs=0.004)
    torch.testing.assert_close(out[kept].float(), x[kept].float() / 0.7, rtol=8e-3, atol=0.0)
    # neighbours, rows and columns are not correlated (a broken hash repeats patterns)
    flat = kept.flatten().float()
    for lag in (1, 16, 1001):
        pair = torch.stack([flat[:-lag], flat[lag:]])
        assert abs(torch.corrcoef(pair)[0, 1].item()) < 0.01


def test_dropout_backward_reuses_the_forward_mask(loops: bool) -> None:
    x = torch.randn(300, 77, requires_grad=True)
    out = kernels.dropout(x, 0.5)
    weights = torch.randn(300, 77)
    (grad,) = torch.autograd.grad((out * weights).sum(), x)
    kept = out != 0
    assert torch.equal(grad != 0, kept)
    torch.testing.assert_close(grad[kept], weights[kept] * 2.0)


def test_dropout_follows_torch_manual_seed_and_both_loops_agree() -> None:
    x = torch.ones(5000)
    torch.manual_seed(7)
    first, second = kernels.dropout(x, 0.5), kernels.dropout(x, 0.5)
    assert not torch.equal(first, second)  # a fresh mask every call
    torch.manual_seed(7)
    assert torch.equal(kernels.dropout(x, 0.5), first)
    kernels.choose_avx512(False)
    try:
        torch.manual_seed(7)
        assert torch.equal(kernels.dropout(x, 0.5), first)  # plain C draws the same mask
    finally:
        kernels.choose_avx512(None)


def test_dropout_refuses_a_probability_outside_0_to_1() -> None:
    with pytest.raises(ValueError, match="dropout probability"):
        kernels.dropout(torch.ones(3), 1.0)
    assert kernels.dropout(torch.ones(3), 0.0).tolist() == [1.0, 1.0, 1.0]
