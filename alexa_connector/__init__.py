"""A Rasa input channel for Amazon Alexa custom skills (verified, one tracker per user).

``credentials.yml`` names the channel ``alexa_connector.AlexaConnector``. The class is
imported on first use, so ``import alexa_connector`` (e.g. for
``alexa_connector.verification`` or ``alexa_connector.speech``) does not load Rasa.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from alexa_connector.channel import AlexaConnector, AlexaOutputChannel

__all__ = ["AlexaConnector", "AlexaOutputChannel"]


def __getattr__(name: str) -> Any:
    if name in __all__:
        from alexa_connector import channel

        return getattr(channel, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
