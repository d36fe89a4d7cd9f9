"""Training: the loop behind ``rasa-hred train`` and ``HREDPolicy.train``.

One loop for a CPU, a GPU, or several processes under ``torchrun`` (DistributedDataParallel:
every rank builds the same batches from the same seed and takes its own share; metrics are
summed across ranks; only rank 0 writes). The output directory is a model directory
(``config.json``, ``vocab.json``, ``model.safetensors`` of the best epoch) plus
``metrics.jsonl``, ``training.png`` and ``checkpoint-last/`` for resuming.

It takes dialogues, not corpus specs: ``rasa_hred.jobs.train_on_corpus`` loads a corpus and
calls :func:`train_model`.
"""

from __future__ import annotations

import contextlib
import json
import math
import os
import random
import signal
import sys
import threading
import time
from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist
from torch.nn.parallel import DistributedDataParallel

from rasa_hred.core.batching import (
    bucketed_batches,
    encode_dialogues,
    make_batch,
)
from rasa_hred.core.checkpoint import (
    CheckpointError,
    load_model,
    load_state,
    resolve_device,
    save_model,
)
from rasa_hred.core.evaluation import perplexity, score
from rasa_hred.core.fields import check_known_keys
from rasa_hred.core.model import HRED, HREDConfig
from rasa_hred.core.precision import cpu_has_bf16_units
from rasa_hred.core.vocab import Vocabulary
from rasa_hred.errors import UserError

LAST_CHECKPOINT = "checkpoint-last"
STATE_FILE = "training_state.pt"


@dataclass
class TrainingConfig:
    """Everything ``rasa-hred train`` can be told; ``--config FILE`` sets any of it."""

    corpus: list[str] = field(default_factory=lambda: ["chatterbot:english"])
    out: str = "models/hred"
    # model sizes
    embedding_size: int = 128
    hidden_size: int = 256  # all three GRUs unless set separately below
    utterance_hidden: int | None = None
    context_hidden: int | None = None
    decoder_hidden: int | None = None
    utterance_layers: int = 1
    context_layers: int = 1
    decoder_layers: int = 1
    bidirectional: bool = True
    dropout: float = 0.2
    maxout: bool = True
    tie_embeddings: bool = True
    loss_on: str = "all"
    attention: bool = False  # the output layer attends to the context's words
    # data
    vocab_size: int = 10000
    min_freq: int = 1
    max_utterance_tokens: int = 50
    max_turns: int = 10
    split_seed: int = 0
    # optimisation
    epochs: int = 30
    batch_size: int = 32
    lr: float = 2e-3
    weight_decay: float = 0.0
    grad_clip: float = 1.0
    lr_decay: float = 0.5  # multiply the lr by this when validation perplexity stalls
    lr_patience: int = 1
    early_stopping: int = 4  # epochs without improvement before stopping (0 = never)
    scheduled_sampling: float = 0.0  # final probability of feeding the model's own word
    scheduled_sampling_epochs: int = 10  # epochs over which it rises linearly from 0
    seed: int = 0
    device: str = "auto"
    bf16: bool = True  # autocast to bfloat16 on CUDA
    # bfloat16 autocast on the CPU too: true, false, or "auto" (where the CPU has bf16 units,
    # AMX-BF16 or AVX512-BF16; elsewhere bf16 is emulated and slower than float32). Auto by
    # default: on the demo's corpora (chitchat and chatterbot), one epoch at its settings on
    # one core, validation perplexity was 80.30 with it and 79.92 without (seed 0), 78.72 and
    # 78.35 (seed 1), in 0.51-0.55x the CPU time.
    cpu_bf16: bool | str = "auto"
    threads: int | None = None
    progress: bool = True

    @classmethod
    def from_dict(
        cls, values: Mapping[str, Any], *, what: str = "training option(s)"
    ) -> TrainingConfig:
        """A config from a mapping of option: value (a config file, a policy's ``training``);
        an unknown option is a ``UserError`` naming ``what``. A single corpus spec may be
        given as a string."""
        check_known_keys(cls, values, what, UserError)
        options = dict(values)
        if options.get("cpu_bf16", False) not in (True, False, "auto"):
            raise UserError(f"cpu_bf16 must be true, false or auto, not {options['cpu_bf16']!r}")
        if isinstance(options.get("corpus"), str):
            options["corpus"] = [options["corpus"]]
        return cls(**options)

    def model_config(self, vocabulary: Vocabulary) -> HREDConfig:
        return HREDConfig(
            vocab_size=len(vocabulary),
            pad_id=vocabulary.pad_id,
            bos_id=vocabulary.bos_id,
            eos_id=vocabulary.eos_id,
            embedding_size=self.embedding_size,
            utterance_hidden=self.utterance_hidden or self.hidden_size,
            context_hidden=self.context_hidden or self.hidden_size,
            decoder_hidden=self.decoder_hidden or self.hidden_size,
            utterance_layers=self.utterance_layers,
            context_layers=self.context_layers,
            decoder_layers=self.decoder_layers,
            bidirectional=self.bidirectional,
            dropout=self.dropout,
            maxout=self.maxout,
            tie_embeddings=self.tie_embeddings,
            loss_on=self.loss_on,  # type: ignore[arg-type]
            attention=self.attention,
        )


