"""``rasa-hred converse``: script files, replays on an HRED directory and through Rasa's Agent
on the demo archive, the Markdown and JSON transcripts, and the README section they fill."""

from __future__ import annotations

import json
import textwrap
from pathlib import Path

import pytest
from support import REPO

from rasa_hred.cli import main
from rasa_hred.errors import UserError
from rasa_hred.serving.converse import (
    HRED,
    SECTION_END,
    SECTION_START,
    BotMessage,
    Script,
    ScriptError,
    Transcript,
    Turn,
    read_scripts,
    render_markdown,
    replace_section,
    replay_on_generator,
)
from rasa_hred.serving.generator import ResponseGenerator

SAMPLES = REPO / "docs" / "sample_scripts.yml"


def write(tmp_path: Path, text: str, name: str = "script.yml") -> Path:
    path = tmp_path / name
    path.write_text(textwrap.dedent(text), encoding="utf-8")
    return path


def converse(capsys, *args: str) -> tuple[int, str, str]:
    """``rasa-hred converse ARGS`` in this process: (exit status, stdout, stderr)."""
    status = main(["converse", *[str(a) for a in args]])
    out, err = capsys.readouterr()
    return status, out, err


# --- script files -------------------------------------------------------------------------


def test_the_demo_scripts_are_ten_conversations_of_four_to_six_messages():
    scripts = read_scripts(SAMPLES)
    assert len(scripts) == 10
    assert all(4 <= len(s.messages) <= 6 for s in scripts), [len(s.messages) for s in scripts]
    assert len({s.name for s in scripts}) == 10


def test_a_script_file_reads_names_messages_and_lines(tmp_path):
    path = write(
        tmp_path,
        """\
        # a comment
        - name: First
          messages:
            - hi
            - "why?"
        - name: Second
          messages: [no, 42, "  padded  "]
        """,
    )
    assert read_scripts(path) == [
        Script("First", ("hi", "why?"), 2),
        # Plain scalars are the text as written: `no` is the word, not YAML's false.
        Script("Second", ("no", "42", "padded"), 6),
    ]


@pytest.mark.parametrize(
    ("text", "where", "what"),
    [
        ("- name: a\n  messages: [hi\n", ":3:", "not valid YAML: while parsing a flow"),
        ("- name: a\n\tmessages: [hi]\n", ":2:", "not valid YAML"),
        ("", "", "no conversations"),
        ("name: a\nmessages: [hi]\n", ":1:", "list of conversations"),
        ("[]\n", ":1:", "list of conversations"),
        ("- just text\n", ":1:", "conversation 1: expected a mapping"),
        ("- name: a\n  messages: [hi]\n- name: b\n  messages: []\n", ":4:", "conversation 2 ('b')"),
        ("- name: a\n  messages: hello\n", ":2:", "'messages' must be a non-empty list"),
        ("- name: a\n  messages:\n    - hi\n    - {text: hi}\n", ":4:", "message 2 is not a text"),
        ("- name: a\n  messages:\n    - hi\n    -\n", ":4:", "message 2 is not a text"),
        ("- name: a\n  messages: [[hi]]\n", ":2:", "message 1 is not a text"),
        ("- name: a\n  mesages: [hi]\n", ":2:", "unknown key 'mesages'"),
        ("- messages: [hi]\n", ":1:", "conversation 1: no 'name'"),
        ("- name: [a]\n  messages: [hi]\n", ":1:", "empty or no name"),
        ("- name: a\n  messages: [hi]\n  name: b\n", ":3:", "name given twice"),
        ("- name: a\n  messages: [hi]\n- name: a\n  messages: [yo]\n", ":3:", "used twice"),
    ],
)
def test_a_bad_script_file_names_the_file_line_and_entry(tmp_path, text, where, what):
    path = write(tmp_path, text)
    with pytest.raises(ScriptError) as error:
        read_scripts(path)
    assert str(error.value).startswith(f"{path}{where}"), error.value
    assert what in str(error.value)


