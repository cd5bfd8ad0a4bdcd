"""Rubric criteria and scoring, checked on hand-made outputs."""

import json

import pytest

from harness.data import Example
from harness.errors import UserError
from harness.rubric import Rubric, load_rubric, score_sample, score_samples, suite_metrics

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


def test_required_graded_criterion_fails_below_its_min_score():
    rubric = Rubric.model_validate({
        "name": "r", "pass_threshold": 0.1,
        "criteria": [{"name": "overlap", "type": "rouge_l", "required": True, "min_score": 0.5},
                     {"name": "short", "type": "length", "max": 100, "weight": 3}]})
    sample = ex(reference="the cat sat on the mat")
    low = score_sample(rubric, "a dog", sample)  # ROUGE-L 0: below min_score
    high = score_sample(rubric, "the cat sat on a mat", sample)  # 5 of 6 tokens: 0.83
    assert low.score == pytest.approx(3 / 4) and not low.passed
    assert high.passed


def test_threshold_is_on_the_weighted_score():
    rubric = Rubric.model_validate({
        "name": "r", "pass_threshold": 0.75,
        "criteria": [{"name": "a", "type": "contains_any", "values": ["alpha"], "weight": 3},
                     {"name": "b", "type": "contains_any", "values": ["beta"], "weight": 1}]})
    assert score_sample(rubric, "alpha", ex()).passed  # 3/4 = 0.75
    assert not score_sample(rubric, "beta", ex()).passed  # 1/4


def test_metrics_per_slice():
    rubric = Rubric.model_validate({"name": "r", "pass_threshold": 1,
                                    "criteria": [{"name": "c", "type": "contains_any", "values": ["yes"]}]})
    samples = [ex(level=lvl, tags=tags) for lvl, tags in
               [("easy", ["a"]), ("easy", ["a", "b"]), ("hard", ["b"]), ("hard", []), ("easy", ["a"])]]
    samples = [Example(id=f"s{i}", prompt=s.prompt, completion=s.completion, fields=s.fields) for i, s in enumerate(samples)]
    outs = ["yes", "yes", "no", "yes", "no"]
    rows = suite_metrics(score_samples(rubric, outs, samples), samples, ["level", "tags", "missing"])
    pass_rate = {r["slice"]: (r["value"], r["n"]) for r in rows if r["metric"] == "pass_rate"}
    assert pass_rate["all"] == (pytest.approx(3 / 5), 5)
    assert pass_rate["level=easy"] == (pytest.approx(2 / 3), 3)
    assert pass_rate["level=hard"] == (pytest.approx(1 / 2), 2)
    assert pass_rate["tags=a"] == (pytest.approx(2 / 3), 3)  # a list field: one slice per item
    assert pass_rate["tags=b"] == (pytest.approx(1 / 2), 2)
    assert pass_rate["missing=(missing)"] == (pytest.approx(3 / 5), 5)
    # Every slice row carries its own interval (Wilson for pass rates), never the whole set's.
    easy = next(r for r in rows if r["metric"] == "pass_rate" and r["slice"] == "level=easy")
    assert 0 < easy["ci_low"] < 2 / 3 < easy["ci_high"] < 1


def test_fenced_json_only_when_allowed():
    strict = Rubric.model_validate({"name": "r", "pass_threshold": 1, "criteria": [{"name": "j", "type": "valid_json"}]})
    lenient = Rubric.model_validate({"name": "r", "pass_threshold": 1, "criteria": [{"name": "j", "type": "valid_json", "fenced": True}]})
    out = 'Here:\n```json\n{"a": 1}\n```'
    assert not score_sample(strict, out, ex()).passed
    assert score_sample(lenient, out, ex()).passed


HEAD = "name: r\npass_threshold: 1\ncriteria:\n"


