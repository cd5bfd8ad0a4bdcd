"""Training throughput per method: the harness's TRL set-up against plain TRL defaults.

For each method (full SFT, LoRA, QLoRA, DPO), in the same run, on the same data (the demo's
training tickets, or its preference pairs for DPO), the same number of steps, batch size, maximum
length, learning rate and seed:
- ours: `harness.train.train_variant` (precision and gradient checkpointing from the device
  policy; no checkpoints written: `save_steps: 0`);
- plain TRL: `SFTTrainer` / `DPOTrainer` with `SFTConfig` / `DPOConfig` defaults for everything
  else (TRL's defaults are bf16 and gradient checkpointing on), the model loaded with
  `from_pretrained` defaults, the same LoRA settings through `peft_config`.
`--speeds` adds a row for each speed-up of `harness.train.Speed` (`padfree`, `liger`, `compile`,
`precompute` for DPO): the harness with it, or without it where it is a default, so each is kept
or dropped on a measurement. `--data varied` replaces the demo tickets (85 to 107 tokens each, little padding) by
synthetic examples from 16 tokens to `--max-length`, where padding is most of a padded batch.
Prints non-padding tokens per second, peak memory (CUDA allocator peak, or process RSS sampled on a
CPU), the final training loss of each (equal settings should give nearly equal losses), the ratio,
and on a GPU the model FLOP utilisation (6 × parameters × tokens per second over the GPU's dense
bf16 peak; LoRA and QLoRA still run the full forward and backward pass through the frozen weights).

    python benchmarks/bench_train.py [--model builtin:smollm2-135m-instruct|random:qwen2.5-0.5b] [--steps 10]
        [--batch-size 4] [--max-length 256] [--methods sft,lora,qlora,dpo] [--speeds padfree,liger]
        [--data tickets|varied] [--tokenizer DIR]
"""

from __future__ import annotations

import argparse
import dataclasses
import gc
import math
import random
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

import torch  # noqa: E402

from benchmarks.common import machine_line, model_path as resolve_bench_model  # noqa: E402
from harness.cli import _quiet_libraries  # noqa: E402
from harness.config import Method, Variant  # noqa: E402
from harness.data import Dataset, Example, load_jsonl  # noqa: E402
from harness.models import ModelSpec, device_policy  # noqa: E402
from harness.train import (DEFAULT_LR, PeakMemory, Speed, _hf_dataset, _lora_config, default_speed,  # noqa: E402
                           train_variant)

# Speed-ups measured on top of the harness's defaults; the methods each applies to.
SPEEDS = {
    "padfree": (dict(padding_free=True), {Method.sft, Method.lora, Method.qlora}),
    "liger": (dict(liger=True), {Method.sft, Method.lora, Method.qlora, Method.dpo}),
    "compile": (dict(compile=True), {Method.sft, Method.lora, Method.qlora, Method.dpo}),
    "precompute": (dict(precompute_ref=True), {Method.dpo}),
}

# Dense bf16 peak FLOP/s by GPU name (vendor data sheets, SXM parts).
PEAK_FLOPS = {"H100": 989e12, "H200": 989e12, "A100": 312e12}