def test_a_missing_or_binary_script_file_is_a_clear_error(tmp_path):
    with pytest.raises(ScriptError, match="cannot read"):
        read_scripts(tmp_path / "nope.yml")
    binary = tmp_path / "binary.yml"
    binary.write_bytes(b"\xff\xfe- name: a\n")
    with pytest.raises(ScriptError, match=r"binary\.yml: cannot read"):
        read_scripts(binary)


def test_the_command_exits_2_on_a_bad_script_before_loading_a_model(tmp_path, capsys):
    path = write(tmp_path, "- name: a\n  messages: []\n")
    status, out, err = converse(capsys, "--script", path, "--model", tmp_path / "no-model")
    assert status == 2 and out == ""
    assert f"{path}:2: conversation 1 ('a'): 'messages' must be a non-empty list" in err


def test_bad_model_paths_and_options_are_clear_errors(tmp_path, capsys):
    script = write(tmp_path, "- name: a\n  messages: [hi]\n")
    empty = tmp_path / "models"
    empty.mkdir()
    status, _, err = converse(capsys, "--script", script, "--model", empty)
    assert status == 2 and f"{empty}: neither an HRED model directory" in err
    status, _, err = converse(capsys, "--script", script, "--model", tmp_path / "gone.tar.gz")
    assert status == 2 and "gone.tar.gz: no such file or directory" in err
    status, _, err = converse(capsys, "--script", script, "--model", empty, "--max-turns", "0")
    assert status == 2 and "--max-turns must be >= 1" in err
    junk = tmp_path / "junk.tar.gz"
    junk.write_text("not an archive")
    status, out, err = converse(capsys, "--script", script, "--model", junk)
    assert status == 2 and out == ""
    assert f"{junk}: cannot load this Rasa model" in err
    status, _, err = converse(capsys, "--script", script, "--model", junk, "--max-turns", "2")
    assert status == 2 and "--max-turns is for HRED model directories" in err


# --- the README section -------------------------------------------------------------------

README = f"""# Bot

intro

## Sample conversations

{SECTION_START}
old transcripts
{SECTION_END}

## Next
tail text
"""


def test_replace_section_changes_only_what_lies_between_the_markers():
    new = replace_section(README, "### 1. New\n\n- **user:** hi\n")
    head, rest = README.split(SECTION_START)
    tail = rest.split(SECTION_END)[1]
    assert new == f"{head}{SECTION_START}\n### 1. New\n\n- **user:** hi\n{SECTION_END}{tail}"
    assert replace_section(new, "### 1. New\n\n- **user:** hi\n") == new  # idempotent


@pytest.mark.parametrize(
    ("text", "what"),
    [
        ("# Bot\nno markers\n", "found 0 and 0"),
        (f"{SECTION_START}\nx\n", "found 1 and 0"),
        (f"{SECTION_START}\n{SECTION_START}\n{SECTION_END}\n", "found 2 and 1"),
        (f"{SECTION_END}\nx\n{SECTION_START}\n", "comes before"),
    ],
)
def test_replace_section_refuses_missing_doubled_or_reversed_markers(text, what):
    with pytest.raises(UserError, match=what) as error:
        replace_section(text, "body", source="README.md")
    assert str(error.value).startswith("README.md: ")


def test_markdown_labels_each_bot_message_and_escapes_what_markdown_would_act_on():
    transcript = Transcript(
        "Stars *and* pipes",
        [
            Turn(None, [BotMessage("welcome", "rule")]),
            Turn("a | b\nc", [BotMessage("*sigh* <b>_x_</b>", HRED)]),
            Turn("help", [BotMessage("pick one", "rule", buttons=["Recommend", "Chat [now]"])]),
        ],
    )
    assert render_markdown([transcript], note="From a test.") == (
        "From a test.\n\n"
        "### 1. Stars \\*and\\* pipes\n\n"
        "- **bot** _(rule)_: welcome\n"
        "- **user:** a \\| b c\n"
        "- **bot** _(HRED)_: \\*sigh\\* \\<b\\>\\_x\\_\\</b\\>\n"
        "- **user:** help\n"
        "- **bot** _(rule)_: pick one (buttons: Recommend · Chat \\[now\\])\n"
    )


