"""`reroute bench` smoke test on the tiny shape (a few seconds): the JSON is well-formed, the
ratios are finite, and what the benchmark reports agrees with what it measures."""

from __future__ import annotations

import json
import math

import pytest
import torch

import reroute
from reroute.bench import (
    build_model,
    decoder_flops,
    kv_cache_bytes,
    make_inputs,
    measure_memory,
    output_cache,
    scorer_memory,
    time_prefill,
)
from reroute.bench.measure import round_robin
from reroute.bench.speedups import add_speedups
from reroute.budgets.cost import decoder_dims
from reroute.cli import main
from reroute.config import RoutingConfig

TINY_VISUAL = 16  # 8 px images, 2 px patches


@pytest.fixture(scope="module")
def bench_run(tmp_path_factory):
    out = tmp_path_factory.mktemp("bench")
    argv = [
        "bench", "--shape", "tiny", "--tiers", "128,64", "--repeats", "1", "--warmup", "0", "--new-tokens", "3",
        "--execution-pairs", "1", "--images", "1,2", "--batch-sizes", "1,2",
        "--json", str(out / "bench.json"), "--plot", str(out / "bench.png"),
    ]  # fmt: skip
    threads = torch.get_num_threads()
    try:
        assert main(argv) == 0
    finally:
        torch.set_num_threads(threads)
    with open(out / "bench.json") as f:
        return json.load(f), out


def _finite(x) -> bool:
    return isinstance(x, (int, float)) and math.isfinite(x)


def test_json_is_complete_and_ratios_finite(bench_run):
    result, out = bench_run
    assert (out / "bench.png").stat().st_size > 0
    assert result["prompt"] == {"length": 64 + TINY_VISUAL, "visual_tokens": TINY_VISUAL, "text_tokens": 64}
    names = [r["name"] for r in result["latency"]]
    assert names[:2] == ["vanilla", "reroute keep=1.0"]
    for tier in ("128", "64"):
        for method in ("fastv remove", "pdrop remove", "reroute per-layer", "reroute stage-wise"):
            assert f"{method} @{tier}" in names
    for r in result["latency"]:
        for key in ("prefill_ms", "decoder_ms", "decode_ms_per_token", "prefill_speedup", "decoder_speedup",
                    "flops_speedup", "flops_speedup_exact_causal", "efficiency", "decoder_efficiency"):  # fmt: skip
            assert _finite(r[key]) and r[key] > 0, (r["name"], key, r[key])
        assert r["peak_bytes"] > 0 and r["kv_cache_bytes"] > 0
    vanilla = result["latency"][0]
    assert vanilla["flops_speedup"] == 1.0 and vanilla["prefill_speedup"] == 1.0
    assert [s["visual_tokens"] for s in result["scaling"]] == [TINY_VISUAL, 2 * TINY_VISUAL]
    for s in result["scaling"]:
        assert all(_finite(c["prefill_speedup"]) for c in s["configs"])
        assert s["scorer"]["scorer_peak_bytes"] > 0
    batches = {(r["batch"], r["name"]) for r in result["batch"]}
    assert batches == {(b, n) for b in (1, 2) for n in ("vanilla", "reroute stage-wise @64")}
    assert all(_finite(r["tokens_per_s"]) for r in result["batch"])
    assert {t["target"].split(":")[0] for t in result["targets"]} >= {"routing overhead at keep ratio 1.0 <= 3 %"}
    assert _finite(result["execution"]["per_layer_over_stagewise"])


def test_measured_kv_cache_equals_the_formula_and_the_cache_tensors(bench_run):
    result, _ = bench_run
    model = build_model("tiny")
    for r in result["latency"]:
        assert r["kv_cache_bytes"] == r["kv_cache_bytes_expected"], r["name"]
        config = None if r["config"] is None else RoutingConfig(**r["config"])
        predicted = reroute.cost(config, model, num_visual=TINY_VISUAL, num_text=64)
        assert r["kv_cache_bytes"] == predicted.kv_cache_bytes, r["name"]
    # routing shrinks the cache by exactly the visual tokens each layer no longer holds
    by_name = {r["name"]: r for r in result["latency"]}
    assert by_name["reroute stage-wise @64"]["kv_cache_bytes"] < by_name["vanilla"]["kv_cache_bytes"]


