"""Data loading: TRL's formats, stable ids, and a line number for every bad line."""

import json

import pytest

from harness.data import load_jsonl
from harness.errors import UserError


def write_lines(tmp_path, lines, name="d.jsonl"):
    path = tmp_path / name
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return path


def test_formats_normalise_to_chat_messages(tmp_path):
    path = write_lines(tmp_path, [
        json.dumps({"prompt": "Q1", "completion": "A1", "tag": "x"}),
        json.dumps({"messages": [{"role": "system", "content": "S"}, {"role": "user", "content": "Q2"},
                                 {"role": "assistant", "content": "A2"}]}),
        json.dumps({"prompt": [{"role": "user", "content": "Q3"}], "completion": [{"role": "assistant", "content": "A3"}]}),
    ])
    ds = load_jsonl(path, "sft")
    assert [e.prompt for e in ds.examples] == [
        [{"role": "user", "content": "Q1"}],
        [{"role": "system", "content": "S"}, {"role": "user", "content": "Q2"}],
        [{"role": "user", "content": "Q3"}],
    ]
    assert [e.reference for e in ds.examples] == ["A1", "A2", "A3"]
    assert ds.examples[0].fields == {"tag": "x"}


def test_ids_are_content_hashes(tmp_path):
    a = load_jsonl(write_lines(tmp_path, ['{"prompt": "Q", "completion": "A"}'], "a.jsonl"), "sft")
    b = load_jsonl(write_lines(tmp_path, ['{"completion": "A",   "prompt": "Q"}'], "b.jsonl"), "sft")
    c = load_jsonl(write_lines(tmp_path, ['{"prompt": "Q", "completion": "B"}'], "c.jsonl"), "sft")
    assert a.examples[0].id == b.examples[0].id  # key order and spacing do not matter
    assert a.examples[0].id != c.examples[0].id


def test_preference_rows(tmp_path):
    ds = load_jsonl(write_lines(tmp_path, ['{"prompt": "Q", "chosen": "good", "rejected": "bad"}']), "preference")
    ex = ds.examples[0]
    assert ex.chosen == [{"role": "assistant", "content": "good"}]
    assert ex.rejected == [{"role": "assistant", "content": "bad"}]


@pytest.mark.parametrize("lines, kind, expected", [
    (['{"prompt": "Q", "completion": "A"}', '{"prompt": "Q", "completion": '], "sft", ":2: expected one JSON object per line"),
    (['[1, 2]'], "sft", ":1: expected a JSON object, got list"),
    (['{"prompt": "Q"}'], "sft", ":1: field 'completion': required for training data"),
    (['{"completion": "A"}'], "eval", ":1: field 'prompt': required"),
    (['{"prompt": "Q", "completion": "A"}'], "preference", ":1: field 'chosen': required for preference data"),
    (['{"prompt": 3, "completion": "A"}'], "sft", ":1: field 'prompt': expected a string or a non-empty list of chat messages"),
    (['{"messages": [{"role": "robot", "content": "x"}]}'], "sft", "field 'messages[0]': expected a message"),
    (['{"messages": [{"role": "user", "content": "x"}]}'], "sft", "the last message must be the assistant's answer"),
    ([""], "sft", "the file is empty"),
])
def test_bad_rows(tmp_path, lines, kind, expected):
    path = write_lines(tmp_path, lines)
    with pytest.raises(UserError) as info:
        load_jsonl(path, kind)
    assert str(path) in str(info.value) and expected in str(info.value)


def test_non_utf8_names_the_line(tmp_path):
    path = tmp_path / "bad.jsonl"
    path.write_bytes(b'{"prompt": "ok", "completion": "A"}\n{"prompt": "\xff\xfe", "completion": "A"}\n')
    with pytest.raises(UserError, match=r"bad.jsonl:2: expected UTF-8"):
        load_jsonl(path, "sft")


def test_missing_file(tmp_path):
    with pytest.raises(UserError, match="data file not found"):
        load_jsonl(tmp_path / "none.jsonl", "sft")


def test_validation_split_is_stable_and_depends_only_on_each_id():
    from harness.data import Example, split_by_hash

    examples = [Example(id=f"ex-{i}", prompt=[{"role": "user", "content": str(i)}]) for i in range(2000)]
    train, held = split_by_hash(examples, 0.1)
    assert len(train) + len(held) == 2000 and not {e.id for e in train} & {e.id for e in held}
    assert 160 <= len(held) <= 240  # binomial(2000, 0.1): mean 200, sd 13.4
    # Adding examples never moves an old one to the other side.
    more = examples + [Example(id=f"new-{i}", prompt=[{"role": "user", "content": "x"}]) for i in range(500)]
    assert {e.id for e in held} <= {e.id for e in split_by_hash(more, 0.1)[1]}
    assert split_by_hash(examples, 0.0) == (examples, [])


def test_replay_makes_up_the_requested_fraction_of_the_mix():
    from harness.data import Example, mix_replay

    task = [Example(id=f"t{i}", prompt=[{"role": "user", "content": "t"}]) for i in range(300)]
    replay = [Example(id=f"r{i}", prompt=[{"role": "user", "content": "r"}]) for i in range(40)]
    mixed = mix_replay(task, replay, 0.25, seed=0)
    n_replay = sum(e.id.startswith("r") for e in mixed)
    assert n_replay == 100 and len(mixed) == 400  # 100 / 400 = 25%, cycling through 40 replay examples
    assert {e.id for e in mixed if e.id.startswith("t")} == {e.id for e in task}
    assert mixed == mix_replay(task, replay, 0.25, seed=0) and mixed != mix_replay(task, replay, 0.25, seed=1)
    assert mix_replay(task, replay, 0.0, seed=0) == task