# --- replay on an HRED model directory ------------------------------------------------------


@pytest.fixture(scope="module")
def generator(tiny_hred, one_torch_thread):
    loaded = ResponseGenerator.load(tiny_hred, device="cpu")
    yield loaded
    loaded.close()


def test_replay_answers_every_message_from_the_conversation_so_far(generator):
    scripts = read_scripts(SAMPLES)[:3]
    transcripts = replay_on_generator(generator, scripts)
    assert [t.name for t in transcripts] == [s.name for s in scripts]
    for script, transcript in zip(scripts, transcripts):
        assert [turn.user for turn in transcript.turns] == list(script.messages)
        history: list[str] = []
        for turn in transcript.turns:
            assert turn.user is not None
            (reply,) = turn.bot
            assert reply.source == HRED and reply.text.strip()
            history.append(turn.user)
            # The reply is the generator's own to the whole conversation so far.
            assert reply.text == generator.generate([history])[0].text
            history.append(reply.text)
    # ...and that context matters: some reply differs from the reply to its message alone.
    alone = [
        (turn.bot[0].text, generator.generate([[turn.user]])[0].text)
        for transcript in transcripts
        for turn in transcript.turns[1:]
    ]
    assert any(in_context != single for in_context, single in alone)


def test_the_command_on_an_hred_directory_is_deterministic(tiny_hred, tmp_path, capsys):
    script = write(
        tmp_path,
        """\
        - name: Films
          messages:
            - what's your favourite movie?
            - why?
            - what about you?
            - bye
        """,
    )
    status, first, _ = converse(capsys, "--script", script, "--model", tiny_hred, "--json")
    assert status == 0
    status, second, _ = converse(capsys, "--script", script, "--model", tiny_hred, "--json")
    assert first == second
    document = json.loads(first)
    assert document["kind"] == "hred" and document["script"] == str(script)
    (conversation,) = document["conversations"]
    assert [t["user"] for t in conversation["turns"]] == [
        "what's your favourite movie?",
        "why?",
        "what about you?",
        "bye",
    ]
    assert all(t["bot"][0]["source"] == HRED for t in conversation["turns"])

    status, markdown, _ = converse(capsys, "--script", script, "--model", tiny_hred)
    assert status == 0
    assert markdown.startswith(f"_Output of `rasa-hred converse --script {script} --model ")
    assert "### 1. Films\n\n- **user:** what's your favourite movie?\n- **bot** _(HRED)_: " in (
        markdown
    )

    readme = tmp_path / "README.md"
    readme.write_text(README, encoding="utf-8")
    status, out, _ = converse(capsys, "--script", script, "--model", tiny_hred, "--readme", readme)
    assert status == 0 and "wrote 1 conversations" in out
    assert readme.read_text(encoding="utf-8") == replace_section(README, markdown)


def test_the_command_refuses_a_readme_without_markers_before_any_work(tmp_path, capsys):
    script = write(tmp_path, "- name: a\n  messages: [hi]\n")
    readme = tmp_path / "README.md"
    readme.write_text("# no markers\n", encoding="utf-8")
    status, _, err = converse(
        capsys, "--script", script, "--model", tmp_path / "none", "--readme", readme
    )
    assert status == 2 and f"{readme}: needs exactly one {SECTION_START}" in err
    assert readme.read_text(encoding="utf-8") == "# no markers\n"


# --- replay through Rasa's Agent ----------------------------------------------------------


