"""HREDPolicy: trigger rules, the SlotSet path, verbatim text, and a real Rasa bot."""

import asyncio
import random
from pathlib import Path

import pytest
import yaml
from rasa.core.agent import Agent
from rasa.core.policies.policy import PolicyPrediction
from rasa.engine.graph import ExecutionContext
from rasa.engine.storage.local_model_storage import LocalModelStorage
from rasa.engine.storage.resource import Resource
from rasa.shared.core.domain import Domain
from rasa.shared.core.events import (
    ActionExecuted,
    BotUttered,
    SessionStarted,
    SlotSet,
    UserUttered,
)
from rasa.shared.core.generator import TrackerWithCachedStates
from rasa.shared.core.trackers import DialogueStateTracker
from rasa.utils.endpoints import EndpointConfig
from support.models import rasa_train

from rasa_hred.core.checkpoint import load_model
from rasa_hred.core.training import TrainingConfig
from rasa_hred.integration import registry
from rasa_hred.integration.nlg import HREDTemplatedNLG
from rasa_hred.integration.policy import (
    HREDPolicy,
    HREDPolicyError,
    story_dialogues,
    trigger_confidence,
)
from rasa_hred.jobs import train_on_corpus
from rasa_hred.serving.generator import ResponseGenerator

DOMAIN = Domain.from_yaml(
    """
version: "3.1"
intents: [greet, chitchat, out_of_scope, nlu_fallback]
slots:
  hred_response:
    type: text
    influence_conversation: false
    mappings: [{type: custom}]
responses:
  utter_greet: [{text: "hello!"}]
  utter_hred: [{text: "{hred_response}"}]
  utter_hred_fallback: [{text: "let's talk about movies."}]
"""
)


def make_policy(tmp_path, generator=None, **config) -> HREDPolicy:
    storage = LocalModelStorage(tmp_path)
    full = HREDPolicy.get_default_config() | {"corpus": ["x"]} | config
    return HREDPolicy(
        full, storage, Resource("hred"), ExecutionContext(None, "test"), generator=generator
    )


def tracker_after(*events) -> DialogueStateTracker:
    tracker = DialogueStateTracker.from_events("u", [SessionStarted(), *events], DOMAIN.slots)
    return tracker


def user(text: str, intent: str, confidence: float = 0.9) -> list:
    return [
        ActionExecuted("action_listen"),
        UserUttered(text, {"name": intent, "confidence": confidence}),
    ]


class FixedGenerator:
    def __init__(self, reply="a generated reply", fail=False, error=RuntimeError):
        self.reply, self.fail, self.error, self.contexts = reply, fail, error, []

    def generate(self, contexts):
        self.contexts.extend(contexts)
        if self.fail:
            raise self.error("boom")
        from rasa_hred.serving.generator import Reply

        return [Reply(self.reply, self.reply.split(), -1.0, [-1.0], -1.0) for _ in contexts]


def probability(prediction: PolicyPrediction, action: str) -> float:
    return prediction.probabilities[DOMAIN.index_for_action(action)]


def test_chitchat_gets_utter_hred_and_the_reply_in_a_slot_event(tmp_path):
    generator = FixedGenerator("i love old westerns .")
    policy = make_policy(tmp_path, generator)
    tracker = tracker_after(
        *user("hi", "greet"),
        ActionExecuted("utter_greet"),
        BotUttered("hello!"),
        *user("seen any good films?", "chitchat", 0.8),
    )
    prediction = policy.predict_action_probabilities(tracker, DOMAIN)
    assert probability(prediction, "utter_hred") == pytest.approx(0.8)
    assert prediction.max_confidence_index == DOMAIN.index_for_action("utter_hred")
    assert prediction.optional_events == [SlotSet("hred_response", "i love old westerns .")]
    assert generator.contexts == [["hi", "hello!", "seen any good films?"]]


def test_after_its_own_utterance_it_listens(tmp_path):
    policy = make_policy(tmp_path, FixedGenerator())
    tracker = tracker_after(*user("so?", "chitchat"), ActionExecuted("utter_hred"))
    prediction = policy.predict_action_probabilities(tracker, DOMAIN)
    assert probability(prediction, "action_listen") == 1.0


