"""Training with a validation split: validation loss every `eval_steps`, early stopping on it."""

from pathlib import Path

from conftest import ROOT

from harness.config import Variant
from harness.data import load_jsonl, split_by_hash
from harness.models import DevicePolicy, ModelSpec, resolve_model
from harness.report import overfitting
from harness.train import train_variant


def test_early_stopping_ends_training_when_validation_loss_rises(tmp_path):
    data = load_jsonl(ROOT / "experiments" / "data" / "tickets_train.jsonl", "sft")
    train, held = split_by_hash(data.examples[:40], 0.25)
    # A learning rate far too high for the tiny model: the validation loss falls, then jumps.
    v = Variant(name="hot", method="sft", train={"max_steps": 12, "batch_size": 2, "learning_rate": 5.0, "max_length": 320,
                                                 "validation": 0.25, "eval_steps": 1, "early_stopping_patience": 1})
    result = train_variant(v, ModelSpec(str(resolve_model("builtin:tiny-random"))),
                           data.__class__(data.path, data.kind, train, data.sha256), tmp_path / "out",
                           DevicePolicy("cpu", "float32", False), seed=0, progress=False, validation=held)
    losses = [e["eval_loss"] for e in result.eval_curve]
    assert [e["step"] for e in result.eval_curve] == list(range(1, len(losses) + 1))
    # Patience 1: training stops at the first evaluation that is not a new minimum.
    first_rise = next(i for i in range(1, len(losses)) if losses[i] >= min(losses[:i]))
    assert result.steps == first_rise + 1 < 12
    assert overfitting([10.0, 8.0, 9.5]) and not overfitting([10.0, 8.0, 8.5]) and not overfitting([3.0])
    assert (Path(result.model.path) / "model.safetensors").exists()


def test_a_max_length_that_leaves_no_answer_is_refused_before_anything_runs(project, capsys, monkeypatch):
    """TRL drops examples whose prompt fills max_length; with every one dropped it would fail deep
    in training with a sampler error. The harness says which setting and what is expected, first."""
    from harness.cli import main

    monkeypatch.chdir(project)
    exp = project / "experiments" / "short.yaml"
    exp.write_text("name: short\nmodel: builtin:tiny-random\ndata: {train: experiments/data/tickets_train.jsonl}\n"
                   "eval: [{name: t, data: experiments/data/tickets_test.jsonl, rubric: rubrics/ticket_triage.yaml, "
                   "limit: 2}]\nvariants:\n  base: {method: none}\n  lora: {method: lora, train: {max_length: 64}}\n")
    code = main(["run", str(exp), "--db", str(project / "results" / "r.duckdb"), "--quiet"])
    # (The tiny model is built on first use, which says so on a line of its own.)
    err = [line for line in capsys.readouterr().err.strip().splitlines() if not line.startswith("preparing builtin:")]
    assert code == 2
    assert len(err) == 1 and err[0].startswith(f"harness: error: {exp}: field 'variants.lora.train.max_length': 64 tokens "
                                               "leaves no room for an answer in any of the 320 examples")
    assert "expected more than" in err[0]
    assert not (project / "results").exists()
