"""The hierarchical recurrent encoder-decoder (Serban et al., AAAI 2016).

Read top to bottom: the config, the batch layout, then the three GRUs in forward order
(utterance encoder -> context encoder -> decoder), the loss, and the single-step decoding API
that beam search and sampling build on.

Every utterance is stored as ``<s> w1 .. wn </s>``. Turn ``t >= 1`` of a dialogue is decoded
from the context state after turns ``0..t-1``; the decoder input is the utterance without its
last token and the target is the utterance without its first, so the prediction for token
``k + 1`` sees tokens ``0..k`` and nothing later (the seed compared output ``k`` with input
``k`` and learned to copy).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, fields
from typing import Any, Literal

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.nn.utils.rnn import pack_padded_sequence, pad_packed_sequence

LossOn = Literal["all", "last"]


@dataclass
class HREDConfig:
    """Every size of the model; saved as ``config.json`` next to the weights."""

    vocab_size: int
    pad_id: int = 0
    bos_id: int = 2
    eos_id: int = 3
    embedding_size: int = 300
    utterance_hidden: int = 300
    context_hidden: int = 300
    decoder_hidden: int = 300
    utterance_layers: int = 1
    context_layers: int = 1
    decoder_layers: int = 1
    bidirectional: bool = False  # bidirectional utterance encoder (the paper's best variant)
    dropout: float = 0.1
    maxout: bool = True  # the paper's maxout output layer; a linear layer when off
    tie_embeddings: bool = True  # output projection shares the input embedding matrix
    loss_on: LossOn = "all"  # "all" utterances after the first (paper), or "last" (@U3)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> HREDConfig:
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(data) - known)
        if unknown:
            raise ValueError(f"unknown model config keys: {', '.join(unknown)}")
        return cls(**data)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass
class DialogueBatch:
    """A batch of dialogues, utterances flattened dialogue-major.

    ``utterances[i]`` is ``<s> .. </s>`` padded with ``pad_id``; dialogue ``b`` owns rows
    ``offsets[b] .. offsets[b] + turns[b] - 1``. Lengths stay on the CPU (packing needs them).
    """

    utterances: Tensor  # [N, L] token ids
    lengths: Tensor  # [N] tokens per utterance, <s> and </s> included (CPU)
    turns: Tensor  # [B] utterances per dialogue (CPU)

    @classmethod
    def from_ids(cls, dialogues: list[list[list[int]]], pad_id: int) -> DialogueBatch:
        flat = [utt for dialogue in dialogues for utt in dialogue]
        lengths = torch.tensor([len(u) for u in flat], dtype=torch.long)
        padded = torch.full((len(flat), int(lengths.max())), pad_id, dtype=torch.long)
        for i, utt in enumerate(flat):
            padded[i, : len(utt)] = torch.tensor(utt, dtype=torch.long)
        turns = torch.tensor([len(d) for d in dialogues], dtype=torch.long)
        return cls(padded, lengths, turns)

    def to(self, device: torch.device | str) -> DialogueBatch:
        return DialogueBatch(
            self.utterances.to(device, non_blocking=True), self.lengths, self.turns
        )

    @property
    def offsets(self) -> Tensor:
        return torch.cumsum(self.turns, 0) - self.turns

    def num_tokens(self) -> int:
        return int(self.lengths.sum())


class Dropout(nn.Module):
    """Inverted dropout from a uniform mask: on CPUs ``rand >= p`` is several times faster
    than the Bernoulli kernel behind ``nn.Dropout`` (same distribution)."""

    def __init__(self, p: float) -> None:
        super().__init__()
        self.p = p

    def forward(self, x: Tensor) -> Tensor:
        if not self.training or self.p == 0.0:
            return x
        return x * (torch.rand_like(x) >= self.p) * (1.0 / (1.0 - self.p))


class HRED(nn.Module):
    def __init__(self, config: HREDConfig) -> None:
        super().__init__()
        self.config = c = config
        self.embedding = nn.Embedding(c.vocab_size, c.embedding_size, padding_idx=c.pad_id)
        self.dropout = Dropout(c.dropout)
        # 1. utterance encoder: words -> one vector per utterance
        self.utterance_encoder = nn.GRU(
            c.embedding_size,
            c.utterance_hidden,
            num_layers=c.utterance_layers,
            bidirectional=c.bidirectional,
            batch_first=True,
            dropout=c.dropout if c.utterance_layers > 1 else 0.0,
        )
        utterance_size = c.utterance_hidden * (2 if c.bidirectional else 1)
        # 2. context (session) encoder: utterance vectors -> one state per turn
        self.context_encoder = nn.GRU(
            utterance_size,
            c.context_hidden,
            num_layers=c.context_layers,
            batch_first=True,
            dropout=c.dropout if c.context_layers > 1 else 0.0,
        )
        # 3. decoder: initial state tanh(W c), sees [previous word; c] at every step
        self.decoder_init = nn.Linear(c.context_hidden, c.decoder_layers * c.decoder_hidden)
        self.decoder = nn.GRU(
            c.embedding_size + c.context_hidden,
            c.decoder_hidden,
            num_layers=c.decoder_layers,
            batch_first=True,
            dropout=c.dropout if c.decoder_layers > 1 else 0.0,
        )
        # output layer over [decoder state; context; previous word embedding]
        pieces = 2 if c.maxout else 1
        self.output_hidden = nn.Linear(
            c.decoder_hidden + c.context_hidden + c.embedding_size, pieces * c.embedding_size
        )
        self.output = nn.Linear(c.embedding_size, c.vocab_size, bias=True)
        if c.tie_embeddings:
            self.output.weight = self.embedding.weight
        self._init_weights()

    def _init_weights(self) -> None:
        nn.init.normal_(self.embedding.weight, std=self.config.embedding_size**-0.5)
        with torch.no_grad():
            self.embedding.weight[self.config.pad_id].zero_()
        for gru in (self.utterance_encoder, self.context_encoder, self.decoder):
            for name, weight in gru.named_parameters():
                if "weight_hh" in name:
                    for chunk in weight.chunk(3, 0):
                        nn.init.orthogonal_(chunk)
                elif "bias" in name:
                    nn.init.zeros_(weight)
        nn.init.zeros_(self.output.bias)

    def num_parameters(self) -> int:
        return sum(p.numel() for p in self.parameters())

    # --- encoding -------------------------------------------------------------------------

    def encode_utterances(self, utterances: Tensor, lengths: Tensor) -> Tensor:
        """[N, L] token ids -> [N, utterance_size]: the last layer's final state(s)."""
        # Pack the ids first: padding is then never embedded, dropped out or run.
        ids = pack_padded_sequence(
            utterances, lengths.cpu(), batch_first=True, enforce_sorted=False
        )
        packed = ids._replace(data=self.dropout(self.embedding(ids.data)))
        _, hidden = self.utterance_encoder(packed)  # [layers * directions, N, H]
        if self.config.bidirectional:
            return torch.cat([hidden[-2], hidden[-1]], dim=-1)
        return hidden[-1]

    def encode_context(self, utterance_vectors: Tensor, turns: Tensor) -> Tensor:
        """Flattened utterance vectors -> context states [B, T, context_hidden].

        ``states[b, t]`` summarises turns ``0..t`` of dialogue ``b`` (padding beyond
        ``turns[b]`` is never read, and the GRU is causal, so it cannot leak backwards).
        """
        batch, max_turns = len(turns), int(turns.max())
        grid = utterance_vectors.new_zeros(batch, max_turns, utterance_vectors.size(-1))
        turn_index = torch.arange(max_turns).unsqueeze(0) < turns.unsqueeze(1)  # [B, T]
        grid[turn_index.to(grid.device)] = utterance_vectors
        states, _ = self.context_encoder(grid)
        return states

    # --- training forward ---------------------------------------------------------------

    def forward(
        self, batch: DialogueBatch, loss_on: LossOn | None = None, sampling_prob: float = 0.0
    ) -> dict[str, Tensor]:
        """Summed negative log-likelihood of every modelled token, and their count.

        Returns ``loss_sum``, ``tokens`` (modelled) and ``correct`` (argmax hits under teacher
        forcing, for the paper's error rate; counted in eval mode only); divide for means.
        Padding is never modelled: the output layer runs on real target positions only.

        ``sampling_prob`` > 0 turns on scheduled sampling (Bengio et al. 2015) in its
        two-pass form: a teacher-forced pass predicts every position, then each input word
        after ``<s>`` is replaced by the model's prediction with that probability (a uniform
        coin per token) and the loss is taken on a second pass.
        """
        c = self.config
        context, targets_rows = self._decoder_context(batch, loss_on or c.loss_on)
        target_utts = batch.utterances[targets_rows.to(batch.utterances.device)]
        target_lengths = batch.lengths[targets_rows]
        width = int(target_lengths.max())
        inputs, targets = target_utts[:, : width - 1], target_utts[:, 1:width]
        mask = targets != c.pad_id
        if sampling_prob > 0.0:
            inputs = self._sample_inputs(inputs, targets, mask, context, sampling_prob)
        logits = self._target_logits(inputs, mask, context)
        gold = targets[mask]
        loss_sum = F.cross_entropy(logits.float(), gold, reduction="sum")
        # The argmax over the vocabulary is only needed for evaluation's error rate.
        correct = (logits.argmax(-1) == gold).sum() if not self.training else gold.new_zeros(())
        return {"loss_sum": loss_sum, "tokens": mask.sum(), "correct": correct}

    def _decoder_context(self, batch: DialogueBatch, loss_on: LossOn) -> tuple[Tensor, Tensor]:
        """Context vectors [M, Hc] of the utterances to decode, and those utterances' rows."""
        turns, offsets = batch.turns, batch.offsets
        # Only turns that condition a later turn are encoded: the last one never is.
        context_rows = _rows(offsets, turns - 1)
        targets_rows, context_of_target = _target_rows(offsets, turns, loss_on)
        device = batch.utterances.device
        vectors = self.encode_utterances(
            batch.utterances[context_rows.to(device)], batch.lengths[context_rows]
        )
        states = self.encode_context(vectors, turns - 1)  # [B, T-1, Hc]
        context = states.reshape(-1, states.size(-1))[context_of_target.to(device)]
        return context, targets_rows

    def token_log_probs(
        self, batch: DialogueBatch, loss_on: LossOn = "all"
    ) -> tuple[Tensor, Tensor]:
        """Log-probability of every target token under teacher forcing, [M, W] with a mask.

        Rows are the decoded utterances in batch order (as ``forward`` models them).
        """
        context, targets_rows = self._decoder_context(batch, loss_on)
        target_utts = batch.utterances[targets_rows.to(batch.utterances.device)]
        width = int(batch.lengths[targets_rows].max())
        inputs, targets = target_utts[:, : width - 1], target_utts[:, 1:width]
        mask = targets != self.config.pad_id
        log_probs = F.log_softmax(self._target_logits(inputs, mask, context).float(), dim=-1)
        out = torch.zeros(targets.shape, device=targets.device)
        out[mask] = log_probs.gather(1, targets[mask].unsqueeze(1)).squeeze(1)
        return out, mask

    def _target_logits(self, inputs: Tensor, mask: Tensor, context: Tensor) -> Tensor:
        """Teacher-forced logits at the real target positions only ([K, V]).

        The decoder GRU runs packed, so padded steps cost nothing there either.
        """
        hidden = self.initial_decoder_state(context)
        embedded = self.dropout(self.embedding(inputs))
        steps = context.unsqueeze(1).expand(-1, inputs.size(1), -1)
        packed = pack_padded_sequence(
            torch.cat([embedded, steps], dim=-1),
            mask.sum(1).cpu(),
            batch_first=True,
            enforce_sorted=False,
        )
        decoder_out, _ = pad_packed_sequence(self.decoder(packed, hidden)[0], batch_first=True)
        return self.output_logits(decoder_out[mask], steps[mask], inputs[mask])

    @torch.no_grad()
    def _sample_inputs(
        self, inputs: Tensor, targets: Tensor, mask: Tensor, context: Tensor, prob: float
    ) -> Tensor:
        predicted = torch.full_like(targets, self.config.pad_id)
        predicted[mask] = self._target_logits(inputs, mask, context).argmax(-1)
        # Input position k + 1 holds target k; it is a real word where target k + 1 is real.
        coin = torch.rand(targets.shape, device=targets.device) < prob
        replace = coin[:, :-1] & mask[:, 1:]
        sampled = inputs.clone()
        sampled[:, 1:][replace] = predicted[:, :-1][replace]
        return sampled

    def run_decoder(
        self, inputs: Tensor, context: Tensor, hidden: Tensor | None = None
    ) -> tuple[Tensor, Tensor]:
        """Teacher-forced decoder over [M, L] inputs with one context vector per row."""
        if hidden is None:
            hidden = self.initial_decoder_state(context)
        embedded = self.dropout(self.embedding(inputs))
        steps = context.unsqueeze(1).expand(-1, inputs.size(1), -1)
        return self.decoder(torch.cat([embedded, steps], dim=-1), hidden)

    def output_logits(self, decoder_state: Tensor, context: Tensor, previous: Tensor) -> Tensor:
        """Logits from [decoder state; context; previous word] (rows are positions)."""
        features = torch.cat([decoder_state, context, self.embedding(previous)], dim=-1)
        hidden = self.output_hidden(self.dropout(features))
        if self.config.maxout:
            hidden = hidden.view(*hidden.shape[:-1], -1, 2).amax(-1)
        else:
            hidden = torch.tanh(hidden)
        return self.output(self.dropout(hidden))

    # --- inference API (decoding.py builds beam search and sampling on this) -----------

    def context_vectors(self, contexts: list[list[list[int]]]) -> Tensor:
        """Token-id contexts (each a list of ``<s> .. </s>`` utterances) -> [B, Hc].

        An empty context gives the context encoder's initial (zero) state, so the decoder
        still produces an opener.
        """
        device = self.embedding.weight.device
        out = torch.zeros(len(contexts), self.config.context_hidden, device=device)
        present = [i for i, ctx in enumerate(contexts) if ctx]
        if not present:
            return out
        batch = DialogueBatch.from_ids([contexts[i] for i in present], self.config.pad_id)
        vectors = self.encode_utterances(batch.utterances.to(device), batch.lengths)
        states = self.encode_context(vectors, batch.turns)
        last = states[torch.arange(len(present)), (batch.turns - 1).to(device)]
        out[torch.tensor(present, device=device)] = last.to(out.dtype)
        return out

    def initial_decoder_state(self, context: Tensor) -> Tensor:
        """[B, Hc] -> [decoder_layers, B, Hd] = tanh(W c)."""
        c = self.config
        state = torch.tanh(self.decoder_init(context))
        return state.view(-1, c.decoder_layers, c.decoder_hidden).transpose(0, 1).contiguous()

    def decode_step(
        self, previous: Tensor, hidden: Tensor, context: Tensor
    ) -> tuple[Tensor, Tensor]:
        """One decoder step for [B] previous tokens: (log-probabilities [B, V], new hidden).

        The hidden state is carried forward, so decoding never re-runs the prefix.
        """
        out, hidden = self.run_decoder(previous.unsqueeze(1), context, hidden)
        logits = self.output_logits(out[:, 0], context, previous)
        return F.log_softmax(logits.float(), dim=-1), hidden


