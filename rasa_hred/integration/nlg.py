"""An in-process Rasa NLG for the HRED's response: generated on demand, said verbatim.

Name it in ``endpoints.yml`` (``nlg: type: rasa_hred.HREDTemplatedNLG``).

- With the policy in ``generate: in_nlg`` mode, the reply is generated here, when
  ``utter_hred`` is said: off Rasa's event loop (the generator's micro-batcher and worker
  thread), batched across concurrent conversations, and only for turns the HRED won. If
  generation fails, the policy's ``fallback_response`` is said instead.
- With ``generate: in_process`` the policy has put the reply in the slot; it is said as is.
  Rasa's templated NLG would format ``{hred_response}`` and give up when the text contains
  ``0[`` (the user then hears the raw template).

Every other response is rendered exactly as Rasa's templated NLG renders it.
"""

from __future__ import annotations

import logging
from typing import Any

from rasa.core.nlg import TemplatedNaturalLanguageGenerator
from rasa.shared.core.domain import Domain
from rasa.shared.core.trackers import DialogueStateTracker
from rasa.utils.endpoints import EndpointConfig

from rasa_hred.integration import registry
from rasa_hred.integration.context import tracker_context
from rasa_hred.integration.loading import GENERATION_ERRORS
from rasa_hred.integration.names import RESPONSE, SLOT

logger = logging.getLogger(__name__)


class HREDTemplatedNLG(TemplatedNaturalLanguageGenerator):
    def __init__(
        self,
        endpoint_config: EndpointConfig | None = None,
        domain: Domain | None = None,
        **kwargs: Any,
    ) -> None:
        domain = domain or Domain.empty()
        super().__init__(domain.responses)
        options = dict(endpoint_config.kwargs) if endpoint_config else {}
        self.responses_owned = set(options.get("responses") or [RESPONSE])
        self.slot = options.get("slot") or SLOT
        registry.NLG_RENDERERS.update(self.responses_owned)

    async def generate(
        self,
        utter_action: str,
        tracker: DialogueStateTracker,
        output_channel: str,
        **kwargs: Any,
    ) -> dict[str, Any] | None:
        if utter_action in self.responses_owned:
            # An in_nlg policy's response is generated now, even when the slot holds a text:
            # a conversation kept from an in_process model has its last reply there.
            registered = registry.NLG_GENERATORS.get(utter_action)
            if registered is not None:
                context = tracker_context(tracker, max_turns=registered.max_turns)
                try:
                    reply = await registered.generator.agenerate(context)
                except GENERATION_ERRORS:
                    fallback = registered.fallback_response
                    logger.exception(f"HRED generation failed; saying {fallback}")
                    return await super().generate(fallback, tracker, output_channel, **kwargs)
                return {"text": reply.text}
            text = tracker.get_slot(self.slot)
            if isinstance(text, str) and text.strip():
                return {"text": text}
        response: dict[str, Any] | None = await super().generate(
            utter_action, tracker, output_channel, **kwargs
        )
        return response
