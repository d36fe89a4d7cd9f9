"""The ``rasa-hred`` command line.

Argument definitions live here so that ``--help`` is instant; each command's work is imported
lazily from the module that owns it (torch and Rasa are slow to import).
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable, Sequence

from rasa_hred.errors import UserError

Handler = Callable[[argparse.Namespace], int | None]


def _lazy(module: str, function: str) -> Handler:
    def handler(args: argparse.Namespace) -> int | None:
        import importlib

        return getattr(importlib.import_module(module), function)(args)

    return handler


# --- corpus ------------------------------------------------------------------------------


def _add_corpus_commands(commands: argparse._SubParsersAction) -> None:
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
    stats.set_defaults(handler=_lazy("rasa_hred.corpus", "stats_command"))


# --- training and evaluation -----------------------------------------------------------


def _add_training_commands(commands: argparse._SubParsersAction) -> None:
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
    train.set_defaults(handler=_lazy("rasa_hred.training", "train_command"))

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
    evaluate.set_defaults(handler=_lazy("rasa_hred.evaluation", "eval_command"))


# --- generation --------------------------------------------------------------------------


def _add_decoding_options(parser: argparse.ArgumentParser) -> None:
    """Decoding flags; unset ones keep the model directory's defaults (config.json
    "decoding"), then the built-in ones (beam 5, length penalty 1.0, trigram blocking)."""
    parser.add_argument("--model", required=True, metavar="DIR", help="model directory")
    parser.add_argument("--device", default="auto", choices=["auto", "cpu", "cuda"])
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


def _add_generation_commands(commands: argparse._SubParsersAction) -> None:
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
    _add_decoding_options(respond)
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
    respond.set_defaults(handler=_lazy("rasa_hred.chat", "respond_command"))

    chat = commands.add_parser(
        "chat",
        help="chat with a model in the terminal",
        description=(
            "An interactive chat with a model directory. The model sees the conversation so "
            "far (what you and it said). Commands: /history, /reset, /help, /quit (or EOF)."
        ),
    )
    _add_decoding_options(chat)
    chat.add_argument(
        "--max-turns",
        type=int,
        metavar="N",
        help="conversation turns the model sees (default: as in training); 1 suits models "
        "trained on single exchanges such as the chatterbot corpus",
    )
    chat.set_defaults(handler=_lazy("rasa_hred.chat", "chat_command"))


# --- serving -----------------------------------------------------------------------------


def _add_serving_commands(commands: argparse._SubParsersAction) -> None:
    serve = commands.add_parser(
        "serve",
        help="serve HRED replies (and every other domain response) to Rasa over HTTP",
        description=(
            "An NLG server for Rasa (endpoints.yml: nlg: url: http://HOST:PORT/nlg). It "
            "answers the HRED responses (--responses) with the model's reply to the "
            "conversation in the tracker, batching concurrent conversations, and renders "
            "every other response from the domain as Rasa's templated NLG does. --model is a "
            "model directory (then --domain is required) or a Rasa model archive (its "
            "HREDPolicy's model, domain, max_history, decoding and response are used). Pair "
            "it with `generate: nlg_server` in the policy's config. GET /health and "
            "/metrics (Prometheus) too. SIGTERM lets in-flight requests finish."
        ),
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    _add_decoding_options(serve)
    for action in serve._actions:
        if action.dest == "model":
            action.metavar = "DIR|ARCHIVE"
            action.help = "model directory, or a Rasa model archive with an HREDPolicy"
    serve.add_argument("--domain", help="domain file or directory (default: the archive's domain)")
    serve.add_argument("--host", default="127.0.0.1", help="address to bind")
    serve.add_argument("--port", type=int, default=5056)
    serve.add_argument(
        "--token",
        help="require ?token=T or 'Authorization: Bearer T' on /nlg and /metrics "
        "(default: $RASA_HRED_NLG_TOKEN, else none)",
    )
    serve.add_argument(
        "--responses",
        nargs="+",
        metavar="NAME",
        help="responses the HRED generates (default: the policy's response, utter_hred)",
    )
    serve.add_argument(
        "--max-history",
        type=int,
        help="conversation turns the HRED sees (default: the policy's max_history, else 10)",
    )
    serve.add_argument(
        "--batching",
        action=argparse.BooleanOptionalAction,
        default=True,
        help="decode concurrent requests as one batch",
    )
    serve.add_argument("--max-batch-size", type=int, default=32, help="contexts per batch")
    serve.add_argument(
        "--batch-wait-ms", type=float, default=5.0, help="how long a batch waits to fill"
    )
    serve.add_argument(
        "--max-body-bytes", type=int, default=1_000_000, help="larger requests get 413"
    )
    serve.add_argument(
        "--max-events", type=int, default=10_000, help="only the last N tracker events are read"
    )
    serve.add_argument(
        "--shutdown-timeout",
        type=float,
        default=30.0,
        help="seconds in-flight requests may take to finish after SIGTERM",
    )
    serve.add_argument("--threads", type=int, help="CPU threads for PyTorch")
    serve.add_argument("--access-log", action="store_true", help="log every request")
    serve.add_argument(
        "--decoding",
        metavar="JSON",
        help="more decoding options as a JSON object, e.g. '{\"force_length\": 20}'",
    )
    serve.set_defaults(handler=_lazy("rasa_hred.nlg_server", "serve_command"))

    config = commands.add_parser(
        "nlg-config",
        help="write a Rasa config whose HREDPolicy generates through `rasa-hred serve`",
        description=(
            "Copy the HRED of a trained Rasa model archive to OUT/hred and write "
            "OUT/config.yml: CONFIG with `generate: nlg_server` and `model: OUT/hred` on "
            "its HREDPolicy. `rasa train --config OUT/config.yml` then gives an assistant "
            "with the same HRED that leaves generation to the NLG server (make run-nlg)."
        ),
    )
    config.add_argument("--archive", required=True, help="a model archive from `rasa train`")
    config.add_argument("--config", default="config.yml", help="the Rasa config to adapt")
    config.add_argument("--out", required=True, help="output directory")
    config.set_defaults(handler=_lazy("rasa_hred.nlg_server", "nlg_config_command"))


# --- benchmarks --------------------------------------------------------------------------


def _add_bench_commands(commands: argparse._SubParsersAction) -> None:
    bench = commands.add_parser(
        "bench",
        help="benchmarks that print JSON figures (training, generation, serving)",
        description="Benchmarks. Each prints JSON; none asserts a bar, they report figures.",
    )
    sub = bench.add_subparsers(dest="bench_command", metavar="BENCHMARK", required=True)
    _add_bench_train(sub)
    _add_bench_generate(sub)
    _add_bench_rasa(sub)
    _add_bench_serve(sub)


def _add_bench_train(sub: argparse._SubParsersAction) -> None:
    bench = sub.add_parser(
        "train",
        help="training throughput at the seed's configuration on synthetic triples",
        description=(
            "Time optimisation steps of an HRED at the seed's configuration (embeddings and "
            "hidden 300, vocabulary 10,004) on synthetic MovieTriples-shaped triples, with the "
            "loss on the last utterance (tokens_per_s, the anchor's work) and on all "
            "utterances after the first (tokens_per_s_full_loss)."
        ),
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    bench.add_argument("--device", default="auto", choices=["auto", "cpu", "cuda"])
    bench.add_argument("--threads", type=int, default=2, help="CPU threads (0 = PyTorch's choice)")
    bench.add_argument("--batch-size", type=int, help="default 50 on CPU, 256 on CUDA")
    bench.add_argument("--dialogues", type=int, default=2000, help="synthetic triples")
    bench.add_argument("--seconds", type=float, default=20.0, help="timed seconds per loss mode")
    bench.add_argument(
        "--cpu-bf16",
        action=argparse.BooleanOptionalAction,
        default=True,
        help="also time bfloat16 autocast on the CPU (tokens_per_s_cpu_bf16)",
    )
    bench.add_argument("--json", action="store_true", help="one line of JSON")
    bench.set_defaults(handler=_lazy("rasa_hred.bench_train", "bench_train_command"))


def _add_bench_generate(sub: argparse._SubParsersAction) -> None:
    bench = sub.add_parser(
        "generate",
        help="reply latency and throughput of beam search at the seed's configuration",
        description=(
            "Time beam search on an untrained HRED at the seed's configuration (embeddings "
            "and hidden 300, vocabulary 10,004, unidirectional, maxout), every reply exactly "
            "20 steps, trigram blocking on, MMI off, contexts of two ~18-token utterances. "
            "Per beam size: latency of one reply (p50, p95), replies/s one context after "
            "another and in one batch (4x the contexts on CUDA), and their ratio."
        ),
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    bench.add_argument("--device", default="auto", choices=["auto", "cpu", "cuda"])
    bench.add_argument("--threads", type=int, default=2, help="CPU threads for PyTorch")
    bench.add_argument("--beams", type=int, nargs="+", default=[5, 20], help="beam sizes")
    bench.add_argument("--contexts", type=int, default=64, help="contexts per throughput run")
    bench.add_argument("--latency-runs", type=int, default=30, help="timed single replies")
    bench.add_argument("--json", action="store_true", help="print a JSON list")
    bench.set_defaults(handler=_lazy("rasa_hred.bench_generate", "bench_command"))


def _add_bench_serve(sub: argparse._SubParsersAction) -> None:
    bench = sub.add_parser(
        "serve",
        help="NLG server throughput and latency under concurrent clients, batching on/off",
        description=(
            "Start `rasa-hred serve` (a subprocess) with an untrained HRED at the seed's "
            "configuration (vocabulary 10,004, embeddings and hidden 300, beam 5, every reply "
            "20 tokens), with batching on and off, and drive it from this process with N "
            "concurrent clients for --seconds each. Prints per run: clients, batching, rps, "
            "p50/p95/p99 latency (ms), errors and the server's peak RSS (MB)."
        ),
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    bench.add_argument("--device", default="auto", choices=["auto", "cpu", "cuda"])
    bench.add_argument("--seconds", type=float, default=20.0, help="timed seconds per run")
    bench.add_argument(
        "--clients", type=int, nargs="+", default=[1, 8, 32, 128], help="concurrent clients"
    )
    bench.add_argument(
        "--batching",
        choices=["both", "on", "off"],
        default="both",
        help="server batching modes to measure",
    )
    bench.add_argument("--beam-size", type=int, default=5)
    bench.add_argument("--max-batch-size", type=int, default=32)
    bench.add_argument("--batch-wait-ms", type=float, default=5.0)
    bench.add_argument("--threads", type=int, help="the server's PyTorch CPU threads")
    bench.add_argument("--json", action="store_true", help="print a JSON list")
    bench.set_defaults(handler=_lazy("rasa_hred.bench_serve", "bench_serve_command"))


def _add_bench_rasa(sub: argparse._SubParsersAction) -> None:
    bench = sub.add_parser(
        "rasa",
        help="REST round trip through `rasa run`: an HRED turn vs a rule turn",
        description=(
            "Start `rasa run` (REST channel, --enable-api) with the model on a free port of "
            "127.0.0.1, then time REST messages one after another, interleaved: chit-chat "
            "lines the HRED answers (utter_hred) and 'hello' answered by a rule "
            "(utter_greet), each from a fresh sender. Trackers confirm which policy "
            "answered each sample; hred_added_ms_p50 is the difference of the medians. "
            "The server is stopped afterwards. An HREDPolicy with fallback_threshold set "
            "generates on every user turn, rule turns too, so in_process_generate also times "
            "the model's own generator (server stopped): the HRED's cost per turn."
        ),
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    bench.add_argument("--model", required=True, help="a Rasa model archive (.tar.gz)")
    bench.add_argument("--messages", type=int, default=50, help="timed messages of each kind")
    bench.add_argument("--warmup", type=int, default=3, help="untimed messages of each kind")
    bench.add_argument(
        "--startup-timeout", type=float, default=300.0, help="seconds to wait for rasa run"
    )
    bench.add_argument("--json", action="store_true", help="print a JSON object")
    bench.set_defaults(handler=_lazy("rasa_hred.bench_rasa", "bench_rasa_command"))


# --- the parser ---------------------------------------------------------------------------


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="rasa-hred",
        description=(
            "HRED dialogue models for Rasa: inspect corpora, train and evaluate models, "
            "generate replies, serve them to Rasa, and benchmark it all."
        ),
    )
    parser.add_argument("--version", action="version", version="%(prog)s 0.1.0")
    commands = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    _add_corpus_commands(commands)
    _add_training_commands(commands)
    _add_generation_commands(commands)
    _add_serving_commands(commands)
    _add_bench_commands(commands)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return int(args.handler(args) or 0)
    except UserError as error:
        print(f"rasa-hred: error: {error}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("rasa-hred: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
