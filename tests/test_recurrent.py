"""core/recurrent.run_gru: the stepwise GRU that training on a CPU uses instead of nn.GRU's
packed path must compute the same function, with the same gradients."""

from __future__ import annotations

import random

import pytest
import torch
from torch import nn
from torch.nn.utils.rnn import pack_padded_sequence, pad_packed_sequence

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


def test_the_model_uses_it_only_where_gradients_flow_on_a_cpu() -> None:
    x = torch.zeros(2, 3)
    assert use_stepwise_gru(x)
    with torch.no_grad():
        assert not use_stepwise_gru(x)


@pytest.mark.parametrize("bidirectional", [False, True])
def test_training_loss_equals_the_inference_paths_loss(bidirectional: bool) -> None:
    """The model's forward with gradients (stepwise GRUs) and without (nn.GRU packed) give
    the same loss: the two paths cannot drift apart."""
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
    model = HRED(config).double()
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
