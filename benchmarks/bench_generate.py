"""Evaluation generation throughput: the harness's batched generation against a per-sample loop.

Both generate greedy answers to the same prompts (the demo's held-out tickets, chat template
applied) with the same model, in the same run:
- baseline: the loop people write first, one `model.generate` per prompt;
- ours: `harness.generate.generate`: prompts sorted by length, batches of `--batch-size`, left padding.
Prints wall time, generated tokens per second, the ratio, and how many outputs are identical
(batched greedy decoding with padding can differ in the last float bits, rarely in a token).
Goal (issue 9): ≥ 8× the per-sample loop.

    python benchmarks/bench_generate.py [--model builtin:smollm2-135m-instruct] [--samples 64]
        [--max-new-tokens 48] [--batch-size 32]
"""

from __future__ import annotations

import argparse
import os
import platform
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

import torch  # noqa: E402
import transformers  # noqa: E402

from harness.cli import _quiet_libraries  # noqa: E402
from harness.config import GenerationSettings  # noqa: E402
from harness.data import load_jsonl  # noqa: E402
from harness.generate import generate  # noqa: E402
from harness.models import ModelSpec, device_policy, load_model, load_tokenizer, resolve_model  # noqa: E402


def per_sample(model, tokenizer, prompts, max_new_tokens: int) -> list[str]:
    device = next(model.parameters()).device
    outputs = []
    for p in prompts:
        ids = tokenizer.apply_chat_template(p, add_generation_prompt=True, return_tensors="pt", return_dict=True)
        ids = {k: v.to(device) for k, v in ids.items()}
        with torch.inference_mode():
            out = model.generate(**ids, max_new_tokens=max_new_tokens, do_sample=False,
                                 pad_token_id=tokenizer.pad_token_id, eos_token_id=tokenizer.eos_token_id)
        outputs.append(tokenizer.decode(out[0, ids["input_ids"].shape[1]:], skip_special_tokens=True).strip())
    return outputs


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", default="builtin:smollm2-135m-instruct")
    p.add_argument("--samples", type=int, default=64)
    p.add_argument("--max-new-tokens", type=int, default=48)
    p.add_argument("--batch-size", type=int, default=32)
    args = p.parse_args()
    _quiet_libraries()

    policy = device_policy()
    path = resolve_model(args.model)
    model = load_model(ModelSpec(str(path)), policy)
    model.eval()
    tokenizer = load_tokenizer(path)
    data = load_jsonl(ROOT / "experiments" / "data" / "tickets_test.jsonl", "eval", limit=args.samples)
    prompts = [ex.prompt for ex in data.examples]
    settings = GenerationSettings(max_new_tokens=args.max_new_tokens, batch_size=args.batch_size)

    generate(model, tokenizer, prompts[:2], settings, progress=False)  # warm-up: lazy initialisation
    per_sample(model, tokenizer, prompts[:1], 4)

    def timed(fn):
        if policy.device == "cuda":
            torch.cuda.synchronize()
        t = time.perf_counter()
        out = fn()
        if policy.device == "cuda":
            torch.cuda.synchronize()
        return out, time.perf_counter() - t

    base_out, base_s = timed(lambda: per_sample(model, tokenizer, prompts, args.max_new_tokens))
    ours_out, ours_s = timed(lambda: generate(model, tokenizer, prompts, settings, progress=False))
    tokens = [sum(len(tokenizer(o, add_special_tokens=False)["input_ids"]) for o in out) for out in (base_out, ours_out)]
    same = sum(a == b for a, b in zip(base_out, ours_out))

    gpu = torch.cuda.get_device_name(0) if policy.device == "cuda" else "none"
    print(f"machine: {platform.machine()}, {os.cpu_count()} CPU cores, GPU {gpu}; device {policy.device} "
          f"({policy.dtype_name}); torch {torch.__version__}, transformers {transformers.__version__}")
    print(f"model {args.model}, {len(prompts)} prompts (demo tickets), greedy, at most {args.max_new_tokens} new tokens")
    print(f"command: python benchmarks/bench_generate.py --model {args.model} --samples {args.samples} "
          f"--max-new-tokens {args.max_new_tokens} --batch-size {args.batch_size}\n")
    print("| generation | wall s | generated tokens | tokens/s | ratio |")
    print("|---|---|---|---|---|")
    print(f"| per-sample loop (baseline) | {base_s:.2f} | {tokens[0]} | {tokens[0] / base_s:.1f} | 1.00× |")
    print(f"| harness, batch {args.batch_size}, length-sorted | {ours_s:.2f} | {tokens[1]} | {tokens[1] / ours_s:.1f} | "
          f"{base_s / ours_s:.2f}× |")
    print(f"\nidentical outputs: {same} of {len(prompts)}")


if __name__ == "__main__":
    main()