@pytest.mark.parametrize("text, expected", [
    ("name: r\ncriteria: [{name: a, type: exact}]\n", "field 'pass_threshold': required but missing"),
    ("name: r\npass_threshold: 2\ncriteria: [{name: a, type: exact}]\n", "field 'pass_threshold': input should be less than or equal to 1"),
    ("name: r\npass_threshold: 1\ncriteria: []\n", "field 'criteria': expected a non-empty list"),
    ("name: r\npass_threshold: 1\n", "field 'criteria': expected a non-empty list"),
    (HEAD + "  - {name: a, type: exact}\n  - {name: a, type: exact}\n", "criterion 'a': criterion names must be unique"),
    (HEAD + "  - {name: a, type: fuzzy}\n", "criterion 'a' (criteria.0): unknown type 'fuzzy'; expected one of exact, "),
    (HEAD + "  - {name: a, type: regx, pattern: x}\n", "did you mean 'regex'?"),
    (HEAD + "  - {name: a}\n", "criterion 'a' (criteria.0): no 'type'"),
    (HEAD + "  - just a string\n", "field 'criteria.0': expected a mapping with 'name' and 'type'"),
    (HEAD + "  - {type: exact}\n", "criterion 1 (criteria.0): field 'name': required but missing"),
    (HEAD + "  - {name: a, type: regex}\n", "criterion 'a' (criteria.0): field 'pattern': required but missing"),
    (HEAD + "  - {name: a, type: regex, pattern: '(unclosed'}\n",
     "criterion 'a' (criteria.0): field 'pattern': expected a valid regular expression (missing ), unterminated subpattern"),
    (HEAD + "  - {name: a, type: exact, weight: 0}\n", "field 'weight': input should be greater than 0"),
    (HEAD + "  - {name: a, type: exact, weight: -1}\n", "field 'weight': input should be greater than 0"),
    (HEAD + "  - {name: a, type: exact, wieght: 2}\n", "field 'wieght': unknown key; did you mean 'weight'?"),
    (HEAD + "  - {name: a, type: json_schema, schema: {type: objekt}}\n",
     "criterion 'a' (criteria.0): field 'schema': not a valid JSON Schema at type: 'objekt' is not valid"),
    (HEAD + "  - {name: a, type: json_schema}\n", "set exactly one of 'schema' (inline) or 'schema_file'"),
    (HEAD + "  - {name: a, type: json_schema, schema_file: ../../etc/passwd}\n", "is outside the project root"),
    (HEAD + "  - {name: a, type: json_schema, schema_file: nope.json}\n", "field 'schema_file': file 'nope.json' not found"),
    (HEAD + "  - {name: a, type: rouge_l, required: true}\n", "a required 'rouge_l' criterion needs 'min_score'"),
    (HEAD + "  - {name: a, type: length}\n", "set 'min', 'max' or both"),
    (HEAD + "  - {name: a, type: length, min: 5, max: 2}\n", "'min' (5) is greater than 'max' (2)"),
    (HEAD + "  - {name: a, type: numeric, abs_tol: -1}\n", "field 'abs_tol': input should be greater than or equal to 0"),
    (HEAD + "  - {name: a, type: custom, function: no_such_module_xyz:f}\n",
     "field 'function': cannot import 'no_such_module_xyz:f' (No module named 'no_such_module_xyz')"),
    (HEAD + "  - {name: a, type: custom, function: 'not a spec'}\n", "field 'function': string should match pattern"),
    (HEAD + "  - {name: a, type: llm_judge}\n", "field 'instructions': required but missing"),
    (HEAD + "  - {name: a, type: llm_judge, instructions: x, scale: {min: 5, max: 1}}\n", "scale 'min' (5) must be below 'max' (1)"),
    (HEAD + "  - {name: a, type: embedding, model: /nonexistent/dir}\n", "field 'model': expected builtin:all-minilm-l6-v2 or a local"),
    ("criteria: [", "invalid YAML"),
    ("- a\n- b\n", "expected a mapping of rubric fields"),
])
def test_broken_rubrics(tmp_path, text, expected):
    (tmp_path / "pyproject.toml").write_text("")
    path = tmp_path / "bad.yaml"
    path.write_text(text)
    with pytest.raises(UserError) as info:
        load_rubric(path)
    message = str(info.value)
    assert message.startswith(f"{path}: ") and "\n" not in message
    assert expected in message


def test_schema_from_a_file(tmp_path):
    (tmp_path / "pyproject.toml").write_text("")
    (tmp_path / "person.schema.json").write_text(json.dumps({"type": "object", "required": ["name"]}))
    path = tmp_path / "r.yaml"
    path.write_text(HEAD + "  - {name: s, type: json_schema, schema_file: person.schema.json}\n")
    rubric = load_rubric(path)
    assert score_sample(rubric, '{"name": "x"}', ex()).passed
    assert not score_sample(rubric, '{"nom": "x"}', ex()).passed


def test_every_one_line_example_in_the_readme_is_a_valid_criterion(tmp_path, monkeypatch):
    """The README's criteria table stays true: each example loads as a rubric of its own."""
    import re
    import shutil

    from conftest import ROOT

    (tmp_path / "pyproject.toml").write_text("")
    shutil.copytree(ROOT / "rubrics", tmp_path / "rubrics")
    (tmp_path / "my_checks.py").write_text("def polite(output, sample):\n    return 1.0\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    readme = (ROOT / "README.md").read_text()
    examples = re.findall(r"^\| `(\w+)` \| `(\{.*?\})` \|", readme, re.MULTILINE)
    assert len(examples) == 17
    for kind, example in examples:
        path = tmp_path / f"{kind}.yaml"
        path.write_text(f"name: r\npass_threshold: 1\ncriteria:\n  - {example}\n")
        (criterion,) = load_rubric(path).criteria
        assert criterion.type == kind