# --- distributed helpers ------------------------------------------------------------------


@dataclass
class Rank:
    rank: int = 0
    world: int = 1

    @property
    def main(self) -> bool:
        return self.rank == 0


def _init_distributed(device: torch.device) -> Rank:
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world <= 1:
        return Rank()
    backend = "nccl" if device.type == "cuda" else "gloo"
    dist.init_process_group(backend)
    return Rank(dist.get_rank(), dist.get_world_size())


def _all_sum(values: list[float], rank: Rank, device: torch.device) -> list[float]:
    if rank.world == 1:
        return values
    tensor = torch.tensor(values, dtype=torch.float64, device=device)
    dist.all_reduce(tensor)
    return tensor.tolist()


# --- the trainer --------------------------------------------------------------------------


@dataclass
class TrainingResult:
    out: Path
    best_valid_perplexity: float
    epochs_run: int
    interrupted: bool = False
    metrics: list[dict[str, Any]] = field(default_factory=list)


class Trainer:
    def __init__(
        self,
        config: TrainingConfig,
        train: Sequence[Sequence[str]],
        validation: Sequence[Sequence[str]],
        vocabulary: Vocabulary | None = None,
        *,
        resume: bool = False,
        extra: dict[str, Any] | None = None,
    ) -> None:
        self.config = c = config
        self.out = Path(c.out)
        self.device = resolve_device(c.device)
        if c.threads:
            torch.set_num_threads(c.threads)
        self.rank = _init_distributed(self.device)
        if self.device.type == "cuda" and self.rank.world > 1:
            self.device = torch.device("cuda", int(os.environ.get("LOCAL_RANK", "0")))
            torch.cuda.set_device(self.device)
        _seed_everything(c.seed)
        if resume:
            vocabulary = Vocabulary.load(self.out / LAST_CHECKPOINT / "vocab.json")
        elif vocabulary is None:
            vocabulary = Vocabulary.build(
                (u.split() for d in train for u in d), max_size=c.vocab_size, min_freq=c.min_freq
            )
        self.vocabulary = vocabulary
        self.train_ids, self.valid_ids = (
            encode_dialogues(
                dialogues,
                vocabulary,
                max_utterance_tokens=c.max_utterance_tokens,
                max_turns=c.max_turns,
            )
            for dialogues in (train, validation)
        )
        if not self.train_ids:
            raise UserError("the training split has no dialogues")
        self.model = HRED(c.model_config(vocabulary)).to(self.device)
        self.optimizer = adam(self.model.parameters(), lr=c.lr, weight_decay=c.weight_decay)
        self.scheduler = torch.optim.lr_scheduler.ReduceLROnPlateau(
            self.optimizer, mode="min", factor=c.lr_decay, patience=c.lr_patience
        )
        self.epoch = 0
        self.best = math.inf
        self.stale_epochs = 0
        self.metrics: list[dict[str, Any]] = []
        self.extra = extra or {}
        if resume:
            self._restore()
        self.parallel: torch.nn.Module = self.model
        if self.rank.world > 1:
            self.parallel = DistributedDataParallel(self.model)

    # --- the loop -----------------------------------------------------------------------

    def fit(self) -> TrainingResult:
        c = self.config
        if self.rank.main:
            self.out.mkdir(parents=True, exist_ok=True)
            self._log(
                f"HRED: {self.model.num_parameters():,} parameters, vocabulary "
                f"{len(self.vocabulary):,}, {len(self.train_ids):,} training dialogues, "
                f"device {self.device}"
                + (f" x {self.rank.world} ranks" if self.rank.world > 1 else "")
            )
        interrupted = False
        try:
            with _ctrl_c_requests_a_stop() as stop:
                while self.epoch < c.epochs:
                    record = self._train_epoch(stop)
                    if stop.is_set():
                        raise KeyboardInterrupt
                    self.epoch += 1
                    record |= self._validate()
                    self._end_epoch(record)
                    if c.early_stopping and self.stale_epochs >= c.early_stopping:
                        self._log(f"early stopping: no improvement for {self.stale_epochs} epochs")
                        break
        except KeyboardInterrupt:
            interrupted = True
            if self.rank.main:
                self._save_last()
                self._log(
                    f"\ninterrupted in epoch {self.epoch + 1}; the current weights and optimizer "
                    f"state are in {self.out / LAST_CHECKPOINT} (the best epoch so far stays in "
                    f"{self.out}). Resume with the same command plus --resume."
                )
        if self.rank.world > 1 and not interrupted:
            dist.barrier()
        return TrainingResult(self.out, self.best, self.epoch, interrupted, self.metrics)

    def sampling_prob(self) -> float:
        c = self.config
        if c.scheduled_sampling <= 0:
            return 0.0
        ramp = min(1.0, self.epoch / max(1, c.scheduled_sampling_epochs))
        return c.scheduled_sampling * ramp

    def _train_epoch(self, stop: threading.Event | None = None) -> dict[str, Any]:
        c, rank = self.config, self.rank
        rng = random.Random(c.seed * 1_000_003 + self.epoch)
        batches = bucketed_batches(self.train_ids, c.batch_size, rng=rng)
        if rank.world > 1:  # equal shares, so every rank runs the same number of steps
            batches = batches[: len(batches) - len(batches) % rank.world][rank.rank :: rank.world]
        self.model.train()
        prob = self.sampling_prob()
        loss_sum = tokens = 0.0
        started = time.perf_counter()
        bar = _progress(batches, f"epoch {self.epoch + 1}/{c.epochs}", c.progress and rank.main)
        for indices in bar:
            if stop is not None and stop.is_set():
                break
            batch = make_batch(self.train_ids, indices, self.model.config.pad_id).to(self.device)
            with self._autocast():
                out = self.parallel(batch, sampling_prob=prob)
            count = out["tokens"].clamp(min=1)
            self.optimizer.zero_grad(set_to_none=True)
            (out["loss_sum"] / count).backward()
            torch.nn.utils.clip_grad_norm_(self.model.parameters(), c.grad_clip)
            self.optimizer.step()
            loss_sum += float(out["loss_sum"].detach())
            tokens += float(out["tokens"])
            if hasattr(bar, "set_postfix"):
                elapsed = time.perf_counter() - started
                bar.set_postfix(
                    loss=f"{loss_sum / max(tokens, 1):.3f}",
                    ppl=f"{math.exp(min(loss_sum / max(tokens, 1), 50)):.1f}",
                    tok_s=f"{tokens / max(elapsed, 1e-9):,.0f}",
                )
        elapsed = time.perf_counter() - started
        loss_sum, tokens = _all_sum([loss_sum, tokens], rank, self.device)
        return {
            "epoch": self.epoch + 1,
            "train_loss": loss_sum / max(tokens, 1),
            "train_perplexity": math.exp(min(loss_sum / max(tokens, 1), 50)),
            "modelled_tokens_per_s": tokens / max(elapsed, 1e-9),
            "epoch_seconds": elapsed,
            "lr": self.optimizer.param_groups[0]["lr"],
            "sampling_prob": prob,
        }

    def _validate(self) -> dict[str, Any]:
        if not self.valid_ids:
            return {}
        with self._autocast():
            full = score(self.model, self.valid_ids, "all", self.config.batch_size)
            last = score(self.model, self.valid_ids, "last", self.config.batch_size)
        return {"valid_perplexity": perplexity(full), "valid_perplexity_last": perplexity(last)}

    def _end_epoch(self, record: dict[str, Any]) -> None:
        watched = record.get("valid_perplexity", record["train_perplexity"])
        self.scheduler.step(watched)
        improved = watched < self.best
        if improved:
            self.best, self.stale_epochs = watched, 0
        else:
            self.stale_epochs += 1
        record["best"] = improved
        self.metrics.append(record)
        if not self.rank.main:
            return
        if improved:
            save_model(self.out, self.model, self.vocabulary, self._document())
        self._save_last()
        with (self.out / "metrics.jsonl").open("a", encoding="utf-8") as stream:
            stream.write(json.dumps(record) + "\n")
        plot_metrics(self.out / "metrics.jsonl", self.out / "training.png")
        self._log(
            f"epoch {record['epoch']}: train ppl {record['train_perplexity']:.2f}"
            + (
                f", valid ppl {record['valid_perplexity']:.2f} "
                f"(last utterance {record['valid_perplexity_last']:.2f})"
                if "valid_perplexity" in record
                else ""
            )
            + (" *" if improved else "")
        )

    # --- checkpoints --------------------------------------------------------------------

    def _document(self) -> dict[str, Any]:
        training = asdict(self.config)
        return {"training": training, **self.extra}

    def _save_last(self) -> None:
        directory = self.out / LAST_CHECKPOINT
        save_model(directory, self.model, self.vocabulary, self._document())
        state = {
            "epoch": self.epoch,
            "best": self.best,
            "stale_epochs": self.stale_epochs,
            "optimizer": self.optimizer.state_dict(),
            "scheduler": self.scheduler.state_dict(),
            "torch_rng": torch.get_rng_state(),
            "metrics": json.dumps(self.metrics),
        }
        tmp = directory / (STATE_FILE + ".tmp")
        torch.save(state, tmp)
        tmp.replace(directory / STATE_FILE)

    def _restore(self) -> None:
        directory = self.out / LAST_CHECKPOINT
        loaded = load_model(directory, "cpu")
        if loaded.model.config != self.model.config:
            raise CheckpointError(
                f"{directory}: the checkpoint's model config differs from this run's; resume with "
                "the same options (or start a new --out)"
            )
        load_state(self.model, loaded.model.state_dict(), str(directory))
        try:
            state = torch.load(directory / STATE_FILE, map_location="cpu", weights_only=True)
            self.optimizer.load_state_dict(state["optimizer"])
            self.scheduler.load_state_dict(state["scheduler"])
            self.epoch, self.best = int(state["epoch"]), float(state["best"])
            self.stale_epochs = int(state["stale_epochs"])
            self.metrics = json.loads(state["metrics"])
            torch.set_rng_state(state["torch_rng"])
        except FileNotFoundError as error:
            raise CheckpointError(f"{directory / STATE_FILE}: missing, cannot resume") from error
        except Exception as error:
            raise CheckpointError(f"{directory / STATE_FILE}: unreadable ({error})") from error
        self._log(f"resuming after epoch {self.epoch} (best valid perplexity {self.best:.2f})")

    # --- small things -------------------------------------------------------------------

    def _autocast(self) -> contextlib.AbstractContextManager:
        return autocast(self.device, self.config.bf16, self.config.cpu_bf16)

    def _log(self, message: str) -> None:
        if self.rank.main:
            print(message, file=sys.stderr, flush=True)