def test_theoretical_flops_come_from_the_traced_per_layer_counts(bench_run):
    result, _ = bench_run
    model = build_model("tiny")
    dims = decoder_dims(model)
    for r in result["latency"]:
        assert r["flops"] == decoder_flops(dims, [r["tokens_per_layer"]])
        config = None if r["config"] is None else RoutingConfig(**r["config"])
        predicted = reroute.cost(config, model, num_visual=TINY_VISUAL, num_text=64)
        assert r["tokens_per_layer"] == list(predicted.tokens_per_layer), r["name"]
        assert r["flops"]["paper"] == predicted.flops_paper, r["name"]
        assert r["flops_speedup"] == pytest.approx(1 / predicted.flops_paper_ratio)


@torch.no_grad()
def test_cache_bytes_and_peak_memory_of_one_routed_prefill():
    model = build_model("tiny")
    inputs = make_inputs(model)
    config = RoutingConfig("reroute", (1, 3, 6, 9), (0.5, 0.5, 0.25, 0.125))
    with reroute.apply(model, config) as handle:
        timing, peak, retained = measure_memory(lambda: time_prefill(model, inputs), model.device)
        cache = output_cache(timing.out)
        measured = kv_cache_bytes(cache)
        assert measured == sum(
            layer.keys.numel() * layer.keys.element_size() + layer.values.numel() * layer.values.element_size()
            for layer in cache.layers
        )
        assert [layer.keys.shape[2] for layer in cache.layers] == list(handle.trace.cache_lengths)
    # the cache is allocated during the prefill and is still alive after it
    assert retained >= measured and peak >= retained
    assert timing.wall >= timing.decoder > 0


@torch.no_grad()
def test_scorer_memory_is_linear_in_length_not_quadratic():
    model = build_model("tiny", num_layers=2)
    short = scorer_memory(model, make_inputs(model, num_images=32), layer_index=1)  # 576 tokens
    long = scorer_memory(model, make_inputs(model, num_images=128, text_lengths=(136,)), layer_index=1)  # 2184 tokens
    growth = long["length"] / short["length"]
    assert long["scorer_peak_bytes"] < 1.3 * growth * short["scorer_peak_bytes"]  # O(L), not O(L^2)
    assert long["scorer_peak_bytes"] < long["full_matrix_head_mean_bytes"] / 8


def test_round_robin_visits_every_item_once_per_round_and_rotates_the_start():
    rounds = round_robin(["a", "b", "c"], 4)
    assert [sorted(r) for r in rounds] == [["a", "b", "c"]] * 4
    assert [r[0] for r in rounds] == ["a", "b", "c", "a"]  # no configuration always runs first (or last)
    assert rounds[1] == ["b", "c", "a"]


def test_speedups_divide_the_vanilla_row_by_each_row():
    flops = lambda paper, causal: {"paper": paper, "exact_causal": causal}  # noqa: E731
    rows = [
        {"method": "fastv", "prefill_ms": 5.0, "decoder_ms": 4.0, "flops": flops(40, 30)},
        {"method": "vanilla", "prefill_ms": 10.0, "decoder_ms": 8.0, "flops": flops(100, 60)},
    ]
    add_speedups(rows)
    fastv, vanilla = rows
    assert vanilla["prefill_speedup"] == vanilla["flops_speedup"] == 1.0 and vanilla["overhead"] == 0.0
    assert fastv["prefill_speedup"] == 2.0 and fastv["decoder_speedup"] == 2.0
    assert fastv["flops_speedup"] == 2.5 and fastv["flops_speedup_exact_causal"] == 2.0
    assert fastv["efficiency"] == 2.0 / 2.5 and fastv["decoder_efficiency_exact"] == 1.0
    assert fastv["overhead"] == -0.5 and fastv["decode_speedup"] is None  # no decode timed in this row
    assert "prefill_speedup_min" not in fastv  # only rows with best-of-repeats times get those
