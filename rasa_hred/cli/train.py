"""``rasa-hred train`` and ``rasa-hred eval``."""

from __future__ import annotations

import argparse

from rasa_hred.cli.common import lazy


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
    train.set_defaults(handler=lazy("rasa_hred.core.training", "train_command"))

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
    evaluate.set_defaults(handler=lazy("rasa_hred.core.evaluation", "eval_command"))
