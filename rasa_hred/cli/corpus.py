"""``rasa-hred corpus ...``: inspect dialogue corpora."""

from __future__ import annotations

import argparse

from rasa_hred.cli.common import lazy


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
            "or chatterbot:english for the bundled chatterbot-corpus."
        ),
    )
    stats.add_argument("specs", nargs="+", metavar="SPEC", help="corpus spec(s), combined")
    stats.add_argument("--seed", type=int, default=0, help="seed of the train/valid/test split")
    stats.add_argument(
        "--vocab-size", type=int, default=10000, help="vocabulary size used for coverage figures"
    )
    stats.add_argument("--json", action="store_true", help="print one JSON object")
    stats.set_defaults(handler=lazy("rasa_hred.corpora.loaders", "stats_command"))