def test_transcript_turns_follow_rasas_events():
    from rasa.shared.core.events import ActionExecuted, BotUttered, SessionStarted, UserUttered

    from rasa_hred.integration.converse import transcript_turns

    events = [
        ActionExecuted("action_session_start"),
        SessionStarted(),
        ActionExecuted("action_listen"),
        UserUttered("hi"),
        ActionExecuted("utter_greet", policy="policy_1_RulePolicy", confidence=1.0),
        BotUttered("Hello!"),
        ActionExecuted("action_listen", policy="policy_1_RulePolicy"),
        UserUttered("why?"),
        ActionExecuted("utter_hred", policy="policy_3_HREDPolicy", confidence=0.9),
        BotUttered("because.", {"buttons": [{"title": "More", "payload": "/more"}]}),
        ActionExecuted("utter_other", policy="policy_0_MemoizationPolicy"),
        BotUttered("and another"),
        ActionExecuted("utter_ted", policy="policy_4_TEDPolicy"),
        BotUttered("from TED"),
    ]
    turns = transcript_turns(events)
    assert [t.user for t in turns] == ["hi", "why?"]
    assert turns[0].bot == [BotMessage("Hello!", "rule", "utter_greet", "policy_1_RulePolicy")]
    assert [(m.text, m.source, m.action) for m in turns[1].bot] == [
        ("because.", HRED, "utter_hred"),
        ("and another", "story", "utter_other"),
        ("from TED", "TEDPolicy", "utter_ted"),
    ]
    assert turns[1].bot[0].buttons == ["More"]


@pytest.mark.slow
def test_replay_through_the_demo_archive_shows_rules_and_the_hred(demo_model, tmp_path, capsys):
    """The demo trained by ``rasa train`` (the session fixture), replayed through Rasa's
    Agent: every message answered, rules and HRED labelled, the HRED's replies its own to the
    tracker's context, and a conversation replayed twice says the same both times."""
    from rasa.shared.core.events import BotUttered, UserUttered

    from rasa_hred.integration.archive import extract_policy_model
    from rasa_hred.integration.context import dialogue_context
    from rasa_hred.integration.loading import load_policy_generator, with_defaults

    scripts = read_scripts(SAMPLES)
    first = scripts[0]
    path = tmp_path / "script.yml"
    path.write_text(
        SAMPLES.read_text(encoding="utf-8")
        + f"\n- name: Again\n  messages: {json.dumps(list(first.messages))}\n",
        encoding="utf-8",
    )
    # The archive's folder: its newest archive, as `rasa run --model DIR` picks it.
    status, out, err = converse(capsys, "--script", path, "--model", demo_model.parent, "--json")
    assert status == 0, err
    conversations = json.loads(out)["conversations"]
    assert [c["name"] for c in conversations] == [*[s.name for s in scripts], "Again"]

    for script, conversation in zip([*scripts, first], conversations):
        assert [t["user"] for t in conversation["turns"]] == list(script.messages)
        assert all(
            t["bot"] and all(m["text"].strip() for m in t["bot"]) for t in conversation["turns"]
        )
    # Same conversation, same transcript: Rasa's random choice of utter_greet's two variations
    # and everything else repeat.
    assert conversations[-1]["turns"] == conversations[0]["turns"]

    said = [(t["user"], m) for c in conversations for t in c["turns"] for m in t["bot"]]
    greetings = [m for user, m in said if user == "hi"]
    assert greetings and all(
        m["source"] == "rule" and m["action"] == "utter_greet" for m in greetings
    )
    generated = [m for _, m in said if m["source"] == HRED]
    assert len(generated) >= 10 and all(m["action"] == "utter_hred" for m in generated)

    # Each HRED reply is the policy's generator's reply to the tracker's context so far.
    extracted = extract_policy_model(demo_model, tmp_path / "hred")
    config = with_defaults(extracted.policy_config)
    generator = load_policy_generator(extracted.directory, config)
    longest = 0
    try:
        for conversation in conversations[:4]:
            events: list = []
            for turn in conversation["turns"]:
                events.append(UserUttered(turn["user"]))
                for message in turn["bot"]:
                    if message["source"] == HRED:
                        context = dialogue_context(events, max_turns=config["max_history"])
                        assert message["text"] == generator.generate([context])[0].text
                        longest = max(longest, len(context))
                    events.append(BotUttered(message["text"]))
    finally:
        generator.close()
    assert longest > 2  # the HRED answered from earlier turns, not the last message alone