def _rows(offsets: Tensor, counts: Tensor) -> Tensor:
    """Row indices offsets[b] .. offsets[b] + counts[b] - 1 for every b, concatenated."""
    total = int(counts.sum())
    starts = torch.repeat_interleave(offsets, counts)
    within = torch.arange(total) - torch.repeat_interleave(torch.cumsum(counts, 0) - counts, counts)
    return starts + within


def _target_rows(offsets: Tensor, turns: Tensor, loss_on: LossOn) -> tuple[Tensor, Tensor]:
    """Rows of the utterances to decode and, for each, its row in the flattened context grid.

    The context grid is [B, T-1] (T = max turns); target turn t of dialogue b reads grid cell
    (b, t-1): the state after the turns before it, from the same dialogue.
    """
    grid_width = int(turns.max()) - 1
    if loss_on == "last":
        dialogues = torch.arange(len(turns))
        target_turn = turns - 1
    elif loss_on == "all":
        counts = turns - 1
        dialogues = torch.repeat_interleave(torch.arange(len(turns)), counts)
        target_turn = _rows(torch.ones_like(turns), counts)  # turns 1..T_b-1
    else:
        raise ValueError(f"loss_on must be 'all' or 'last', not {loss_on!r}")
    return offsets[dialogues] + target_turn, dialogues * grid_width + target_turn - 1
