"""The hierarchical recurrent encoder-decoder (Serban et al., AAAI 2016).

Read top to bottom: the config, the batch layout, the column layout of the decoder's two
concatenated inputs, then the three GRUs in forward order (utterance encoder -> context
encoder -> decoder), the loss and the one teacher-forced pass, and the step-by-step decoding
API (``start_decoding``) that beam search and sampling build on.

Every utterance is stored as ``<s> w1 .. wn </s>``. Turn ``t >= 1`` of a dialogue is decoded
from the context state after turns ``0..t-1``; the decoder input is the utterance without its
last token and the target is the utterance without its first, so the prediction for token
``k + 1`` sees tokens ``0..k`` and nothing later (the seed compared output ``k`` with input
``k`` and learned to copy).

With ``attention`` on, the output layer also reads the utterance encoder's word states of
the context, weighted by the decoder state (``Memory``, ``attend``): turn ``t`` reads the words
of turns ``0..t-1`` only, in training (one memory per dialogue, masked per target turn) as in
decoding (``encode_contexts``).
"""

from __future__ import annotations

import math
import reprlib
import weakref
from collections.abc import Callable
from dataclasses import asdict, dataclass, fields
from typing import Any, Generic, Literal, TypeVar, get_args

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.nn.utils.rnn import pack_padded_sequence, pad_packed_sequence

from rasa_hred.core.fields import check_known_keys
from rasa_hred.core.kernels import Workspace, dropout, linear_cross_entropy
from rasa_hred.core.precision import cpu_has_bf16_units, stable_row_count
from rasa_hred.core.recurrent import run_gru, use_stepwise_gru
from rasa_hred.errors import UserError

LossOn = Literal["all", "last"]
T = TypeVar("T")

#: The most parameters a config may describe: 400 MB of float32 weights, 40 times the demo's
#: HRED (2.3M) and 18 times the paper's MovieTriples model (5.5M). It is checked on the config
#: alone, so a hostile ``config.json`` is refused before anything is allocated.
MAX_PARAMETERS = 100_000_000
#: The most layers of one GRU (the paper uses 1): bounds the work of counting parameters.
MAX_LAYERS = 32
#: Attention tells the context's turns apart by their distance from the reply (1: the
#: utterance it answers); turns further back than this share the last distance's vector.
TURN_DISTANCES = 16
#: The target of a padding row of the output layer: cross-entropy leaves it out.
_IGNORED = -100


class ModelConfigError(UserError, ValueError):
    """An ``HREDConfig`` value of the wrong type or outside its range."""


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
    # The output layer also reads the context's words, weighted by the decoder state (Luong
    # et al. 2015): a word from three turns back reaches the reply without first being
    # squeezed through the one context state.
    attention: bool = False

    def __post_init__(self) -> None:
        """Every field's type and range, and the model's size, before any layer is built: a
        bad value is one line naming the field, not a torch error (or 19 GB) later."""
        for name in _SIZES:
            if not _is_int(value := getattr(self, name)) or value < 1:
                raise ModelConfigError(f"{name} must be a whole number >= 1, not {_show(value)}")
            if name.endswith("_layers") and value > MAX_LAYERS:
                raise ModelConfigError(f"{name} must be at most {MAX_LAYERS}, not {value}")
        for name in _TOKEN_IDS:
            value = getattr(self, name)
            if not _is_int(value) or not 0 <= value < self.vocab_size:
                raise ModelConfigError(
                    f"{name} must be a token id in 0..{self.vocab_size - 1}, not {_show(value)}"
                )
        if len({self.pad_id, self.bos_id, self.eos_id}) < len(_TOKEN_IDS):
            raise ModelConfigError("pad_id, bos_id and eos_id must be three different tokens")
        for name in _FLAGS:
            if not isinstance(value := getattr(self, name), bool):
                raise ModelConfigError(f"{name} must be true or false, not {_show(value)}")
        dropout = self.dropout
        if not isinstance(dropout, (int, float)) or isinstance(dropout, bool):
            raise ModelConfigError(f"dropout must be a number in [0, 1), not {_show(dropout)}")
        if not 0.0 <= dropout < 1.0:  # NaN fails this too
            raise ModelConfigError(f"dropout must be in [0, 1), not {dropout}")
        if self.loss_on not in get_args(LossOn):
            raise ModelConfigError(
                f"loss_on must be one of {', '.join(get_args(LossOn))}, not {_show(self.loss_on)}"
            )
        if (count := self.parameter_count()) > MAX_PARAMETERS:
            raise ModelConfigError(
                f"the config describes a model of {count:,} parameters, more than the limit "
                f"of {MAX_PARAMETERS:,}"
            )

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> HREDConfig:
        check_known_keys(cls, data, "model config keys", ModelConfigError)
        return cls(**data)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    def parameter_shapes(self) -> dict[str, tuple[int, ...]]:
        """The shape of every tensor of the model's state dict, from the config alone (no
        memory): what a weights file must hold. ``HRED``'s layers are kept equal to it by a
        test."""
        directions = 2 if self.bidirectional else 1
        embedding, vocab = self.embedding_size, self.vocab_size
        hidden, layers = self.decoder_hidden, self.decoder_layers
        outputs = (2 if self.maxout else 1) * embedding
        attended = self.attended_size()
        attention = (
            {
                "turn_distance.weight": (TURN_DISTANCES, attended),
                "attention_query.weight": (attended, hidden),
            }
            if attended
            else {}
        )
        return {
            "embedding.weight": (vocab, embedding),
            **_gru_shapes(
                "utterance_encoder",
                embedding,
                self.utterance_hidden,
                self.utterance_layers,
                directions,
            ),
            **_gru_shapes(
                "context_encoder",
                self.utterance_size(),
                self.context_hidden,
                self.context_layers,
                1,
            ),
            "decoder_init.weight": (layers * hidden, self.context_hidden),
            "decoder_init.bias": (layers * hidden,),
            **_gru_shapes("decoder", embedding + self.context_hidden, hidden, layers, 1),
            **attention,
            "output_hidden.weight": (
                outputs,
                hidden + self.context_hidden + embedding + attended,
            ),
            "output_hidden.bias": (outputs,),
            "output.weight": (vocab, embedding),
            "output.bias": (vocab,),
        }

    def utterance_size(self) -> int:
        """The width of an encoded utterance, and of each word state the encoder leaves."""
        return self.utterance_hidden * (2 if self.bidirectional else 1)

    def attended_size(self) -> int:
        """The width of the attended context words the output layer reads (0: no attention)."""
        return self.utterance_size() if self.attention else 0

    def parameter_count(self) -> int:
        """``HRED(self).num_parameters()`` without building it (a tied output layer shares
        the embedding matrix)."""
        shapes = self.parameter_shapes()
        if self.tie_embeddings:
            del shapes["output.weight"]
        return sum(math.prod(shape) for shape in shapes.values())


