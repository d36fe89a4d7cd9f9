"""What the policies and the in-process NLG of one Rasa process tell each other.

Rasa builds the NLG from ``endpoints.yml`` and gives it no access to the model's storage. So a
``generate: in_nlg`` policy registers its generator here (by response name) when it is loaded
or trained, and each ``HREDTemplatedNLG`` registers the responses it renders, so that such a
policy knows whether anyone will generate the text it only predicts.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from rasa_hred.serving.generator import ResponseGenerator


@dataclass(frozen=True)
class NLGGenerator:
    """An ``in_nlg`` policy's generator and the settings the NLG must generate with."""

    generator: ResponseGenerator
    max_turns: int | None  # the policy's max_history
    fallback_response: str  # said instead when generation fails


#: Generators of ``in_nlg`` policies, by the response they speak through.
NLG_GENERATORS: dict[str, NLGGenerator] = {}
#: Responses an HREDTemplatedNLG in this process renders.
NLG_RENDERERS: set[str] = set()