def test_other_intents_get_only_the_catch_all_confidence(tmp_path):
    policy = make_policy(tmp_path, FixedGenerator(), fallback_threshold=0.35)
    tracker = tracker_after(*user("hello", "greet", 0.99))
    prediction = policy.predict_action_probabilities(tracker, DOMAIN)
    # A rule for greet predicts 1.0 and wins; the HRED is only a low-confidence catch-all.
    assert probability(prediction, "utter_hred") == pytest.approx(0.35)
    silent = make_policy(tmp_path, FixedGenerator(), fallback_threshold=None)
    prediction = silent.predict_action_probabilities(tracker, DOMAIN)
    assert max(prediction.probabilities) == 0.0
    assert prediction.optional_events == []


def test_trigger_confidence_rules():
    config = HREDPolicy.get_default_config()
    assert trigger_confidence(tracker_after(*user("x", "nlu_fallback", 0.4)), config) == 0.4
    assert trigger_confidence(tracker_after(*user("x", "out_of_scope", 0.7)), config) == 0.7
    assert trigger_confidence(tracker_after(*user("x", "greet", 0.9)), config) == 0.35
    off = config | {"answer_nlu_fallback": False, "fallback_threshold": None}
    assert trigger_confidence(tracker_after(*user("x", "nlu_fallback", 0.4)), off) == 0.0


@pytest.mark.parametrize("mode", ["nlg_server", "in_nlg"])
def test_nlg_modes_predict_without_generating(tmp_path, mode, monkeypatch):
    monkeypatch.setattr(registry, "NLG_RENDERERS", {"utter_hred"})
    generator = FixedGenerator()
    policy = make_policy(tmp_path, generator, generate=mode)
    prediction = policy.predict_action_probabilities(
        tracker_after(*user("any plans?", "chitchat")), DOMAIN
    )
    assert probability(prediction, "utter_hred") > 0.5
    assert prediction.optional_events == [] and generator.contexts == []


def test_generation_error_falls_back_to_the_configured_response(tmp_path, caplog):
    policy = make_policy(tmp_path, FixedGenerator(fail=True))
    prediction = policy.predict_action_probabilities(
        tracker_after(*user("tell me a joke", "chitchat")), DOMAIN
    )
    assert prediction.max_confidence_index == DOMAIN.index_for_action("utter_hred_fallback")
    assert "generation failed" in caplog.text


def test_a_programming_error_in_generation_is_raised_not_hidden(tmp_path):
    policy = make_policy(tmp_path, FixedGenerator(fail=True, error=AttributeError))
    with pytest.raises(AttributeError):
        policy.predict_action_probabilities(tracker_after(*user("hm", "chitchat")), DOMAIN)


def test_predicting_without_a_model_is_a_clear_error(tmp_path):
    policy = make_policy(tmp_path)  # neither trained nor loaded
    with pytest.raises(HREDPolicyError, match="train or load"):
        policy.predict_action_probabilities(tracker_after(*user("hm", "chitchat")), DOMAIN)


def test_bad_configuration_is_refused_up_front(tmp_path):
    with pytest.raises(HREDPolicyError, match="generate"):
        make_policy(tmp_path, generate="somewhere")
    with pytest.raises(HREDPolicyError, match="fallback_threshold"):
        make_policy(tmp_path, fallback_threshold=3)


def test_training_with_a_missing_model_directory_is_a_clear_error(tmp_path):
    policy = make_policy(tmp_path, model=str(tmp_path / "nowhere"))
    with pytest.raises(HREDPolicyError, match="no such model directory"):
        policy.train([], DOMAIN)


def test_an_unknown_training_option_is_a_clear_error(tmp_path):
    policy = make_policy(tmp_path, training={"learning_rate": 0.1})
    with pytest.raises(HREDPolicyError, match=r"unknown training option.*learning_rate"):
        policy.train([], DOMAIN)


def test_domain_without_the_slot_is_a_clear_error(tmp_path):
    domain = Domain.from_yaml('version: "3.1"\nresponses:\n  utter_hred: [{text: hi}]\n')
    with pytest.raises(HREDPolicyError, match="hred_response"):
        make_policy(tmp_path, model="x").train([], domain)


def test_story_dialogues_merge_turns_and_skip_augmented():
    events = [
        ActionExecuted("action_listen"),
        UserUttered("hi there"),
        UserUttered("anyone?"),
        ActionExecuted(action_text="hello, film fan"),
        ActionExecuted("action_listen"),
        UserUttered("/greet"),
        UserUttered("seen alien?"),
        ActionExecuted(action_text="twice."),
    ]
    real = TrackerWithCachedStates.from_events("s", events, domain=DOMAIN)
    augmented = TrackerWithCachedStates.from_events("s2", events[:4], domain=DOMAIN)
    augmented.is_augmented = True
    assert story_dialogues([real, augmented, real]) == [
        ["hi there anyone?", "hello, film fan", "seen alien?", "twice."]
    ]


