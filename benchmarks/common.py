"""What the model benchmarks share: the machine line, and models with random weights built from a
known architecture (no hub here, and the embedded GGUF is too large to carry to a GPU machine).

`random:smollm2-135m` is SmolLM2-135M's architecture (the embedded model's config); `random:qwen2.5-0.5b`
is Qwen2.5-0.5B's (494M parameters, its 151,936-row vocabulary: the output layer is a large part of
a small model's cost). Both use SmolLM2's tokenizer, taken from the embedded model or from
`--tokenizer DIR`. Throughput does not depend on the weights' values; losses start near ln(vocab).
"""

from __future__ import annotations

import os
import platform
from pathlib import Path

RANDOM = {
    "smollm2-135m": dict(
        model_type="llama", hidden_size=576, intermediate_size=1536, num_hidden_layers=30, num_attention_heads=9,
        num_key_value_heads=3, head_dim=64, max_position_embeddings=8192, rms_norm_eps=1e-5,
        rope_parameters={"rope_theta": 100000.0, "rope_type": "default"}, tie_word_embeddings=True, vocab_size=49152,
    ),
    "qwen2.5-0.5b": dict(
        model_type="qwen2", hidden_size=896, intermediate_size=4864, num_hidden_layers=24, num_attention_heads=14,
        num_key_value_heads=2, max_position_embeddings=32768, rms_norm_eps=1e-6,
        rope_parameters={"rope_theta": 1000000.0, "rope_type": "default"}, tie_word_embeddings=True,
        vocab_size=151936,
    ),
}


def model_path(ref: str, tokenizer: str | None = None) -> Path:
    """A model directory for `ref`: `random:NAME` (built once into the harness cache), or anything
    `harness.models.resolve_model` takes."""
    from harness.models import _cached, resolve_model

    if not ref.startswith("random:"):
        return resolve_model(ref)
    name = ref.removeprefix("random:")
    if name not in RANDOM:
        raise SystemExit(f"--model: unknown {ref!r}; expected one of " + ", ".join(f"random:{n}" for n in RANDOM))
    tok_dir = Path(tokenizer) if tokenizer else resolve_model("builtin:smollm2-135m-instruct")
    return _cached(f"random-{name}", lambda dest: _build_random(RANDOM[name], tok_dir, dest))


def _build_random(spec: dict, tok_dir: Path, dest: Path) -> None:
    import torch
    from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer, GenerationConfig

    tok = AutoTokenizer.from_pretrained(tok_dir)
    spec = dict(spec)
    config = AutoConfig.for_model(spec.pop("model_type"), **spec, bos_token_id=tok.bos_token_id,
                                  eos_token_id=tok.eos_token_id, pad_token_id=tok.pad_token_id)
    torch.manual_seed(0)
    model = AutoModelForCausalLM.from_config(config, dtype=torch.float32)
    model.generation_config = GenerationConfig(eos_token_id=tok.eos_token_id, pad_token_id=tok.pad_token_id)
    model.save_pretrained(dest, safe_serialization=True)
    tok.save_pretrained(dest)


def machine_line() -> str:
    import torch

    gpu = torch.cuda.get_device_name(0) if torch.cuda.is_available() else "none"
    return (f"machine: {platform.machine()}, {os.cpu_count()} CPU cores, GPU {gpu}; Python {platform.python_version()}, "
            f"torch {torch.__version__}")
