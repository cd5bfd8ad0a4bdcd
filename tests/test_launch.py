"""`launch: {processes: 2}`: a variant trained by two processes through `accelerate launch` (gloo on
the CPU), stored by the parent like any other variant."""

from __future__ import annotations

import json

from conftest import rows

from harness.cli import main

EXPERIMENT = """\
name: dp
model: builtin:tiny-random
seed: 0
data: {{train: experiments/data/tickets_train.jsonl}}
eval: [{{name: t, data: experiments/data/tickets_test.jsonl, rubric: rubrics/ticket_triage.yaml, limit: 2}}]
generation: {{max_new_tokens: 4, batch_size: 2}}
defaults:
  train: {{max_steps: 4, batch_size: 2, max_length: 320, save_steps: 0}}
variants:
  lora: {{method: lora{launch}}}
"""


def test_a_variant_trains_in_two_processes_and_is_stored_like_any_other(project, capsys, monkeypatch):
    monkeypatch.chdir(project)
    one, two = project / "experiments" / "one.yaml", project / "experiments" / "two.yaml"
    one.write_text(EXPERIMENT.format(launch=""))
    two.write_text(EXPERIMENT.format(launch=", launch: {processes: 2}"))
    db1, db2 = project / "results" / "one.duckdb", project / "results" / "two.duckdb"

    assert main(["run", str(one), "--db", str(db1), "--quiet"]) == 0
    capsys.readouterr()
    assert main(["run", str(two), "--db", str(db2), "--quiet"]) == 0
    log = capsys.readouterr().out
    assert "[lora] launching 2 training processes: accelerate launch -m harness.launch" in log

    result = json.loads(next((project / "results" / "artifacts" / "dp").glob("lora-*/launch_result.json")).read_text())
    assert result["world_size"] == 2 and result["steps"] == 4
    (steps1, tokens1), = rows(db1, "SELECT train_steps, train_tokens FROM runs WHERE variant = 'lora'")
    (steps2, tokens2, status), = rows(db2, "SELECT train_steps, train_tokens, status FROM runs WHERE variant = 'lora'")
    assert status == "finished" and steps1 == steps2 == 4
    # Data parallel: each of the two processes takes a batch per step, so twice the tokens per step.
    assert 1.5 < tokens2 / tokens1 < 2.5
    assert rows(db2, "SELECT count(*) FROM outputs")[0][0] == 2
    assert rows(db2, "SELECT count(*) FROM train_log WHERE loss IS NOT NULL")[0][0] == 4


def test_launch_on_a_variant_that_does_not_train_is_refused(project, capsys, monkeypatch):
    monkeypatch.chdir(project)
    exp = project / "experiments" / "bad.yaml"
    exp.write_text(EXPERIMENT.format(launch="").replace("lora: {method: lora}", "base: {method: none, launch: {}}"))
    assert main(["run", str(exp), "--db", str(project / "r.duckdb"), "--quiet"]) == 2
    err = capsys.readouterr().err
    assert "field 'variants.base.launch': method 'none' does not train" in err
    assert not (project / "r.duckdb").exists()
