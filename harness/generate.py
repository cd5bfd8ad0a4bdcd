"""Batched greedy generation for evaluation: chat template, left padding, length-sorted batches.

Sorting prompts by length before batching keeps padding (wasted compute) small; outputs are put
back in the caller's order. The settings used are returned with the outputs so that the store can
record them beside every run.
"""

from __future__ import annotations

from harness.config import GenerationSettings, PromptSettings
from harness.data import Example, Messages


def build_messages(prompt: Messages, settings: PromptSettings | None, shots: list[Example]) -> Messages:
    """A prompt variant's input: its system prompt, then few-shot turns, then the sample's own messages."""
    if settings is None or (not settings.system and not shots):
        return prompt
    head: Messages = [{"role": "system", "content": settings.system}] if settings.system else []
    for ex in shots:
        head += ex.prompt + (ex.completion or [])
    own = [m for m in prompt if not (settings.system and m["role"] == "system")]
    return head + own


def generate(model, tokenizer, prompts: list[Messages], settings: GenerationSettings, desc: str = "generate",
             progress: bool = True, temperature: float | None = None, seed: int = 0,
             prefixes: list[str] | None = None, on_batch=None, cache_implementation: str | None = None) -> list[str]:
    """Greedy unless `temperature` is given (the judge's repeated asks); sampling is seeded.
    `prefixes`: text the assistant's turn starts with, which the model continues (not returned).
    `on_batch(indices, texts)` is called after each batch (the caller's indices), e.g. to cache them.
    `cache_implementation`: transformers' key/value cache ("static": preallocated, compilable)."""
    import torch
    from tqdm.auto import tqdm
    from transformers import GenerationConfig

    # An explicit config: a model's own generation_config (sampling, penalties) must not leak in.
    sampling = {"do_sample": True, "temperature": temperature, "top_k": 0, "top_p": 1.0} if temperature else {"do_sample": False}
    gen_config = GenerationConfig(
        max_new_tokens=settings.max_new_tokens, **sampling,
        pad_token_id=tokenizer.pad_token_id, eos_token_id=tokenizer.eos_token_id,
        cache_implementation=cache_implementation,
    )
    torch.manual_seed(seed)

    tokenizer.padding_side = "left"  # decoder-only models continue from the right edge
    texts = [tokenizer.apply_chat_template(p, tokenize=False, add_generation_prompt=True) for p in prompts]
    if prefixes is not None:
        texts = [t + prefix for t, prefix in zip(texts, prefixes)]
    lengths = [len(tokenizer(t, add_special_tokens=False)["input_ids"]) for t in texts]
    order = sorted(range(len(texts)), key=lambda i: -lengths[i])
    outputs: list[str | None] = [None] * len(texts)
    device = next(model.parameters()).device
    bar = tqdm(total=len(texts), desc=desc, disable=not progress, leave=False)
    for start in range(0, len(order), settings.batch_size):
        idx = order[start : start + settings.batch_size]
        batch = tokenizer([texts[i] for i in idx], return_tensors="pt", padding=True, add_special_tokens=False)
        batch = {k: v.to(device) for k, v in batch.items()}
        with torch.inference_mode():
            out = model.generate(**batch, generation_config=gen_config)
        new = out[:, batch["input_ids"].shape[1] :]
        texts_out = [t.strip() for t in tokenizer.batch_decode(new, skip_special_tokens=True)]
        for i, text in zip(idx, texts_out):
            outputs[i] = text
        if on_batch is not None:
            on_batch(idx, texts_out)
        bar.update(len(idx))
    bar.close()
    return outputs  # type: ignore[return-value]
