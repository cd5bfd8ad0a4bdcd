"""Evaluation generation throughput: the harness's batched generation against a per-sample loop.

Both generate greedy answers to the same prompts (the demo's held-out tickets, chat template
applied) with the same model, in the same run:
- baseline: the loop people write first, one `model.generate` per prompt;
- ours: `harness.generate.generate`: prompts sorted by length, batches of `--batch-size`, left padding.
Prints wall time, generated tokens per second, the ratio, and how many outputs are identical
(batched greedy decoding with padding can differ in the last float bits, rarely in a token).
Goal (issue 9): ≥ 8× the per-sample loop.

    python benchmarks/bench_generate.py [--model builtin:smollm2-135m-instruct|random:smollm2-135m] [--samples 64]
        [--max-new-tokens 48] [--batch-size 32] [--tokenizer DIR]

A `random:` model (benchmarks/common.py) rarely emits its end token, so every answer runs to
`--max-new-tokens`: the same work for both, and outputs that may differ more between padded and
unpadded runs than a trained model's.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

import torch  # noqa: E402
import transformers  # noqa: E402

from benchmarks.common import machine_line, model_path  # noqa: E402
from harness.cli import _quiet_libraries  # noqa: E402
from harness.config import GenerationSettings  # noqa: E402
from harness.data import load_jsonl  # noqa: E402
from harness.generate import generate  # noqa: E402
from harness.models import ModelSpec, device_policy, load_model, load_tokenizer  # noqa: E402


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
    p.add_argument("--batch-size", default="32", help="one or several, comma-separated: a harness row each")
    p.add_argument("--static-cache", action="store_true",
                   help="also time the harness with transformers' static key/value cache")
    p.add_argument("--tokenizer", help="tokenizer directory for random:NAME models (default: the embedded model's)")
    args = p.parse_args()
    _quiet_libraries()

    policy = device_policy()
    path = model_path(args.model, args.tokenizer)
    model = load_model(ModelSpec(str(path)), policy)
    model.eval()
    tokenizer = load_tokenizer(path)
    data = load_jsonl(ROOT / "experiments" / "data" / "tickets_test.jsonl", "eval", limit=args.samples)
    prompts = [ex.prompt for ex in data.examples]
    sizes = [int(b) for b in args.batch_size.split(",")]
    settings = GenerationSettings(max_new_tokens=args.max_new_tokens, batch_size=sizes[0])

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

    def ntok(outs):
        return sum(len(tokenizer(o, add_special_tokens=False)["input_ids"]) for o in outs)

    print(f"{machine_line()}; device {policy.device} ({policy.dtype_name}), transformers {transformers.__version__}")
    print(f"model {args.model}, {len(prompts)} prompts (demo tickets), greedy, at most {args.max_new_tokens} new tokens")
    print(f"command: python benchmarks/bench_generate.py --model {args.model} --samples {args.samples} "
          f"--max-new-tokens {args.max_new_tokens} --batch-size {args.batch_size}"
          + (" --static-cache" if args.static_cache else "") + "\n")
    # Rows are printed as they finish: a run stopped by a time limit keeps what it measured.
    print("| generation | wall s | generated tokens | tokens/s | ratio |")
    print("|---|---|---|---|---|")
    base_out, base_s = timed(lambda: per_sample(model, tokenizer, prompts, args.max_new_tokens))
    print(f"| per-sample loop (baseline) | {base_s:.2f} | {ntok(base_out)} | {ntok(base_out) / base_s:.1f} | 1.00× |",
          flush=True)
    for size in sizes:
        at = settings.model_copy(update={"batch_size": size})
        out, s = timed(lambda: generate(model, tokenizer, prompts, at, progress=False))
        print(f"| harness, batch {size}, length-sorted | {s:.2f} | {ntok(out)} | {ntok(out) / s:.1f} | "
              f"{base_s / s:.2f}× |", flush=True)
        if size == sizes[0]:
            ours_out, same = out, sum(a == b for a, b in zip(base_out, out))
    note = ""
    if args.static_cache:
        # transformers compiles the forward pass for a static cache on first use: time that call
        # too, since an evaluation of one variant pays it once per model.
        for label in ("first call, compiling", "compiled"):  # at the first batch size
            static_out, static_s = timed(lambda: generate(model, tokenizer, prompts, settings, progress=False,
                                                          cache_implementation="static"))
            print(f"| harness, batch {sizes[0]}, length-sorted, static cache, {label} | {static_s:.2f} | "
                  f"{ntok(static_out)} | {ntok(static_out) / static_s:.1f} | {base_s / static_s:.2f}× |", flush=True)
        note = f"; static cache against dynamic: {sum(a == b for a, b in zip(ours_out, static_out))} of {len(prompts)}"
    print(f"\nidentical outputs (per-sample loop against batch {sizes[0]}): {same} of {len(prompts)}{note}")


if __name__ == "__main__":
    main()
