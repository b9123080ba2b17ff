"""Prompt templates: packaged and user files, label words, the public cap on record length."""

import pytest

from service.generation.prompts import PACKAGED, Template


@pytest.mark.parametrize("name", PACKAGED)
def test_packaged_templates_load_and_public_row_has_no_records(name):
    t = Template.load(None if name == "default" else name)
    row = t.row_prompt(["SECRET-RECORD-1", "SECRET-RECORD-2"], "spam")
    assert "SECRET-RECORD-1" in row and "SECRET-RECORD-2" in row
    assert "SECRET" not in t.public_prompt("spam")
    assert t.public_prompt(None)


def test_records_are_truncated_each_by_itself():
    t = Template.load(max_record_chars=5)
    row = t.row_prompt(["abcdefgh", "xy"])
    assert "abcde" in row and "abcdef" not in row and "xy" in row


def test_label_words_from_the_template(tmp_path):
    f = tmp_path / "t.toml"
    f.write_text(
        'kind = "notes"\nkind_label = "notes about {label}"\nexample = "- {text}"\n'
        'with_examples = "Examples of {kind}:\\n{examples}\\nOne more."\n'
        'without_examples = "Write one of the {kind}."\n[labels]\ncardio = "cardiology notes"\n'
    )
    t = Template.load(f)
    assert t.public_prompt("cardio") == "Write one of the cardiology notes."
    assert t.public_prompt("renal") == "Write one of the notes about renal."
    assert t.row_prompt(["a"], None) == "Examples of notes:\n- a\nOne more."


@pytest.mark.parametrize(
    "content,message",
    [
        ('kind = "x"', "must define kind_label, example, with_examples, without_examples"),
        ("kind = ", "not valid TOML"),
        ('kind="x"\nkind_label="{label}"\nexample="{text}"\nwith_examples="{nope}"\nwithout_examples="w"', "nope"),
        ('kind="x"\nkind_label="{label}"\nexample="{text}"\nwith_examples="{examples}"\nwithout_examples="w"\n[labels]\na=1', r"\[labels\] must map"),
    ],
)
def test_bad_templates_fail_at_load(tmp_path, content, message):
    f = tmp_path / "bad.toml"
    f.write_text(content)
    with pytest.raises((ValueError, KeyError), match=message):
        Template.load(f)
