"""``rasa_hred.HREDPolicy``: generated chit-chat as a Rasa 3.6 dialogue policy.

A policy can only choose among the domain's actions, so the HRED speaks through a response
action: for a turn it should answer, the policy predicts ``utter_hred`` and, as an event of the
same prediction, sets the text slot ``hred_response`` to the generated reply. Rasa applies a
winning prediction's events before running the action, and the domain response
``utter_hred: - text: "{hred_response}"`` carries the text to every channel. After its own
utterance the policy predicts ``action_listen``.

In ``generate: nlg_server`` mode the policy only predicts ``utter_hred``; the NLG server
(``rasa-hred serve``, named in ``endpoints.yml``) generates the text from the tracker, so
generation runs once, batched, and off Rasa's event loop. ``generate: in_nlg`` does the same
inside the Rasa process: the policy loads the model and only predicts, and
``rasa_hred.HREDTemplatedNLG`` (named in ``endpoints.yml``) generates when
``utter_hred`` is actually said. In both modes a turn that another policy wins costs no
generation, which ``in_process`` cannot avoid (a policy cannot know whether it will win).
"""

from __future__ import annotations

import hashlib
import logging
import tempfile
from pathlib import Path
from typing import TYPE_CHECKING, Any

from rasa.core.featurizers.tracker_featurizers import (
    MaxHistoryTrackerFeaturizer,
    TrackerFeaturizer,
)
from rasa.core.policies.policy import Policy, PolicyPrediction
from rasa.engine.graph import ExecutionContext
from rasa.engine.recipes.default_recipe import DefaultV1Recipe
from rasa.engine.storage.resource import Resource
from rasa.engine.storage.storage import ModelStorage
from rasa.shared.core.constants import ACTION_LISTEN_NAME
from rasa.shared.core.domain import Domain
from rasa.shared.core.events import ActionExecuted, SlotSet, UserUttered
from rasa.shared.core.generator import TrackerWithCachedStates
from rasa.shared.core.trackers import DialogueStateTracker
from rasa.shared.nlu.constants import INTENT_NAME_KEY

from rasa_hred.core.checkpoint import CONFIG_FILE, VOCAB_FILE, WEIGHTS_FILE, load_model, save_model
from rasa_hred.corpora import merge_turns
from rasa_hred.errors import UserError
from rasa_hred.integration import registry
from rasa_hred.integration.context import INTENT_PREFIX, tracker_context
from rasa_hred.integration.loading import (
    GENERATION_ERRORS,
    IN_PROCESS_MODES,
    HREDPolicyError,
    default_config,
    load_policy_generator,
    validate_policy_config,
)

if TYPE_CHECKING:
    from rasa_hred.serving.generator import ResponseGenerator

__all__ = ["HREDPolicy", "HREDPolicyError", "story_dialogues", "trigger_confidence"]

logger = logging.getLogger(__name__)

NLU_FALLBACK = "nlu_fallback"
# The policy's options that are `rasa-hred train` options of the same name.
TRAINING_OPTIONS = (
    "epochs",
    "embedding_size",
    "hidden_size",
    "bidirectional",
    "batch_size",
    "seed",
)


