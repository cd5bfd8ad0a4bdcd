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
