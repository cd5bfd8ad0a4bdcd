"""Run one lm-evaluation-harness task, defined by a local task YAML over local data, on a model the
harness already holds, and return per-document results.

The contract of `run_task`:
- Input: a loaded causal LM (a transformers model or a PEFT model wrapping one), its tokenizer, and
  the path of one lm-eval task YAML (`task:` key; groups are not accepted). The YAML names its data
  with `dataset_path: json` (or csv, parquet, ...) and `dataset_kwargs: {data_files: ...}`; data
  paths relative to the YAML's folder are resolved against that folder, not the working directory.
- Offline: the model is wrapped as it is (`HFLM(pretrained=model, ...)`), only the YAML's own folder
  is indexed (lm-eval's ~15,000 built-in task files are not), and the hub and datasets offline
  flags are set for the duration of the call. Nothing is downloaded.
- Output: one dict per evaluated document, in document order:
  `{"sample_id", "prompt", "reference", "output", "score"}`. `sample_id` is the document's `id`
  field when the data has one, else its index in the split; `prompt` is the context the model saw
  (no chat template: lm-eval tasks are written for plain text); `reference` is the gold answer as
  text; `output` is the chosen choice (multiple_choice), the generated text (generate_until) or
  the log-likelihood (loglikelihood tasks); `score` is the task's first metric for that document
  under its first filter (for multiple_choice `acc`: 1.0 when the gold choice has the highest
  summed log-likelihood, else 0.0). For metrics lm-eval aggregates over the corpus (perplexity,
  BLEU) it is the per-document item that aggregation starts from, e.g. the log-likelihood; a
  metric whose item is not a number is refused.
- Side effects: lm-eval puts the model in eval mode (its training mode is restored afterwards) and
  gives a tokenizer without a pad token one. lm-eval's `evaluate` is called rather than
  `simple_evaluate`, which would also reseed the global RNGs; few-shot sampling keeps lm-eval's
  own fixed seed. datasets keeps its Arrow copy of the data under the harness cache directory.

lm-eval is an optional extra, imported only here and only when called.
"""

from __future__ import annotations

import hashlib
import importlib.util
import json
import os
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

from harness.errors import UserError
from harness.models import cache_dir

OFFLINE_FLAGS = {"HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1"}
FEWSHOT_SEED = 1234  # lm-eval's default, so few-shot examples match its own runs


@dataclass(frozen=True)
class Task:
    """A task YAML as an experiment names it, with the hash of its folder."""

    path: Path
    sha256: str  # of the YAML and every file beside it (data, included YAML, utils)


def load_task(path: Path, where: str) -> Task:
    """Check the task file and hash its folder, so that a changed data file is not answered from
    stored outputs. `where` prefixes errors (file and field)."""
    if not path.is_file():
        raise UserError(f"{where}: task file {str(path)!r} not found")
    files = sorted(p for p in path.parent.rglob("*") if p.is_file())
    if len(files) > 200:
        raise UserError(f"{where}: an lm-eval task's folder is hashed with its data; {path.parent} holds "
                        f"{len(files)} files: expected the task YAML in a folder of its own")
    digests = {str(p.relative_to(path.parent)): hashlib.sha256(p.read_bytes()).hexdigest() for p in files}
    return Task(path, hashlib.sha256(json.dumps(digests, sort_keys=True).encode()).hexdigest())


def run_task(model, tokenizer, task_yaml: Path, limit: int | None = None, batch_size: int = 8) -> list[dict]:
    """Evaluate `model` on the task in `task_yaml`; one result dict per document (see the module
    docstring for the fields)."""
    if importlib.util.find_spec("lm_eval") is None:
        raise UserError("lm-eval task: the package lm_eval is not installed; install the optional extra: pip install 'lm-eval'")
    task_yaml = Path(task_yaml).expanduser().resolve()
    if not task_yaml.is_file():
        raise UserError(f"lm-eval task: {task_yaml} does not exist; expected the path of a task YAML file")

    with _offline():
        from lm_eval import evaluate
        from lm_eval.models.huggingface import HFLM

        loaded, task = _load(task_yaml)
        was_training = model.training
        try:
            lm = HFLM(pretrained=model, tokenizer=tokenizer, batch_size=batch_size)
            results = evaluate(
                lm=lm, task_dict=loaded, limit=limit, log_samples=True,
                bootstrap_iters=0,  # per-document scores are all we use; intervals are ours to compute
            )
        finally:
            model.train(was_training)

    samples = results["samples"][task.task_name]
    return _per_document(task, samples, task_yaml)


def _load(task_yaml: Path):
    """lm-eval's task dict and the task, built from the YAML with data paths made absolute."""
    from lm_eval.tasks import TaskManager
    # lm-eval's own YAML loader (includes, !function tags); private, but the only way to read
    # the config before the task is built, which is when the dataset is loaded.
    from lm_eval.tasks._yaml_loader import load_yaml

    config = load_yaml(task_yaml, resolve_func=True)
    if "task" not in config or "group" in config or isinstance(config["task"], list):
        raise UserError(f"{task_yaml}: field 'task': expected the name of a single task (groups are not supported)")
    config["dataset_kwargs"] = _resolve_data_paths(config.get("dataset_kwargs") or {}, task_yaml.parent)

    manager = TaskManager(include_path=str(task_yaml.parent), include_defaults=False)
    loaded = manager.load([config])
    task = loaded["tasks"][config["task"]]
    # The two per-task settings simple_evaluate would make. It is not used because it also
    # seeds the global RNGs, asks the hub for the model's sha, runs `git describe` and
    # torch's collect_env (2 s of subprocesses) on every call.
    if task.get_config("num_fewshot") is None:
        task.set_config(key="num_fewshot", value=0)
    task.set_fewshot_seed(seed=FEWSHOT_SEED)
    return loaded, task


