"""The old endpoints.yml name ``rasa_hred.rasa_nlg.HREDTemplatedNLG``, kept working.

The class lives in ``rasa_hred.integration.nlg``; new configs name ``rasa_hred.HREDTemplatedNLG``.
"""

from rasa_hred.integration.nlg import HREDTemplatedNLG

__all__ = ["HREDTemplatedNLG"]
