"""The demo assistant's files: the domain's contract with rasa_hred, and its NLU.

The fast tests read domain.yml / data/ / config.yml; the slow one checks the NLU of the
session's demo model (``rasa train`` of the demo with fewer DIET epochs and a fixed seed:
``support.models.DEMO_DIET``) on held-out phrasings that are not in data/nlu.yml.
"""

from __future__ import annotations

import itertools
from pathlib import Path
from typing import Any

import pytest
from rasa.core.nlg import TemplatedNaturalLanguageGenerator
from rasa.shared.core.domain import Domain
from rasa.shared.core.events import SlotSet
from rasa.shared.core.slots import TextSlot
from rasa.shared.core.trackers import DialogueStateTracker
from rasa.shared.utils.io import read_yaml_file

ROOT = Path(__file__).resolve().parent.parent
DOMAIN_FILE = ROOT / "domain.yml"
CONFIG_FILE = ROOT / "config.yml"
NLU_FILE = ROOT / "data" / "nlu.yml"
HRED_INTENTS = {"chitchat", "out_of_scope", "nlu_fallback"}


@pytest.fixture(scope="module")
def domain() -> Domain:
    return Domain.load(str(DOMAIN_FILE))


def _tracker(domain: Domain, **slots: Any) -> DialogueStateTracker:
    events = [SlotSet(name, value) for name, value in slots.items()]
    return DialogueStateTracker.from_events("test", events, slots=domain.slots)


def test_hred_slot_contract(domain: Domain) -> None:
    slot = next(s for s in domain.slots if s.name == "hred_response")
    assert isinstance(slot, TextSlot)
    assert slot.influence_conversation is False
    assert slot.mappings == [{"type": "custom"}]


def test_hred_responses(domain: Domain) -> None:
    assert domain.responses["utter_hred"] == [{"text": "{hred_response}"}]
    fallbacks = domain.responses["utter_hred_fallback"]
    assert fallbacks
    assert all(r.get("text", "").strip() and "{" not in r["text"] for r in fallbacks)
    assert {"utter_hred", "utter_hred_fallback"} <= set(domain.action_names_or_texts)


def test_intents_answered_by_the_hred_exist(domain: Domain) -> None:
    assert set(domain.intents) >= HRED_INTENTS


async def test_utter_hred_says_the_generated_text(domain: Domain) -> None:
    nlg = TemplatedNaturalLanguageGenerator(domain.responses)
    text = "Jaws? Best shark movie ever made {really}, 100% [sure]."
    tracker = _tracker(domain, hred_response=text)
    for channel in ("rest", "alexa", "collector"):
        response = await nlg.generate("utter_hred", tracker, channel)
        assert response is not None
        assert response["text"] == text


async def test_channel_specific_variation(domain: Domain) -> None:
    variations = domain.responses["utter_greet"]
    alexa = [r for r in variations if r.get("channel") == "alexa"]
    plain = [r for r in variations if not r.get("channel")]
    assert alexa and plain
    nlg = TemplatedNaturalLanguageGenerator(domain.responses)
    tracker = _tracker(domain)
    for _ in range(10):  # variations are chosen at random
        said = await nlg.generate("utter_greet", tracker, "alexa")
        assert said is not None and said["text"] in {r["text"] for r in alexa}
        said = await nlg.generate("utter_greet", tracker, "rest")
        assert said is not None and said["text"] in {r["text"] for r in plain}


async def test_buttons_render_with_entity_payloads(domain: Domain) -> None:
    nlg = TemplatedNaturalLanguageGenerator(domain.responses)
    tracker = _tracker(domain)
    rest = await nlg.generate("utter_ask_genre", tracker, "rest")
    assert rest is not None
    payloads = [button["payload"] for button in rest["buttons"]]
    assert '/inform{"genre": "comedy"}' in payloads  # the domain's {{ }} are escapes
    assert all(p.startswith("/inform{") and p.endswith("}") for p in payloads)
    alexa = await nlg.generate("utter_ask_genre", tracker, "alexa")
    assert alexa is not None and not alexa.get("buttons")
    help_buttons = domain.responses["utter_help"][0]["buttons"]
    assert any(not b["payload"].startswith("/") for b in help_buttons)  # plain-text button