_SIZES = (
    "vocab_size",
    "embedding_size",
    "utterance_hidden",
    "context_hidden",
    "decoder_hidden",
    "utterance_layers",
    "context_layers",
    "decoder_layers",
)
_TOKEN_IDS = ("pad_id", "bos_id", "eos_id")
_FLAGS = ("bidirectional", "maxout", "tie_embeddings", "attention")


def _is_int(value: object) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _show(value: object) -> str:
    """A value from a file, shortened for a one-line message."""
    return reprlib.repr(value)


def _gru_shapes(
    prefix: str, inputs: int, hidden: int, layers: int, directions: int
) -> dict[str, tuple[int, ...]]:
    """The parameters of ``nn.GRU(inputs, hidden, layers, bidirectional=directions == 2)``."""
    shapes: dict[str, tuple[int, ...]] = {}
    for layer in range(layers):
        width = inputs if layer == 0 else hidden * directions
        for suffix in ("", "_reverse")[:directions]:
            shapes[f"{prefix}.weight_ih_l{layer}{suffix}"] = (3 * hidden, width)
            shapes[f"{prefix}.weight_hh_l{layer}{suffix}"] = (3 * hidden, hidden)
            shapes[f"{prefix}.bias_ih_l{layer}{suffix}"] = (3 * hidden,)
            shapes[f"{prefix}.bias_hh_l{layer}{suffix}"] = (3 * hidden,)
    return shapes


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


@dataclass
class Memory:
    """The words of each row's context, for attention: the utterance encoder's state at every
    word of every context utterance, [R, S, utterance_size], and which of the S are real."""

    states: Tensor
    mask: Tensor  # [R, S] bool

    def select(self, rows: Tensor) -> Memory:
        return Memory(self.states.index_select(0, rows), self.mask.index_select(0, rows))


def attend(query: Tensor, memory: Memory | None, size: int) -> Tensor:
    """The memory's word states averaged with softmax weights of their dot products with
    ``query`` ([R, D] or [R, W, D]); zeros for a row with no words (an empty context) or
    no memory at all. Runs in float32: bf16 products of new shapes each cost a oneDNN
    kernel compilation on the CPU, and these shapes change with every batch."""
    if memory is None:
        return query.new_zeros(*query.shape[:-1], size)
    single = query.dim() == 2
    queries = query.unsqueeze(1) if single else query
    device = query.device.type
    with torch.autocast(device, enabled=False):
        states = memory.states.float()
        scores = torch.bmm(queries.float(), states.transpose(1, 2)) * size**-0.5  # [R, W, S]
        scores = scores.masked_fill(~memory.mask.unsqueeze(1), torch.finfo(scores.dtype).min)
        weights = torch.softmax(scores, dim=-1) * memory.mask.any(1).view(-1, 1, 1)
        out = torch.bmm(weights, states).to(query.dtype)
    return out.squeeze(1) if single else out


@dataclass(frozen=True)
class _Columns:
    """Named column blocks of a layer whose input is a concatenation. The field order is the
    column order: concatenating the inputs and splitting the weight both follow it."""

    def in_order(self) -> list[Any]:
        return [getattr(self, f.name) for f in fields(self)]


