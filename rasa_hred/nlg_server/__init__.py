"""The NLG server (``rasa-hred serve``): Rasa's NLG endpoint, generating the HRED's responses
in batches off the event loop and rendering every other response from the domain.

``protocol`` validates Rasa's requests, ``metrics`` counts them, ``app`` answers them and
``command`` resolves the settings (from a Rasa model archive or a model directory) and runs
the server.
"""
