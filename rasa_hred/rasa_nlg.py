"""An in-process Rasa NLG that says the HRED's reply verbatim.

Rasa's templated NLG formats ``{hred_response}`` and gives up when the result contains
``0[`` (the user then hears the raw template). Name this class in ``endpoints.yml``
(``nlg: type: rasa_hred.rasa_nlg.HREDTemplatedNLG``) and the HRED response is taken from its
slot as is; every other response is rendered exactly as Rasa's templated NLG renders it.
"""

from __future__ import annotations

from typing import Any

from rasa.core.nlg import TemplatedNaturalLanguageGenerator
from rasa.shared.core.domain import Domain
from rasa.shared.core.trackers import DialogueStateTracker
from rasa.utils.endpoints import EndpointConfig


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
        self.responses_owned = set(options.get("responses") or ["utter_hred"])
        self.slot = options.get("slot") or "hred_response"

    async def generate(
        self,
        utter_action: str,
        tracker: DialogueStateTracker,
        output_channel: str,
        **kwargs: Any,
    ) -> dict[str, Any] | None:
        if utter_action in self.responses_owned:
            text = tracker.get_slot(self.slot)
            if isinstance(text, str) and text.strip():
                return {"text": text}
        return await super().generate(utter_action, tracker, output_channel, **kwargs)