def adam(
    parameters: Iterable[torch.nn.Parameter], lr: float, weight_decay: float = 0.0
) -> torch.optim.Adam:
    """Adam, its update fused into one kernel per parameter where PyTorch has one (CPU and
    CUDA): at the seed shape on 2 cores a step takes 4 ms instead of 13-21 ms, the same
    update up to float rounding."""
    return torch.optim.Adam(parameters, lr=lr, weight_decay=weight_decay, fused=True)


def autocast(
    device: torch.device, bf16: bool = True, cpu_bf16: bool | str = False
) -> contextlib.AbstractContextManager:
    """bfloat16 autocast where asked for; the loss is always computed in float32."""
    on_cpu = cpu_bf16 is True or (cpu_bf16 == "auto" and cpu_has_bf16_units())
    if (device.type == "cuda" and bf16) or (device.type == "cpu" and on_cpu):
        return torch.autocast(device.type, dtype=torch.bfloat16)
    return contextlib.nullcontext()


@contextlib.contextmanager
def _ctrl_c_requests_a_stop() -> Iterator[threading.Event]:
    """The first Ctrl-C asks the loop to stop after the current batch (so the checkpoint is
    written from a consistent state, never from inside a save or a plot); a second one
    interrupts at once."""
    stop = threading.Event()
    if threading.current_thread() is not threading.main_thread():
        yield stop
        return

    def request_stop(signum: int, frame: Any) -> None:
        if stop.is_set():
            raise KeyboardInterrupt
        stop.set()

    previous = signal.signal(signal.SIGINT, request_stop)
    try:
        yield stop
    finally:
        signal.signal(signal.SIGINT, previous)


