"""The channel's settings: the ``alexa_connector.AlexaConnector`` keys of ``credentials.yml``.

Every key is optional except ``skill_id`` (required while requests are verified). Values may
arrive as strings (``${ENV_VAR}`` substitution), so each is converted by its field's type;
a misspelt key, a wrong type or a value outside Amazon's limits stops ``rasa run`` at start-up
with an :class:`AlexaConfigurationError` that names the key, instead of failing on the first
request.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping
from dataclasses import dataclass, fields
from typing import Any

from rasa.shared.exceptions import RasaException

from alexa_connector.verification import MAX_TIMESTAMP_TOLERANCE_S
from rasa_hred.core.fields import check_known_keys

__all__ = ["ALEXA_DEADLINE_S", "AlexaConfigurationError", "AlexaSettings"]

#: Alexa gives up on a skill after about 8 seconds.
ALEXA_DEADLINE_S = 8.0

_CHANNEL = "alexa_connector.AlexaConnector"


class AlexaConfigurationError(RasaException, ValueError):
    """The ``alexa_connector.AlexaConnector`` credentials are not usable (a
    ``RasaException``, so ``rasa run`` reports it without a traceback)."""


@dataclass(frozen=True)
class AlexaSettings:
    """The channel's credentials (``credentials.yml`` keys), validated by
    :meth:`from_mapping`; ``AlexaSettings()`` holds the defaults."""

    skill_id: str | None = None
    verify_signature: bool = True
    timestamp_tolerance: float = MAX_TIMESTAMP_TOLERANCE_S
    trusted_roots: str | None = None
    certificate_cache_dir: str | None = None
    reply_timeout: float = 6.0
    slot_name: str = "text"
    reprompt: str | None = "Anything else?"
    launch_message: str = "Hi! Let's talk about movies. What have you watched lately?"
    launch_intent: str | None = None
    help_message: str = (
        "Just talk to me: ask for a movie recommendation, or tell me about a film you "
        "liked. Say stop when you are done."
    )
    help_intent: str | None = None
    stop_message: str = "Goodbye! Enjoy your next movie."
    fallback_message: str = "Sorry, I don't know what to say to that. Could you put it another way?"
    fallback_intent: str | None = "/nlu_fallback"
    unclear_message: str = "Sorry, I didn't catch that. Could you say it again?"
    timeout_message: str = "Sorry, I'm still thinking about that. Please ask me again in a moment."
    session_end_intent: str | None = "/session_start"

    @classmethod
    def from_mapping(cls, credentials: Mapping[str, Any] | None) -> AlexaSettings:
        """Validate ``credentials`` (``None``: all defaults) into settings; every problem is
        an :class:`AlexaConfigurationError` that names the key."""
        if credentials is None:
            credentials = {}
        if not isinstance(credentials, Mapping):
            raise AlexaConfigurationError(
                f"{_CHANNEL}: credentials must be a mapping of keys to values, got "
                f"{type(credentials).__name__}"
            )
        check_known_keys(cls, credentials, f"{_CHANNEL} credential key(s)", AlexaConfigurationError)
        settings = cls(**{key: _CONVERTERS[key](key, value) for key, value in credentials.items()})
        settings.validate()
        return settings

    def validate(self) -> None:
        """Check the rules that involve limits or more than one key."""
        if self.verify_signature and not self.skill_id:
            raise AlexaConfigurationError(
                f"{_CHANNEL}: 'skill_id' is required (your skill's application id, "
                "amzn1.ask.skill....); only local development may set "
                "'verify_signature: false' instead"
            )
        if not 0 < self.timestamp_tolerance <= MAX_TIMESTAMP_TOLERANCE_S:
            raise AlexaConfigurationError(
                f"{_CHANNEL}: 'timestamp_tolerance' must be more than 0 and at most "
                f"{MAX_TIMESTAMP_TOLERANCE_S:g} seconds (Amazon's limit), got "
                f"{self.timestamp_tolerance:g}"
            )
        if not 0 < self.reply_timeout < ALEXA_DEADLINE_S:
            raise AlexaConfigurationError(
                f"{_CHANNEL}: 'reply_timeout' must be more than 0 and less than "
                f"{ALEXA_DEADLINE_S:g} seconds (Alexa stops waiting after about 8 s), got "
                f"{self.reply_timeout:g}"
            )


# --------------------------------------------------------------------------- conversions


def _error(key: str, expected: str, value: Any) -> AlexaConfigurationError:
    return AlexaConfigurationError(f"{_CHANNEL}: '{key}' must be {expected}, got {value!r}")


def _as_bool(key: str, value: Any) -> bool:
    if isinstance(value, bool):
        return value
    if isinstance(value, str):  # e.g. from ${ENV_VAR} substitution
        lowered = value.strip().lower()
        if lowered in ("true", "yes", "on", "1"):
            return True
        if lowered in ("false", "no", "off", "0"):
            return False
    raise _error(key, "true or false", value)


def _as_seconds(key: str, value: Any) -> float:
    if isinstance(value, bool):
        raise _error(key, "a number of seconds", value)
    try:
        number = float(value)
    except (TypeError, ValueError):
        raise _error(key, "a number of seconds", value) from None
    if not math.isfinite(number):
        raise _error(key, "a finite number of seconds", value)
    return number


def _as_text(key: str, value: Any) -> str:
    if not isinstance(value, str) or not value.strip():
        raise _error(key, "a non-empty string", value)
    return value.strip()


def _as_optional_text(key: str, value: Any) -> str | None:
    if value is None or (isinstance(value, str) and not value.strip()):
        return None
    return _as_text(key, value)


# Each field is converted according to its annotation (every float is a number of seconds);
# a field of any other type fails here, at import.
_CONVERTER_FOR_TYPE: dict[str, Callable[[str, Any], Any]] = {
    "bool": _as_bool,
    "float": _as_seconds,
    "str": _as_text,
    "str | None": _as_optional_text,
}
_CONVERTERS = {field.name: _CONVERTER_FOR_TYPE[str(field.type)] for field in fields(AlexaSettings)}
