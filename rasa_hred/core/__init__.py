"""The HRED itself: vocabulary, model, decoding, batching, checkpoints, training, evaluation.

Torch only: nothing here imports Rasa, Sanic or another layer of this package.
"""