async def test_recommendation_interpolates_the_genre(domain: Domain) -> None:
    nlg = TemplatedNaturalLanguageGenerator(domain.responses)
    said = await nlg.generate("utter_recommend_movie", _tracker(domain, genre="western"), "rest")
    assert said is not None and "western" in said["text"] and "{" not in said["text"]


def test_no_rules_or_stories_compete_with_the_hred() -> None:
    for name in ("rules.yml", "stories.yml", "chitchat_stories.yml"):
        data = read_yaml_file(ROOT / "data" / name)
        for block in (data.get("rules") or []) + (data.get("stories") or []):
            for step in block.get("steps", []):
                assert step.get("intent") not in HRED_INTENTS, (name, block)
                assert step.get("action") != "utter_hred" or name == "rules.yml", (name, block)


def test_chitchat_stories_are_end_to_end_text() -> None:
    data = read_yaml_file(ROOT / "data" / "chitchat_stories.yml")
    stories = data["stories"]
    assert len(stories) >= 5
    for story in stories:
        speakers = [next(iter(k for k in step if k in ("user", "bot"))) for step in story["steps"]]
        assert speakers[0] == "user"
        assert all(a != b for a, b in itertools.pairwise(speakers))  # alternating
        assert all(str(step[s]).strip() for step, s in zip(story["steps"], speakers))


def test_config_has_the_hred_policy_block_and_no_ted() -> None:
    text = CONFIG_FILE.read_text()
    assert "rasa_hred.HREDPolicy" in text
    config = read_yaml_file(CONFIG_FILE)
    names = [p["name"] for p in config["policies"]]
    assert "TEDPolicy" not in names
    rule_policy = next(p for p in config["policies"] if p["name"] == "RulePolicy")
    assert rule_policy.get("core_fallback_action_name") == "utter_hred_fallback"


# Held-out phrasings: none of these is in data/nlu.yml. The expected value is a set where
# either intent gives the same behaviour (both are answered by the HRED).
HELD_OUT: list[tuple[str, str | set[str]]] = [
    ("hey movie buddy", "greet"),
    ("good morning to you", "greet"),
    ("I'm heading off now, goodbye", "goodbye"),
    ("wait, are you a real human?", "bot_challenge"),
    ("what sort of things can you do?", "help"),
    ("thank you very much", "thank_you"),
    ("I'm feeling really down today", "mood_unhappy"),
    ("can you suggest a film for tonight?", "recommend_movie"),
    ("horror please", "inform"),
    ("what do you think of Christopher Nolan's films?", "chitchat"),
    ("have you ever seen Jurassic Park?", "chitchat"),
    ("please book a taxi to the airport", {"out_of_scope", "chitchat"}),
]


@pytest.mark.slow
async def test_demo_nlu_on_held_out_phrasings(demo_model: Path) -> None:
    """The session's demo model: the demo's NLU data and pipeline, DIET as DEMO_DIET sets it."""
    from rasa.core.agent import Agent

    model = str(demo_model)
    agent = Agent.load(model)
    wrong = []
    for text, intent in HELD_OUT:
        parsed = await agent.parse_message(text)
        expected = intent if isinstance(intent, set) else {intent}
        if parsed["intent"]["name"] not in expected:
            wrong.append((text, intent, parsed["intent"]))
    assert not wrong

    parsed = await agent.parse_message("recommend a good comedy for tonight")
    assert parsed["intent"]["name"] == "recommend_movie"
    assert [(e["entity"], e["value"]) for e in parsed["entities"]] == [("genre", "comedy")]
    parsed = await agent.parse_message("anything scary")
    assert ("genre", "horror") in [(e["entity"], e["value"]) for e in parsed["entities"]]
