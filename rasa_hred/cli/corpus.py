"""``rasa-hred corpus ...``: inspect dialogue corpora."""

from __future__ import annotations

import argparse
import json
from dataclasses import asdict

from rasa_hred.cli.common import TRACKER_STORE, add_corpus_source_options, corpus_sources
from rasa_hred.errors import UserError


def add_commands(commands: argparse._SubParsersAction) -> None:
    corpus = commands.add_parser(
        "corpus",
        help="inspect dialogue corpora",
        description="Inspect dialogue corpora. See the README for corpus specs and formats.",
    )
    sub = corpus.add_subparsers(dest="corpus_command", metavar="COMMAND", required=True)
    stats = sub.add_parser(
        "stats",
        help="print dialogue, utterance and token statistics per split",
        description=(
            "Load one or more corpus specs and print per split: dialogues, utterances, tokens, "
            "vocabulary coverage and utterance-length percentiles. A spec is a path "
            "(MovieTriples directory, Serban text file, chatterbot YAML, Rasa stories YAML) "
            "optionally prefixed with its format (movietriples:, text:, chatterbot:, rasa:), "
            "chatterbot:english for the bundled chatterbot-corpus, or "
            f"{TRACKER_STORE}:ENDPOINTS_YML for your bot's conversations (with the sessions "
            "read, kept and skipped by reason)."
        ),
    )
    stats.add_argument("specs", nargs="+", metavar="SPEC", help="corpus spec(s), combined")
    stats.add_argument("--seed", type=int, default=0, help="seed of the train/valid/test split")
    stats.add_argument(
        "--vocab-size", type=int, default=10000, help="vocabulary size used for coverage figures"
    )
    stats.add_argument("--json", action="store_true", help="print one JSON object")
    add_corpus_source_options(stats)
    stats.set_defaults(handler=stats_command)


def stats_command(args: argparse.Namespace) -> int:
    """``rasa-hred corpus stats``: load ``args.specs`` and print their statistics."""
    from rasa_hred.corpora import corpus_stats, format_stats, load_corpus

    if args.vocab_size < 0:  # before loading: a corpus can take a while
        raise UserError(f"--vocab-size must be >= 0, got {args.vocab_size}")
    sources = corpus_sources(args)
    corpus = load_corpus(args.specs, seed=args.seed, sources=sources)
    stats = corpus_stats(corpus, vocab_size=args.vocab_size)
    reports = sources[TRACKER_STORE].reports
    if reports:
        stats["tracker_stores"] = [asdict(report) for report in reports]
    if args.json:
        print(json.dumps(stats, indent=2, ensure_ascii=False))
        return 0
    print(format_stats(stats))
    for report in reports:  # what it skipped is among the skipped above
        print(
            f"\ntracker store {report.endpoints} ({report.store}): "
            f"{report.conversations} conversations, {report.sessions} sessions read, "
            f"{report.kept} kept"
        )
    return 0
