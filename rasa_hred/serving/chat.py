"""The chat REPL behind ``rasa-hred chat``: one conversation with a model in a terminal.

The chat keeps one history: the user's lines and the bot's replies, in order, nothing else
(commands, blank lines and banners never reach the model; the seed's bridge fed such junk
into the model's context). When stdin is not a terminal the chat prints no prompts or
banners, only replies and command output, one line each, so it can be scripted.
"""

from __future__ import annotations

from typing import TextIO

from rasa_hred.serving.generator import Reply, ResponseGenerator

HELP = """commands:
  /history  show the conversation so far
  /reset    start a new conversation
  /help     this text
  /quit     leave (so does Ctrl-D)"""


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
    """Chat until ``/quit`` or EOF; ``interactive`` adds the prompt and the banner."""
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
