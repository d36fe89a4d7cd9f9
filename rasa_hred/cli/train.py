"""``rasa-hred train`` and ``rasa-hred eval``."""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import TYPE_CHECKING, Any

from rasa_hred.errors import UserError

if TYPE_CHECKING:
    from rasa_hred.core.training import TrainingConfig


def add_commands(commands: argparse._SubParsersAction) -> None:
    train = commands.add_parser(
        "train",
        help="train an HRED model on one or more corpora",
        description=(
            "Train an HRED model. Options come from the defaults, then --config FILE "
            "(YAML/JSON with any option below, e.g. configs/movietriples-paper.yaml), then the "
            "flags given. The output directory gets config.json, vocab.json, "
            "model.safetensors (best validation epoch), metrics.jsonl, training.png and "
            "checkpoint-last/ for --resume. Under `torchrun --nproc_per_node N` the same "
            "command trains with DistributedDataParallel."
        ),
    )
    train.add_argument("--config", help="YAML/JSON file of training options")
    train.add_argument(
        "--corpus", nargs="+", metavar="SPEC", help="corpus spec(s) [chatterbot:english]"
    )
    train.add_argument("--out", help="output directory [models/hred]")
    train.add_argument("--resume", action="store_true", help="continue the run in --out")
    train.add_argument("--epochs", type=int, help="maximum epochs [30]")
    train.add_argument("--batch-size", type=int, help="dialogues per batch [32]")
    train.add_argument("--lr", type=float, help="Adam learning rate [0.002]")
    train.add_argument("--embedding-size", type=int, help="word embedding size [128]")
    train.add_argument("--hidden-size", type=int, help="hidden size of all three GRUs [256]")
    train.add_argument("--utterance-hidden", type=int, help="utterance encoder size")
    train.add_argument("--context-hidden", type=int, help="context encoder size")
    train.add_argument("--decoder-hidden", type=int, help="decoder size")
    train.add_argument(
        "--bidirectional",
        action=argparse.BooleanOptionalAction,
        default=None,
        help="bidirectional utterance encoder [on]",
    )
    train.add_argument("--dropout", type=float, help="dropout [0.2]")
    train.add_argument("--loss-on", choices=["all", "last"], help="utterances in the loss [all]")
    train.add_argument("--vocab-size", type=int, help="words kept (besides specials) [10000]")
    train.add_argument(
        "--scheduled-sampling",
        type=float,
        help="final probability of feeding the model's own prediction [0 = teacher forcing]",
    )
    train.add_argument("--seed", type=int, help="random seed [0]")
    train.add_argument("--device", choices=["auto", "cpu", "cuda"], help="[auto]")
    train.add_argument("--threads", type=int, help="CPU threads for PyTorch")
    train.add_argument(
        "--cpu-bf16",
        action=argparse.BooleanOptionalAction,
        default=None,
        help="bfloat16 autocast on the CPU (about 2x faster on CPUs with AVX512-BF16/AMX) [off]",
    )
    train.add_argument(
        "--progress", action=argparse.BooleanOptionalAction, default=None, help="progress bar [on]"
    )
    train.set_defaults(handler=train_command)

    evaluate = commands.add_parser(
        "eval",
        help="perplexity, error rate and the shuffled-context control of a model",
        description=(
            "Evaluate a model directory on a corpus split. Prints perplexity (every modelled "
            "token), perplexity_last (last utterance only, the paper's @U3), error_rate "
            "(argmax misses under teacher forcing), tokens, and "
            "perplexity_last_shuffled_context (last utterance after another dialogue's "
            "context: clearly higher when the model uses its context)."
        ),
    )
    evaluate.add_argument("--model", required=True, help="model directory")
    evaluate.add_argument("--corpus", nargs="+", required=True, metavar="SPEC")
    evaluate.add_argument("--split", default="test", choices=["train", "validation", "test"])
    evaluate.add_argument(
        "--seed", type=int, help="train/valid/test split seed (default: the one used in training)"
    )
    evaluate.add_argument("--batch-size", type=int, default=64)
    evaluate.add_argument("--device", default="auto", choices=["auto", "cpu", "cuda"])
    evaluate.add_argument(
        "--replies",
        type=int,
        default=0,
        metavar="N",
        help="also generate replies for up to N contexts of the split and report distinct-1, "
        "distinct-2 and the share of unique replies",
    )
    evaluate.add_argument("--json", action="store_true", help="print one JSON object")
    evaluate.set_defaults(handler=eval_command)


# --- rasa-hred train ----------------------------------------------------------------------


def train_command(args: argparse.Namespace) -> int:
    from rasa_hred.core.training import LAST_CHECKPOINT, can_resume, end_distributed, rank_is_main
    from rasa_hred.jobs import train_on_corpus

    config = config_from_args(args)
    out = Path(config.out)
    if args.resume and not can_resume(out):
        raise UserError(f"--resume: no checkpoint in {out / LAST_CHECKPOINT}")
    if not args.resume and (out / "metrics.jsonl").exists():
        raise UserError(
            f"{out} already holds a training run; pass --resume to continue it or choose "
            "another --out"
        )
    result = train_on_corpus(config, resume=args.resume)
    if rank_is_main():
        summary = {
            "out": str(result.out),
            "epochs": result.epochs_run,
            "best_valid_perplexity": result.best_valid_perplexity,
            "interrupted": result.interrupted,
        }
        print(json.dumps(summary))
    end_distributed()
    return 130 if result.interrupted else 0


def config_from_args(args: argparse.Namespace) -> TrainingConfig:
    """Defaults < ``--config FILE`` < explicit flags."""
    from dataclasses import fields

    from rasa_hred.core.training import TrainingConfig

    values: dict[str, Any] = {}
    source = "training option(s)"
    if args.config:
        values |= read_config_file(args.config)
        source = f"option(s) in {args.config}"
    for f in fields(TrainingConfig):
        given = getattr(args, f.name, None)
        if given is not None:
            values[f.name] = given
    return TrainingConfig.from_dict(values, what=source)


def read_config_file(path: str | Path) -> dict[str, Any]:
    """A YAML/JSON file of training options, as a mapping (its keys are checked later)."""
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as error:
        raise UserError(f"{path}: cannot read config ({error.strerror})") from error
    try:
        if path.suffix == ".json":
            data = json.loads(text)
        else:
            import yaml

            data = yaml.safe_load(text)
    except Exception as error:
        raise UserError(f"{path}: not valid YAML/JSON ({error})") from error
    data = data or {}
    if not isinstance(data, dict):
        raise UserError(f"{path}: a config file must be a mapping of option: value")
    return data


# --- rasa-hred eval -----------------------------------------------------------------------


def eval_command(args: argparse.Namespace) -> int:
    from rasa_hred.jobs import evaluate_on_corpus

    result = evaluate_on_corpus(
        args.model,
        args.corpus,
        split=args.split,
        seed=args.seed,
        batch_size=args.batch_size,
        device=args.device,
        replies=args.replies,
    )
    if args.json:
        print(json.dumps(result))
    else:
        for key, value in result.items():
            print(f"{key:>34}: {value:.4f}" if isinstance(value, float) else f"{key:>34}: {value}")
    return 0