def plain_trl(method: Method, variant: Variant, model_path: Path, data, out: Path, seed: int) -> dict:
    from peft import prepare_model_for_kbit_training
    from transformers import AutoModelForCausalLM, AutoTokenizer, BitsAndBytesConfig
    from trl import DPOConfig, DPOTrainer, SFTConfig, SFTTrainer

    t = variant.train
    same = dict(output_dir=str(out), max_steps=t.max_steps, per_device_train_batch_size=t.batch_size,
                max_length=t.max_length, learning_rate=t.learning_rate or DEFAULT_LR[method], seed=seed,
                report_to=[], save_strategy="no", logging_steps=1, disable_tqdm=True,
                include_num_input_tokens_seen="non_padding")
    tokenizer = AutoTokenizer.from_pretrained(model_path)
    kwargs = {}
    if method == Method.qlora:
        kwargs["quantization_config"] = BitsAndBytesConfig(load_in_4bit=True, bnb_4bit_quant_type="nf4",
                                                           bnb_4bit_compute_dtype=torch.bfloat16)
    model = AutoModelForCausalLM.from_pretrained(model_path, **kwargs)
    if method == Method.qlora:
        model = prepare_model_for_kbit_training(model)
    if not torch.cuda.is_available():
        same["use_cpu"] = True
    dataset = _hf_dataset(data.examples, data.kind)
    peft = _lora_config(variant) if method != Method.sft else None
    t0 = time.perf_counter()  # the trainer's set-up (tokenising) counts, as in the harness's train_s
    if method == Method.dpo:
        trainer = DPOTrainer(model=model, args=DPOConfig(**same), train_dataset=dataset, processing_class=tokenizer,
                             peft_config=peft)
    else:
        trainer = SFTTrainer(model=model, args=SFTConfig(**same), train_dataset=dataset, processing_class=tokenizer,
                             peft_config=peft)
    from transformers.trainer_callback import PrinterCallback

    trainer.remove_callback(PrinterCallback)  # a printed dict per step would bury the table
    mem = PeakMemory("cuda" if torch.cuda.is_available() else "cpu")
    with mem:
        trainer.train()
    wall = time.perf_counter() - t0
    losses = [e["loss"] for e in trainer.state.log_history if "loss" in e]
    return {"tokens": int(trainer.state.num_input_tokens_seen), "wall_s": wall, "peak_mb": mem.mb,
            "loss": losses[-1], "params": sum(p.numel() for p in trainer.model.parameters()),
            "precision": "bf16" if trainer.args.bf16 else "fp32",
            "checkpointing": trainer.args.gradient_checkpointing}


def ours(method: Method, variant: Variant, model_path: Path, data, out: Path, seed: int, speed: Speed) -> dict:
    policy = device_policy()
    r = train_variant(variant, ModelSpec(str(model_path)), data, out, policy, seed, progress=False, speed=speed)
    # train_variant's wall time includes loading the model; time the steps alone, as for plain TRL.
    if speed.padding_free and not r.speed["padding_free"]:
        raise RuntimeError("padding-free not applied: an example is longer than --max-length")
    return {"tokens": r.tokens, "wall_s": r.train_s, "peak_mb": r.peak_mem_mb, "loss": r.loss_curve[-1]["loss"],
            "params": r.total_params, "precision": "bf16" if policy.bf16 else "fp32",
            "checkpointing": speed.gradient_checkpointing}


