"""``rasa-hred respond`` and ``rasa-hred chat``, and the decoding flags ``serve`` shares."""

from __future__ import annotations

import argparse
import json
import sys
from typing import TYPE_CHECKING, Any

from rasa_hred.core.precision import DTYPE_NAMES
from rasa_hred.errors import UserError

if TYPE_CHECKING:
    from rasa_hred.serving.generator import ResponseGenerator

_DECODING_FLAGS = (
    "method",
    "beam_size",
    "max_length",
    "min_length",
    "length_penalty",
    "no_repeat_ngram",
    "mmi_lambda",
    "mmi_tokens",
    "temperature",
    "top_k",
    "top_p",
    "seed",
)


def decoding_overrides(args: argparse.Namespace) -> dict[str, Any]:
    """The decoding flags that were given (unset ones keep the model's defaults)."""
    overrides = {
        name: getattr(args, name)
        for name in _DECODING_FLAGS
        if getattr(args, name, None) is not None
    }
    penalty = overrides.get("length_penalty")
    if isinstance(penalty, str) and penalty != "mean":
        try:
            overrides["length_penalty"] = float(penalty)
        except ValueError:
            raise UserError(
                f"--length-penalty must be a number or 'mean', not {penalty!r}"
            ) from None
    return overrides


def add_decoding_options(parser: argparse.ArgumentParser) -> None:
    """Decoding flags; unset ones keep the model directory's defaults (config.json
    "decoding"), then the built-in ones (beam 5, length penalty 1.0, trigram blocking)."""
    parser.add_argument("--model", required=True, metavar="DIR", help="model directory")
    parser.add_argument("--device", default="auto", choices=["auto", "cpu", "cuda"])
    parser.add_argument(
        "--dtype",
        default="auto",
        choices=DTYPE_NAMES,
        help="inference precision: auto = bfloat16 where the CPU/GPU multiplies it natively "
        "(AMX-BF16/AVX512-BF16), else float32",
    )
    group = parser.add_argument_group("decoding (unset: the model's defaults)")
    group.add_argument("--method", choices=["beam", "greedy", "sample"], help="[beam]")
    group.add_argument("--beam-size", type=int, help="beams per reply [5]")
    group.add_argument("--max-length", type=int, help="most tokens per reply [30]")
    group.add_argument("--min-length", type=int, help="fewest tokens per reply [1]")
    group.add_argument(
        "--length-penalty",
        metavar="ALPHA|mean",
        help="score = log p / ((5 + len) / 6) ** ALPHA, or the mean log-prob [1.0]",
    )
    group.add_argument(
        "--no-repeat-ngram", type=int, help="block repeated n-grams of this size (0 = off) [3]"
    )
    group.add_argument(
        "--mmi-lambda", type=float, help="MMI-antiLM weight of the language model (0 = off) [0]"
    )
    group.add_argument("--mmi-tokens", type=int, help="reply tokens the MMI penalty covers [5]")
    group.add_argument("--temperature", type=float, help="sampling temperature [1.0]")
    group.add_argument("--top-k", type=int, help="sample from the k likeliest tokens (0 = all)")
    group.add_argument("--top-p", type=float, help="nucleus sampling mass (1 = off)")
    group.add_argument("--seed", type=int, help="sampling seed")


def add_commands(commands: argparse._SubParsersAction) -> None:
    respond = commands.add_parser(
        "respond",
        help="print a model's reply to a conversation",
        description=(
            "Print the reply of a model directory to the conversation given as arguments "
            "(oldest utterance first; none: the model opens). Put -- before the utterances. "
            "With --n-best K the K best replies, with --json as a JSON list of objects "
            "(text, score, log_prob, tokens, ...), best first."
        ),
    )
    add_decoding_options(respond)
    respond.add_argument(
        "--max-turns",
        type=int,
        metavar="N",
        help="conversation turns the model sees (default: as in training); 1 suits models "
        "trained on single exchanges such as the chatterbot corpus",
    )
    respond.add_argument("--n-best", type=int, default=1, metavar="K", help="replies to print")
    respond.add_argument("--json", action="store_true", help="print JSON")
    respond.add_argument("utterances", nargs="*", metavar="UTTERANCE")
    respond.set_defaults(handler=respond_command)

    chat = commands.add_parser(
        "chat",
        help="chat with a model in the terminal",
        description=(
            "An interactive chat with a model directory. The model sees the conversation so "
            "far (what you and it said). Commands: /history, /reset, /help, /quit (or EOF)."
        ),
    )
    add_decoding_options(chat)
    chat.add_argument(
        "--max-turns",
        type=int,
        metavar="N",
        help="conversation turns the model sees (default: as in training); 1 suits models "
        "trained on single exchanges such as the chatterbot corpus",
    )
    chat.set_defaults(handler=chat_command)


def load_generator(args: argparse.Namespace) -> ResponseGenerator:
    """The generator of ``--model`` with the decoding flags given on top of its defaults."""
    from rasa_hred.serving.generator import ResponseGenerator

    generator = ResponseGenerator.load(
        args.model, device=args.device, dtype=args.dtype, max_turns=getattr(args, "max_turns", None)
    )
    overrides = decoding_overrides(args)
    if overrides:
        generator.decoding = generator.decoding.replace(**overrides)
    return generator


def respond_command(args: argparse.Namespace) -> int:
    if args.n_best < 1:
        raise UserError(f"--n-best must be >= 1, not {args.n_best}")
    generator = load_generator(args)
    replies = generator.generate_n_best([args.utterances], args.n_best)[0]
    if args.json:
        print(json.dumps([reply.to_dict() for reply in replies], ensure_ascii=False, indent=2))
    elif args.n_best == 1:
        print(replies[0].text)
    else:
        for reply in replies:
            score = "-" if reply.fallback else f"{reply.score:.4f}"
            print(f"{score}\t{reply.text}")
    return 0


def chat_command(args: argparse.Namespace) -> int:
    from rasa_hred.serving.chat import run_chat

    generator = load_generator(args)
    try:
        return run_chat(generator, sys.stdin, sys.stdout, interactive=sys.stdin.isatty())
    finally:
        generator.close()
