"""Training throughput per method: the harness's TRL set-up against plain TRL defaults.

For each method (full SFT, LoRA, QLoRA, DPO), in the same run, on the same data (the demo's
training tickets, or its preference pairs for DPO), the same number of steps, batch size, maximum
length, learning rate and seed:
- ours: `harness.train.train_variant` (precision and gradient checkpointing from the device
  policy; no checkpoints written: `save_steps: 0`);
- plain TRL: `SFTTrainer` / `DPOTrainer` with `SFTConfig` / `DPOConfig` defaults for everything
  else (TRL's defaults are bf16 and gradient checkpointing on), the model loaded with
  `from_pretrained` defaults, the same LoRA settings through `peft_config`.
Prints non-padding tokens per second, peak memory (CUDA allocator peak, or process RSS sampled on a
CPU), the final training loss of each (equal settings should give nearly equal losses), the ratio,
and on a GPU the model FLOP utilisation (6 × parameters × tokens per second over the GPU's dense
bf16 peak; LoRA and QLoRA still run the full forward and backward pass through the frozen weights).

    python benchmarks/bench_train.py [--model builtin:smollm2-135m-instruct] [--steps 10]
        [--batch-size 4] [--max-length 256] [--methods sft,lora,qlora,dpo]
"""

from __future__ import annotations

import argparse
import gc
import os
import platform
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

import torch  # noqa: E402

from harness.cli import _quiet_libraries  # noqa: E402
from harness.config import Method, Variant  # noqa: E402
from harness.data import load_jsonl  # noqa: E402
from harness.models import ModelSpec, device_policy, resolve_model  # noqa: E402
from harness.train import DEFAULT_LR, PeakMemory, _hf_dataset, _lora_config, train_variant  # noqa: E402

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
    if method == Method.dpo:
        trainer = DPOTrainer(model=model, args=DPOConfig(**same), train_dataset=dataset, processing_class=tokenizer,
                             peft_config=peft)
    else:
        trainer = SFTTrainer(model=model, args=SFTConfig(**same), train_dataset=dataset, processing_class=tokenizer,
                             peft_config=peft)
    mem = PeakMemory("cuda" if torch.cuda.is_available() else "cpu")
    t0 = time.perf_counter()
    with mem:
        trainer.train()
    wall = time.perf_counter() - t0
    losses = [e["loss"] for e in trainer.state.log_history if "loss" in e]
    return {"tokens": int(trainer.state.num_input_tokens_seen), "wall_s": wall, "peak_mb": mem.mb,
            "loss": losses[-1], "params": sum(p.numel() for p in trainer.model.parameters()),
            "precision": "bf16" if trainer.args.bf16 else "fp32",
            "checkpointing": trainer.args.gradient_checkpointing}


def ours(method: Method, variant: Variant, model_path: Path, data, out: Path, seed: int) -> dict:
    policy = device_policy()
    r = train_variant(variant, ModelSpec(str(model_path)), data, out, policy, seed, progress=False)
    # train_variant's wall time includes loading the model; time the steps alone, as for plain TRL.
    return {"tokens": r.tokens, "wall_s": r.train_s, "peak_mb": r.peak_mem_mb, "loss": r.loss_curve[-1]["loss"],
            "params": r.total_params, "precision": "bf16" if policy.bf16 else "fp32",
            "checkpointing": policy.gradient_checkpointing}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", default="builtin:smollm2-135m-instruct")
    p.add_argument("--steps", type=int, default=10)
    p.add_argument("--batch-size", type=int, default=4)
    p.add_argument("--max-length", type=int, default=256)
    p.add_argument("--methods", default="sft,lora,qlora,dpo")
    p.add_argument("--seed", type=int, default=0)
    args = p.parse_args()
    _quiet_libraries()

    model_path = resolve_model(args.model)
    data = {"sft": load_jsonl(ROOT / "experiments" / "data" / "tickets_train.jsonl", "sft"),
            "preference": load_jsonl(ROOT / "experiments" / "data" / "tickets_preference.jsonl", "preference")}
    gpu = torch.cuda.get_device_name(0) if torch.cuda.is_available() else None
    peak = next((f for name, f in PEAK_FLOPS.items() if gpu and name in gpu), None)
    rows = []
    for name in args.methods.split(","):
        method = Method(name)
        variant = Variant(name=name, method=method, train={"max_steps": args.steps, "batch_size": args.batch_size,
                                                           "max_length": args.max_length, "save_steps": 0})
        ds = data["preference" if method == Method.dpo else "sft"]
        for who, fn in (("plain TRL", plain_trl), ("harness", ours)):
            with tempfile.TemporaryDirectory() as out:
                r = fn(method, variant, model_path, ds, Path(out), args.seed)
            rows.append((name, who, r))
            gc.collect()
            if torch.cuda.is_available():
                torch.cuda.empty_cache()

    print(f"machine: {platform.machine()}, {os.cpu_count()} CPU cores, GPU {gpu or 'none'}; torch {torch.__version__}")
    print(f"model {args.model}; {args.steps} steps of {args.batch_size} examples, max length {args.max_length}, "
          f"seed {args.seed}")
    print(f"command: python benchmarks/bench_train.py --model {args.model} --steps {args.steps} "
          f"--batch-size {args.batch_size} --max-length {args.max_length} --methods {args.methods}\n")
    print("| method | trainer | precision, checkpointing | tokens/s | peak memory MB | final loss | ratio |"
          + (" MFU |" if peak else ""))
    print("|---|---|---|---|---|---|---|" + ("---|" if peak else ""))
    base = {}
    for name, who, r in rows:
        tps = r["tokens"] / r["wall_s"]
        base.setdefault(name, tps)
        mfu = f" {6 * r['params'] * tps / peak:.1%} |" if peak else ""
        print(f"| {name} | {who} | {r['precision']}, {'on' if r['checkpointing'] else 'off'} | {tps:,.0f} | "
              f"{r['peak_mb']:,.0f} | {r['loss']:.3f} | {tps / base[name]:.2f}× |{mfu}")


if __name__ == "__main__":
    main()
