"""The anchor's training work, rebuilt so that ``bench train`` can time it in the same run.

The training bars are ratios to the anchor: hsgodhia/hred, the HRED the seed project trained.
This machine's speed drifts about 2x over hours, so the anchor has to run in the same process
as the figures it is compared with; a number measured on another day compares nothing.

This is not the anchor's code, but it does the anchor's work per batch, in its way:
- batches are shuffled dialogues (no bucketing by length); each of the three utterances is
  padded to its longest and sorted by length on its own, as its collate function does;
- two utterance encodings (an embedding, dropout, ``nn.GRU`` over a ``PackedSequence``), a
  session GRU over the two, and a decoder with its own embedding;
- the decoder's output layer (maxout of three projections, then a projection to the
  vocabulary without bias) runs on every padded position of the third utterance, and the
  loss is summed cross-entropy that ignores padding, divided by the token count;
- every parameter's gradient is clipped to norm 1 on its own, then Adam (PyTorch's default
  implementation) steps.
Timed in turns with it (2 cores, the seed shape, 15 s each), the original code, ported only
where today's PyTorch refuses it (``.data[0]``), trained at 3,906 and 4,433 tokens/s, and
this at 4,260 and 4,015.
"""

from __future__ import annotations

import random
import time
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.nn.utils.rnn import pack_padded_sequence, pad_packed_sequence

from rasa_hred.core.batching import DialogueIds

PAD = 0


@dataclass
class AnchorBatch:
    """Each utterance of the triples, padded and sorted by length on its own: ([N, L] ids,
    lengths) three times."""

    utterances: list[tuple[Tensor, Tensor]]

    @classmethod
    def from_triples(cls, triples: list[DialogueIds]) -> AnchorBatch:
        columns = []
        for k in range(3):
            rows = sorted((triple[k] for triple in triples), key=len, reverse=True)
            ids = torch.full((len(rows), len(rows[0])), PAD, dtype=torch.long)
            for n, row in enumerate(rows):
                ids[n, : len(row)] = torch.tensor(row)
            columns.append((ids, torch.tensor([len(row) for row in rows])))
        return cls(columns)

    def num_tokens(self) -> int:
        return sum(int(lengths.sum()) for _, lengths in self.utterances)


class AnchorHRED(nn.Module):
    """The anchor's model at one size for everything (``size``), teacher forced."""

    def __init__(self, vocab_size: int, size: int = 300, dropout: float = 0.4) -> None:
        super().__init__()
        self.dropout = nn.Dropout(dropout)
        self.encoder_embedding = nn.Embedding(vocab_size, size, padding_idx=PAD)
        self.utterance_encoder = nn.GRU(size, size, batch_first=True)
        self.session_encoder = nn.GRU(size, size, batch_first=True)
        self.decoder_embedding = nn.Embedding(vocab_size, size, padding_idx=PAD)
        self.decoder_init = nn.Linear(size, size)
        self.decoder = nn.GRU(size, size, batch_first=True)
        self.from_state = nn.Linear(size, 2 * size, bias=False)
        self.from_session = nn.Linear(size, 2 * size, bias=False)
        self.from_word = nn.Linear(size, 2 * size)
        self.output = nn.Linear(size, vocab_size, bias=False)

    def encode(self, ids: Tensor, lengths: Tensor) -> Tensor:
        embedded = self.dropout(self.encoder_embedding(ids))
        packed = pack_padded_sequence(embedded, lengths, batch_first=True)
        return self.utterance_encoder(packed)[1].transpose(0, 1)  # [N, 1, H]

    def forward(self, batch: AnchorBatch) -> tuple[Tensor, int]:
        """Summed cross-entropy over the third utterance's tokens after ``<s>``, and their
        count."""
        (first, first_lengths), (second, second_lengths), (third, third_lengths) = batch.utterances
        session = self.session_encoder(
            torch.cat([self.encode(first, first_lengths), self.encode(second, second_lengths)], 1)
        )[1].transpose(0, 1)  # [N, 1, H]
        words = self.dropout(self.decoder_embedding(third))
        from_word = self.from_word(words)
        start = torch.tanh(self.decoder_init(session)).transpose(0, 1)
        packed = pack_padded_sequence(words, third_lengths, batch_first=True)
        states = pad_packed_sequence(self.decoder(packed, start)[0], batch_first=True)[0]
        hidden = self.from_state(states) + self.from_session(session) + from_word
        maxout = hidden.unflatten(-1, (-1, 2)).amax(-1)
        logits = self.output(maxout)[:, :-1]
        targets = third[:, 1:]
        loss = F.cross_entropy(
            logits.reshape(-1, logits.size(-1)), targets.reshape(-1), ignore_index=PAD,
            reduction="sum",
        )  # fmt: skip
        return loss, int((targets != PAD).sum())


def anchor_step(model: AnchorHRED, optimizer: torch.optim.Optimizer, batch: AnchorBatch) -> None:
    loss, tokens = model(batch)
    optimizer.zero_grad()
    (loss / tokens).backward()
    with torch.no_grad():
        for parameter in model.parameters():
            if parameter.grad is not None and (norm := parameter.grad.norm()) > 1:
                parameter.grad.mul_(1 / norm)
    optimizer.step()


class AnchorRun:
    """The anchor training on ``triples``, timed in slices so that a benchmark can bracket
    its own measurements with it (the machine's speed drifts within a run too)."""

    def __init__(self, triples: list[DialogueIds], vocab_size: int, batch_size: int) -> None:
        order = list(range(len(triples)))
        random.Random(0).shuffle(order)
        self.batches = [
            AnchorBatch.from_triples([triples[i] for i in order[start : start + batch_size]])
            for start in range(0, len(order) - batch_size + 1, batch_size)
        ]
        self.model = AnchorHRED(vocab_size)
        self.model.train()
        self.optimizer = torch.optim.Adam(self.model.parameters(), lr=5e-4)
        self.steps = self.tokens = 0
        self.seconds = 0.0
        for batch in self.batches[:5]:  # warm up
            anchor_step(self.model, self.optimizer, batch)

    def run(self, seconds: float) -> None:
        """Train for about ``seconds`` more (at least one step)."""
        started = time.perf_counter()
        while True:
            batch = self.batches[self.steps % len(self.batches)]
            anchor_step(self.model, self.optimizer, batch)
            self.steps += 1
            self.tokens += batch.num_tokens()
            if (elapsed := time.perf_counter() - started) >= seconds:
                break
        self.seconds += elapsed

    def tokens_per_s(self) -> float:
        return self.tokens / self.seconds if self.seconds else 0.0
