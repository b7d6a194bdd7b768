"""Cost accounting (docs/semantics.md §7): formulas, and exact FLOPs / KV bytes against real tiny models."""

from __future__ import annotations

import json
import re

import pytest
import torch
from tests.helpers.models import llava_batch, llava_prompt, tiny_llava
from torch.utils.flop_counter import FlopCounterMode, sdpa_flop_count
from transformers import LlamaConfig, LlavaConfig, Qwen2_5_VLConfig, Qwen2_5_VLForConditionalGeneration

from reroute.bench import output_cache
from reroute.budgets import preset, preset_names
from reroute.cli import main
from reroute.config import RoutingConfig
from reroute.budgets.cost import DecoderDims, cost, decoder_dims, exact_layer_flops, paper_layer_flops

# --------------------------------------------------------------------------------------
# measuring: FlopCounterMode over the decoder layers only
# --------------------------------------------------------------------------------------


def _sdpa_cpu(query_shape, key_shape, value_shape, *args, out_shape=None, **kwargs) -> int:
    return sdpa_flop_count(query_shape, key_shape, value_shape)


# torch counts SDPA's GPU kernels (full rectangle, "not accounting for causal") but has no
# formula for the CPU flash kernel; give it torch's own SDPA formula so SDPA runs are counted.
SDPA_CPU = {torch.ops.aten._scaled_dot_product_flash_attention_for_cpu: _sdpa_cpu}
LAYER = re.compile(r"\.language_model\.layers\.(\d+)$")


def decoder_flops(model, **inputs):
    """(per-layer FLOPs of the decoder layers, FLOPs of the whole decoder module, output)."""
    with FlopCounterMode(display=False, custom_mapping=SDPA_CPU) as counter, torch.no_grad():
        out = model(**inputs)
    per_layer, decoder = {}, None
    for name, ops in counter.get_flop_counts().items():
        if match := LAYER.search(name):
            per_layer[int(match.group(1))] = sum(ops.values())
        elif name.endswith(".language_model"):
            decoder = sum(ops.values())
    return [per_layer[i] for i in range(len(per_layer))], decoder, out


def cache_bytes(cache) -> list[int]:
    return [
        layer.keys.numel() * layer.keys.element_size() + layer.values.numel() * layer.values.element_size()
        for layer in cache.layers
    ]


# --------------------------------------------------------------------------------------
# tiny Qwen2.5-VL (LLaVA comes from tests/models.py)
# --------------------------------------------------------------------------------------

QWEN_IMAGE, QWEN_START, QWEN_END = 150, 152, 153


def tiny_qwen(attn: str, num_layers: int = 3) -> Qwen2_5_VLForConditionalGeneration:
    torch.manual_seed(0)
    config = Qwen2_5_VLConfig(
        text_config=dict(
            hidden_size=64, intermediate_size=96, num_hidden_layers=num_layers, num_attention_heads=4,
            num_key_value_heads=2, vocab_size=160, max_position_embeddings=512,
            rope_parameters={"rope_type": "default", "rope_theta": 10000.0, "mrope_section": [2, 3, 3]},
            bos_token_id=1, eos_token_id=2, pad_token_id=0,
        ),
        vision_config=dict(
            depth=2, hidden_size=32, intermediate_size=48, num_heads=2, out_hidden_size=64, patch_size=14,
            spatial_merge_size=2, temporal_patch_size=2, window_size=56, fullatt_block_indexes=[1],
        ),
        image_token_id=QWEN_IMAGE, video_token_id=151, vision_start_token_id=QWEN_START,
        vision_end_token_id=QWEN_END, bos_token_id=1, eos_token_id=2, pad_token_id=0,
    )  # fmt: skip
    config._attn_implementation = attn
    return Qwen2_5_VLForConditionalGeneration(config).eval()