def varied_data(kind: str, n: int, max_tokens: int, seed: int = 0) -> Dataset:
    """Synthetic support-style examples whose lengths spread from 16 tokens to about `max_tokens`
    (log-uniform), so that padded batches are mostly padding; deterministic for a seed."""
    words = ("the invoice order refund printer login password account shipping delayed broken screen error "
             "please help customer support ticket urgent payment card declined update install crash").split()
    rng = random.Random(seed)

    def text(k):
        return " ".join(rng.choice(words) for _ in range(k))

    examples = []
    for i in range(n):
        total = int(2 ** rng.uniform(4, math.log2(max(20, max_tokens * 0.6))))  # words; a word is 1 to 2 tokens
        prompt = [{"role": "user", "content": text(max(2, total // 2))}]
        answer = [{"role": "assistant", "content": text(max(2, total // 2))}]
        if kind == "preference":
            examples.append(Example(id=str(i), prompt=prompt, chosen=answer,
                                    rejected=[{"role": "assistant", "content": text(max(2, total // 2))}]))
        else:
            examples.append(Example(id=str(i), prompt=prompt, completion=answer))
    return Dataset(path=Path(f"varied-{kind}"), kind=kind, examples=examples, sha256="varied")


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", default="builtin:smollm2-135m-instruct")
    p.add_argument("--steps", type=int, default=10)
    p.add_argument("--batch-size", type=int, default=4)
    p.add_argument("--max-length", type=int, default=256)
    p.add_argument("--methods", default="sft,lora,qlora,dpo")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--speeds", default="", help="comma-separated: " + ", ".join(SPEEDS))
    p.add_argument("--data", choices=("tickets", "varied"), default="tickets")
    p.add_argument("--tokenizer", help="tokenizer directory for random:NAME models (default: the embedded model's)")
    args = p.parse_args()
    _quiet_libraries()

    model_path = resolve_bench_model(args.model, args.tokenizer)
    if args.data == "varied":
        data = {kind: varied_data(kind, 256, args.max_length, args.seed) for kind in ("sft", "preference")}
    else:
        data = {"sft": load_jsonl(ROOT / "experiments" / "data" / "tickets_train.jsonl", "sft"),
                "preference": load_jsonl(ROOT / "experiments" / "data" / "tickets_preference.jsonl", "preference")}
    gpu = torch.cuda.get_device_name(0) if torch.cuda.is_available() else None
    peak = next((f for name, f in PEAK_FLOPS.items() if gpu and name in gpu), None)
    defaults = default_speed(device_policy())
    speeds = [s for s in args.speeds.split(",") if s]
    unknown = [s for s in speeds if s not in SPEEDS]
    if unknown:
        raise SystemExit(f"--speeds: unknown {unknown}; expected some of {', '.join(SPEEDS)}")
    print(machine_line())
    print(f"model {args.model}; data {args.data}; {args.steps} steps of {args.batch_size} examples, max length "
          f"{args.max_length}, seed {args.seed}; harness defaults {defaults}")
    print(f"command: python benchmarks/bench_train.py --model {args.model} --steps {args.steps} --batch-size "
          f"{args.batch_size} --max-length {args.max_length} --methods {args.methods} --data {args.data}"
          + (f" --speeds {args.speeds}" if speeds else "") + "\n")
    # Rows are printed as they finish: a run stopped by a time limit keeps what it measured.
    print("| method | trainer | precision, checkpointing | tokens/s | peak memory MB | final loss | ratio |"
          + (" MFU |" if peak else ""), flush=True)
    print("|---|---|---|---|---|---|---|" + ("---|" if peak else ""), flush=True)
    for name in args.methods.split(","):
        method = Method(name)
        variant = Variant(name=name, method=method, train={"max_steps": args.steps, "batch_size": args.batch_size,
                                                           "max_length": args.max_length, "save_steps": 0})
        ds = data["preference" if method == Method.dpo else "sft"]
        runs = [("plain TRL", lambda *a: plain_trl(*a)), ("harness", lambda *a: ours(*a, defaults))]
        for s in speeds:
            change, methods = SPEEDS[s]
            if method not in methods:
                continue
            on = any(getattr(defaults, k) != v for k, v in change.items())  # else a default: measure it off
            c = change if on else {k: not v for k, v in change.items()}
            runs.append((f"harness {'+' if on else 'without'} {s}",
                         lambda *a, c=c: ours(*a, dataclasses.replace(defaults, **c))))
        base = None
        for who, fn in runs:
            try:
                with tempfile.TemporaryDirectory() as out:
                    r = fn(method, variant, model_path, ds, Path(out), args.seed)
            except Exception as e:  # a speed-up that fails here is a result too: reported, not fatal
                first = str(e).splitlines()[0][:160] if str(e) else ""
                print(f"| {name} | {who} | failed: {type(e).__name__}: {first} | | | | |" + (" |" if peak else ""),
                      flush=True)
                continue
            finally:
                gc.collect()
                if torch.cuda.is_available():
                    torch.cuda.empty_cache()
            tps = r["tokens"] / r["wall_s"]
            base = base or tps
            mfu = f" {6 * r['params'] * tps / peak:.1%} |" if peak else ""
            print(f"| {name} | {who} | {r['precision']}, {'on' if r['checkpointing'] else 'off'} | {tps:,.0f} | "
                  f"{r['peak_mb']:,.0f} | {r['loss']:.3f} | {tps / base:.2f}× |{mfu}", flush=True)


if __name__ == "__main__":
    main()
