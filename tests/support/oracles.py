"""Slow, plainly written references for the decoder's fast paths (test oracles only).

The library decodes with ``HRED.start_decoding`` (``DecoderSteps``: the context's share of
the weights precomputed, the GRU cell written out, oneDNN-prepacked weights) and scores with
the packed teacher-forced pass. These references run the model's own ``nn.GRU`` and output
layer the obvious way, one step or one unpacked prefix at a time, nothing carried or fused.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

from rasa_hred.core.model import HRED, Memory


def reference_attended(model: HRED, states: Tensor, memory: Memory | None) -> Tensor:
    """The attended context words for decoder states [R, (L,) Hd], one row and one position
    at a time over the row's real words only: zeros without words or attention."""
    size = model.config.attended_size()
    out = states.new_zeros(*states.shape[:-1], size)
    if not size or memory is None:
        return out
    for row in range(states.size(0)):
        words = memory.states[row][memory.mask[row]].float()  # [S_real, D]
        if len(words) == 0:
            continue
        positions = states[row] if states.dim() == 3 else states[row].unsqueeze(0)
        for at, state in enumerate(positions):
            query = model.attention_query.weight.float() @ state.float()
            weights = torch.softmax(words @ query / size**0.5, dim=0)
            value = (weights.unsqueeze(1) * words).sum(0).to(out.dtype)
            if states.dim() == 3:
                out[row, at] = value
            else:
                out[row] = value
    return out


def reference_step(
    model: HRED,
    previous: Tensor,
    hidden: Tensor,
    context: Tensor,
    memory: Memory | None = None,
) -> tuple[Tensor, Tensor]:
    """One decoder step for [R] previous tokens: the full GRU over one time step, then the
    output layer: (log-probabilities [R, V] float, new hidden [layers, R, Hd])."""
    word = model.embedding(previous).unsqueeze(1)
    states, hidden = model.decoder(model.decoder_input(word, context.unsqueeze(1)), hidden)
    attended = reference_attended(model, states[:, 0], memory)
    logits = model.output_logits(states[:, 0], context, previous, attended)
    return F.log_softmax(logits.float(), dim=-1), hidden


def reference_log_probs(
    model: HRED, inputs: Tensor, context: Tensor, memory: Memory | None = None
) -> Tensor:
    """Log-probabilities [M, L, V] of the next token after every prefix of [M, L] decoder
    ``inputs`` (``<s>`` first), each row from its context [M, Hc]: the whole prefix through
    the unpacked GRU from the initial state."""
    steps = context.unsqueeze(1).expand(-1, inputs.size(1), -1)
    word = model.embedding(inputs)
    states, _ = model.decoder(
        model.decoder_input(word, steps), model.initial_decoder_state(context)
    )
    attended = reference_attended(model, states, memory)
    return F.log_softmax(model.output_logits(states, steps, inputs, attended).float(), dim=-1)
