"""core/recurrent.run_gru: the stepwise GRU that training on a CPU uses instead of nn.GRU's
packed path must compute the same function, with the same gradients, and so must its C
recurrence (core/kernels.gru_layer) against the same recurrence in PyTorch ops."""

from __future__ import annotations

import random

import pytest
import torch
from torch import nn
from torch.nn.utils.rnn import pack_padded_sequence, pad_packed_sequence

from rasa_hred.core import kernels
from rasa_hred.core.model import HRED, DialogueBatch, HREDConfig
from rasa_hred.core.recurrent import run_gru, use_stepwise_gru


@pytest.mark.parametrize("layers", [1, 2])
@pytest.mark.parametrize("bidirectional", [False, True])
@pytest.mark.parametrize("with_hidden", [False, True])
def test_run_gru_matches_packed_nn_gru_with_gradients(
    layers: int, bidirectional: bool, with_hidden: bool
) -> None:
    torch.manual_seed(layers * 4 + bidirectional * 2 + with_hidden)
    gru = nn.GRU(5, 7, num_layers=layers, bidirectional=bidirectional, batch_first=True)
    gru = gru.double()
    lengths = torch.tensor([3, 1, 6, 6, 2, 5])  # unsorted, ties, a single step
    inputs = torch.randn(6, 7, 5, dtype=torch.double, requires_grad=True)  # one padded step
    directions = 2 if bidirectional else 1
    hidden = (
        torch.randn(layers * directions, 6, 7, dtype=torch.double, requires_grad=True)
        if with_hidden
        else None
    )
    packed = pack_padded_sequence(inputs, lengths, batch_first=True, enforce_sorted=False)
    expected_out, expected_final = gru(packed, hidden)
    expected_out, _ = pad_packed_sequence(expected_out, batch_first=True)
    out, final = run_gru(gru, inputs, lengths, hidden)
    assert out.shape == expected_out.shape == (6, 6, 7 * directions)
    torch.testing.assert_close(out, expected_out)
    torch.testing.assert_close(final, expected_final)
    wrt = [inputs, *gru.parameters(), *([hidden] if hidden is not None else [])]
    weights = torch.randn_like(out)  # a loss that reads every output with its own weight

    def gradients(o: torch.Tensor, f: torch.Tensor) -> tuple[torch.Tensor, ...]:
        return torch.autograd.grad((o * weights).sum() + (f * f).sum(), wrt)

    for got, want in zip(gradients(out, final), gradients(expected_out, expected_final)):
        torch.testing.assert_close(got, want)


def _run_both_ways(
    gru: nn.GRU,
    inputs: torch.Tensor,
    lengths: torch.Tensor,
    hidden: torch.Tensor,
    loss: str,
    bf16: bool = False,
) -> list[tuple[torch.Tensor, ...]]:
    """Outputs, final states and the gradients of ``loss`` (reading the outputs, the final
    states or both), from the C recurrence and from PyTorch ops."""
    steps = int(lengths.max())  # the outputs' length
    weights = torch.randn(len(inputs), steps, gru.hidden_size * (1 + gru.bidirectional))
    results = []
    for native in (True, False):
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
            out, final = run_gru(gru, inputs, lengths, hidden, native=native)
        value = torch.zeros(())
        if loss in ("outputs", "both"):
            value = value + (out.float() * weights).sum()
        if loss in ("final", "both"):
            value = value + final.float().pow(2).sum()
        grads = torch.autograd.grad(value, [inputs, hidden, *gru.parameters()])
        results.append(tuple(t.detach() for t in (out.float(), final.float(), *grads)))
    return results


@pytest.mark.parametrize("layers", [1, 2])
@pytest.mark.parametrize("bidirectional", [False, True])
@pytest.mark.parametrize("loss", ["outputs", "final", "both"])
def test_the_c_recurrence_matches_pytorch_ops_in_float32(
    loops: bool, layers: int, bidirectional: bool, loss: str
) -> None:
    assert kernels.compiled()
    torch.manual_seed(layers + 2 * bidirectional)
    # 37 units: two 16-wide blocks and a remainder, so both loops of each kind run
    gru = nn.GRU(13, 37, num_layers=layers, bidirectional=bidirectional, batch_first=True)
    for weight in gru.parameters():  # large enough to saturate some gates
        nn.init.normal_(weight, std=0.7)
    lengths = torch.tensor([3, 1, 6, 6, 2, 5, 6])
    inputs = torch.randn(7, 7, 13, requires_grad=True)
    hidden = torch.randn(layers * (1 + bidirectional), 7, 37, requires_grad=True)
    native, ops = _run_both_ways(gru, inputs, lengths, hidden, loss)
    for got, want in zip(native, ops):  # float32 rounding, relative to each tensor's scale
        torch.testing.assert_close(got, want, rtol=1e-4, atol=1e-5 * float(want.abs().max()))


