"""Shared test helpers (not tests; ``tests/`` is on ``sys.path``, so ``import support``).

- ``support`` itself: where the repository is, and the environment every Rasa subprocess
  gets (:data:`REPO`, :data:`BIN`, :data:`RASA_ENV`).
- ``support.models``: a tiny trained HRED, the demo assistant with it (``rasa train``).
- ``support.servers``: servers on free loopback ports: a Sanic app in this event loop
  (``running``), ``rasa run`` as a subprocess (``rasa_server``).
- ``support.alexa_pki``: a throw-away PKI that signs Alexa requests, and request bodies;
  ``chain_server`` (a counting stand-in for Amazon's certificate host), ``LoopbackVerifier``.
- ``support.hostile``: crafted archives and model directories, built in milliseconds.
- ``support.trackers``: Rasa-3.6-style tracker JSON of any length.
- ``support.nlg``: the NLG server in its own process.
- ``support.oracles``: slow, plainly written references for the decoder's fast paths.

``tests/conftest.py`` turns the slow ones into session fixtures (``tiny_hred``,
``demo_model``).
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

#: The repository root (the demo assistant's files live there).
REPO = Path(__file__).resolve().parents[2]
#: The virtualenv's scripts (``rasa``, ``rasa-hred``) beside the running interpreter.
BIN = Path(sys.executable).parent
#: The environment for Rasa subprocesses: no telemetry, and quiet TensorFlow and SQLAlchemy.
RASA_ENV = os.environ | {
    "RASA_TELEMETRY_ENABLED": "false",
    "TF_CPP_MIN_LOG_LEVEL": "3",
    "PYTHONWARNINGS": "ignore",
    "SQLALCHEMY_SILENCE_UBER_WARNING": "1",
}
