"""``rasa-hred train`` and ``rasa-hred eval``."""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import TYPE_CHECKING, Any

from rasa_hred.cli.common import add_corpus_source_options, corpus_sources
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
    train.add_argument(
        "--attention",
        action=argparse.BooleanOptionalAction,
        default=None,
        help="the reply attends to every word of the context, not only to its summary [off]",
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
        help="bfloat16 autocast on the CPU [auto: where the CPU has AMX-BF16 or AVX512-BF16]",
    )
    train.add_argument(
        "--progress", action=argparse.BooleanOptionalAction, default=None, help="progress bar [on]"
    )
    add_corpus_source_options(train)
    train.set_defaults(handler=train_command)

    evaluate = commands.add_parser(
        "eval",
        help="perplexity, error rate, history ablation and shuffled-context control of a model",
        description=(
            "Evaluate a model directory on a corpus split. Prints perplexity (every modelled "
            "token), perplexity_last (last utterance only, the paper's @U3), error_rate "
            "(argmax misses under teacher forcing), tokens, "
            "perplexity_last_shuffled_context (last utterance after another dialogue's "
            "context: clearly higher when the model uses its context), and the history "
            "ablation: perplexity_last with at most K = 1, 2, 4 and the trained maximum of "
            "previous turns, on the same last utterances (lower with more K when history "
            "helps), with context_gain = shuffled / true context. Dialogues are cut into "
            "windows as in training (its max_turns)."
        ),
    )
    evaluate.add_argument("--model", required=True, help="model directory")
    evaluate.add_argument("--corpus", nargs="+", required=True, metavar="SPEC")
    evaluate.add_argument(
        "--split",
        default="test",
        choices=["train", "validation", "test", "all"],
        help="the split to score; all = every dialogue (a file that was never split) [test]",
    )
    evaluate.add_argument(
        "--seed", type=int, help="train/valid/test split seed (default: the one used in training)"
    )
    evaluate.add_argument("--batch-size", type=int, default=64)
    evaluate.add_argument("--device", default="auto", choices=["auto", "cpu", "cuda"])
    evaluate.add_argument(
        "--max-turns",
        type=_previous_turns,
        metavar="K",
        help="score the last utterance (and generate --replies) with at most K previous turns, "
        "K=1: only the utterance it answers (default: as many as training's windows hold)",
    )
    evaluate.add_argument(
        "--replies",
        type=int,
        default=0,
        metavar="N",
        help="also generate replies for up to N contexts of the split and report distinct-1, "
        "distinct-2, the share of unique replies, repeated trigrams and <unk>s, under the "
        "model's decoding (config.json 'decoding', else the defaults), reported as decoding",
    )
    evaluate.add_argument(
        "--decoding",
        metavar="JSON",
        help="decoding options over the model's for --replies, e.g. a policy's: "
        '\'{"beam_size": 10, "mmi_lambda": 0.5}\'',
    )
    evaluate.add_argument(
        "--progress", action=argparse.BooleanOptionalAction, default=True, help="progress bar"
    )
    evaluate.add_argument("--json", action="store_true", help="print one JSON object")
    add_corpus_source_options(evaluate)
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
    result = train_on_corpus(config, resume=args.resume, sources=corpus_sources(args))
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
    from rasa_hred.core.decoding import DecodingConfig
    from rasa_hred.jobs import evaluate_on_corpus

    decoding = _decoding_json(args.decoding)
    if decoding and not args.replies:
        raise UserError("--decoding applies to the replies of --replies N; give both")
    DecodingConfig().replace(**decoding)  # a misspelt option fails before the long scoring
    result = evaluate_on_corpus(
        args.model,
        args.corpus,
        split=args.split,
        seed=args.seed,
        batch_size=args.batch_size,
        device=args.device,
        replies=args.replies,
        max_turns=args.max_turns,
        decoding=decoding,
        progress=args.progress,
        sources=corpus_sources(args),
    )
    print(json.dumps(result) if args.json else format_evaluation(result))
    return 0


def _previous_turns(text: str) -> int:
    """``--max-turns``: a whole number >= 1 (the scored utterance keeps a context)."""
    try:
        value = int(text)
    except ValueError:
        value = 0
    if value < 1:
        raise argparse.ArgumentTypeError(
            f"must be a whole number >= 1 (previous turns before the scored utterance), "
            f"not {text!r}"
        )
    return value


def _decoding_json(text: str | None) -> dict[str, Any]:
    """``--decoding JSON`` as a mapping of option: value ({} when not given)."""
    if not text:
        return {}
    try:
        options = json.loads(text)
    except json.JSONDecodeError as error:
        raise UserError(f"--decoding: not valid JSON ({error})") from None
    if not isinstance(options, dict):
        raise UserError("--decoding must be a JSON object of decoding options")
    return options


def format_evaluation(result: dict[str, Any]) -> str:
    """``eval``'s figures one per line; the history ablation as a small table and the
    decoding on one line."""
    lines = [
        _figure(key, value) for key, value in result.items() if key not in ("history", "decoding")
    ]
    history = result.get("history")
    if history:
        lines += _history_table(history)
    decoding = result.get("decoding")
    if decoding:
        shown = (
            f"{key}={','.join(value) if isinstance(value, list) else value}"
            for key, value in decoding.items()
        )
        lines.append(_figure("decoding", " ".join(shown)))
    return "\n".join(lines)


def _figure(key: str, value: Any) -> str:
    return f"{key:>34}: {value:.4f}" if isinstance(value, float) else f"{key:>34}: {value}"


def _history_table(history: dict[str, Any]) -> list[str]:
    rows = history["by_max_turns"]
    tokens = rows[0]["tokens_last"] if rows else 0
    lines = [
        f"history: perplexity_last with at most K previous turns "
        f"({history['last_utterances']} last utterances, {tokens} tokens each K)",
        f"{'K':>6} {'perplexity_last':>16} {'vs K=1':>8} {'contexts cut':>13}",
    ]
    lines += [
        f"{row['max_turns']:>6} {row['perplexity_last']:>16.4f} "
        f"{row['ratio_to_1']:>7.3f}x {row['contexts_cut']:>13}"
        for row in rows
    ]
    control = history.get("shuffled_context")
    if control:
        lines.append(
            f"{'shuffled context':>16} (K={control['max_turns']}): "
            f"{control['perplexity_last']:.4f}, context gain {history['context_gain']:.3f}x"
        )
    return lines
