"""Dialogue corpora: one module per format, combined and split by ``load_corpus``.

``base`` (the ``Corpus``, the split, shared file helpers and their size bounds),
``movietriples``, ``text``, ``chatterbot``, ``rasa_stories``, ``chitchat``, ``cornell``,
``dailydialog``, ``personachat``, ``jsonl`` (one per format), ``lines`` (line-based files),
``pickles`` (the plain-data unpickler), ``specs`` (which loader reads a spec, and combining),
``stats``.
Depends on ``rasa_hred.core.vocab`` only; nothing here imports Rasa or Sanic.
"""

from rasa_hred.corpora.base import Corpus, CorpusError, Dialogue, merge_turns, split_dialogues
from rasa_hred.corpora.movietriples import load_movietriples_dict
from rasa_hred.corpora.pickles import restricted_load
from rasa_hred.corpora.specs import FORMATS, load_corpus
from rasa_hred.corpora.stats import corpus_stats, format_stats

__all__ = [
    "FORMATS",
    "Corpus",
    "CorpusError",
    "Dialogue",
    "corpus_stats",
    "format_stats",
    "load_corpus",
    "load_movietriples_dict",
    "merge_turns",
    "restricted_load",
    "split_dialogues",
]
