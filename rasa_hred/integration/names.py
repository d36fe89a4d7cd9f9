"""The names the HRED speaks through in a Rasa domain, in one place.

Plain constants (no Rasa import), so the NLG server and the benchmarks can use them cheaply.
A bot may rename each one in the policy's config (``response``, ``slot``,
``fallback_response``); these are the defaults the demo domain uses.
"""

#: The response the HRED's reply is said through (``utter_hred: - text: "{hred_response}"``).
RESPONSE = "utter_hred"
#: The text slot the reply travels in from the policy to the NLG.
SLOT = "hred_response"
#: Said instead when generation fails.
FALLBACK_RESPONSE = "utter_hred_fallback"
#: The policy's class name, as it appears at the end of a config's or an archive's ``uses``.
POLICY_CLASS = "HREDPolicy"
