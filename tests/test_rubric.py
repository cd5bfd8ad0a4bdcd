"""Rubric criteria and scoring, checked on hand-made outputs."""

import json

import pytest

from harness.data import Example
from harness.errors import UserError
from harness.rubric import Rubric, load_rubric, normalise, score_sample

REF = {"category": "billing", "product": "PayFlow", "priority": "high"}


def ex(reference=json.dumps(REF), **fields):
    completion = [{"role": "assistant", "content": reference}] if reference is not None else None
    return Example(id="s1", prompt=[{"role": "user", "content": "q"}], completion=completion, fields=fields)


@pytest.fixture
def triage(tmp_path):
    path = tmp_path / "r.yaml"
    path.write_text("""
name: triage
pass_threshold: 1.0
criteria:
  - {name: valid_json, type: valid_json, weight: 1, required: true}
  - {name: keys, type: json_keys, keys: [category, product, priority], weight: 1}
  - {name: category, type: json_field, path: category, weight: 2}
  - {name: product, type: json_field, path: product, weight: 2}
  - {name: priority, type: json_field, path: priority, weight: 2}
""")
    return load_rubric(path)


def test_exact_record_passes(triage):
    s = score_sample(triage, json.dumps(REF), ex())
    assert s.score == 1.0 and s.passed
    assert [c.score for c in s.criteria] == [1, 1, 1, 1, 1]


def test_one_wrong_field_is_weighted(triage):
    out = json.dumps({**REF, "priority": "low"})
    s = score_sample(triage, out, ex())
    assert s.score == pytest.approx(6 / 8)
    assert not s.passed
    assert s.criteria[4].reason == 'priority = "low", expected "high"'


def test_missing_key_scores_part_of_keys(triage):
    s = score_sample(triage, json.dumps({"category": "billing", "product": "PayFlow"}), ex())
    keys = s.criteria[1]
    assert keys.score == pytest.approx(2 / 3) and "missing priority" in keys.reason
    assert s.score == pytest.approx((1 + 2 / 3 + 2 + 2 + 0) / 8)


def test_invalid_json_fails_required(triage):
    s = score_sample(triage, "Sure! Here is the record: category billing", ex())
    assert s.score == 0 and not s.passed
    assert s.criteria[0].reason.startswith("not JSON")


def test_required_criterion_fails_sample_even_above_threshold(tmp_path):
    rubric = Rubric.model_validate({
        "name": "r", "pass_threshold": 0.5,
        "criteria": [{"name": "json", "type": "valid_json", "required": True, "weight": 1},
                     {"name": "has", "type": "contains_any", "values": ["yes"], "weight": 9}]})
    s = score_sample(rubric, "yes", ex(reference="x"))
    assert s.score == pytest.approx(0.9) and not s.passed


def test_fenced_json_only_when_allowed():
    strict = Rubric.model_validate({"name": "r", "pass_threshold": 1, "criteria": [{"name": "j", "type": "valid_json"}]})
    lenient = Rubric.model_validate({"name": "r", "pass_threshold": 1, "criteria": [{"name": "j", "type": "valid_json", "fenced": True}]})
    out = 'Here:\n```json\n{"a": 1}\n```'
    assert not score_sample(strict, out, ex()).passed
    assert score_sample(lenient, out, ex()).passed


def test_contains_any_whole_words_and_normalised():
    rubric = Rubric.model_validate({"name": "r", "pass_threshold": 1,
                                    "criteria": [{"name": "c", "type": "contains_any", "field": "answers"}]})
    sample = ex(reference="0", answers=["0", "zero"])
    assert not score_sample(rubric, "The freezing point is 100.", sample).passed
    assert score_sample(rubric, "It is ZERO degrees.", sample).passed
    assert score_sample(rubric, "Water freezes at 0°C", sample).passed


def test_normalise():
    assert normalise("  Héllo,   WORLD!! ") == "héllo world"
    assert normalise("ﬁle") == "file"  # NFKC folds the ligature


@pytest.mark.parametrize("text, expected", [
    ("name: r\ncriteria: [{name: a, type: exact}]\n", "field 'pass_threshold': required but missing"),
    ("name: r\npass_threshold: 1\ncriteria: [{name: a, type: fuzzy}]\n", "field 'criteria.0'"),
    ("name: r\npass_threshold: 2\ncriteria: [{name: a, type: exact}]\n", "less than or equal to 1"),
    ("name: r\npass_threshold: 1\ncriteria: [{name: a, type: exact}, {name: a, type: exact}]\n", "unique"),
])
def test_broken_rubrics(tmp_path, text, expected):
    path = tmp_path / "bad.yaml"
    path.write_text(text)
    with pytest.raises(UserError) as info:
        load_rubric(path)
    assert "bad.yaml" in str(info.value) and expected in str(info.value)
