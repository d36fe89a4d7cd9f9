"""Benchmarks (``rasa-hred bench ...``): apart from the library, which never imports them."""