def test_the_c_recurrence_under_bf16_autocast_stays_close_to_pytorch_ops() -> None:
    """bf16 products on both sides (rounded at different points), float32 state in both."""
    torch.manual_seed(0)
    gru = nn.GRU(40, 48, batch_first=True)
    lengths = torch.randint(1, 12, (30,))
    inputs = torch.randn(30, 12, 40, requires_grad=True)
    hidden = torch.randn(1, 30, 48, requires_grad=True)
    native, ops = _run_both_ways(gru, inputs, lengths, hidden, "both", bf16=True)
    assert native[0].dtype == ops[0].dtype == torch.float32
    for got, want in zip(native, ops):
        relative = float((got - want).norm() / want.norm())
        assert relative < 0.02, relative


def test_the_c_recurrence_with_frozen_recurrent_weights_still_trains_the_rest() -> None:
    torch.manual_seed(1)
    gru = nn.GRU(6, 20, batch_first=True)
    gru.weight_hh_l0.requires_grad_(False)
    gru.bias_hh_l0.requires_grad_(False)
    lengths = torch.tensor([4, 2, 3])
    inputs = torch.randn(3, 4, 6, requires_grad=True)
    grads = []
    for native in (True, False):
        out, final = run_gru(gru, inputs, lengths, native=native)
        wrt = [inputs, gru.weight_ih_l0, gru.bias_ih_l0]
        grads.append(torch.autograd.grad(out.sum() + final.pow(2).sum(), wrt))
    for got, want in zip(*grads):
        torch.testing.assert_close(got, want, rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize(
    ("active", "hidden_rows", "message"),
    [
        ([3, 2], 3, "active must hold 3"),  # one count short
        ([3, 2, 3], 3, "active must hold 3"),  # increasing
        ([2, 2, 1], 3, "active must hold 3"),  # not every row runs the first step
        ([3, 1, 0], 3, "active must hold 3"),  # a step with no rows
        ([3, 2, 1], 2, "disagree"),
    ],
)
def test_gru_layer_refuses_shapes_the_c_code_would_misread(
    active: list[int], hidden_rows: int, message: str
) -> None:
    projected = torch.zeros(3, 3, 12)
    with pytest.raises(ValueError, match=message):
        kernels.gru_layer(projected, torch.zeros(hidden_rows, 4), torch.zeros(12, 4),
                          torch.zeros(12), active)  # fmt: skip


def test_the_model_uses_it_only_where_gradients_flow_on_a_cpu() -> None:
    x = torch.zeros(2, 3)
    assert use_stepwise_gru(x)
    with torch.no_grad():
        assert not use_stepwise_gru(x)


@pytest.mark.parametrize("bidirectional", [False, True])
@pytest.mark.parametrize("dtype", [torch.float64, torch.float32], ids=["ops", "c"])
def test_training_loss_equals_the_inference_paths_loss(
    bidirectional: bool, dtype: torch.dtype
) -> None:
    """The model's forward with gradients (stepwise GRUs: PyTorch ops in float64, the C
    recurrence in float32) and without (nn.GRU packed) give the same loss: the two paths
    cannot drift apart."""
    rng = random.Random(0)
    torch.manual_seed(0)
    config = HREDConfig(
        vocab_size=50,
        pad_id=0,
        bos_id=1,
        eos_id=2,
        embedding_size=8,
        utterance_hidden=6,
        context_hidden=5,
        decoder_hidden=7,
        bidirectional=bidirectional,
        dropout=0.0,
    )
    model = HRED(config).to(dtype)
    dialogues = [
        [
            [1, *(rng.randrange(3, 50) for _ in range(rng.randrange(0, 9))), 2]
            for _ in range(rng.randrange(2, 6))
        ]
        for _ in range(7)
    ]
    batch = DialogueBatch.from_ids(dialogues, config.pad_id)
    stepwise = model(batch)["loss_sum"]
    assert stepwise.requires_grad
    with torch.no_grad():
        packed = model(batch)["loss_sum"]
    torch.testing.assert_close(stepwise.detach(), packed)