def task_documents(task_yaml: Path, limit: int | None = None) -> list[dict]:
    """The documents a task evaluates, without a model: `{"sample_id", "prompt", "reference"}` each,
    as `run_task` would report them (for the leakage check, before anything is trained)."""
    if importlib.util.find_spec("lm_eval") is None:
        raise UserError("lm-eval task: the package lm_eval is not installed; install the optional extra: pip install 'lm-eval'")
    with _offline():
        _, task = _load(Path(task_yaml).expanduser().resolve())
        docs = list(task.eval_docs)[:limit]
        out = []
        for i, doc in enumerate(docs):
            choices = task.doc_to_choice(doc) if task.OUTPUT_TYPE == "multiple_choice" else None
            out.append({"sample_id": str(doc["id"]) if isinstance(doc, dict) and "id" in doc else str(i),
                        "prompt": str(task.doc_to_text(doc)), "reference": _reference(task.doc_to_target(doc), choices)})
    return out


@contextmanager
def _offline():
    """Set the offline flags for the call, then put back what was there. The libraries read them
    when first imported, so they guard lm-eval's own imports; a local data file needs no hub."""
    old = {k: os.environ.get(k) for k in OFFLINE_FLAGS}
    os.environ.update(OFFLINE_FLAGS)
    try:
        yield
    finally:
        for k, v in old.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v


def _resolve_data_paths(dataset_kwargs: dict, base: Path) -> dict:
    """`data_files` (a path, a list, or a split → path(s) mapping) and `data_dir`, made absolute
    against the YAML's folder; `datasets` would resolve them against the working directory."""

    def resolve(p):
        if isinstance(p, list):
            return [resolve(x) for x in p]
        if isinstance(p, dict):
            return {k: resolve(v) for k, v in p.items()}
        if isinstance(p, str) and "://" not in p and not Path(p).expanduser().is_absolute():
            return str(base / p)
        return p

    out = dict(dataset_kwargs)
    for key in ("data_files", "data_dir"):
        if key in out:
            out[key] = resolve(out[key])
    # datasets' Arrow copy of the data goes beside the harness's models, not into ~/.cache.
    out.setdefault("cache_dir", str(cache_dir() / "datasets"))
    return out


def _per_document(task, samples: list[dict], task_yaml: Path) -> list[dict]:
    """lm-eval's logged samples (one per document and filter) → our rows, first filter only."""
    if not samples:
        return []
    first_filter = samples[0]["filter"]
    samples = sorted((s for s in samples if s["filter"] == first_filter), key=lambda s: s["doc_id"])
    metric_list = task.config.metric_list or []
    named = metric_list[0].get("metric") if metric_list else None
    output_type = task.OUTPUT_TYPE

    rows = []
    for s in samples:
        doc = s["doc"]
        metric = named if isinstance(named, str) and named in s else s["metrics"][0]
        try:
            score = float(s[metric])
        except (TypeError, ValueError):
            raise UserError(f"{task_yaml}: field 'metric_list': the first metric {metric!r} gives no per-document number") from None
        choices = task.doc_to_choice(doc) if output_type == "multiple_choice" else None
        rows.append({
            "sample_id": str(doc["id"]) if isinstance(doc, dict) and "id" in doc else str(s["doc_id"]),
            "prompt": s["arguments"][0][0],
            "reference": _reference(s["target"], choices),
            "output": _output(s["filtered_resps"], output_type, choices),
            "score": score,
        })
    ids = [r["sample_id"] for r in rows]
    if len(set(ids)) != len(ids):
        raise UserError(f"{task_yaml}: the data's 'id' field repeats; expected one distinct id per document")
    return rows


def _reference(target, choices: list[str] | None) -> str:
    """The gold answer as text: a choice index becomes the choice."""
    if isinstance(target, list):  # several acceptable answers
        return " | ".join(_reference(t, choices) for t in target)
    if choices is not None and isinstance(target, int) and 0 <= target < len(choices):
        return choices[target]
    return str(target)


def _output(filtered_resps: list, output_type: str, choices: list[str] | None) -> str:
    """What the model answered: the most likely choice, the generated text, or a log-likelihood."""
    if output_type == "multiple_choice":
        lls = [r[0] if isinstance(r, (tuple, list)) else r for r in filtered_resps]
        best = max(range(len(lls)), key=lambda i: lls[i])  # first of equals, as numpy's argmax
        return choices[best] if choices and best < len(choices) else str(best)
    first = filtered_resps[0]
    if isinstance(first, (tuple, list)) and first:  # (log-likelihood, is_greedy), or repeats
        first = first[0]
    return first if isinstance(first, str) else str(first)
