"""The anchor's training work that ``bench train`` times beside ours: its batches, its loss
and its per-parameter clipping, at a tiny size."""

from __future__ import annotations

import torch

from rasa_hred.bench.anchor import PAD, AnchorBatch, AnchorHRED, AnchorRun, anchor_step
from rasa_hred.bench.train import synthetic_triples

TRIPLES = [
    [[2, 10, 3], [2, 11, 12, 13, 3], [2, 14, 15, 3]],
    [[2, 16, 17, 18, 19, 3], [2, 20, 3], [2, 21, 3]],
    [[2, 22, 23, 3], [2, 24, 25, 3], [2, 26, 27, 28, 29, 3]],
]


def test_each_utterance_is_padded_and_sorted_on_its_own() -> None:
    batch = AnchorBatch.from_triples(TRIPLES)
    lengths = [column[1].tolist() for column in batch.utterances]
    assert lengths == [[6, 4, 3], [5, 4, 3], [6, 4, 3]]
    first = batch.utterances[0][0]
    assert first[0].tolist() == [2, 16, 17, 18, 19, 3]  # the longest first
    assert first[2].tolist() == [2, 10, 3, PAD, PAD, PAD]
    assert batch.num_tokens() == sum(len(u) for triple in TRIPLES for u in triple)


def test_the_loss_covers_the_third_utterances_tokens_after_s() -> None:
    torch.manual_seed(0)
    model = AnchorHRED(vocab_size=40, size=8, dropout=0.0)
    batch = AnchorBatch.from_triples(TRIPLES)
    loss, tokens = model(batch)
    assert tokens == (6 - 1) + (4 - 1) + (3 - 1)
    # an untrained model is near uniform over the vocabulary
    assert 0.5 * torch.log(torch.tensor(40.0)) < loss / tokens < 2 * torch.log(torch.tensor(40.0))


def test_a_step_clips_every_parameters_gradient_on_its_own() -> None:
    torch.manual_seed(1)
    model = AnchorHRED(vocab_size=40, size=8, dropout=0.0)
    with torch.no_grad():
        model.output.weight.mul_(50)  # large gradients
    batch = AnchorBatch.from_triples(TRIPLES)
    loss, tokens = model(batch)
    unclipped = torch.autograd.grad(loss / tokens, list(model.parameters()), allow_unused=True)
    assert max(g.norm().item() for g in unclipped if g is not None) > 1
    before = [p.detach().clone() for p in model.parameters()]
    anchor_step(model, torch.optim.Adam(model.parameters(), lr=1e-3), batch)
    for parameter in model.parameters():
        if parameter.grad is not None:
            assert parameter.grad.norm().item() <= 1 + 1e-5
    assert any(not torch.equal(p, b) for p, b in zip(model.parameters(), before))


def test_a_run_reports_its_throughput_over_its_slices() -> None:
    run = AnchorRun(synthetic_triples(120, vocab_size=300), vocab_size=300, batch_size=20)
    assert len(run.batches) == 6
    run.run(0.0)  # even a zero slice takes one step
    run.run(0.0)
    assert run.steps == 2 and run.tokens > 0
    assert run.tokens_per_s() == run.tokens / run.seconds
