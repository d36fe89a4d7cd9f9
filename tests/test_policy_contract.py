"""Rasa's contract for policies, held against HREDPolicy.

Rasa 3.6 checks its own policies with a shared collection of tests (``PolicyTestCollection``
in Rasa's ``tests/core/test_policies.py``). These are the same checks in our words, with
real Rasa objects: a ``LocalModelStorage`` in a temporary directory, trackers that Rasa
builds from stories, and a tiny HRED.

- A policy object predicts after ``train()`` exactly as its copy loaded from the storage
  does, on every tracker, also when loaded for fine-tuning.
- An empty tracker gets a proper prediction.
- A policy trained on no stories persists and loads.
- The featurizer Rasa's base class wants is the same before and after loading, and
  ``max_history`` means only the HRED's context turns.

The policy is trained two ways: from a pre-trained model directory (``model:``, nothing to
train: fast) and from a corpus (the policy trains the HRED itself: marked slow).
"""

from __future__ import annotations

import dataclasses
import uuid
from pathlib import Path
from typing import Any

import pytest
from rasa.core.featurizers.single_state_featurizer import SingleStateFeaturizer
from rasa.core.featurizers.tracker_featurizers import MaxHistoryTrackerFeaturizer
from rasa.core.policies.policy import SupportedData
from rasa.core.training import load_data
from rasa.engine.graph import ExecutionContext, GraphSchema
from rasa.engine.storage.local_model_storage import LocalModelStorage
from rasa.engine.storage.resource import Resource
from rasa.shared.core.domain import Domain
from rasa.shared.core.events import SlotSet, UserUttered
from rasa.shared.core.trackers import DialogueStateTracker

from rasa_hred.core.training import TrainingConfig
from rasa_hred.integration import registry
from rasa_hred.integration.policy import HREDPolicy, HREDPolicyError
from rasa_hred.jobs import train_on_corpus

DOMAIN_YAML = """
version: "3.1"
intents: [greet, chitchat, out_of_scope]
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

STORIES_YAML = """
version: "3.1"
stories:
- story: greet then chat
  steps:
  - intent: greet
    user: hello there
  - action: utter_greet
  - intent: chitchat
    user: do you like old films ?
  - bot: i love the old westerns .
- story: chat twice
  steps:
  - intent: chitchat
    user: what is your favourite film ?
  - bot: the third man , without a doubt .
  - intent: chitchat
    user: why that one ?
  - bot: the music and the shadows .
- story: out of scope
  steps:
  - intent: out_of_scope
    user: book me a flight
  - action: utter_hred_fallback
"""

CORPUS_LINES = [
    "hello\thi there , how are you ?\tfine thanks",
    "do you like films ?\ti love old westerns .\tme too",
    "what is your favourite film ?\tthe third man .\twhy ?\tthe music .",
    "tell me a joke\ti am not funny .\ttry anyway",
    "good morning\tgood morning to you .\thow are you ?\ti am well .",
] * 8

# A small model and short replies: each generation takes milliseconds.
TINY_TRAINING = {
    "epochs": 1,
    "embedding_size": 16,
    "hidden_size": 32,
    "bidirectional": False,
    "batch_size": 16,
    "seed": 0,
    "training": {"progress": False, "early_stopping": 0, "max_turns": 4},
}
MAX_HISTORY = 3  # the HRED's context turns; deliberately not Rasa's default

pytestmark = pytest.mark.usefixtures("one_torch_thread")


@pytest.fixture(scope="module")
def domain() -> Domain:
    return Domain.from_yaml(DOMAIN_YAML)


@pytest.fixture(scope="module")
def corpus(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("corpus") / "chat.txt"
    path.write_text("\n".join(CORPUS_LINES) + "\n", encoding="utf-8")
    return path


@pytest.fixture(scope="module")
def model_dir(corpus: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A tiny HRED directory, as `rasa-hred train` writes it (about a second of training)."""
    out = tmp_path_factory.mktemp("hred") / "model"
    options = {k: v for k, v in TINY_TRAINING.items() if k != "training"}
    train_on_corpus(
        TrainingConfig(
            corpus=[str(corpus)], out=str(out), device="cpu", **options, **TINY_TRAINING["training"]
        )
    )
    return out