@DefaultV1Recipe.register(
    [DefaultV1Recipe.ComponentType.POLICY_WITHOUT_END_TO_END_SUPPORT], is_trainable=True
)
class HREDPolicy(Policy):
    @staticmethod
    def get_default_config() -> dict[str, Any]:
        return default_config()  # documented in rasa_hred.integration.loading

    def __init__(
        self,
        config: dict[str, Any],
        model_storage: ModelStorage,
        resource: Resource,
        execution_context: ExecutionContext,
        featurizer: TrackerFeaturizer | None = None,
        generator: ResponseGenerator | None = None,
    ) -> None:
        validate_policy_config(config)
        if featurizer is not None:
            raise HREDPolicyError(
                "HREDPolicy: the HRED reads the conversation's texts and takes no featurizer"
            )
        super().__init__(config, model_storage, resource, execution_context)
        self.generator = generator
        self._warned_no_nlg = False

    def _create_featurizer(self) -> TrackerFeaturizer:
        # The HRED reads the conversation's texts itself (integration.context): this policy
        # has no use for a tracker featurizer. Rasa's base class insists on one and would
        # build it from `max_history`, which here means the HRED's context turns, not
        # featurized states. So the featurizer is a fixed placeholder that reads nothing
        # from the config: the trained policy and each of its loaded copies have the same
        # one, and nothing about it is persisted. `max_history` travels with the config
        # (Rasa stores that in the model) and `load` gives it to the generator.
        return MaxHistoryTrackerFeaturizer(state_featurizer=None, max_history=None)

    @classmethod
    def fingerprint_addon(cls, config: dict[str, Any]) -> str | None:
        """Retrain when the files behind ``model``/``corpus`` change, not only the config."""
        digest = hashlib.sha256()
        sources = [config["model"]] if config.get("model") else list(config.get("corpus") or [])
        for source in sources:
            digest.update(str(source).encode())
            path = Path(str(source).split(":", 1)[-1] if ":" in str(source) else str(source))
            files = sorted(path.rglob("*")) if path.is_dir() else [path]
            for file in files:
                if file.is_file():
                    digest.update(file.read_bytes())
        return digest.hexdigest()

    # --- training -----------------------------------------------------------------------

    def train(
        self, training_trackers: list[TrackerWithCachedStates], domain: Domain, **kwargs: Any
    ) -> Resource:
        _check_domain(self.config, domain)
        with self._model_storage.write_to(self._resource) as directory:
            if self.config.get("model"):
                _copy_model_dir(Path(self.config["model"]), directory)
            else:
                stories = story_dialogues(training_trackers) if self.config["use_stories"] else []
                self._train_hred(stories, directory)
            # Keep the model, as Rasa's own policies do. It is read back from what was just
            # written, by the same loader as `load`, so this object predicts exactly like
            # its loaded copies (training may end on other weights than the best ones kept).
            self._use_generator(directory)
        return self._resource

    def _train_hred(self, stories: list[list[str]], directory: Path) -> None:
        from rasa_hred.core.training import TrainingConfig
        from rasa_hred.jobs import train_on_corpus

        options = {key: self.config[key] for key in TRAINING_OPTIONS}
        options |= dict(self.config.get("training") or {})
        logger.info(
            f"HREDPolicy: training an HRED on {self.config['corpus']} and {len(stories)} "
            "end-to-end story dialogues"
        )
        with tempfile.TemporaryDirectory() as scratch:
            try:
                config = TrainingConfig.from_dict(
                    options
                    | {
                        "corpus": list(self.config["corpus"]),
                        "out": scratch,
                        "device": self.config["device"],
                    },
                    what="training option(s)",
                )
            except (UserError, TypeError, ValueError) as error:
                raise HREDPolicyError(f"HREDPolicy: {error}") from error
            try:
                result = train_on_corpus(config, extra_dialogues=stories)
            except UserError as error:
                raise HREDPolicyError(f"HREDPolicy: {error}") from error
            if result.interrupted:
                raise HREDPolicyError("HREDPolicy: training was interrupted")
            _copy_model_dir(Path(scratch), directory)

    # --- loading ------------------------------------------------------------------------

    @classmethod
    def load(
        cls,
        config: dict[str, Any],
        model_storage: ModelStorage,
        resource: Resource,
        execution_context: ExecutionContext,
        **kwargs: Any,
    ) -> HREDPolicy:
        policy = cls(config, model_storage, resource, execution_context)
        if policy.config["generate"] in IN_PROCESS_MODES:
            try:
                with model_storage.read_from(resource) as directory:
                    policy._use_generator(directory)
            except HREDPolicyError:
                raise
            except Exception as error:  # e.g. no such resource: never trained
                raise HREDPolicyError(f"HREDPolicy: cannot load the HRED model: {error}") from error
        return policy

    def _use_generator(self, model_dir: Path) -> None:
        """Load the generator of ``model_dir`` as the config describes, if this policy (or
        the in-process NLG) generates; in ``in_nlg`` mode register it for the NLG."""
        if self.config["generate"] not in IN_PROCESS_MODES:
            return
        try:
            self.generator = load_policy_generator(model_dir, self.config)
        except Exception as error:  # every load failure, whatever raised it
            raise HREDPolicyError(f"HREDPolicy: cannot load the HRED model: {error}") from error
        if self.config["generate"] == "in_nlg":
            registry.NLG_GENERATORS[self.config["response"]] = registry.NLGGenerator(
                self.generator, self.config["max_history"], self.config["fallback_response"]
            )

    # --- prediction ---------------------------------------------------------------------

    def predict_action_probabilities(
        self,
        tracker: DialogueStateTracker,
        domain: Domain,
        rule_only_data: dict[str, Any] | None = None,
        **kwargs: Any,
    ) -> PolicyPrediction:
        probabilities = self._default_predictions(domain)
        latest = tracker.latest_action_name
        if latest == self.config["response"]:
            probabilities[domain.index_for_action(ACTION_LISTEN_NAME)] = 1.0
            return self._prediction(probabilities)
        confidence = (
            trigger_confidence(tracker, self.config) if latest == ACTION_LISTEN_NAME else 0.0
        )
        if confidence <= 0.0:
            return self._prediction(probabilities)
        if self.config["generate"] == "nlg_server" or self._nlg_generates():
            probabilities[domain.index_for_action(self.config["response"])] = confidence
            return self._prediction(probabilities)
        if self.generator is None:
            raise HREDPolicyError("HREDPolicy: no HRED model to generate with; train or load it")
        context = tracker_context(tracker, max_turns=self.config["max_history"])
        try:
            reply = self.generator.generate([context])[0].text
        except GENERATION_ERRORS:
            logger.exception("HREDPolicy: generation failed; answering with the fallback response")
            probabilities[domain.index_for_action(self.config["fallback_response"])] = confidence
            return self._prediction(probabilities)
        probabilities[domain.index_for_action(self.config["response"])] = confidence
        return self._prediction(
            probabilities,
            optional_events=[SlotSet(self.config["slot"], reply)],
            diagnostic_data={"hred_context": context},
        )

    def _nlg_generates(self) -> bool:
        """In ``in_nlg`` mode, whether an HREDTemplatedNLG will say the response.

        Without one (no ``nlg:`` entry in endpoints.yml) the bot would say an empty slot,
        so the policy generates itself, as in ``in_process``, and says why once.
        """
        if self.config["generate"] != "in_nlg":
            return False
        if self.config["response"] in registry.NLG_RENDERERS:
            return True
        if not self._warned_no_nlg:
            self._warned_no_nlg = True
            logger.warning(
                "HREDPolicy: generate is in_nlg, but no rasa_hred.HREDTemplatedNLG "
                "is configured (endpoints.yml `nlg: type: ...`); generating in the policy."
            )
        return False


