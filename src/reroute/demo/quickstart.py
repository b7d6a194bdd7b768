"""The quickstart on a tiny random LLaVA built from the real config classes (no download).

It shows the whole user path — `apply`, the model's own forward and `generate()`, the trace,
`restore()` — and is what `reroute demo` runs when the bundled demo model is not installed.
"""

from __future__ import annotations

import torch
from transformers import LlavaForConditionalGeneration

import reroute
from reroute.backbones.released import build_llava, llava_config


def tiny_random_llava(num_layers: int = 8, seed: int = 0) -> LlavaForConditionalGeneration:
    """LLaVA-1.5's architecture at toy size: 64 visual tokens per image, 8 decoder layers."""
    config = llava_config(
        text=dict(
            vocab_size=128, hidden_size=128, intermediate_size=256, num_hidden_layers=num_layers,
            num_attention_heads=4, num_key_value_heads=4, pad_token_id=0,
        ),
        vision=dict(
            hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4, image_size=64, patch_size=8
        ),
        image_token_id=3,
    )
    return build_llava(config, seed=seed)


def run_quickstart() -> int:
    model = tiny_random_llava()
    image_tokens = 64
    input_ids = torch.tensor([[1, 10, 11] + [3] * image_tokens + [12, 13, 14, 15]])
    inputs = {
        "input_ids": input_ids,
        "attention_mask": torch.ones_like(input_ids),
        "pixel_values": torch.randn(1, 3, 64, 64),
    }
    config = reroute.RoutingConfig(action="reroute", decision_layers=(2, 4, 6), keep_ratios=(0.25, 0.25, 0.125))
    print(f"config: {config}")
    with torch.no_grad():
        vanilla = model.generate(**inputs, max_new_tokens=8, do_sample=False)
        with reroute.apply(model, config) as handle:
            routed = model.generate(**inputs, max_new_tokens=8, do_sample=False)
            print(handle.trace.summary())
            print(f"KV cache length per layer after prefill: {list(handle.trace.cache_lengths)}")
    print(f"vanilla ids: {vanilla[0, -8:].tolist()}")
    print(f"routed ids:  {routed[0, -8:].tolist()}")
    patched = [("generate", model), ("forward", model.model), ("forward", model.model.language_model)]
    print("model restored:", all(name not in module.__dict__ for name, module in patched))
    return 0


if __name__ == "__main__":
    raise SystemExit(run_quickstart())
