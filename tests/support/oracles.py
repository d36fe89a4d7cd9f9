"""Slow, plainly written references for the decoder's fast paths (test oracles only).

The library decodes with ``HRED.start_decoding`` (``DecoderSteps``: the context's share of
the weights precomputed, the GRU cell written out, oneDNN-prepacked weights) and scores with
the packed teacher-forced pass. These references run the model's own ``nn.GRU`` and output
layer the obvious way, one step or one unpacked prefix at a time, nothing carried or fused.
"""

from __future__ import annotations

import torch.nn.functional as F
from torch import Tensor

from rasa_hred.core.model import HRED


def reference_step(
    model: HRED, previous: Tensor, hidden: Tensor, context: Tensor
) -> tuple[Tensor, Tensor]:
    """One decoder step for [R] previous tokens: the full GRU over one time step, then the
    output layer: (log-probabilities [R, V] float, new hidden [layers, R, Hd])."""
    word = model.embedding(previous).unsqueeze(1)
    states, hidden = model.decoder(model.decoder_input(word, context.unsqueeze(1)), hidden)
    logits = model.output_logits(states[:, 0], context, previous)
    return F.log_softmax(logits.float(), dim=-1), hidden


def reference_log_probs(model: HRED, inputs: Tensor, context: Tensor) -> Tensor:
    """Log-probabilities [M, L, V] of the next token after every prefix of [M, L] decoder
    ``inputs`` (``<s>`` first), each row from its context [M, Hc]: the whole prefix through
    the unpacked GRU from the initial state."""
    steps = context.unsqueeze(1).expand(-1, inputs.size(1), -1)
    word = model.embedding(inputs)
    states, _ = model.decoder(
        model.decoder_input(word, steps), model.initial_decoder_state(context)
    )
    return F.log_softmax(model.output_logits(states, steps, inputs).float(), dim=-1)