def _seed_everything(seed: int) -> None:
    random.seed(seed)
    torch.manual_seed(seed)


def _progress(items: list, description: str, enabled: bool) -> Iterator | list:
    if not enabled:
        return items
    from tqdm import tqdm

    return tqdm(items, desc=description, unit="batch", leave=False, dynamic_ncols=True)


def plot_metrics(metrics_file: Path, image: Path) -> None:
    """Training and validation perplexity per epoch, as a PNG."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    records = [json.loads(line) for line in metrics_file.read_text().splitlines() if line.strip()]
    epochs = [r["epoch"] for r in records]
    figure, axis = plt.subplots(figsize=(6, 4))
    axis.plot(epochs, [r["train_perplexity"] for r in records], marker="o", label="train")
    if all("valid_perplexity" in r for r in records):
        axis.plot(epochs, [r["valid_perplexity"] for r in records], marker="o", label="validation")
    axis.set_xlabel("epoch")
    axis.set_ylabel("perplexity")
    axis.set_yscale("log")
    axis.legend()
    axis.grid(True, alpha=0.3)
    figure.tight_layout()
    figure.savefig(image, dpi=100)
    plt.close(figure)


# --- entry points -------------------------------------------------------------------------


def train_model(
    config: TrainingConfig,
    train: Sequence[Sequence[str]],
    validation: Sequence[Sequence[str]],
    vocabulary: Vocabulary | None = None,
    *,
    resume: bool = False,
    extra: Mapping[str, Any] | None = None,
) -> TrainingResult:
    """Train on ``train`` (dialogues of space-joined tokens), validate on ``validation``, and
    leave a model directory in ``config.out``. Without ``vocabulary`` one is built from the
    training dialogues; ``extra`` is stored in the model's ``config.json``."""
    trainer = Trainer(config, train, validation, vocabulary, resume=resume, extra=dict(extra or {}))
    return trainer.fit()


def can_resume(out: str | Path) -> bool:
    """Whether ``out`` holds a checkpoint that ``resume=True`` can continue."""
    return (Path(out) / LAST_CHECKPOINT / STATE_FILE).exists()


def rank_is_main() -> bool:
    """Whether this process reports results (always, unless it is a non-zero torchrun rank)."""
    return not dist.is_initialized() or dist.get_rank() == 0


def end_distributed() -> None:
    """Leave the torchrun process group, if training joined one."""
    if dist.is_initialized():
        dist.destroy_process_group()