@pytest.mark.parametrize("text", ["weird 0[ reply", "braces {x} and {{y}}", "plain"])
async def test_hred_text_reaches_the_user_verbatim(text, monkeypatch):
    # in_process: no in_nlg policy registered a generator (an Agent another test loaded may)
    monkeypatch.setattr(registry, "NLG_GENERATORS", {})
    nlg = HREDTemplatedNLG(domain=DOMAIN)
    tracker = tracker_after(*user("x", "chitchat"), SlotSet("hred_response", text))
    assert await nlg.generate("utter_hred", tracker, "rest") == {"text": text}
    greeting = await nlg.generate("utter_greet", tracker, "rest")
    assert greeting["text"] == "hello!"


def test_in_nlg_without_the_nlg_generates_in_the_policy(tmp_path, monkeypatch, caplog):
    monkeypatch.setattr(registry, "NLG_RENDERERS", set())  # no HREDTemplatedNLG built
    generator = FixedGenerator("said anyway")
    policy = make_policy(tmp_path, generator, generate="in_nlg")
    prediction = policy.predict_action_probabilities(
        tracker_after(*user("any plans?", "chitchat")), DOMAIN
    )
    assert prediction.optional_events == [SlotSet("hred_response", "said anyway")]
    assert "no rasa_hred.HREDTemplatedNLG is configured" in caplog.text


def test_building_the_nlg_registers_its_response(monkeypatch):
    monkeypatch.setattr(registry, "NLG_RENDERERS", set())
    HREDTemplatedNLG(domain=DOMAIN, endpoint_config=EndpointConfig(responses=["utter_chat"]))
    assert "utter_chat" in registry.NLG_RENDERERS


class AsyncGenerator:
    def __init__(self, reply="generated when said", fail=False):
        self.reply, self.fail, self.contexts = reply, fail, []

    async def agenerate(self, context):
        self.contexts.append(context)
        if self.fail:
            raise RuntimeError("boom")
        from rasa_hred.serving.generator import Reply

        return Reply(self.reply, self.reply.split(), -1.0, [-1.0], -1.0)


async def test_nlg_generates_the_hred_response_when_it_is_said(monkeypatch, caplog):
    generator = AsyncGenerator("a 0[ reply")
    registered = registry.NLGGenerator(
        generator, max_turns=2, fallback_response="utter_hred_fallback"
    )
    monkeypatch.setitem(registry.NLG_GENERATORS, "utter_hred", registered)
    nlg = HREDTemplatedNLG(domain=DOMAIN)
    tracker = tracker_after(
        *user("one", "chitchat"),
        ActionExecuted("utter_hred"),
        BotUttered("two"),
        *user("three", "chitchat"),
    )
    assert await nlg.generate("utter_hred", tracker, "rest") == {"text": "a 0[ reply"}
    assert generator.contexts == [["two", "three"]]  # max_history of the policy
    assert (await nlg.generate("utter_greet", tracker, "rest"))["text"] == "hello!"
    assert generator.contexts == [["two", "three"]]  # other responses generate nothing
    generator.fail = True
    fallback = await nlg.generate("utter_hred", tracker, "rest")
    assert fallback == {"text": "let's talk about movies."} and "generation failed" in caplog.text


async def test_in_nlg_generates_even_when_the_slot_holds_an_old_reply(monkeypatch):
    """A conversation kept (SQLite) from the days of an in_process model has that model's last
    reply in the slot; an in_nlg policy's response must not repeat it."""
    generator = AsyncGenerator("fresh")
    registered = registry.NLGGenerator(generator, max_turns=2, fallback_response="utter_x")
    monkeypatch.setitem(registry.NLG_GENERATORS, "utter_hred", registered)
    nlg = HREDTemplatedNLG(domain=DOMAIN)
    tracker = tracker_after(
        *user("one", "chitchat"), SlotSet("hred_response", "stale"), *user("two", "chitchat")
    )
    assert await nlg.generate("utter_hred", tracker, "rest") == {"text": "fresh"}
    monkeypatch.delitem(registry.NLG_GENERATORS, "utter_hred")  # in_process: the slot's text
    assert await nlg.generate("utter_hred", tracker, "rest") == {"text": "stale"}


