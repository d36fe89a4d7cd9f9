"""``rasa-hred respond`` and ``rasa-hred chat``: a model's replies on the command line.

The chat keeps one history: the user's lines and the bot's replies, in order, nothing else
(commands, blank lines and banners never reach the model; the seed's bridge fed such junk
into the model's context). When stdin is not a terminal the chat prints no prompts or
banners, only replies and command output, one line each, so it can be scripted.
"""

from __future__ import annotations

import argparse
import json
import sys
from typing import TextIO

from rasa_hred.cli.generate import decoding_overrides
from rasa_hred.errors import UserError
from rasa_hred.serving.generator import Reply, ResponseGenerator

HELP = """commands:
  /history  show the conversation so far
  /reset    start a new conversation
  /help     this text
  /quit     leave (so does Ctrl-D)"""


def load_generator(args: argparse.Namespace) -> ResponseGenerator:
    generator = ResponseGenerator.load(
        args.model, device=args.device, max_turns=getattr(args, "max_turns", None)
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


class ChatSession:
    """The chat's state and commands, separate from the terminal for testing."""

    def __init__(self, generator: ResponseGenerator) -> None:
        self.generator = generator
        self.history: list[tuple[str, str]] = []  # (speaker, text), speakers "you" / "bot"

    def reply_to(self, text: str) -> Reply:
        self.history.append(("you", text))
        reply = self.generator.generate([[t for _, t in self.history]])[0]
        self.history.append(("bot", reply.text))
        return reply

    def history_lines(self) -> list[str]:
        return [f"{speaker}: {text}" for speaker, text in self.history]

    def reset(self) -> None:
        self.history.clear()


def run_chat(
    generator: ResponseGenerator,
    stdin: TextIO,
    stdout: TextIO,
    *,
    interactive: bool,
) -> int:
    session = ChatSession(generator)

    def say(line: str) -> None:
        print(line, file=stdout, flush=True)

    if interactive:
        say("Chat with the model. /help lists the commands, /quit or Ctrl-D leaves.")
    while True:
        if interactive:
            stdout.write("you: ")
            stdout.flush()
        line = stdin.readline()
        if not line:  # EOF
            if interactive:
                say("")
            return 0
        text = line.strip()
        if not text:
            continue
        if text.startswith("/"):
            command = text.split()[0].lower()
            if command in ("/quit", "/exit"):
                return 0
            if command == "/reset":
                session.reset()
                say("(new conversation)")
            elif command == "/history":
                say("\n".join(session.history_lines()) or "(no history)")
            elif command == "/help":
                say(HELP)
            else:
                say(f"unknown command {command} (/help lists them)")
            continue
        reply = session.reply_to(text)
        say(f"bot: {reply.text}")


def chat_command(args: argparse.Namespace) -> int:
    generator = load_generator(args)
    try:
        return run_chat(generator, sys.stdin, sys.stdout, interactive=sys.stdin.isatty())
    finally:
        generator.close()
