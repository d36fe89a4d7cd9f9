"""The ``chitchat`` corpus spec: Chit-Chat Challenge conversations, one turn per sender."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from rasa_hred.corpora import CorpusError, load_corpus
from rasa_hred.corpora.chitchat import MIN_TURNS, chitchat_package_file


def message(sender: str, text: str) -> dict[str, str]:
    return {"sender": sender, "text": text, "timestamp": "2018-05-09T23:19:51Z"}


def write_dataset(path: Path, conversations: dict[str, object]) -> Path:
    path.write_text(json.dumps(conversations), encoding="utf-8")
    return path


def all_dialogues(spec: str) -> list[list[str]]:
    corpus = load_corpus(spec, fractions=(1.0, 0.0, 0.0))
    return corpus.train


def test_consecutive_messages_of_one_sender_are_one_turn_and_the_prompt_is_not(
    tmp_path: Path,
) -> None:
    data = write_dataset(
        tmp_path / "dataset.json",
        {
            "c1": {
                "prompt": "What is your favourite book?",
                "messages": [
                    [message("a", "hi"), message("a", "anyone here")],
                    [message("b", "hey")],
                    # The same sender across the dataset's own turn lists is still one turn.
                    [message("b", "how are you")],
                    [message("a", "good thanks")],
                ],
            }
        },
    )
    assert all_dialogues(f"chitchat:{data}") == [
        ["hi anyone here", "hey how are you", "good thanks"]
    ]


def test_dropped_chats_are_skipped_and_counted(tmp_path: Path) -> None:
    data = write_dataset(
        tmp_path / "dataset.json",
        {
            "nobody_answered": {"messages": [[message("a", "hi"), message("a", "hello?")]]},
            "one_exchange": {"messages": [[message("a", "hi")], [message("b", "bye")]]},
            "kept": {
                "messages": [[message("a", "hi")], [message("b", "hey")], [message("a", "ok")]]
            },
        },
    )
    corpus = load_corpus(f"chitchat:{data}", fractions=(1.0, 0.0, 0.0))
    assert corpus.train == [["hi", "hey", "ok"]]
    assert MIN_TURNS == 3
    assert corpus.num_skipped == 2
    assert any("dropped chat" in reason for reason in corpus.skipped)


@pytest.mark.parametrize(
    ("content", "expected"),
    [
        ("[1, 2]", "expected a JSON object"),
        ('{"c1": {"messages": [[{"sender": "a"}]]}}', "conversation c1, turn 0"),
        ('{"c1": {"prompt": "x"}}', "conversation c1: expected an object with a 'messages'"),
        ("{not json", "not a Chit-Chat Challenge JSON file"),
    ],
)
def test_malformed_files_name_the_conversation(tmp_path: Path, content: str, expected: str) -> None:
    data = tmp_path / "dataset.json"
    data.write_text(content, encoding="utf-8")
    with pytest.raises(CorpusError, match=expected) as error:
        load_corpus(f"chitchat:{data}")
    assert str(data) in str(error.value)


def test_the_bare_spec_reads_the_installed_package() -> None:
    corpus = load_corpus("chitchat")
    assert chitchat_package_file().is_file()
    kept = len(corpus.train) + len(corpus.validation) + len(corpus.test)
    # The package's 7,168 conversations: 3,462 with 3+ turns and two senders (module docstring).
    assert kept == 3462
    assert kept + corpus.num_skipped == 7168
    assert corpus.sources == [f"chitchat ({chitchat_package_file()})"]