def qwen_inputs(grid=(1, 4, 6), text_before=4, text_after=5):
    """One image of ``grid`` patches (t, h, w): h * w / 4 visual tokens after the 2x2 merge."""
    g = torch.Generator().manual_seed(0)
    grid_thw = torch.tensor([grid])
    patches = int(grid_thw.prod())
    visual = patches // 4
    ids = (
        torch.randint(5, 100, (text_before,), generator=g).tolist()
        + [QWEN_START] + [QWEN_IMAGE] * visual + [QWEN_END]
        + torch.randint(5, 100, (text_after,), generator=g).tolist()
    )  # fmt: skip
    inputs = {
        "input_ids": torch.tensor([ids]),
        "attention_mask": torch.ones(1, len(ids), dtype=torch.long),
        "pixel_values": torch.randn(patches, 3 * 2 * 14 * 14, generator=g),
        "image_grid_thw": grid_thw,
    }
    return inputs, visual, len(ids) - visual


# --------------------------------------------------------------------------------------
# formulas
# --------------------------------------------------------------------------------------

def qwen_7b_shape() -> Qwen2_5_VLConfig:
    return Qwen2_5_VLConfig(
        text_config=dict(
            hidden_size=3584, intermediate_size=18944, num_hidden_layers=28, num_attention_heads=28,
            num_key_value_heads=4,
        )
    )


TINY = DecoderDims(hidden_size=64, intermediate_size=96, num_layers=4, num_heads=4, num_kv_heads=2, head_dim=16)


