"""Replaying scripted conversations through a trained Rasa bot, in this process.

The bot is Rasa's own ``Agent`` (``rasa.core.agent``) loaded from a model archive: NLU, every
policy and the HRED run as under ``rasa run``. Each script is one sender's conversation in an
in-memory tracker store, so every replay starts from a fresh tracker and the bot's own
``endpoints.yml`` stores are never touched. The in-process NLG is
``rasa_hred.HREDTemplatedNLG``, which renders every other response as Rasa's templated NLG
does, so archives in ``generate: in_process`` and ``in_nlg`` mode both speak; a
``generate: nlg_server`` archive needs its NLG server and is refused.

The transcript is read from the tracker: each ``BotUttered`` follows the ``ActionExecuted``
that said it, and that event names the policy whose prediction won.
"""

from __future__ import annotations

import asyncio
import tarfile
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
from rasa.core.agent import Agent
from rasa.shared.core.events import ActionExecuted, BotUttered, Event, UserUttered
from rasa.shared.exceptions import RasaException

from rasa_hred.errors import UserError
from rasa_hred.integration.loading import with_defaults
from rasa_hred.integration.names import POLICY_CLASS
from rasa_hred.integration.nlg import HREDTemplatedNLG
from rasa_hred.serving.converse import (
    HRED,
    SEED,
    BotMessage,
    Script,
    Transcript,
    Turn,
    reset_random,
)

#: How a transcript labels the policies that choose responses (others: their class name).
POLICY_LABELS = {
    POLICY_CLASS: HRED,
    "RulePolicy": "rule",
    "MemoizationPolicy": "story",
    "AugmentedMemoizationPolicy": "story",
}
#: The label of a bot message no policy chose (e.g. said by action_session_start).
NO_POLICY = "rasa"


def archive_path(model: str | Path) -> Path:
    """The archive to load: ``model`` itself, or the newest archive in a directory (as
    ``rasa run --model DIR`` picks it)."""
    from rasa.model import get_latest_model

    model = Path(model)
    if model.is_dir():
        latest = get_latest_model(str(model))
        if latest is None:
            raise UserError(
                f"{model}: neither an HRED model directory (no config.json) nor a directory "
                "holding Rasa model archives (no *.tar.gz)"
            )
        return Path(latest)
    if not model.is_file():
        raise UserError(f"{model}: no such file or directory")
    return model


def replay_archive(model: str | Path, scripts: Sequence[Script]) -> list[Transcript]:
    """Each script as its own sender's conversation with the bot of a Rasa model archive
    (or the newest archive in a directory)."""
    return asyncio.run(_replay(archive_path(model), scripts))


async def _replay(archive: Path, scripts: Sequence[Script]) -> list[Transcript]:
    agent = load_agent(archive)
    transcripts = []
    for index, script in enumerate(scripts, 1):
        sender = f"converse-{index}"
        reset_random()
        np.random.seed(SEED)  # Rasa picks a response's variation with np.random.choice
        for message in script.messages:
            await agent.handle_text(message, sender_id=sender)
        tracker = await agent.tracker_store.retrieve(sender)
        events = list(tracker.events) if tracker is not None else []
        transcripts.append(Transcript(script.name, transcript_turns(events)))
    return transcripts


def load_agent(archive: Path) -> Agent:
    """Rasa's Agent for ``archive``, with the in-process NLG and in-memory trackers."""
    try:
        agent = Agent.load(archive, generator=HREDTemplatedNLG())
    except UserError:
        raise
    except (RasaException, OSError, tarfile.TarError, ValueError) as error:
        raise UserError(f"{archive}: cannot load this Rasa model ({error})") from error
    assert agent.processor is not None  # Agent.load always loads a processor
    nodes = agent.processor.model_metadata.predict_schema.nodes.values()
    policies = [with_defaults(n.config) for n in nodes if n.uses.__name__ == POLICY_CLASS]
    if any(config["generate"] == "nlg_server" for config in policies):
        raise UserError(
            f"{archive}: its {POLICY_CLASS} has `generate: nlg_server`, so only a running "
            "NLG server can say its replies; replay the archive it was derived from "
            "(e.g. models/demo.tar.gz)"
        )
    return agent


def transcript_turns(events: Iterable[Event]) -> list[Turn]:
    """The turns of a conversation's events: each user message and the bot messages after it,
    each labelled by the policy that predicted the action that said it."""
    turns: list[Turn] = []
    action: str | None = None
    policy: str | None = None
    for event in events:
        if isinstance(event, UserUttered):
            turns.append(Turn(event.text or "", []))
        elif isinstance(event, ActionExecuted):
            action, policy = event.action_name, event.policy
        elif isinstance(event, BotUttered):
            if not turns:
                turns.append(Turn(None, []))
            turns[-1].bot.append(
                BotMessage(
                    text=event.text or "",
                    source=policy_label(policy),
                    action=action,
                    policy=policy,
                    buttons=_button_titles(event.data),
                )
            )
    return turns


def policy_label(policy: str | None) -> str:
    """``HRED``, ``rule``, ``story`` or the policy's class name (Rasa records the winning
    policy as its graph node's name, ``policy_<n>_<Class>``)."""
    if not policy:
        return NO_POLICY
    name = policy.rsplit("_", 1)[-1]
    return POLICY_LABELS.get(name, name)


def _button_titles(data: Any) -> list[str]:
    buttons = data.get("buttons") if isinstance(data, dict) else None
    if not isinstance(buttons, list):
        return []
    return [str(b["title"]) for b in buttons if isinstance(b, dict) and b.get("title")]
