"""Cost predictions (docs/semantics.md §7) against routed forwards of tiny models: what `reroute.budgets.cost`
predicts is what the engine runs (FLOPs by FlopCounterMode, KV cache by its tensors)."""

from __future__ import annotations

import pytest
import torch
from tests.helpers.models import llava_batch, llava_prompt, tiny_llava
from tests.budgets.test_cost import cache_bytes, decoder_flops, output_cache, qwen_inputs, tiny_qwen

import reroute
from reroute.budgets import preset
from reroute.config import RoutingConfig
from reroute.budgets.cost import cost

NUM_LAYERS = 6
NUM_VISUAL = 16  # one tiny-LLaVA image


def configs() -> dict[str, RoutingConfig]:
    tier = 128 * NUM_VISUAL / 576  # tier 128 of 576, at 16 tokens
    return {
        "remove": RoutingConfig("remove", (2, 4), (0.5, 0.25)),
        "reroute": RoutingConfig("reroute", (1, 3, 5), (0.5, 0.5, 0.25)),
        "reroute_per_layer": RoutingConfig("reroute", (1, 3, 5), (0.5, 0.5, 0.25), execution="per_layer"),
        # decisions that keep every candidate score nothing (and cost says so)
        "reroute_keep_all_first": RoutingConfig("reroute", (1, 3), (1.0, 0.5)),
        "remove_keep_survivors": RoutingConfig("remove", (2, 4), (0.5, 0.5)),
        "pdrop_preset": preset("pdrop", tier, num_layers=NUM_LAYERS, num_visual=NUM_VISUAL),
        "reroute_vs_pdrop_preset": preset("reroute_vs_pdrop", tier, num_layers=NUM_LAYERS, num_visual=NUM_VISUAL),
    }


def check_routed(model, config, inputs, num_visual, num_text, batch_size):
    """Prefill and one decode step under routing, each compared with the prediction."""
    report = cost(config, model, num_visual=num_visual, num_text=num_text, batch_size=batch_size)
    with reroute.apply(model, config) as handle:
        per_layer, decoder, out = decoder_flops(model, **inputs, use_cache=True)
        for sample in handle.trace.samples:
            assert sample.visual_per_layer == report.visual_per_layer
        assert per_layer == list(report.flops_exact_per_layer)
        assert decoder - sum(per_layer) == report.scoring_flops  # one query row per sample, never L x L
        cache = output_cache(out)
        assert cache_bytes(cache) == list(report.kv_cache_bytes_per_layer)

        step = {
            "input_ids": torch.full((batch_size, 1), 7),
            "attention_mask": torch.cat(
                [inputs["attention_mask"], torch.ones(batch_size, 1, dtype=torch.long)], dim=1
            ),
            "cache": cache,
            "use_cache": True,
        }
        per_layer, _, _ = decoder_flops(model, **step)
        assert sum(per_layer) == report.decode_flops_exact


@pytest.mark.parametrize("attn", ["eager", "sdpa"])
@pytest.mark.parametrize("name", sorted(configs()))
def test_routed_llava_matches_prediction(attn, name):
    model = tiny_llava(attn, num_layers=NUM_LAYERS)
    inputs = llava_batch([llava_prompt(1, seed=0), llava_prompt(1, seed=1)])  # equal lengths, no padding
    num_text = inputs["input_ids"].shape[1] - NUM_VISUAL
    check_routed(model, configs()[name], inputs, NUM_VISUAL, num_text, batch_size=2)


@pytest.mark.parametrize("action", ["remove", "reroute"])
def test_routed_qwen2_5_vl_matches_prediction(action):
    model = tiny_qwen("sdpa", num_layers=4)
    inputs, num_visual, num_text = qwen_inputs(grid=(1, 8, 8))  # 16 visual tokens
    config = RoutingConfig(action, (1, 2), (0.5, 0.25))
    check_routed(model, config, inputs, num_visual, num_text, batch_size=1)
