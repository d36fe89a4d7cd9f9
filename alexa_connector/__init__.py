"""A Rasa input channel for Amazon Alexa custom skills (verified, one tracker per user).

``credentials.yml`` names the channel ``alexa_connector.AlexaConnector``. The modules, from
the bottom up:

- ``envelope`` - reading Alexa's request JSON, building its response JSON;
- ``speech`` - the bot's messages as SSML, and spoken button titles;
- ``verification`` - Amazon's checks of every request (certificates, signature, timestamp);
- ``settings`` - the ``credentials.yml`` keys, validated;
- ``turns`` - what the skill does with each kind of request, and what it answers;
- ``channel`` - the Rasa ``InputChannel``: the HTTP routes and running the bot.

Only ``settings`` and ``channel`` import Rasa (and only ``channel`` Sanic). The classes below
are imported on first use, so ``import alexa_connector`` (e.g. for
``alexa_connector.verification``) does not load Rasa.
"""

from __future__ import annotations

from importlib import import_module
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from alexa_connector.channel import AlexaConnector, AlexaOutputChannel
    from alexa_connector.settings import AlexaConfigurationError, AlexaSettings

_HOMES = {
    "AlexaConnector": "alexa_connector.channel",
    "AlexaOutputChannel": "alexa_connector.channel",
    "AlexaConfigurationError": "alexa_connector.settings",
    "AlexaSettings": "alexa_connector.settings",
}

__all__ = ["AlexaConfigurationError", "AlexaConnector", "AlexaOutputChannel", "AlexaSettings"]


def __getattr__(name: str) -> Any:
    if name in _HOMES:
        return getattr(import_module(_HOMES[name]), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