async def test_nlg_says_the_policys_own_fallback_response(monkeypatch):
    domain = DOMAIN.merge(
        Domain.from_yaml('version: "3.1"\nresponses:\n  utter_sorry: [{text: sorry}]')
    )
    generator = AsyncGenerator(fail=True)
    registered = registry.NLGGenerator(generator, max_turns=2, fallback_response="utter_sorry")
    monkeypatch.setitem(registry.NLG_GENERATORS, "utter_hred", registered)
    nlg = HREDTemplatedNLG(domain=domain)
    tracker = tracker_after(*user("one", "chitchat"))
    assert await nlg.generate("utter_hred", tracker, "rest") == {"text": "sorry"}


# --- a real Rasa bot -----------------------------------------------------------------------


def _memory_corpus(path: Path, count: int = 600) -> Path:
    """The reply depends on the history: 'remember cX' ... 'what did i say ?' -> 'you said rX'.

    The bot's own second turn repeats the code, so it reaches the answer through the
    conversation the policy sends (user and bot turns), not through the last message.
    """
    rng = random.Random(0)
    lines = []
    for _ in range(count):
        code = rng.randrange(6)
        lines.append(f"remember c{code}\tok , c{code} noted\twhat did i say ?\tyou said r{code}")
    path.write_text("\n".join(lines) + "\n")
    return path


@pytest.fixture(scope="module")
def memory_bot(tmp_path_factory, rasa_cache):
    root = tmp_path_factory.mktemp("memory_bot")
    corpus = _memory_corpus(root / "memory.txt")
    hred = root / "hred"
    train_on_corpus(
        TrainingConfig(
            corpus=[str(corpus)],
            out=str(hred),
            embedding_size=32,
            hidden_size=64,
            bidirectional=False,
            epochs=8,
            lr=5e-3,
            dropout=0.0,
            device="cpu",
            progress=False,
            early_stopping=0,
        )
    )
    project = root / "bot"
    (project / "data").mkdir(parents=True)
    (project / "domain.yml").write_text(DOMAIN.as_yaml().replace("- nlu_fallback\n", ""))
    (project / "data" / "nlu.yml").write_text(
        'version: "3.1"\nnlu:\n- intent: greet\n  examples: |\n    - hello\n    - hi\n'
        "    - hey\n- intent: chitchat\n  examples: |\n    - remember c1\n"
        "    - what did i say ?\n    - remember this\n"
    )
    (project / "data" / "rules.yml").write_text(
        'version: "3.1"\nrules:\n- rule: greet\n  steps:\n  - intent: greet\n'
        "  - action: utter_greet\n"
    )
    config = {
        "recipe": "default.v1",
        "assistant_id": "memory-bot",
        "language": "en",
        "pipeline": [
            {"name": "WhitespaceTokenizer"},
            {"name": "KeywordIntentClassifier"},
        ],
        "policies": [
            {
                "name": "RulePolicy",
                "core_fallback_threshold": 0.3,
                "core_fallback_action_name": "utter_hred_fallback",
            },
            {
                "name": "rasa_hred.HREDPolicy",
                "model": str(hred),
                "fallback_threshold": 0.35,
                "decoding": {"beam_size": 3},
                "generate": "in_nlg",
            },
        ],
    }
    (project / "config.yml").write_text(yaml.safe_dump(config))
    return rasa_train(project, cache=rasa_cache)


@pytest.mark.slow
def test_rasa_bot_answers_chitchat_from_the_conversation_history(memory_bot):
    # `generate: in_nlg`: the reply is generated by the NLG when utter_hred is said.
    nlg = EndpointConfig(type="rasa_hred.HREDTemplatedNLG")
    agent = Agent.load(str(memory_bot), generator=nlg)

    async def talk(sender, texts):
        replies = []
        for text in texts:
            replies.append(await agent.handle_text(text, sender_id=sender))
        return replies

    async def both():
        return await asyncio.gather(
            talk("alice", ["remember c2", "what did i say ?"]),
            talk("bob", ["remember c4", "what did i say ?"]),
            talk("carol", ["hello"]),
        )

    alice, bob, carol = asyncio.run(both())
    assert carol == [[{"recipient_id": "carol", "text": "hello!"}]]  # the rule's response
    assert alice[0][0]["text"] == "ok, c2 noted"
    assert alice[-1][0]["text"] == "you said r2"
    assert bob[-1][0]["text"] == "you said r4"  # same message, different history


def test_policy_loads_a_model_directory_generator(tiny_hred):
    generator = ResponseGenerator.load(tiny_hred, device="cpu")
    reply = generator.generate([["hello", "hi", "how are you?"]])[0]
    assert reply.text.strip()
    assert load_model(tiny_hred).vocabulary.tokens == generator.vocabulary.tokens
