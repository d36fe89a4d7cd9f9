"""Replies from a trained model: the generator, its async micro-batcher, and the chat REPL."""
