"""The serving processes' PyTorch threads: the option when set, else PyTorch's default."""

from __future__ import annotations

import logging

import pytest
import torch

from rasa_hred.serving.threads import use_serving_threads


def test_the_option_sets_the_threads_and_the_choice_is_logged(caplog) -> None:
    before = torch.get_num_threads()
    try:
        with caplog.at_level(logging.INFO, logger="rasa_hred.serving.threads"):
            assert use_serving_threads(None) == before  # PyTorch's default is left alone
            assert use_serving_threads(2) == 2 == torch.get_num_threads()
        assert f"{before} PyTorch thread(s) (PyTorch's default)" in caplog.text
        assert "2 PyTorch thread(s) (the threads option)" in caplog.text
        with pytest.raises(ValueError, match="threads must be >= 1"):
            use_serving_threads(0)
    finally:
        torch.set_num_threads(before)