# --- pure helpers (unit-tested without Rasa's graph) ----------------------------------------


def trigger_confidence(tracker: DialogueStateTracker, config: dict[str, Any]) -> float:
    """How confidently the HRED should answer the latest user message (0 = not at all).

    A listed intent or ``nlu_fallback`` gives the NLU's own confidence for it; otherwise
    the catch-all ``fallback_threshold`` (below which other policies' predictions win).
    """
    message = tracker.latest_message
    if message is None or not isinstance(message, UserUttered):
        return 0.0
    intent = message.intent or {}
    name, confidence = intent.get(INTENT_NAME_KEY), float(intent.get("confidence") or 0.0)
    wanted = set(config.get("intents") or [])
    if config.get("answer_nlu_fallback", True):
        wanted.add(NLU_FALLBACK)
    if name in wanted:
        # A rule-matched intent can come with confidence 1.0; an NLU guess reports its own.
        return max(confidence, float(config.get("fallback_threshold") or 0.0), 1e-3)
    return float(config.get("fallback_threshold") or 0.0)


def story_dialogues(trackers: list[TrackerWithCachedStates]) -> list[list[str]]:
    """The end-to-end texts of the training stories (``- user:``/``- bot:`` steps).

    Consecutive turns of one speaker are merged, as in the HRED's other corpora; stories with
    fewer than two turns, augmented copies and duplicates are left out.
    """
    seen: set[tuple[str, ...]] = set()
    dialogues: list[list[str]] = []
    for tracker in trackers:
        if getattr(tracker, "is_augmented", False):
            continue
        turns: list[tuple[str, str]] = []
        for event in tracker.events:
            if (
                isinstance(event, UserUttered)
                and event.text
                and not event.text.startswith(INTENT_PREFIX)
            ):
                speaker, text = "user", event.text.strip()
            elif isinstance(event, ActionExecuted) and event.action_text:
                speaker, text = "bot", event.action_text.strip()
            else:
                continue
            turns.append((speaker, text))
        dialogue = tuple(text for _, text in merge_turns(turns) if text)
        if len(dialogue) >= 2 and dialogue not in seen:
            seen.add(dialogue)
            dialogues.append(list(dialogue))
    return dialogues


def _check_domain(config: dict[str, Any], domain: Domain) -> None:
    """The response and slot the policy speaks through must exist: say so at train time."""
    missing = [
        f"response/action {name!r}"
        for name in (config["response"], config["fallback_response"])
        if name not in domain.action_names_or_texts
    ]
    if config["slot"] not in [slot.name for slot in domain.slots]:
        missing.append(f"slot {config['slot']!r} (type: text, mappings: [{{type: custom}}])")
    if missing:
        raise HREDPolicyError(
            "HREDPolicy: the domain lacks " + ", ".join(missing) + f". Add `{config['response']}:"
            f' - text: "{{{config["slot"]}}}"` to responses and the slot to slots.'
        )


def _copy_model_dir(source: Path, target: Path) -> None:
    """Copy (and so validate) a model directory: it must load."""
    try:
        loaded = load_model(source, "cpu")
    except UserError as error:
        raise HREDPolicyError(f"HREDPolicy: model {source}: {error}") from error
    save_model(target, loaded.model, loaded.vocabulary, loaded.extra)
    for name in (CONFIG_FILE, VOCAB_FILE, WEIGHTS_FILE):
        assert (target / name).is_file()
