"""The public corpus formats users bring: Cornell Movie-Dialogs, DailyDialog, PersonaChat
(ParlAI text) and JSON Lines, each read through its spec prefix and, where the format is
unambiguous, from a bare path; malformed records name the file and the line."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest

from rasa_hred.cli import main
from rasa_hred.corpora import FORMATS, Corpus, CorpusError, load_corpus


def _all(corpus: Corpus) -> list[list[str]]:
    """Every dialogue of every split, in a fixed order (the split shuffles)."""
    return sorted(corpus.train + corpus.validation + corpus.test)


def _loads(spec: str | Path) -> list[list[str]]:
    return _all(load_corpus(str(spec)))


def _error(spec: str | Path, *parts: str) -> None:
    """Loading ``spec`` fails with a message holding every part, in order."""
    with pytest.raises(CorpusError) as caught:
        load_corpus(str(spec))
    assert re.search(".*".join(re.escape(part) for part in parts), str(caught.value)), str(
        caught.value
    )


def test_the_formats_are_spec_prefixes():
    assert {"cornell", "dailydialog", "personachat", "jsonl"} <= set(FORMATS)


# --- Cornell Movie-Dialogs ----------------------------------------------------------------

SEP = " +++$+++ "


def _cornell(directory: Path, lines: list[str], conversations: list[str]) -> Path:
    directory.mkdir()
    (directory / "movie_lines.txt").write_bytes("".join(lines).encode("iso-8859-1"))
    (directory / "movie_conversations.txt").write_bytes("".join(conversations).encode("iso-8859-1"))
    return directory


LINES = [  # newest first, as in the corpus
    f"L6{SEP}u1{SEP}m0{SEP}KAT{SEP}Caf\u00e9 au lait?\n",
    f"L5{SEP}u0{SEP}m0{SEP}BIANCA +++$+++\n",  # empty text, the separator's space gone
    f"L4{SEP}u0{SEP}m0{SEP}BIANCA{SEP}Fine.\n",
    f"L3{SEP}u1{SEP}m0{SEP}KAT{SEP}Go on.\n",
    f"L2{SEP}u0{SEP}m0{SEP}BIANCA{SEP}And you?\n",
    f"L1{SEP}u0{SEP}m0{SEP}BIANCA{SEP}They do not!\n",
]
CONVERSATIONS = [
    f"u0{SEP}u1{SEP}m0{SEP}['L1', 'L2', 'L3']\n",
    f"u0{SEP}u1{SEP}m0{SEP}['L4', 'L5', 'L6']\n",
    f"u0{SEP}u1{SEP}m0{SEP}['L4']\n",  # one line: skipped
]


@pytest.fixture
def cornell(tmp_path) -> Path:
    return _cornell(tmp_path / "cornell movie-dialogs corpus", LINES, CONVERSATIONS)


def test_cornell_by_prefix_and_detected(cornell):
    expected = sorted(
        [
            ["they do not ! and you ?", "go on ."],  # BIANCA's two lines are one turn
            ["fine .", "café au lait ?"],  # ISO-8859-1 decoded; the empty line is no turn
        ]
    )
    assert _loads(f"cornell:{cornell}") == expected
    corpus = load_corpus(str(cornell))  # bare directory
    assert _all(corpus) == expected
    assert corpus.sources == [f"cornell:{cornell}"]
    assert corpus.num_skipped == 1


def test_cornell_windows_1252_punctuation(tmp_path):
    directory = tmp_path / "c"
    directory.mkdir()
    (directory / "movie_lines.txt").write_bytes(
        b"L2 +++$+++ u1 +++$+++ m0 +++$+++ KAT +++$+++ Yes\x97head\xadquarters.\n"
        b"L1 +++$+++ u0 +++$+++ m0 +++$+++ BIANCA +++$+++ I don\x92t \x93know\x94.\n"
    )
    (directory / "movie_conversations.txt").write_bytes(
        b"u0 +++$+++ u1 +++$+++ m0 +++$+++ ['L1', 'L2']\n"
    )
    assert _loads(directory) == [['i don \' t " know " .', "yes — headquarters ."]]


def test_cornell_unknown_line_id_names_file_and_line(tmp_path):
    directory = _cornell(
        tmp_path / "c", LINES, [CONVERSATIONS[0], f"u0{SEP}u1{SEP}m0{SEP}['L4', 'L99']\n"]
    )
    _error(directory, "movie_conversations.txt: line 2: unknown line id 'L99'")


@pytest.mark.parametrize(
    "id_list",
    [
        "__import__('os').system('true')",  # never evaluated
        "['L1', L2]",
        "['L1' 'L2']",
        '["L1", "L2"]',
        "['L1', 'L2'",
    ],
)
def test_cornell_id_list_is_matched_strictly(tmp_path, id_list):
    directory = _cornell(
        tmp_path / "c", LINES, [CONVERSATIONS[0], f"u0{SEP}u1{SEP}m0{SEP}{id_list}\n"]
    )
    _error(directory, "movie_conversations.txt: line 2: expected a list of line ids")


def test_cornell_malformed_lines(tmp_path):
    short = _cornell(tmp_path / "short", [LINES[0], "\n", f"L7{SEP}u0{SEP}text\n"], [])
    _error(short, "movie_lines.txt: line 3: expected 5 fields", "got 3")
    twice = _cornell(tmp_path / "twice", [LINES[0], LINES[0]], [])
    _error(twice, "movie_lines.txt: line 2: line id 'L6' appears twice")
    _error(f"cornell:{short / 'movie_lines.txt'}", "expected the Cornell Movie-Dialogs directory")


# --- DailyDialog --------------------------------------------------------------------------

DAILY = (
    "Say , Jim , how about going for a few beers ? __eou__ You know that is tempting . __eou__ "
    "Do you really think so ? __eou__\n"
    "\n"
    "Can you do push-ups ? __eou__ Of course I can . __eou__\n"
    "Hello ! __eou__\n"  # one utterance: skipped
)
DAILY_EXPECTED = sorted(
    [
        [
            "say , jim , how about going for a few beers ?",
            "you know that is tempting .",
            "do you really think so ?",
        ],
        ["can you do push - ups ?", "of course i can ."],
    ]
)


def test_dailydialog_by_prefix_and_detected(tmp_path):
    directory = tmp_path / "ijcnlp_dailydialog"
    directory.mkdir()
    path = directory / "dialogues_text.txt"
    path.write_text(DAILY, encoding="utf-8")
    assert _loads(f"dailydialog:{path}") == DAILY_EXPECTED
    assert _loads(path) == DAILY_EXPECTED  # by its name
    assert _loads(directory) == DAILY_EXPECTED  # a directory holding it
    split = tmp_path / "dialogues_train.txt"  # by its first line
    split.write_text("\n" + DAILY, encoding="utf-8")
    corpus = load_corpus(str(split))
    assert _all(corpus) == DAILY_EXPECTED
    assert corpus.sources == [f"dailydialog:{split}"]


def test_text_files_are_not_taken_for_dailydialog(tmp_path):
    path = tmp_path / "dialogues.txt"
    path.write_text("my__eou__name is x\tnice to meet you\n", encoding="utf-8")
    corpus = load_corpus(str(path))
    assert corpus.sources == [f"text:{path}"]
    assert _all(corpus) == [["my _ _ eou _ _ name is x", "nice to meet you"]]


def test_dailydialog_malformed_lines(tmp_path):
    path = tmp_path / "dialogues_text.txt"
    path.write_text("Hi . __eou__ Hello . __eou__\nHi . __eou__ Hello .\n", encoding="utf-8")
    _error(path, "dialogues_text.txt: line 2: a DailyDialog line ends with __eou__")
    path.write_bytes(b"Hi . __eou__ Hello . __eou__\n\nOl\xe1 . __eou__ Hi . __eou__\n")
    _error(f"dailydialog:{path}", "dialogues_text.txt: line 3: not valid UTF-8")


# --- PersonaChat / ConvAI2 ----------------------------------------------------------------

PERSONA = (
    "1 your persona: i like to remodel homes.\n"
    "2 your persona: i like to go hunting.\n"
    "3 partner's persona: i have a dog.\n"
    "4 hi , how are you doing ?\ti am fine , thanks .\t\tno.|yes.|maybe.\n"
    "5 do you hunt ?\tyes , deer mostly .\n"
    "1 your persona: i am a pilot.\n"
    "2 __SILENCE__\thello there !\n"
    "3 hi !\thow are you ?\n"
    "1 your persona: i am alone.\n"  # persona only: no turn at all
)
PERSONA_EXPECTED = sorted(
    [
        [
            "hi , how are you doing ?",
            "i am fine , thanks .",
            "do you hunt ?",
            "yes , deer mostly .",
        ],
        ["hello there !", "hi !", "how are you ?"],
    ]
)


def test_personachat_numbered_by_prefix_and_detected(tmp_path):
    path = tmp_path / "train_both_original.txt"
    path.write_text(PERSONA, encoding="utf-8")
    assert _loads(f"personachat:{path}") == PERSONA_EXPECTED
    corpus = load_corpus(str(path))
    assert _all(corpus) == PERSONA_EXPECTED
    assert corpus.sources == [f"personachat:{path}"]
    assert corpus.num_skipped == 1
    # persona lines are not turns; candidates are not turns
    words = {word for dialogue in _all(corpus) for turn in dialogue for word in turn.split()}
    assert not words & {"persona", "remodel", "pilot", "dog", "maybe", "silence"}


def test_personachat_without_persona_needs_the_prefix(tmp_path):
    path = tmp_path / "valid_none_original.txt"
    path.write_text("1 hi !\thello .\n2 how are you ?\tgood .\n", encoding="utf-8")
    assert _loads(f"personachat:{path}") == [["hi !", "hello .", "how are you ?", "good ."]]
    assert load_corpus(str(path)).sources == [f"text:{path}"]  # a plain .txt otherwise


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("1 hi\tho\n3 hey\tyou\n", "line 2: line number 3 does not follow 1"),
        ("2 hi\tho\n", "line 1: line number 2 does not follow 0"),
        ("1 hi\tho\nhey\tyou\n", "line 2: expected 'N text'"),
        ("1 hi\tho\n2\n", "line 2: expected 'N text'"),
    ],
)
def test_personachat_malformed_numbered_lines(tmp_path, text, message):
    path = tmp_path / "p.txt"
    path.write_text(text, encoding="utf-8")
    _error(f"personachat:{path}", f"p.txt: {message}")


def test_personachat_key_value_form(tmp_path):
    path = tmp_path / "parlai.txt"
    path.write_text(
        "text:your persona: i like cats.\\nyour persona: i am tall.\\nhi , who are you ?"
        "\tlabels:i am bob .|i am al .\treward:0\n"
        "text:nice __PIPE__ cool\tlabels:thanks .\tepisode_done:True\n"
        "text:__SILENCE__\tlabels:anyone here ?\n"
        "text:yes\tlabels:good\\tgreat\tepisode_done:True\n",
        encoding="utf-8",
    )
    expected = sorted(
        [
            ["hi , who are you ?", "i am bob .", "nice | cool", "thanks ."],
            ["anyone here ?", "yes", "good great"],
        ]
    )
    assert _loads(f"personachat:{path}") == expected
    assert _loads(path) == expected  # detected: text: ... labels:


def test_personachat_malformed_key_value_lines(tmp_path):
    path = tmp_path / "parlai.txt"
    path.write_text("text:hi\tlabels:ho\nhello there\n", encoding="utf-8")
    _error(f"personachat:{path}", "parlai.txt: line 2: expected tab-separated key:value")
    path.write_text("text:hi\tlabels:ho\nlabels:ho\n", encoding="utf-8")
    _error(f"personachat:{path}", "parlai.txt: line 2: no 'text:' field")


# --- JSON Lines ---------------------------------------------------------------------------


def test_jsonl_by_prefix_and_detected(tmp_path):
    path = tmp_path / "dialogues.jsonl"
    rows = [
        ["Hi there!", "Hello.", "How are you?"],
        [
            {"speaker": "user", "text": "Hi."},
            {"speaker": "user", "text": "Anyone?"},
            {"speaker": "bot", "text": "Yes!", "time": 3},
            {"speaker": "user", "text": "   "},  # no turn
            {"speaker": "bot", "text": "I'm here."},
        ],
        [{"speaker": 1, "text": "One"}, {"speaker": 2, "text": "Two"}],
        ["alone"],  # skipped
    ]
    path.write_text(
        "\n".join(json.dumps(row) for row in rows[:2])
        + "\n\n"
        + "\n".join(json.dumps(row) for row in rows[2:]),
        encoding="utf-8",
    )
    expected = sorted(
        [
            ["hi there !", "hello .", "how are you ?"],
            ["hi . anyone ?", "yes ! i ' m here ."],
            ["one", "two"],
        ]
    )
    assert _loads(f"jsonl:{path}") == expected
    corpus = load_corpus(str(path))
    assert _all(corpus) == expected
    assert corpus.num_skipped == 1


@pytest.mark.parametrize(
    ("line", "message"),
    [
        ('["a", "b"', "invalid JSON"),
        ('{"speaker": "a", "text": "b"}', "expected a JSON list of turns"),
        ('["a", {"speaker": "x", "text": "b"}]', "expected a list of strings or"),
        ('[{"speaker": "x"}]', "expected a list of strings or"),
        ('[{"speaker": true, "text": "b"}]', "turn 0 is"),
        ('[{"speaker": "x", "text": "a"}, 3]', "turn 1 is 3"),
        ("[" * 100_000 + "]" * 100_000, "JSON nested too deeply"),
        ("[" + "1" * 5000 + "]", "invalid JSON"),
    ],
)
def test_jsonl_malformed_lines(tmp_path, line, message):
    path = tmp_path / "d.jsonl"
    path.write_text('["a", "b"]\n' + line + "\n", encoding="utf-8")
    _error(path, "d.jsonl: line 2: ", message)


def test_jsonl_invalid_utf8_names_the_line(tmp_path):
    path = tmp_path / "d.jsonl"
    path.write_bytes(b'["a", "b"]\n["\xff", "b"]\n')
    _error(f"jsonl:{path}", "d.jsonl: line 2: not valid UTF-8")


# --- the CLI ------------------------------------------------------------------------------


def test_corpus_stats_cli(tmp_path, capsys):
    path = tmp_path / "persona.txt"
    path.write_text(PERSONA, encoding="utf-8")
    assert main(["corpus", "stats", "--json", f"personachat:{path}"]) == 0
    stats = json.loads(capsys.readouterr().out)
    assert sum(split["dialogues"] for split in stats["splits"].values()) == 2
    assert sum(split["utterances"] for split in stats["splits"].values()) == 7
    assert stats["skipped_total"] == 1

    bad = tmp_path / "bad.jsonl"
    bad.write_text('["a", "b"]\n{oops\n', encoding="utf-8")
    assert main(["corpus", "stats", str(bad)]) == 2
    assert f"{bad}: line 2: invalid JSON" in capsys.readouterr().err