@dataclass(frozen=True)
class DecoderInput(_Columns, Generic[T]):
    """What the decoder GRU reads at every step (the columns of ``decoder.weight_ih_l0``)."""

    word: T  # the previous word's embedding
    context: T


@dataclass(frozen=True)
class OutputInput(_Columns, Generic[T]):
    """What the output layer reads (the columns of ``output_hidden.weight``)."""

    state: T  # the decoder's last layer
    context: T
    word: T  # the previous word's embedding
    attended: T  # the context's words under attention (no columns without attention)


class Dropout(nn.Module):
    """Inverted dropout (``kernels.dropout``): on CPUs its hashed mask is several times
    faster than PyTorch's generator, itself faster than the Bernoulli kernel behind
    ``nn.Dropout`` (the same distribution)."""

    def __init__(self, p: float) -> None:
        super().__init__()
        self.p = p

    def forward(self, x: Tensor) -> Tensor:
        if not self.training or self.p == 0.0:
            return x
        return dropout(x, self.p)


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
        # 2. context (session) encoder: utterance vectors -> one state per turn
        self.context_encoder = nn.GRU(
            c.utterance_size(),
            c.context_hidden,
            num_layers=c.context_layers,
            batch_first=True,
            dropout=c.dropout if c.context_layers > 1 else 0.0,
        )
        # 3. decoder: initial state tanh(W c), reads the previous word and c at every step
        self.decoder_init = nn.Linear(c.context_hidden, c.decoder_layers * c.decoder_hidden)
        self.decoder = nn.GRU(
            sum(self.decoder_input_sizes().in_order()),
            c.decoder_hidden,
            num_layers=c.decoder_layers,
            batch_first=True,
            dropout=c.dropout if c.decoder_layers > 1 else 0.0,
        )
        # attention: the decoder state asks which context words matter for the next word; a
        # word's state carries how many turns back it was said (the encoder reads each
        # utterance alone, so nothing else says whether "you" came from the last turn)
        if c.attention:
            self.turn_distance = nn.Embedding(TURN_DISTANCES, c.attended_size())
            self.attention_query = nn.Linear(c.decoder_hidden, c.attended_size(), bias=False)
        # output layer over the decoder state, the context, the previous word (and the
        # attended context words)
        pieces = 2 if c.maxout else 1
        self.output_hidden = nn.Linear(
            sum(self.output_input_sizes().in_order()), pieces * c.embedding_size
        )
        self.output = nn.Linear(c.embedding_size, c.vocab_size, bias=True)
        if c.tie_embeddings:
            self.output.weight = self.embedding.weight
        self._logits_workspace = Workspace()  # training's logits, kept from step to step
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
        if self.config.attention:
            nn.init.normal_(self.turn_distance.weight, std=0.1)

    def num_parameters(self) -> int:
        return sum(p.numel() for p in self.parameters())

    # --- the decoder's two concatenated inputs --------------------------------------------
    # The teacher-forced pass concatenates the inputs; ``DecoderSteps`` splits the weights
    # instead (to compute the context's share once per reply). Both go through DecoderInput
    # and OutputInput, so they cannot disagree about the column order.

    def decoder_input_sizes(self) -> DecoderInput[int]:
        c = self.config
        return DecoderInput(word=c.embedding_size, context=c.context_hidden)

    def output_input_sizes(self) -> OutputInput[int]:
        c = self.config
        return OutputInput(
            state=c.decoder_hidden,
            context=c.context_hidden,
            word=c.embedding_size,
            attended=c.attended_size(),
        )

    def decoder_input_weights(self) -> DecoderInput[Tensor]:
        """The first decoder layer's input weights as word and context column blocks (views)."""
        weight = self.decoder.all_weights[0][0]  # weight_ih_l0
        return DecoderInput(*weight.split(self.decoder_input_sizes().in_order(), dim=1))

    def output_input_weights(self) -> OutputInput[Tensor]:
        """``output_hidden.weight`` as state, context and word column blocks (views)."""
        weight = self.output_hidden.weight
        return OutputInput(*weight.split(self.output_input_sizes().in_order(), dim=1))

    def decoder_input(self, word: Tensor, context: Tensor) -> Tensor:
        return torch.cat(DecoderInput(word=word, context=context).in_order(), dim=-1)

    def output_logits(
        self, decoder_state: Tensor, context: Tensor, previous: Tensor, attended: Tensor
    ) -> Tensor:
        """Logits from the decoder state, context, previous word and attended context words
        (rows are positions; ``attended`` has no columns without attention)."""
        word = self.embedding(previous)
        return self.output(self.output_features(decoder_state, context, word, attended))

    def output_features(
        self, decoder_state: Tensor, context: Tensor, word: Tensor, attended: Tensor
    ) -> Tensor:
        """What the output projection reads: ``output_logits`` before ``self.output``, from
        the previous word's embedding ``word``."""
        parts = OutputInput(state=decoder_state, context=context, word=word, attended=attended)
        hidden = self.output_hidden(self.dropout(torch.cat(parts.in_order(), dim=-1)))
        return self.dropout(self.output_activation(hidden))

    def output_activation(self, hidden: Tensor) -> Tensor:
        """Maxout over pairs of units (the paper's), or tanh when ``maxout`` is off. (The
        elementwise maximum of the even and odd units: ``amax`` over pairs was a reduction
        per pair, twice as slow: 289 against 147 us for [220, 600] bf16 on 2 cores.)"""
        if self.config.maxout:
            return torch.maximum(hidden[..., 0::2], hidden[..., 1::2])
        return torch.tanh(hidden)

    # --- encoding -------------------------------------------------------------------------

    def encode_utterances(
        self, utterances: Tensor, lengths: Tensor
    ) -> tuple[Tensor, Tensor | None]:
        """[N, L] token ids -> [N, utterance_size], the last layer's final state(s), and, with
        attention, the word states [N, L', utterance_size] (L' the longest length; zeros past
        each)."""
        attention = self.config.attention
        if use_stepwise_gru(utterances):  # training on a CPU: see core/recurrent.py
            embedded = self.dropout(self.embedding(utterances))
            out, hidden = run_gru(self.utterance_encoder, embedded, lengths.cpu())
            words = out if attention else None
        else:
            # Pack the ids first: padding is then never embedded, dropped out or run.
            ids = pack_padded_sequence(
                utterances, lengths.cpu(), batch_first=True, enforce_sorted=False
            )
            packed = ids._replace(data=self.dropout(self.embedding(ids.data)))
            out, hidden = self.utterance_encoder(packed)  # [layers * directions, N, H]
            words = pad_packed_sequence(out, batch_first=True)[0] if attention else None
        if self.config.bidirectional:
            return torch.cat([hidden[-2], hidden[-1]], dim=-1), words
        return hidden[-1], words

    def context_memory(
        self,
        words: Tensor | None,
        lengths: Tensor,
        turns: Tensor,
        dialogues: Tensor,
        before: Tensor,
    ) -> Memory | None:
        """The attention memory of rows that each read dialogue ``dialogues[m]``'s context
        utterances ``0 .. before[m] - 1``, from the word states [N, L, D] of every context
        utterance (flattened dialogue-major, ``turns[b]`` of them for dialogue ``b``); none
        without attention (no word states)."""
        if words is None:
            return None
        batch, most = len(turns), int(turns.max())
        width = words.size(1)
        device = words.device
        cells = torch.arange(most).unsqueeze(0) < turns.unsqueeze(1)  # [B, T]
        grid = words.new_zeros(batch, most, width, words.size(-1))
        grid[cells.to(device)] = words
        real = torch.zeros(batch, most, width, dtype=torch.bool)
        real[cells] = torch.arange(width).unsqueeze(0) < lengths.cpu().unsqueeze(1)
        back = before.cpu().unsqueeze(1) - torch.arange(most).unsqueeze(0)  # [M, T] turns back
        mask = (real[dialogues.cpu()] & (back > 0).unsqueeze(2)).flatten(1)
        distance = self.turn_distance(back.clamp(1, TURN_DISTANCES).sub(1).to(device))
        states = grid.index_select(0, dialogues.to(device)) + distance.unsqueeze(2)
        return Memory(states.flatten(1, 2), mask.to(device))

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

    def context_vectors(self, contexts: list[list[list[int]]]) -> Tensor:
        """Token-id contexts (each a list of ``<s> .. </s>`` utterances) -> [B, Hc]."""
        return self.encode_contexts(contexts)[0]

    def encode_contexts(self, contexts: list[list[list[int]]]) -> tuple[Tensor, Memory | None]:
        """Token-id contexts (each a list of ``<s> .. </s>`` utterances) -> their context
        vectors [B, Hc] and, with attention, the memory of their words: what
        ``start_decoding`` decodes from.

        An empty context gives the context encoder's initial (zero) state and no words, so
        the decoder still produces an opener.
        """
        weight = self.embedding.weight  # the context comes out in the model's dtype
        device = weight.device
        out = weight.new_zeros(len(contexts), self.config.context_hidden)
        present = [i for i, ctx in enumerate(contexts) if ctx]
        if not present:
            return out, None
        batch = DialogueBatch.from_ids([contexts[i] for i in present], self.config.pad_id)
        vectors, words = self.encode_utterances(batch.utterances.to(device), batch.lengths)
        states = self.encode_context(vectors, batch.turns)
        last = states[torch.arange(len(present)), (batch.turns - 1).to(device)]
        rows = torch.tensor(present, device=device)
        out[rows] = last.to(out.dtype)
        found = self.context_memory(
            words, batch.lengths, batch.turns, torch.arange(len(present)), batch.turns
        )
        if found is None:
            return out, None
        memory = Memory(
            found.states.new_zeros(len(contexts), *found.states.shape[1:]),
            found.mask.new_zeros(len(contexts), found.mask.size(1)),
        )
        memory.states[rows], memory.mask[rows] = found.states, found.mask
        return out, memory

    def initial_decoder_state(self, context: Tensor) -> Tensor:
        """[B, Hc] -> [decoder_layers, B, Hd] = tanh(W c)."""
        c = self.config
        state = torch.tanh(self.decoder_init(context))
        return state.view(-1, c.decoder_layers, c.decoder_hidden).transpose(0, 1).contiguous()

    # --- teacher forcing: training, evaluation, scoring -----------------------------------

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
        context, utterances, memory = self._decoded_utterances(
            batch, loss_on or self.config.loss_on
        )
        inputs, targets, mask = self._shift(utterances)
        if sampling_prob > 0.0:
            inputs = self._sample_inputs(inputs, targets, mask, context, memory, sampling_prob)
        features = self.teacher_forced_features(inputs, mask, context, memory, padded=True)
        gold = targets[mask]
        if self.training:  # the output layer and the loss in one node (kernels.py)
            # Rows past the real ones (``padded``) are ignored: slicing them off instead
            # would cost a [K, V] zero-fill and copy in the backward pass.
            padded_gold = F.pad(gold, (0, features.size(0) - gold.size(0)), value=_IGNORED)
            loss_sum = linear_cross_entropy(
                features, self.output.weight, self.output.bias, padded_gold, _IGNORED,
                self._logits_workspace,
            )  # fmt: skip
            return {"loss_sum": loss_sum, "tokens": mask.sum(), "correct": gold.new_zeros(())}
        # evaluation also counts argmax hits, for the paper's error rate
        logits = self.output(features)[: gold.size(0)].float()
        loss_sum = F.cross_entropy(logits, gold, reduction="sum")
        correct = (logits.argmax(-1) == gold).sum()
        return {"loss_sum": loss_sum, "tokens": mask.sum(), "correct": correct}

    def token_log_probs(
        self, batch: DialogueBatch, loss_on: LossOn = "all"
    ) -> tuple[Tensor, Tensor]:
        """Log-probability of every target token under teacher forcing, [M, W] with a mask.

        Rows are the decoded utterances in batch order (as ``forward`` models them).
        """
        context, utterances, memory = self._decoded_utterances(batch, loss_on)
        inputs, targets, mask = self._shift(utterances)
        return self.target_log_probs(inputs, targets, mask, context, memory), mask

    def target_log_probs(
        self,
        inputs: Tensor,
        targets: Tensor,
        mask: Tensor,
        context: Tensor,
        memory: Memory | None = None,
    ) -> Tensor:
        """log p(``targets``) under teacher forcing, [M, W]; 0 where ``mask`` is False.

        Decoding's MMI pass scores replies with it (a zero context and no memory: the
        language model)."""
        logits = self.teacher_forced_logits(inputs, mask, context, memory)
        log_probs = F.log_softmax(logits.float(), dim=-1)
        out = torch.zeros(targets.shape, device=targets.device)
        out[mask] = log_probs.gather(1, targets[mask].unsqueeze(1)).squeeze(1)
        return out

    def teacher_forced_logits(
        self,
        inputs: Tensor,
        mask: Tensor,
        context: Tensor,
        memory: Memory | None = None,
    ) -> Tensor:
        """Logits [K, V] at the K real target positions (``mask``, a prefix of each row) of
        [M, W] decoder ``inputs`` (``<s>`` and the words so far), row m decoded from
        ``context[m]`` (and, with attention, ``memory`` row m). Padded steps are never run."""
        features = self.teacher_forced_features(inputs, mask, context, memory, padded=True)
        return self.output(features)[: int(mask.sum())]

    def teacher_forced_features(
        self,
        inputs: Tensor,
        mask: Tensor,
        context: Tensor,
        memory: Memory | None = None,
        padded: bool = False,
    ) -> Tensor:
        """What the output projection reads at those positions, [K, E]: ``teacher_forced_logits``
        before ``self.output``. With ``padded``, the output layer's padding rows
        (``stable_row_count``: few shapes for oneDNN) follow the K real ones: the caller
        ignores them."""
        lengths = mask.sum(1).cpu()
        if not bool(lengths.all()):  # rows with nothing to predict cannot be packed
            rows = lengths.nonzero().squeeze(1)
            if rows.numel() == 0:
                return context.new_zeros(0, self.config.embedding_size)
            lengths, device_rows = lengths[rows], rows.to(inputs.device)
            inputs, mask, context = inputs[device_rows], mask[device_rows], context[device_rows]
            memory = memory.select(device_rows) if memory is not None else None
        hidden = self.initial_decoder_state(context)
        # One lookup for the decoder's input and the output layer's previous word: each
        # lookup's backward pass zero-fills a [vocabulary, embedding] gradient.
        words = self.embedding(inputs)
        steps = context.unsqueeze(1).expand(-1, inputs.size(1), -1)
        decoder_inputs = self.decoder_input(self.dropout(words), steps)
        if use_stepwise_gru(decoder_inputs):  # training on a CPU: see core/recurrent.py
            decoder_out, _ = run_gru(self.decoder, decoder_inputs, lengths, hidden)
        else:
            packed = pack_padded_sequence(
                decoder_inputs, lengths, batch_first=True, enforce_sorted=False
            )
            decoder_out, _ = pad_packed_sequence(self.decoder(packed, hidden)[0], batch_first=True)
        # The masked positions through ``index_select`` (its backward pass is an index_add)
        # rather than ``x[mask]`` (an accumulating index_put, 3 against 0.7 ms forward and
        # backward at [50, 32, 300]); ``context`` is selected per row, not from the expanded
        # [M, W, Hc] view, whose backward pass would fill that whole shape.
        positions, columns = mask.nonzero().unbind(1)
        size = self.config.attended_size()
        if size:
            query = self.attention_query(decoder_out)
            attended = _cells(attend(query, memory, size), positions, columns)
        else:
            attended = decoder_out.new_zeros(len(positions), 0)
        states, word = _cells(decoder_out, positions, columns), _cells(words, positions, columns)
        contexts = context.index_select(0, positions)
        count = len(word)
        extra = stable_row_count(count, self.output.weight) - count  # few shapes for oneDNN
        if extra:  # zero rows: their targets are ignored
            states, contexts = F.pad(states, (0, 0, 0, extra)), F.pad(contexts, (0, 0, 0, extra))
            attended, word = F.pad(attended, (0, 0, 0, extra)), F.pad(word, (0, 0, 0, extra))
        features = self.output_features(states, contexts, word, attended)
        return features if padded or not extra else features[:count]

    def _decoded_utterances(
        self, batch: DialogueBatch, loss_on: LossOn
    ) -> tuple[Tensor, Tensor, Memory | None]:
        """The context vectors [M, Hc] of the utterances to decode, the utterances [M, W]
        (trimmed to the longest) and their attention memory, in batch order."""
        turns, offsets = batch.turns, batch.offsets
        # Only turns that condition a later turn are encoded: the last one never is.
        context_rows = _rows(offsets, turns - 1)
        targets_rows, context_of_target = _target_rows(offsets, turns, loss_on)
        device = batch.utterances.device
        vectors, words = self.encode_utterances(
            batch.utterances[context_rows.to(device)], batch.lengths[context_rows]
        )
        states = self.encode_context(vectors, turns - 1)  # [B, T-1, Hc]
        context = states.flatten(0, 1).index_select(0, context_of_target.to(device))
        width = int(batch.lengths[targets_rows].max())
        grid_width = states.size(1)
        memory = self.context_memory(
            words,
            batch.lengths[context_rows],
            turns - 1,
            context_of_target // grid_width,
            context_of_target % grid_width + 1,
        )
        return context, batch.utterances[targets_rows.to(device), :width], memory

    def _shift(self, utterances: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        """Decoder inputs, targets and the mask of real targets from ``<s> .. </s>`` rows."""
        inputs, targets = utterances[:, :-1], utterances[:, 1:]
        return inputs, targets, targets != self.config.pad_id

    @torch.no_grad()
    def _sample_inputs(
        self,
        inputs: Tensor,
        targets: Tensor,
        mask: Tensor,
        context: Tensor,
        memory: Memory | None,
        prob: float,
    ) -> Tensor:
        predicted = torch.full_like(targets, self.config.pad_id)
        predicted[mask] = self.teacher_forced_logits(inputs, mask, context, memory).argmax(-1)
        # Input position k + 1 holds target k; it is a real word where target k + 1 is real.
        coin = torch.rand(targets.shape, device=targets.device) < prob
        replace = coin[:, :-1] & mask[:, 1:]
        sampled = inputs.clone()
        sampled[:, 1:][replace] = predicted[:, :-1][replace]
        return sampled

    # --- step-by-step decoding (decoding.py builds beam search and sampling on this) -------

    def start_decoding(self, context: Tensor, memory: Memory | None = None) -> DecoderSteps:
        """Decode one token at a time from [R, Hc] context vectors and their attention
        memory (``encode_contexts``; see ``DecoderSteps``)."""
        return DecoderSteps(self, context, memory)


class DecoderSteps:
    """The decoder one step at a time for R rows, the hidden state carried by the caller, so
    a prefix is never fed again. Inference only (no dropout).

    It computes what the teacher-forced pass computes, rearranged for speed: the context's
    share of the first GRU layer's input gates and of the output layer is the same at every
    step, so it is computed once here from the weights' context column blocks; the GRU cell
    is written out (gates r, z, n in PyTorch's order); on a CPU the weights are prepacked for
    oneDNN (see ``_packs``).
    """

    def __init__(self, model: HRED, context: Tensor, memory: Memory | None = None) -> None:
        c = model.config
        weight = model.embedding.weight
        packed = _packs(weight)
        self.embedding = weight
        self.hidden_size = c.decoder_hidden
        self.activation = model.output_activation
        self._initial_state = model.initial_decoder_state
        self.context = context
        # attention runs in float32 (see ``attend``): convert the memory once, not per step
        self.memory = Memory(memory.states.float(), memory.mask) if memory is not None else None
        self.attended_size = c.attended_size()
        self.query = (
            _Matmul(model, "query", packed, model.attention_query.weight)
            if self.attended_size
            else None
        )
        gru = model.decoder
        first = model.decoder_input_weights()
        self.layers: list[tuple[_Matmul, Tensor, _Matmul, Tensor]] = []
        for layer, (w_ih, w_hh, b_ih, b_hh) in enumerate(gru.all_weights):
            if layer == 0:
                # the context's share of the input gates (input bias folded in) is per reply
                self.context_gates = F.linear(context, first.context, b_ih)
                inputs = _Matmul(model, "ih0", packed, w_ih, build=lambda: first.word)
            else:
                inputs = _Matmul(model, f"ih{layer}", packed, w_ih)
            hh = _Matmul(model, f"hh{layer}", packed, w_hh)
            self.layers.append((inputs, b_ih, hh, b_hh))
        out = model.output_input_weights()
        self.context_out = F.linear(context, out.context, model.output_hidden.bias)
        # The state, the word and the attended words go through one product:
        # [state, word, attended] @ [W_state, W_word, W_attended].T
        self.state_and_word = _Matmul(
            model,
            "out",
            packed,
            model.output_hidden.weight,
            build=lambda: torch.cat([out.state, out.word, out.attended], dim=1),
        )
        self.vocab = _Matmul(model, "vocab", packed, model.output.weight)
        self.output_weight, self.output_bias = model.output.weight, model.output.bias
        self.features: Tensor | None = None  # the last step's input of the vocabulary product

    def repeat(self, times: int) -> None:
        """Every row becomes ``times`` consecutive rows (the beams of one conversation)."""
        if times > 1:
            rows = torch.arange(self.context.size(0), device=self.context.device)
            self.select(rows.repeat_interleave(times))

    def select(self, rows: Tensor) -> None:
        """Keep (and reorder, or repeat) the given rows."""
        self.context = self.context.index_select(0, rows)
        self.context_gates = self.context_gates.index_select(0, rows)
        self.context_out = self.context_out.index_select(0, rows)
        if self.memory is not None:
            self.memory = self.memory.select(rows)

    def initial_hidden(self) -> Tensor:
        """[layers, R, Hd]: the decoder's state before ``<s>``."""
        return self._initial_state(self.context)

    def step(self, previous: Tensor, hidden: Tensor) -> tuple[Tensor, Tensor]:
        """[R] previous tokens, [layers, R, Hd] hidden -> ([R, V] float log-probs, hidden)."""
        logits, hidden = self.logits(previous, hidden)
        return F.log_softmax(logits, dim=-1, dtype=torch.float32), hidden

    def exact_logits(self, rows: Tensor, tokens: Tensor) -> Tensor:
        """The last step's logits of ``tokens`` in ``rows`` (same shape), summed in float32.
        A bf16 product rounds its output to 8 bits (steps of 1/16 between 8 and 16), which
        can swap near-tied candidates; beam search recomputes its candidates' logits here."""
        assert self.features is not None, "exact_logits() reads the last step: call logits()"
        features = self.features.index_select(0, rows.view(-1)).float()
        weights = self.output_weight.index_select(0, tokens.view(-1)).float()
        exact = torch.linalg.vecdot(features, weights).view(tokens.shape)
        return exact + self.output_bias.take(tokens)

    def logits(self, previous: Tensor, hidden: Tensor) -> tuple[Tensor, Tensor]:
        """``step`` before the softmax: ([R, V] logits in the model's dtype, hidden). Beam
        search normalises only what it reads (``rasa_hred.core.kernels``)."""
        size = self.hidden_size
        word = F.embedding(previous, self.embedding)
        states = []
        x = word
        for layer, (inputs, b_ih, hh, b_hh) in enumerate(self.layers):
            h = hidden[layer]
            gates_in = inputs(word, self.context_gates) if layer == 0 else inputs(x, b_ih)
            gates_h = hh(h, b_hh)
            rz = torch.sigmoid(gates_in[:, : 2 * size] + gates_h[:, : 2 * size])
            r, z = rz.chunk(2, dim=1)
            n = torch.tanh(torch.addcmul(gates_in[:, 2 * size :], r, gates_h[:, 2 * size :]))
            x = torch.lerp(n, h, z)  # (1 - z) * n + z * h
            states.append(x)
        pieces = [x, word]
        if self.query is not None:
            pieces.append(attend(self.query(x), self.memory, self.attended_size))
        out = self.state_and_word(torch.cat(pieces, dim=1), self.context_out)
        self.features = self.activation(out)
        logits = self.vocab(self.features, self.output_bias)
        new_hidden = states[0].unsqueeze(0) if len(states) == 1 else torch.stack(states)
        return logits, new_hidden


_ONEDNN = hasattr(torch.ops.mkldnn, "_linear_pointwise") and torch.backends.mkldnn.is_available()


def _packs(weight: Tensor) -> bool:
    """Whether the decoder's products with weights like ``weight`` run on oneDNN-prepacked
    weights: on a CPU, in float32, or in bfloat16 where the CPU has bf16 units (elsewhere
    oneDNN may lack bf16 kernels). Measured on 2 cores with AMX, a 300 x 10,004 product:
    prepacked bf16 0.21 ms at 5 rows and 2.3 ms at 320, against 0.33 / 4.3 ms for a bf16
    ``addmm`` and 0.35 / 9.4 ms for prepacked float32. Not under autocast: the weights
    would be float32 and the inputs bf16."""
    if not _ONEDNN or weight.device.type != "cpu" or torch.is_autocast_enabled("cpu"):
        return False
    if weight.dtype == torch.bfloat16:
        return cpu_has_bf16_units()
    return weight.dtype == torch.float32


# oneDNN-prepacked weights per model: name -> (key of the source parameters, (packed
# weight, its padded copy or None)). The key (data pointers and in-place version counters)
# changes when a weight is loaded, trained or moved, and the weight is then packed again.
_PACKED: weakref.WeakKeyDictionary[
    HRED, dict[str, tuple[tuple[int, ...], tuple[Tensor, _Tiled | None]]]
] = weakref.WeakKeyDictionary()


#: From this many rows on, a prepacked bf16 product runs on a copy of its weight padded with
#: zeros to whole multiples of ``BF16_TILE`` in both dimensions: oneDNN's AMX kernels
#: multiply bf16 in tiles of 32 and were several times slower on the remainders. Measured on
#: 2 cores, bf16, 320 rows: 300 -> 10,004 took 4.6 ms, 320 -> 10,016 1.6 ms; 300 -> 900
#: 0.24 ms, 320 -> 928 0.12 ms. Below 32 rows the padding's copies cost more than it saves
#: (a decoder step at 5 rows: 0.69 ms padded, 0.60 ms not). float32: no gain.
BF16_TILE = 32
TILED_FROM_ROWS = 32


class _Matmul:
    """``x @ W.T (+ bias)``. On the CPU ``W`` is prepacked for oneDNN where ``_packs`` says so
    (MKL's sgemm is several times slower for the few-row products of decoding on some CPUs,
    AMD's among them); elsewhere it is a plain ``addmm``. ``W`` is the parameter ``source``, or what
    ``build`` makes from it (called only when ``W`` is not in the cache). A prepacked bf16
    ``W`` also has a copy padded to ``BF16_TILE`` for products of many rows."""

    def __init__(
        self,
        model: HRED,
        name: str,
        packed: bool,
        source: Tensor,
        build: Callable[[], Tensor] | None = None,
    ) -> None:
        self.packed = packed
        build = build or (lambda: source)
        if not packed:
            self.weight = build().t()
            return
        cache = _PACKED.setdefault(model, {})
        key = _version_key(source)
        hit = cache.get(name)
        if key is not None and hit is not None and hit[0] == key:
            self.weight, self.tiled = hit[1]
            return
        weight = build().contiguous()
        self.weight = torch.ops.mkldnn._reorder_linear_weight(weight)
        self.tiled = _Tiled(weight) if weight.dtype == torch.bfloat16 else None
        if key is not None:
            cache[name] = (key, (self.weight, self.tiled))

    def __call__(self, x: Tensor, bias: Tensor | None = None) -> Tensor:
        """``bias`` is [out] or a per-row [R, out]."""
        if not self.packed:
            return x @ self.weight if bias is None else torch.addmm(bias, x, self.weight)
        if self.tiled is not None and x.size(0) >= TILED_FROM_ROWS:
            return self.tiled(x, bias)
        return _linear(x, self.weight, bias)


class _Tiled:
    """A prepacked weight padded with zeros to whole tiles; inputs and biases are padded to
    match, and the output is a view of the real columns."""

    def __init__(self, weight: Tensor) -> None:
        self.out_features = weight.size(0)
        self.pad_out, self.pad_in = (-size % BF16_TILE for size in weight.shape)
        padded = F.pad(weight, (0, self.pad_in, 0, self.pad_out)).contiguous()
        self.weight = torch.ops.mkldnn._reorder_linear_weight(padded)

    def __call__(self, x: Tensor, bias: Tensor | None) -> Tensor:
        if self.pad_in:
            x = F.pad(x, (0, self.pad_in))
        if bias is not None and self.pad_out:
            bias = F.pad(bias, (0, self.pad_out))
        out = _linear(x, self.weight, bias)
        return out[:, : self.out_features] if self.pad_out else out


def _linear(x: Tensor, packed: Tensor, bias: Tensor | None) -> Tensor:
    """oneDNN's product with a prepacked weight; ``bias`` is [out] or a per-row [R, out]."""
    if bias is None or bias.dim() == 1:
        return torch.ops.mkldnn._linear_pointwise(x, packed, bias, "none", [], "")
    return torch.ops.mkldnn._linear_pointwise.binary(x, bias, packed, None, "add")


def _version_key(source: Tensor) -> tuple[int, ...] | None:
    try:
        return (source.data_ptr(), source._version)
    except RuntimeError:  # inference tensors keep no version counter: do not cache
        return None


def _cells(x: Tensor, rows: Tensor, columns: Tensor) -> Tensor:
    """``x[rows, columns]`` of [R, C, D] as [K, D], through ``index_select``."""
    return x.flatten(0, 1).index_select(0, rows * x.size(1) + columns)


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
