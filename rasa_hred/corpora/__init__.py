"""Dialogue corpora: one loader per format, combined and split by ``load_corpus``.

Depends on ``rasa_hred.core.vocab`` only; nothing here imports Rasa or Sanic.
"""
