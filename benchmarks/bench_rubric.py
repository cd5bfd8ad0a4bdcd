"""Rubric scoring speed: 10,000 samples × 8 non-judge criteria, and the LLM judge's samples per second.

Baseline, in the same run: the same checks written as a plain loop calling the libraries directly
(json, jsonschema, re, rouge-score, sacrebleu), so the ratio is what the rubric engine costs on top
of the metrics themselves. Goal (issue 3): 10,000 × 8 in ≤ 5 s on 2 CPU cores.

    python benchmarks/bench_rubric.py [--samples 10000] [--judge-samples 16]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import random
import re
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from harness.data import load_jsonl  # noqa: E402
from harness.rubric import Rubric, score_samples  # noqa: E402

SCHEMA = {"type": "object", "required": ["category", "product", "priority"],
          "properties": {"category": {"enum": ["billing", "technical", "account", "feature_request"]},
                         "product": {"type": "string"},
                         "priority": {"enum": ["low", "medium", "high", "urgent"]}}}

CRITERIA = [
    {"name": "valid_json", "type": "valid_json", "required": True},
    {"name": "schema", "type": "json_schema", "schema": SCHEMA},
    {"name": "category", "type": "json_field", "path": "category", "weight": 2},
    {"name": "priority_norm", "type": "json_field", "path": "priority", "match": "normalised"},
    {"name": "no_chatter", "type": "regex", "pattern": r"^\s*\{.*\}\s*$", "mode": "fullmatch", "dotall": True},
    {"name": "names_product", "type": "contains_any", "field": "product"},
    {"name": "rouge_l", "type": "rouge_l"},
    {"name": "bleu", "type": "bleu"},
]


def make_samples(n: int):
    """Demo test tickets, repeated to n, with outputs that are right, wrong in a field, chatty or broken."""
    base = load_jsonl(ROOT / "experiments" / "data" / "tickets_test.jsonl", "eval").examples
    rng = random.Random(0)
    examples, outputs = [], []
    for i in range(n):
        ex = base[i % len(base)]
        ref = json.loads(ex.reference)
        ex.fields["product"] = ref["product"]
        kind = rng.random()
        if kind < 0.5:
            out = json.dumps(ref)
        elif kind < 0.75:
            out = json.dumps({**ref, "priority": rng.choice(["low", "medium", "high", "urgent"])})
        elif kind < 0.9:
            out = "Sure! Here is the record:\n" + json.dumps(ref)
        else:
            out = json.dumps(ref)[: rng.randint(0, 30)]
        examples.append(ex)
        outputs.append(out)
    return examples, outputs


def direct_loop(examples, outputs) -> float:
    """The same eight checks, by hand, straight on the libraries: the baseline."""
    import sacrebleu
    from jsonschema import Draft202012Validator
    from rouge_score import rouge_scorer

    validator = Draft202012Validator(SCHEMA)
    rouge = rouge_scorer.RougeScorer(["rougeL"])
    bleu = sacrebleu.metrics.BLEU(effective_order=True)
    chatter = re.compile(r"^\s*\{.*\}\s*$", re.DOTALL)
    total = 0.0
    for ex, out in zip(examples, outputs):
        ref = json.loads(ex.reference)
        try:
            got = json.loads(out)
        except json.JSONDecodeError:
            got = None
        total += got is not None
        total += got is not None and validator.is_valid(got)
        total += isinstance(got, dict) and got.get("category") == ref["category"]
        total += isinstance(got, dict) and str(got.get("priority", "")).lower() == ref["priority"]
        total += chatter.fullmatch(out) is not None
        total += ref["product"].lower() in out.lower()
        total += rouge.score(ex.reference, out)["rougeL"].fmeasure
        total += bleu.sentence_score(out, [ex.reference]).score / 100
    return total


def timed(fn, *args):
    t = time.perf_counter()
    fn(*args)
    return time.perf_counter() - t


def judge_rate(n: int) -> list[tuple[str, float, float]]:
    """Samples per second of the judge on the embedded model: first pass, then from the cache."""
    from harness import judge

    examples = load_jsonl(ROOT / "experiments" / "data" / "general_knowledge.jsonl", "eval").examples[:n]
    outputs = [f"I believe the answer is {ex.reference}." for ex in examples]
    rows = []
    for explain in (True, False):
        rubric = Rubric.model_validate({"name": "j", "pass_threshold": 0.5, "criteria": [{
            "name": "judge", "type": "llm_judge", "explain": explain, "max_new_tokens": 64,
            "instructions": "The answer must be factually correct. 5: correct. 1: wrong."}]})
        judge._LOADED.clear()
        score_samples(rubric, outputs[:1], examples[:1])  # load the model once, outside the timing
        first = timed(score_samples, rubric, outputs[1:], examples[1:])
        again = timed(score_samples, rubric, outputs[1:], examples[1:])
        rows.append((f"judge, explain={explain}", (n - 1) / first, (n - 1) / again))
    return rows


def cpu_name() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown CPU"


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--samples", type=int, default=10_000)
    p.add_argument("--judge-samples", type=int, default=16)
    args = p.parse_args()
    os.environ.setdefault("HF_HUB_OFFLINE", "1")

    import torch

    examples, outputs = make_samples(args.samples)
    rubric = Rubric.model_validate({"name": "bench", "pass_threshold": 0.8, "criteria": CRITERIA})
    score_samples(rubric, outputs[:50], examples[:50])  # imports and compiled validators, outside the timing
    direct_loop(examples[:50], outputs[:50])
    ours = min(timed(score_samples, rubric, outputs, examples) for _ in range(3))
    base = min(timed(direct_loop, examples, outputs) for _ in range(3))
    per = []
    for c in CRITERIA:
        one = Rubric.model_validate({"name": c["name"], "pass_threshold": 0.5, "criteria": [c]})
        per.append((f'{c["name"]} ({c["type"]})', min(timed(score_samples, one, outputs, examples) for _ in range(2))))

    print(f"machine: {platform.machine()}, {os.cpu_count()} CPU cores ({cpu_name()}), "
          f"Python {platform.python_version()}, torch {torch.__version__}, "
          f"device {'cuda' if torch.cuda.is_available() else 'cpu'}")
    print(f"command: python benchmarks/bench_rubric.py --samples {args.samples} --judge-samples {args.judge_samples}")
    print()
    print(f"| scoring {args.samples:,} samples × {len(CRITERIA)} criteria | seconds | samples/s | ratio |")
    print("|---|---:|---:|---:|")
    print(f"| direct library loop (baseline) | {base:.2f} | {args.samples / base:,.0f} | 1.00 |")
    print(f"| harness rubric engine | {ours:.2f} | {args.samples / ours:,.0f} | {ours / base:.2f} |")
    print(f"goal ≤ 5 s: {'met' if ours <= 5 else 'NOT met'}")
    print()
    print("| criterion alone | seconds |")
    print("|---|---:|")
    for name, s in per:
        print(f"| {name} | {s:.2f} |")

    if args.judge_samples > 1:
        with tempfile.TemporaryDirectory() as cache:
            from harness.models import cache_dir, resolve_model

            model_cache = cache_dir() / "models"
            os.environ["HARNESS_CACHE"] = cache  # judge replies go to a throwaway cache: the first pass is real
            if (model_cache / "smollm2-135m-instruct").exists():  # reuse the converted model
                (Path(cache) / "models").mkdir(parents=True)
                os.symlink(model_cache / "smollm2-135m-instruct", Path(cache) / "models" / "smollm2-135m-instruct")
            resolve_model("builtin:smollm2-135m-instruct")
            rows = judge_rate(args.judge_samples)
        print()
        print(f"| LLM judge, builtin:smollm2-135m-instruct, {args.judge_samples - 1} samples | samples/s | cached samples/s |")
        print("|---|---:|---:|")
        for name, rate, cached in rows:
            print(f"| {name} | {rate:.2f} | {cached:,.0f} |")


if __name__ == "__main__":
    main()
