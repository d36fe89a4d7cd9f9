"""rasa-hred: a hierarchical recurrent encoder-decoder (HRED) dialogue model for Rasa.

The Rasa policy is importable as ``rasa_hred.HREDPolicy`` (the name used in ``config.yml``);
it is loaded lazily so that the model and CLI do not pay for importing Rasa.
"""

from typing import Any

__version__ = "0.1.0"


def __getattr__(name: str) -> Any:
    if name == "HREDPolicy":
        from rasa_hred.policy import HREDPolicy

        return HREDPolicy
    raise AttributeError(f"module 'rasa_hred' has no attribute {name!r}")
