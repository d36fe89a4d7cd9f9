"""rasa-hred: a hierarchical recurrent encoder-decoder (HRED) dialogue model for Rasa.

The layers (see docs/architecture.md): ``core`` (torch only), ``corpora``, ``serving``,
``integration`` (Rasa), ``nlg_server``, ``bench``; ``cli`` sits on top of them all.

``rasa_hred.HREDPolicy`` (config.yml) and ``rasa_hred.HREDTemplatedNLG`` (endpoints.yml) are
imported on first use, so that the model and the CLI do not pay for importing Rasa.
"""

from __future__ import annotations

from importlib import metadata
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from rasa_hred.integration.nlg import HREDTemplatedNLG
    from rasa_hred.integration.policy import HREDPolicy

try:
    __version__ = metadata.version("rasa-hred")
except metadata.PackageNotFoundError:  # a source tree that was never installed
    __version__ = "0+unknown"

__all__ = ["HREDPolicy", "HREDTemplatedNLG", "__version__"]


def __getattr__(name: str) -> Any:
    if name == "HREDPolicy":
        from rasa_hred.integration.policy import HREDPolicy

        return HREDPolicy
    if name == "HREDTemplatedNLG":
        from rasa_hred.integration.nlg import HREDTemplatedNLG

        return HREDTemplatedNLG
    raise AttributeError(f"module 'rasa_hred' has no attribute {name!r}")