@pytest.fixture(scope="module")
def stories(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("data") / "stories.yml"
    path.write_text(STORIES_YAML, encoding="utf-8")
    return path


@pytest.fixture(scope="module")
def model_storage(tmp_path_factory: pytest.TempPathFactory) -> LocalModelStorage:
    return LocalModelStorage(tmp_path_factory.mktemp("storage"))


@pytest.fixture(scope="module")
def execution_context() -> ExecutionContext:
    return ExecutionContext(GraphSchema({}), uuid.uuid4().hex)


def training_trackers(domain: Domain, stories: Path) -> list[Any]:
    return load_data(str(stories), domain, augmentation_factor=2)


def prediction_trackers(domain: Domain, stories: Path) -> list[DialogueStateTracker]:
    """Every training tracker, and each distinct beginning of one that ends on a user
    message (where the HRED generates a reply)."""
    trackers: list[DialogueStateTracker] = []
    beginnings: set[tuple[str, ...]] = set()
    for story in training_trackers(domain, stories):
        events = list(story.events)
        trackers.append(story)
        for end, event in enumerate(events, start=1):
            key = tuple(str(e) for e in events[:end])
            if isinstance(event, UserUttered) and key not in beginnings:
                beginnings.add(key)
                sender = f"{story.sender_id}-{end}"
                trackers.append(
                    DialogueStateTracker.from_events(sender, events[:end], domain.slots)
                )
    return trackers


SOURCES = [
    pytest.param("model", id="from-a-model-directory"),
    pytest.param("corpus", id="trained-by-the-policy", marks=pytest.mark.slow),
]


@pytest.fixture(scope="module", params=SOURCES)
def source(request: pytest.FixtureRequest) -> str:
    return str(request.param)


def policy_config(source: str, model_dir: Path, corpus: Path, **overrides: Any) -> dict[str, Any]:
    config = HREDPolicy.get_default_config() | TINY_TRAINING
    if source == "model":
        config |= {"model": str(model_dir)}
    else:
        config |= {"corpus": [str(corpus)]}
    return config | {
        "device": "cpu",
        "max_history": MAX_HISTORY,
        "decoding": {"beam_size": 2, "max_length": 8},
        **overrides,
    }


def create_policy(
    config: dict[str, Any],
    model_storage: LocalModelStorage,
    resource: Resource,
    execution_context: ExecutionContext,
) -> HREDPolicy:
    return HREDPolicy.create(config, model_storage, resource, execution_context)


@pytest.fixture(scope="module")
def resource() -> Resource:
    return Resource(uuid.uuid4().hex)


@pytest.fixture(scope="module")
def trained_policy(
    source: str,
    model_dir: Path,
    corpus: Path,
    domain: Domain,
    stories: Path,
    model_storage: LocalModelStorage,
    resource: Resource,
    execution_context: ExecutionContext,
) -> HREDPolicy:
    config = policy_config(source, model_dir, corpus)
    policy = create_policy(config, model_storage, resource, execution_context)
    policy.train(training_trackers(domain, stories), domain)
    return policy


@pytest.mark.parametrize("should_finetune", [False, True])
def test_trained_policy_predicts_like_its_loaded_copy(
    trained_policy: HREDPolicy,
    domain: Domain,
    stories: Path,
    model_storage: LocalModelStorage,
    resource: Resource,
    execution_context: ExecutionContext,
    should_finetune: bool,
) -> None:
    loaded = HREDPolicy.load(
        dict(trained_policy.config),
        model_storage,
        resource,
        dataclasses.replace(execution_context, is_finetuning=should_finetune),
    )
    assert loaded.finetune_mode == should_finetune

    trackers = prediction_trackers(domain, stories)
    generated = 0
    for tracker in trackers:
        expected = trained_policy.predict_action_probabilities(tracker, domain)
        assert loaded.predict_action_probabilities(tracker, domain) == expected
        if expected.optional_events:
            generated += 1
            assert expected.max_confidence_index == domain.index_for_action("utter_hred")
            (event,) = expected.optional_events
            assert isinstance(event, SlotSet) and event.key == "hred_response"
        fallback = expected.probabilities[domain.index_for_action("utter_hred_fallback")]
        assert fallback == 0.0  # generation never failed
    # The comparison covered generated replies, not only turns the HRED leaves alone.
    assert generated >= len(trackers) // 3


def test_prediction_on_an_empty_tracker(trained_policy: HREDPolicy, domain: Domain) -> None:
    tracker = DialogueStateTracker("empty", domain.slots)
    prediction = trained_policy.predict_action_probabilities(tracker, domain)
    assert not prediction.is_end_to_end_prediction
    assert len(prediction.probabilities) == domain.num_actions
    assert max(prediction.probabilities) <= 1.0
    assert min(prediction.probabilities) >= 0.0


def test_a_policy_trained_on_no_stories_persists_and_loads(
    source: str,
    model_dir: Path,
    corpus: Path,
    domain: Domain,
    model_storage: LocalModelStorage,
    execution_context: ExecutionContext,
) -> None:
    config = policy_config(source, model_dir, corpus)
    resource = Resource(uuid.uuid4().hex)
    create_policy(config, model_storage, resource, execution_context).train([], domain)
    loaded = HREDPolicy.load(config, model_storage, resource, execution_context)
    assert loaded is not None and loaded.generator is not None


def test_loading_what_was_never_trained_is_a_policy_error(
    model_dir: Path,
    corpus: Path,
    model_storage: LocalModelStorage,
    execution_context: ExecutionContext,
) -> None:
    config = policy_config("model", model_dir, corpus)
    with pytest.raises(HREDPolicyError, match="cannot load the HRED model"):
        HREDPolicy.load(config, model_storage, Resource("never-trained"), execution_context)


def test_featurizer_and_max_history_survive_loading(
    trained_policy: HREDPolicy,
    model_storage: LocalModelStorage,
    resource: Resource,
    execution_context: ExecutionContext,
) -> None:
    loaded = HREDPolicy.load(
        dict(trained_policy.config), model_storage, resource, execution_context
    )
    for policy in (trained_policy, loaded):
        # The base class's featurizer is an unused placeholder, the same on both: it does
        # not take `max_history`, which is the HRED's context turns.
        assert isinstance(policy.featurizer, MaxHistoryTrackerFeaturizer)
        assert policy.featurizer.max_history is None
        assert policy.featurizer.state_featurizer is None
        assert policy.generator is not None
        assert policy.generator.max_turns == MAX_HISTORY


def test_a_featurizer_is_refused_rather_than_silently_unused(
    model_dir: Path,
    corpus: Path,
    model_storage: LocalModelStorage,
    execution_context: ExecutionContext,
) -> None:
    config = policy_config("model", model_dir, corpus)
    featurizer = MaxHistoryTrackerFeaturizer(SingleStateFeaturizer(), max_history=3)
    with pytest.raises(HREDPolicyError, match="featurizer"):
        HREDPolicy(config, model_storage, Resource("f"), execution_context, featurizer)
    configured = config | {"featurizer": [{"name": "MaxHistoryTrackerFeaturizer"}]}
    with pytest.raises(HREDPolicyError, match="featurizer"):
        create_policy(configured, model_storage, Resource("g"), execution_context)


def test_in_nlg_training_registers_the_generator_as_loading_does(
    model_dir: Path,
    corpus: Path,
    domain: Domain,
    model_storage: LocalModelStorage,
    execution_context: ExecutionContext,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(registry, "NLG_GENERATORS", {})
    config = policy_config("model", model_dir, corpus, generate="in_nlg")
    resource = Resource(uuid.uuid4().hex)
    trained = create_policy(config, model_storage, resource, execution_context)
    trained.train([], domain)
    after_training = registry.NLG_GENERATORS["utter_hred"]
    assert after_training.generator is trained.generator
    assert (after_training.max_turns, after_training.fallback_response) == (
        MAX_HISTORY,
        "utter_hred_fallback",
    )
    loaded = HREDPolicy.load(config, model_storage, resource, execution_context)
    after_loading = registry.NLG_GENERATORS["utter_hred"]
    assert after_loading.generator is loaded.generator
    assert after_loading.generator is not None and trained.generator is not None
    context = ["hello", "hi there , how are you ?", "do you like films ?"]
    assert (
        after_loading.generator.generate([context])[0].text
        == trained.generator.generate([context])[0].text
    )


def test_supported_data() -> None:
    assert HREDPolicy.supported_data() == SupportedData.ML_DATA
