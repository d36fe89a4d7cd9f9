"""A Rasa input channel for Amazon Alexa custom skills (verified, one tracker per user)."""
