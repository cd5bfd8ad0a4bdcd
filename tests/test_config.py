"""The experiment file: expansion of defaults into variants, and one clear line for every mistake."""

import textwrap
from pathlib import Path

import pytest

from harness.config import Method, load_config
from harness.errors import UserError

ROOT = Path(__file__).resolve().parent.parent

MINIMAL = """
name: t
model: builtin:tiny-random
data:
  train: experiments/data/tickets_train.jsonl
  preference: experiments/data/tickets_preference.jsonl
eval:
  - name: tickets
    data: experiments/data/tickets_test.jsonl
    rubric: rubrics/ticket_triage.yaml
defaults:
  train: {max_steps: 7, batch_size: 3}
variants:
  base: {method: none}
  lora:
    method: lora
    train: {max_steps: 11}
  dpo: {method: dpo, init_from: lora}
"""


def write(project: Path, text: str) -> Path:
    path = project / "experiments" / "exp.yaml"
    path.write_text(textwrap.dedent(text))
    return path


def error_of(project: Path, text: str) -> str:
    with pytest.raises(UserError) as info:
        load_config(write(project, text))
    message = str(info.value)
    assert "\n" not in message, "a user error is one line"
    return message


def test_repo_experiments_load():
    demo = load_config(ROOT / "experiments" / "demo.yaml")
    assert [v.method for v in demo.variants] == [
        Method.none, Method.prompt, Method.sft, Method.lora, Method.qlora, Method.dpo, Method.sft, Method.lora]
    assert [e.type for e in demo.experiment.eval] == ["rubric", "rubric", "rubric", "perplexity"]
    assert [c.suite for c in demo.experiment.gate.checks] == ["tickets", "tickets", "general"]  # the inline gate policy
    smoke = load_config(ROOT / "experiments" / "smoke.yaml")
    assert {v.method for v in smoke.variants} == set(Method)  # every method, on the tiny model


def test_defaults_are_merged_under_overrides(project):
    cfg = load_config(write(project, MINIMAL))
    by_name = {v.name: v for v in cfg.variants}
    assert by_name["lora"].train.max_steps == 11  # override wins
    assert by_name["lora"].train.batch_size == 3  # default fills in
    assert by_name["dpo"].train.max_steps == 7
    assert by_name["dpo"].lora.r == 16  # built-in default


def test_parents_run_before_children(project):
    text = MINIMAL.replace("  base: {method: none}\n", "  dpo2: {method: dpo, init_from: dpo}\n  base: {method: none}\n")
    names = [v.name for v in load_config(write(project, text)).variants]
    assert names.index("lora") < names.index("dpo") < names.index("dpo2")


@pytest.mark.parametrize("text, expected", [
    (MINIMAL.replace("model: builtin", "modle: x\nmodel: builtin"), "field 'modle': unknown key; did you mean 'model'?"),
    (MINIMAL.replace("max_steps: 11", "max_stpes: 11"), "field 'variants.lora.train.max_stpes': unknown key; did you mean 'max_steps'?"),
    (MINIMAL.replace("max_steps: 11", "max_steps: lots"), "field 'variants.lora.train.max_steps': input should be a valid integer"),
    (MINIMAL.replace("max_steps: 11", "max_steps: 0"), "field 'variants.lora.train.max_steps': input should be greater than 0"),
    (MINIMAL.replace("method: lora", "method: lorra"), "field 'variants.lora.method': input should be 'none', 'prompt', 'sft', 'lora', 'qlora' or 'dpo'"),
    (MINIMAL.replace("model: builtin:tiny-random\n", ""), "field 'model': required but missing"),
    (MINIMAL.replace("init_from: lora", "init_from: lroa"), "field 'variants.dpo.init_from': expected the name of another variant, got 'lroa'; did you mean 'lora'?"),
    (MINIMAL.replace("  preference: experiments/data/tickets_preference.jsonl\n", ""), "field 'variants.dpo.data': method 'dpo' needs training data"),
    (MINIMAL.replace("experiments/data/tickets_test.jsonl", "../../etc/passwd"), "field 'eval.0.data': path '../../etc/passwd' is outside the project root"),
    (MINIMAL.replace("  base: {method: none}", "  base: {method: none, init_from: lora}"), "method 'none' does not train"),
    (MINIMAL.replace("  base: {method: none}", "  base: {method: sft, prompt: {few_shot: 2}}"), "only method 'prompt' takes"),
    (MINIMAL + "  q: {method: qlora, init_from: lora}\n", "cannot be chained"),
    (MINIMAL + "baseline: lroa\n", "field 'baseline': 'lroa' is not a variant; expected one of: base, lora, dpo"),
    (MINIMAL + "gate:\n  checks:\n    - {suite: tickets, metrc: score, floor: 0.5}\n",
     "field 'gate.checks.0.metrc': unknown key; did you mean 'metric'?"),
    (MINIMAL + "gate:\n  checks:\n    - {suite: tickts, floor: 0.5}\n",
     "field 'gate.checks.0.suite': 'tickts' is not an eval set; expected one of: tickets"),
    (MINIMAL + "gate:\n  checks:\n    - {suite: tickets, floor: 1.5}\n", "field 'gate.checks.0.floor': input should be less than or equal to 1"),
    ("name: t\nmodel: [unclosed\n", "invalid YAML"),
    ("- just\n- a list\n", "expected a mapping of experiment fields"),
])
def test_mistakes_name_file_field_and_expectation(project, text, expected):
    message = error_of(project, text)
    assert "exp.yaml" in message
    assert expected in message


def test_cycle_is_reported(project):
    text = MINIMAL.replace("  lora:\n    method: lora", "  lora:\n    method: lora\n    init_from: dpo")
    assert "cycle" in error_of(project, text)


def test_yaml_error_names_the_line(project):
    text = MINIMAL.replace("  lora:\n    method: lora", "  lora:\n    method: lora\n   bad: [indent")
    message = error_of(project, text)
    assert "line " in message and "invalid YAML" in message


def test_missing_file(tmp_path):
    with pytest.raises(UserError, match="experiment file not found"):
        load_config(tmp_path / "nope.yaml")
