"""The HRED NLG server: Rasa's NLG HTTP protocol, metrics, the Sanic app, ``rasa-hred serve``."""