def test_exact_layer_flops_by_hand():
    n = 24
    projections = 2 * n * 64 * 64 * 2 + 2 * n * 64 * 32 * 2  # q, o (64 wide); k, v (2 kv heads x 16)
    mlp = 3 * 2 * n * 64 * 96
    attention = 2 * (2 * 4 * n * n * 16)  # QK^T and AV, 4 query heads
    assert exact_layer_flops(n, TINY) == projections + mlp + attention == 1_622_016
    # causal: query i sees i + 1 keys, n (n + 1) / 2 pairs instead of n^2
    assert exact_layer_flops(n, TINY, causal=True) == projections + mlp + 2 * (2 * 4 * (n * (n + 1) // 2) * 16)
    # a decode step: one query over 31 keys (causal changes nothing: it sees them all)
    assert exact_layer_flops(1, TINY, kv_len=31) == exact_layer_flops(1, TINY, kv_len=31, causal=True)
    assert exact_layer_flops(1, TINY, kv_len=31) == 2 * 64 * 192 + 3 * 2 * 64 * 96 + 2 * 2 * 4 * 31 * 16


def test_paper_formula_on_llava_7b():
    llava = LlavaConfig(text_config=LlamaConfig(hidden_size=4096, intermediate_size=11008, num_hidden_layers=32))
    report = cost(None, llava, num_visual=576, num_text=64)
    n, d, m = 640, 4096, 11008
    assert report.flops_paper == 32 * (4 * n * d * d + 2 * n * n * d + 2 * n * d * m)
    assert paper_layer_flops(n, decoder_dims(llava)) == 4 * n * d * d + 2 * n * n * d + 2 * n * d * m
    assert report.kv_cache_bytes == 32 * 2 * 640 * 4096 * 2  # fp16 default: 320 MiB
    assert report.vanilla is None and report.flops_paper_ratio == report.kv_cache_ratio == 1.0


def test_decoder_dims_of_configs():
    qwen = qwen_7b_shape()
    assert decoder_dims(qwen) == DecoderDims(3584, 18944, 28, 28, 4, 128)  # head_dim from hidden / heads
    llava = LlavaConfig(text_config=LlamaConfig(hidden_size=4096, intermediate_size=11008, num_hidden_layers=32))
    assert decoder_dims(llava) == DecoderDims(4096, 11008, 32, 32, 32, 128)
    with pytest.raises(ValueError) as info:
        decoder_dims(object())
    assert str(info.value) == (
        "object lacks hidden_size, intermediate_size, num_hidden_layers, num_attention_heads: pass a transformers "
        "model or config of a decoder (or a VLM whose get_text_config() returns one)"
    )


def test_routed_report_counts_and_ratios():
    qwen = qwen_7b_shape()
    config = preset("pdrop", 128, model=qwen, ratios="paper")
    report = cost(config, qwen, num_visual=576, num_text=64, batch_size=3, dtype_bytes=2)
    counts = (576, 576, *(263,) * 4, *(120,) * 7, *(54,) * 7, *(25,) * 8)  # layers 2, 6, 13, 20; floor(576 r)
    assert report.visual_per_layer == counts
    assert report.tokens_per_layer == tuple(64 + c for c in counts)
    assert report.avg_t == sum(counts) / 28
    assert report.avg_t_continuous == pytest.approx(129.73, abs=0.01)
    assert report.kv_cache_bytes == 3 * sum(2 * (64 + c) * 4 * 128 * 2 for c in counts)
    assert report.kv_cache_ratio == pytest.approx(sum(64 + c for c in counts) / (28 * 640))
    assert report.flops_exact == 3 * sum(exact_layer_flops(64 + c, decoder_dims(qwen)) for c in counts)
    assert report.vanilla == cost(None, qwen, num_visual=576, num_text=64, batch_size=3, dtype_bytes=2)
    assert 0 < report.flops_exact_causal_ratio < 1 and 0 < report.decode_flops_exact_ratio < 1
    with pytest.raises(ValueError) as info:
        cost(RoutingConfig("remove", (30,), (0.5,)), qwen)
    assert str(info.value) == "decision layer 30 is outside the decoder's 28 layers: use decision layers below 28"


# --------------------------------------------------------------------------------------
# exact == FlopCounterMode, KV bytes == the cache, on real tiny models (vanilla)
# --------------------------------------------------------------------------------------


@pytest.mark.parametrize("attn", ["eager", "sdpa"])
def test_exact_flops_equal_flop_counter_tiny_llava(attn):
    model = tiny_llava(attn, num_layers=4)
    inputs = llava_batch([llava_prompt(1, seed=0), llava_prompt(1, seed=1)])  # batch of 2, 16 visual each
    num_text = inputs["input_ids"].shape[1] - 16
    report = cost(None, model, num_visual=16, num_text=num_text, batch_size=2)
    per_layer, decoder, out = decoder_flops(model, **inputs, use_cache=True)
    assert per_layer == list(report.flops_exact_per_layer)
    assert sum(per_layer) == report.flops_exact
    assert decoder == report.flops_exact  # nothing else in the decoder runs a matmul (lm_head is outside)
    cache = output_cache(out)
    assert report.dtype_bytes == 4  # the tiny model is float32
    assert sum(cache_bytes(cache)) == report.kv_cache_bytes
    assert cache_bytes(cache) == list(report.kv_cache_bytes_per_layer)

    # one decode step: each layer attends to its cache plus the new token
    step = {
        "input_ids": torch.full((2, 1), 7),
        "attention_mask": torch.cat([inputs["attention_mask"], torch.ones(2, 1, dtype=torch.long)], dim=1),
        "cache": cache,
        "use_cache": True,
    }
    per_layer, _, _ = decoder_flops(model, **step)
    assert sum(per_layer) == report.decode_flops_exact


@pytest.mark.parametrize("attn", ["eager", "sdpa"])
def test_exact_flops_equal_flop_counter_tiny_qwen2_5_vl(attn):
    model = tiny_qwen(attn)
    inputs, num_visual, num_text = qwen_inputs()
    report = cost(None, model, num_visual=num_visual, num_text=num_text)
    assert num_visual == 6 and report.dims == DecoderDims(64, 96, 3, 4, 2, 16)
    per_layer, decoder, out = decoder_flops(model, **inputs, use_cache=True)
    assert per_layer == list(report.flops_exact_per_layer)
    assert decoder == report.flops_exact
    assert sum(cache_bytes(output_cache(out))) == report.kv_cache_bytes


def test_flop_counter_sees_attention_at_all():
    """Guard for the comparison above: without the CPU SDPA formula, attention would be invisible."""
    model = tiny_llava("eager", num_layers=2)
    inputs = llava_batch([llava_prompt(1)])
    n = inputs["input_ids"].shape[1]
    per_layer, _, _ = decoder_flops(model, **inputs)
    no_attention = exact_layer_flops(n, decoder_dims(model)) - 2 * 2 * 4 * n * n * 16
    assert per_layer[0] - no_attention == 2 * 2 * 4 * n * n * 16


# --------------------------------------------------------------------------------------
# `reroute cost`
# --------------------------------------------------------------------------------------


def test_cli_table_llava(capsys, tmp_path):
    path = tmp_path / "cost.json"
    assert main(["cost", "--ratios", "paper", "--json", str(path)]) == 0
    out = capsys.readouterr().out
    rows = [line.split() for line in out.splitlines() if line.split() and line.split()[0] in
            ("vanilla", "fastv", "pdrop", "reroute_vs_fastv", "reroute_vs_pdrop")]  # fmt: skip
    assert len(rows) == 13
    assert rows[0][:2] == ["vanilla", "-"]
    pdrop_64 = next(r for r in rows if r[:2] == ["pdrop", "64"])
    assert pdrop_64[2] == "0.2789,0.0937,0.0315,0.0106" and pdrop_64[3] == "2,7,15,23" and pdrop_64[4] == "80.8"
    rvp_64 = next(r for r in rows if r[:2] == ["reroute_vs_pdrop", "64"])
    assert rvp_64[4] == "84.2"
    data = json.loads(path.read_text())
    assert data[0]["preset"] == "vanilla"  # vanilla, 4 presets and nuwa, nuwa_reroute x 3 tiers, then later methods
    # a method that publishes no set at a tier has no row there (V2Drop: one setting, docs/semantics.md §20)
    assert [(d["preset"], d["tier"]) for d in data if "v2drop" in d["preset"]] == [("v2drop", 192), ("reroute_vs_v2drop", 192)]
    assert [d["preset"] for d in data[13:19]] == ["nuwa"] * 3 + ["nuwa_reroute"] * 3
    assert [d["avg_t"] for d in data[13:16]] == [192.0, 128.0, 64.0]
    assert data[0]["preset"] == "vanilla" and data[0]["flops_paper_ratio"] == 1.0
    assert data[4]["config"]["keep_ratios"] == [0.5965, 0.3558, 0.2123, 0.1266]


def test_cli_table_qwen_solved(capsys):
    assert main(["cost", "--model", "qwen2.5-vl-7b", "--num-visual", "1024", "--num-text", "100"]) == 0
    out = capsys.readouterr().out
    assert "28 decoder layers, hidden 3584, MLP 18944, 28 heads / 4 kv heads x 128" in out
    section_4 = ("fastv", "pdrop", "reroute_vs_fastv", "reroute_vs_pdrop")
    rows = [line.split() for line in out.splitlines() if line.split() and line.split()[0] in section_4]
    assert len(rows) == 12
    assert "tiers 192/128/64 (of 576 tokens) scaled to 1024 visual tokens" in out
    assert [row[1] for row in rows[:3]] == ["341.3", "227.6", "113.8"]  # 192, 128, 64 x 1024 / 576
    assert all(abs(float(row[4]) - float(row[1])) <= 0.05 for row in rows)  # solved: every tier hit exactly
    assert {row[3] for row in rows} == {"3", "2,6,13,20", "3,6,13,20"}


def test_cli_error(capsys):
    assert main(["cost", "--num-visual", "0"]) == 2
    assert capsys.readouterr().err == (
        "reroute cost: --num-visual must be at least 1 and --num-text at least 0, got 0 and 64\n"
    )


def test_rules_without_an_attention_row_score_for_free():
    """Random and V2Drop read no query row and project no key: no scoring FLOPs; DART projects keys."""
    import reroute
    from reroute.backbones import released_shapes

    llava = released_shapes()["llava-1.5-7b"].config()
    for name in ("random", "reroute_vs_random", "v2drop", "reroute_vs_v2drop"):
        assert reroute.cost(reroute.preset(name, tier=128, model=llava), llava).scoring_flops == 0, name
    assert reroute.cost(reroute.preset("dart", tier=128, model=llava), llava).scoring_flops > 0
