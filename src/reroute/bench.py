"""Prefill/decode latency, memory and throughput of vanilla, remove and reroute, side by side
with the FLOPs limit (`reroute bench`, benchmarks/bench_latency.py).

What is timed is the user's path: a real ``LlavaForConditionalGeneration`` built from
transformers' config classes with random weights (nothing is downloaded), routed with
``reroute.apply`` and called through its own ``forward`` (prefill, ``use_cache=True``,
``logits_to_keep=1`` as ``generate`` does) and its own ``generate`` (decode). The vision tower
runs too: on the CPU shape it is a tiny CLIP whose 24 x 24 patch grid gives LLaVA-1.5's 576
visual tokens per image (48 px images, 2 px patches), so its cost is small and measured apart.

Methodology:

- one process, one model; every configuration is applied and restored around its own
  measurement, round-robin over the configurations in every repeat (the starting point
  rotates), after warm-up rounds; medians are reported (the best of the repeats too, in the
  JSON). A machine shared with other jobs slows every configuration of a round alike.
  On CPU, torch runs on ``threads`` threads (default 1) and glibc's malloc is tuned so that
  steady-state forwards take no page faults (`tune_malloc`: without it the same forward
  varied by +-30 %).
- prefill is one forward; its wall time, this process's CPU time and the wall time inside
  the decoder (the text model's forward, routing included; no vision tower, no lm_head)
  are recorded. Decode is timed from the timestamps a logits processor takes after every
  generated token of ``generate``: ``(t_last - t_first) / (new_tokens - 1)``.
- theoretical speedup: decoder FLOPs by the paper formula ``4nd^2 + 2n^2d + 2ndm`` per layer
  (`reroute.cost.paper_layer_flops`) over the per-layer token counts the forward really
  ran (``handle.trace``), vanilla over routed; also by the exact count of every matmul with
  causal attention (`reroute.cost.exact_layer_flops`). ``efficiency = measured / theoretical``.
- stage-wise against per-layer execution: back-to-back pairs (their difference is ~1 % of a
  prefill, below the noise of a round-robin median), and the bytes and time the engine's
  gathers and scatters take in each (`data_movement`).
- memory (an untimed extra forward per configuration): on CPU the bytes torch allocates
  during the prefill, from the profiler's allocation events (``profile_memory=True``):
  ``peak`` is the highest live total above what existed before the call (activations, KV
  cache, logits; not the weights), ``retained`` what is still alive after it (the KV cache and
  the outputs). On CUDA ``torch.cuda.max_memory_allocated`` minus the bytes before the call.
  KV-cache bytes are the cache's own tensors after prefill. The scaling section times its
  (single) runs inside that profiler: microseconds per operator, against operators of
  milliseconds to seconds there.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import dataclasses
import gc
import json
import math
import statistics
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import torch

import reroute
from reroute.budget import preset as budget_preset
from reroute.config import RoutingConfig
from reroute.cost import DecoderDims, decoder_dims, exact_layer_flops, paper_layer_flops
from reroute.model_shapes import MODEL_SHAPES
from reroute.trace import Trace

MiB = 2**20


# --------------------------------------------------------------------------------------
# model shapes
# --------------------------------------------------------------------------------------


@dataclass(frozen=True)
class BenchShape:
    """A LLaVA-1.5-shaped model: Llama decoder dimensions and a CLIP tower."""

    name: str
    description: str
    hidden_size: int
    intermediate_size: int
    num_layers: int
    num_heads: int
    num_kv_heads: int
    vocab_size: int
    vision: dict[str, int]
    dtype_cpu: str = "float32"
    dtype_cuda: str = "float16"


def shape_of_released(name: str, description: str, **overrides: Any) -> BenchShape:
    """The `BenchShape` of a released LLaVA config from `reroute.model_shapes` (one source for its dimensions)."""
    config = MODEL_SHAPES[name]()
    text, vision = config.text_config, config.vision_config
    return BenchShape(
        name=name,
        description=description,
        hidden_size=text.hidden_size,
        intermediate_size=text.intermediate_size,
        num_layers=text.num_hidden_layers,
        num_heads=text.num_attention_heads,
        num_kv_heads=text.num_key_value_heads,
        vocab_size=text.vocab_size,
        vision={
            key: getattr(vision, key)
            for key in ("hidden_size", "intermediate_size", "num_hidden_layers", "num_attention_heads",
                        "image_size", "patch_size", "projection_dim")
        },
        **overrides,
    )


SHAPES: dict[str, BenchShape] = {
    "llava-1.5-narrow": BenchShape(
        name="llava-1.5-narrow",
        description=(
            "LLaVA-1.5-7B at 1/8 width: its 32 decoder layers, 576 visual tokens per image, hidden 512, "
            "MLP 1376, 8 heads, vocab 32064; a 2-layer CLIP tower on 48 px images with 2 px patches"
        ),
        hidden_size=512,
        intermediate_size=1376,
        num_layers=32,
        num_heads=8,
        num_kv_heads=8,
        vocab_size=32064,
        vision=dict(
            hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=2,
            image_size=48, patch_size=2, projection_dim=32,
        ),
    ),
    "tiny": BenchShape(
        name="tiny",
        description="a toy LLaVA for smoke tests: 12 layers, hidden 64, GQA (4 heads, 2 key/value heads), 16 visual tokens per image",
        hidden_size=64,
        intermediate_size=128,
        num_layers=12,
        num_heads=4,
        num_kv_heads=2,
        vocab_size=32064,
        vision=dict(
            hidden_size=16, intermediate_size=32, num_hidden_layers=2, num_attention_heads=2,
            image_size=8, patch_size=2, projection_dim=16,
        ),
    ),
}
SHAPES["llava-1.5-7b"] = shape_of_released(
    "llava-1.5-7b",
    "LLaVA-1.5-7B: Vicuna-7B decoder, CLIP ViT-L/14 at 336 px (576 visual tokens)",
    dtype_cpu="bfloat16",
)

IMAGE_TOKEN_ID = 32000  # llava-hf's <image>
PAD_TOKEN_ID = 32001  # llava-hf's <pad>


def build_model(
    shape: BenchShape | str,
    *,
    device: str | torch.device = "cpu",
    dtype: torch.dtype | None = None,
    attn: str = "sdpa",
    num_layers: int | None = None,
    seed: int = 0,
):
    """A ``LlavaForConditionalGeneration`` of ``shape`` with random weights, built on ``device``."""
    from transformers import CLIPVisionConfig, LlamaConfig, LlavaConfig, LlavaForConditionalGeneration

    shape = SHAPES[shape] if isinstance(shape, str) else shape
    device = torch.device(device)
    if dtype is None:
        dtype = getattr(torch, shape.dtype_cuda if device.type == "cuda" else shape.dtype_cpu)
    text = LlamaConfig(
        vocab_size=shape.vocab_size,
        hidden_size=shape.hidden_size,
        intermediate_size=shape.intermediate_size,
        num_hidden_layers=num_layers or shape.num_layers,
        num_attention_heads=shape.num_heads,
        num_key_value_heads=shape.num_kv_heads,
        max_position_embeddings=32768,
        pad_token_id=PAD_TOKEN_ID,
        bos_token_id=1,
        eos_token_id=2,
    )
    config = LlavaConfig(
        vision_config=CLIPVisionConfig(**shape.vision),
        text_config=text,
        image_token_id=IMAGE_TOKEN_ID,
        vision_feature_select_strategy="default",  # drop CLS: (image / patch)^2 tokens per image
        vision_feature_layer=-2,
    )
    config._attn_implementation = attn
    torch.manual_seed(seed)
    default_dtype = torch.get_default_dtype()
    torch.set_default_dtype(dtype)
    try:
        with torch.device(device):
            model = LlavaForConditionalGeneration(config)
    finally:
        torch.set_default_dtype(default_dtype)
    model.config._attn_implementation = attn
    return model.eval()


def visual_tokens_per_image(model) -> int:
    vision = model.config.vision_config
    return (vision.image_size // vision.patch_size) ** 2


def make_inputs(
    model,
    *,
    num_images: int = 1,
    text_lengths: Sequence[int] = (64,),
    seed: int = 0,
) -> dict[str, torch.Tensor]:
    """A left-padded batch, one sample per text length: BOS, text, the images (each followed by a
    newline-like token), more text, so each sample has ``text_length`` non-visual tokens."""
    g = torch.Generator().manual_seed(seed)
    per_image = visual_tokens_per_image(model)
    samples = []
    for text_length in text_lengths:
        body = text_length - 1 - num_images  # BOS and one separator per image
        if body < 1:
            raise ValueError(f"text length {text_length} is too short for {num_images} images: give at least {num_images + 2}")
        words = torch.randint(100, IMAGE_TOKEN_ID, (body,), generator=g).tolist()
        before, after = words[: body // 2], words[body // 2 :]
        ids = [1, *before]
        for _ in range(num_images):
            ids += [IMAGE_TOKEN_ID] * per_image + [13]
        samples.append(ids + after)
    length = max(len(s) for s in samples)
    input_ids = torch.full((len(samples), length), PAD_TOKEN_ID, dtype=torch.long)
    attention_mask = torch.zeros(len(samples), length, dtype=torch.long)
    for b, ids in enumerate(samples):
        input_ids[b, length - len(ids) :] = torch.tensor(ids)
        attention_mask[b, length - len(ids) :] = 1
    vision = model.config.vision_config
    device, dtype = model.device, model.dtype
    pixels = torch.randn(len(samples) * num_images, 3, vision.image_size, vision.image_size, generator=g)
    return {
        "input_ids": input_ids.to(device),
        "attention_mask": attention_mask.to(device),
        "pixel_values": pixels.to(device, dtype),
    }


# --------------------------------------------------------------------------------------
# configurations
# --------------------------------------------------------------------------------------


@dataclass(frozen=True)
class BenchConfig:
    """One row of the table: a method at a tier (``config=None``: vanilla)."""

    name: str
    method: str
    tier: float | None
    config: RoutingConfig | None


def bench_configs(
    model,
    tiers: Sequence[float] = (192, 128, 64),
    *,
    ratios: str = "solved",
    reroute_preset: str = "reroute_vs_pdrop",
    overhead: bool = True,
) -> list[BenchConfig]:
    """Vanilla, the keep-1.0 overhead check, then per tier: FastV and PDrop (remove), reroute
    per-layer and stage-wise (``reroute_preset``'s schedule, the same for both executions)."""
    rows = [BenchConfig("vanilla", "vanilla", None, None)]
    if overhead:
        layers = budget_preset(reroute_preset, tiers[0] if tiers else 128, model=model).decision_layers
        keep_all = RoutingConfig("reroute", layers, (1.0,) * len(layers))
        rows.append(BenchConfig("reroute keep=1.0", "overhead", None, keep_all))
    for tier in tiers:
        fastv = budget_preset("fastv", tier, model=model, ratios=ratios)
        pdrop = budget_preset("pdrop", tier, model=model, ratios=ratios)
        ours = budget_preset(reroute_preset, tier, model=model, ratios=ratios)
        rows += [
            BenchConfig(f"fastv remove @{tier:g}", "fastv", tier, fastv),
            BenchConfig(f"pdrop remove @{tier:g}", "pdrop", tier, pdrop),
            BenchConfig(f"reroute per-layer @{tier:g}", "reroute per-layer", tier,
                        dataclasses.replace(ours, execution="per_layer")),
            BenchConfig(f"reroute stage-wise @{tier:g}", "reroute stage-wise", tier,
                        dataclasses.replace(ours, execution="stagewise")),
        ]  # fmt: skip
    return rows


# --------------------------------------------------------------------------------------
# measuring
# --------------------------------------------------------------------------------------


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def output_cache(out):
    """The KV cache a forward returned (transformers 5.2x names it ``cache`` or ``past_key_values``)."""
    return getattr(out, "cache", None) or getattr(out, "past_key_values", None)


def kv_cache_bytes(cache) -> int:
    """Bytes of the cache's key and value tensors, every layer."""
    total = 0
    for layer in cache.layers:
        for t in (layer.keys, layer.values):
            if t is not None:
                total += t.numel() * t.element_size()
    return total


def expected_kv_cache_bytes(trace: Trace | None, model, batch: int, length: int) -> int:
    """SPEC §7: sum over layers of ``2 x batch x n_layer x kv_heads x head_dim x bytes``
    (``n_layer`` the layer's cache length after prefill: the trace's, or the prompt's)."""
    dims = decoder_dims(model)
    lengths = trace.cache_lengths if trace is not None else (length,) * dims.num_layers
    per_token = 2 * dims.num_kv_heads * dims.head_dim * model.dtype.itemsize
    return batch * per_token * sum(lengths)


def tokens_per_layer(trace: Trace | None, attention_mask: torch.Tensor, num_layers: int) -> list[list[int]]:
    """Per sample, the tokens each decoder layer ran on (vanilla: the sample's real tokens)."""
    if trace is None:
        return [[int(n)] * num_layers for n in attention_mask.sum(dim=1).tolist()]
    return [list(s.tokens_per_layer) for s in trace.samples]


def decoder_flops(dims: DecoderDims, per_sample: list[list[int]]) -> dict[str, int]:
    """Decoder FLOPs of the layers' token counts: paper formula, exact (full attention
    rectangle) and exact causal (what a causal kernel runs)."""
    return {
        "paper": sum(int(paper_layer_flops(n, dims)) for counts in per_sample for n in counts),
        "exact": sum(exact_layer_flops(n, dims) for counts in per_sample for n in counts),
        "exact_causal": sum(exact_layer_flops(n, dims, causal=True) for counts in per_sample for n in counts),
    }


def measure_memory(fn: Callable[[], Any], device: torch.device) -> tuple[Any, int, int]:
    """Run ``fn``; return its result, the peak bytes allocated above the level before the call,
    and the bytes still allocated after it (see the module docstring)."""
    if device.type == "cuda":
        _sync(device)
        torch.cuda.reset_peak_memory_stats(device)
        base = torch.cuda.memory_allocated(device)
        result = fn()
        _sync(device)
        return result, torch.cuda.max_memory_allocated(device) - base, torch.cuda.memory_allocated(device) - base
    from torch.profiler import ProfilerActivity, profile

    with profile(activities=[ProfilerActivity.CPU], profile_memory=True) as prof:
        result = fn()
    events = [e for e in prof.profiler.kineto_results.events() if e.name() == "[memory]" and e.device_type().name == "CPU"]
    events.sort(key=lambda e: e.start_ns())
    live = peak = 0
    for e in events:
        live += e.nbytes()
        peak = max(peak, live)
    return result, peak, live


class _Stamps:
    """A logits processor that records the time every generated token's logits are ready."""

    def __init__(self, device: torch.device) -> None:
        self.device = device
        self.times: list[float] = []

    def __call__(self, input_ids, scores):
        _sync(self.device)
        self.times.append(time.perf_counter())
        return scores


@dataclass
class PrefillTiming:
    """One timed prefill: wall seconds, CPU seconds of this process, wall seconds inside the
    decoder (the text model's forward: embeddings merged, layers, final norm; routing included)."""

    wall: float
    cpu: float
    decoder: float
    out: Any


@torch.no_grad()
def time_prefill(model, inputs: dict) -> PrefillTiming:
    """One prefill forward, as generate runs it (``use_cache=True``, ``logits_to_keep=1``)."""
    from reroute.backbones import backbone_for

    device = model.device
    marks: list[float] = []

    def mark(*_):
        _sync(device)
        marks.append(time.perf_counter())

    text_model = backbone_for(model).text_model(model)
    hooks = [text_model.register_forward_pre_hook(mark), text_model.register_forward_hook(mark)]
    try:
        _sync(device)
        cpu, start = time.process_time(), time.perf_counter()
        out = model(**inputs, use_cache=True, logits_to_keep=1)
        _sync(device)
        wall, cpu = time.perf_counter() - start, time.process_time() - cpu
    finally:
        for h in hooks:
            h.remove()
    return PrefillTiming(wall=wall, cpu=cpu, decoder=marks[-1] - marks[0], out=out)


@torch.no_grad()
def time_generate(model, inputs: dict, new_tokens: int) -> tuple[float, float]:
    """``generate`` with greedy decoding of exactly ``new_tokens``: (prefill seconds, seconds per decode step)."""
    from transformers import LogitsProcessorList

    device = model.device
    stamps = _Stamps(device)
    _sync(device)
    start = time.perf_counter()
    model.generate(
        **inputs,
        max_new_tokens=new_tokens,
        min_new_tokens=new_tokens,
        do_sample=False,
        pad_token_id=PAD_TOKEN_ID,
        logits_processor=LogitsProcessorList([stamps]),
    )
    _sync(device)
    t = stamps.times
    decode = (t[-1] - t[0]) / (len(t) - 1) if len(t) > 1 else float("nan")
    return t[0] - start, decode


class _Routed:
    """``with _Routed(model, config) as handle``: apply/restore, or nothing for vanilla."""

    def __init__(self, model, config: RoutingConfig | None) -> None:
        self.model, self.config, self.handle = model, config, None

    def __enter__(self):
        if self.config is not None:
            self.handle = reroute.apply(self.model, self.config)
        return self.handle

    def __exit__(self, *exc) -> None:
        if self.handle is not None:
            self.handle.restore()


def _median(values: Sequence[float]) -> float:
    return statistics.median(values) if values else float("nan")


def _round_robin(items: Sequence, rounds: int) -> list[list]:
    """Every round visits every item once; the starting item rotates from round to round."""
    n = len(items)
    return [[items[(r + i) % n] for i in range(n)] for r in range(rounds)]


def tune_malloc() -> bool:
    """Make glibc keep freed memory for reuse (True if it took effect).

    By default glibc gives every allocation above ~128 KiB-32 MiB its own fresh pages (mmap)
    and trims the heap, so a forward pays a page fault per 4 KiB of each large activation it
    writes, and how many depends on the allocator's recent history: measured here, 0 to
    120k faults per vanilla prefill and +-30 % on the same configuration. With the mmap and
    trim thresholds raised, the steady state has no faults (what jemalloc/tcmalloc give, and
    what PyTorch's CPU performance guide recommends). No effect off glibc.
    """
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        mallopt = libc.mallopt
    except (OSError, AttributeError):
        return False
    m_trim_threshold, m_mmap_threshold = -1, -3
    return bool(mallopt(m_mmap_threshold, 2**30)) and bool(mallopt(m_trim_threshold, 2**31 - 1))


# --------------------------------------------------------------------------------------
# sections
# --------------------------------------------------------------------------------------


def run_latency(
    model,
    inputs: dict,
    configs: Sequence[BenchConfig],
    *,
    repeats: int = 5,
    warmup: int = 1,
    new_tokens: int = 16,
    log: Callable[[str], None] = print,
) -> list[dict[str, Any]]:
    """Prefill and decode latency, FLOPs, memory and KV-cache bytes of every configuration."""
    device = model.device
    dims = decoder_dims(model)
    batch, length = inputs["input_ids"].shape
    prefill: dict[str, list[float]] = {c.name: [] for c in configs}
    prefill_cpu: dict[str, list[float]] = {c.name: [] for c in configs}
    decoder: dict[str, list[float]] = {c.name: [] for c in configs}
    gen_prefill: dict[str, list[float]] = {c.name: [] for c in configs}
    decode: dict[str, list[float]] = {c.name: [] for c in configs}
    traces: dict[str, Trace | None] = {}

    for r, order in enumerate(_round_robin(configs, warmup + repeats)):
        for c in order:
            gc.collect()
            with _Routed(model, c.config) as handle:
                timing = time_prefill(model, inputs)
                traces[c.name] = handle.trace if handle is not None else None
                timing.out = None
                if new_tokens > 1:
                    g_prefill, g_decode = time_generate(model, inputs, new_tokens)
            if r >= warmup:
                prefill[c.name].append(timing.wall)
                prefill_cpu[c.name].append(timing.cpu)
                decoder[c.name].append(timing.decoder)
                if new_tokens > 1:
                    gen_prefill[c.name].append(g_prefill)
                    decode[c.name].append(g_decode)
        status = "warm-up" if r < warmup else f"repeat {r - warmup + 1}/{repeats}"
        log(f"  latency: {status} done")

    rows = []
    for c in configs:
        gc.collect()
        with _Routed(model, c.config) as handle:
            out, peak, retained = measure_memory(lambda: time_prefill(model, inputs).out, device)
            cache = output_cache(out)
            measured_kv = kv_cache_bytes(cache)
            del out, cache
        trace = traces[c.name]
        per_sample = tokens_per_layer(trace, inputs["attention_mask"], dims.num_layers)
        rows.append(
            {
                "name": c.name,
                "method": c.method,
                "tier": c.tier,
                "config": None if c.config is None else c.config.to_dict(),
                "avg_T": trace.avg_T if trace is not None else float(visual_count(model, inputs)[0]),
                "visual_per_layer": list(trace.samples[0].visual_per_layer) if trace is not None else None,
                "tokens_per_layer": per_sample[0],
                "prefill_ms": 1e3 * _median(prefill[c.name]),
                "prefill_ms_all": [1e3 * s for s in prefill[c.name]],
                "prefill_ms_min": 1e3 * min(prefill[c.name], default=float("nan")),
                "prefill_cpu_ms": 1e3 * _median(prefill_cpu[c.name]),
                "decoder_ms": 1e3 * _median(decoder[c.name]),
                "generate_prefill_ms": 1e3 * _median(gen_prefill[c.name]),
                "decode_ms_per_token": 1e3 * _median(decode[c.name]),
                "flops": decoder_flops(dims, per_sample),
                "peak_bytes": peak,
                "retained_bytes": retained,
                "kv_cache_bytes": measured_kv,
                "kv_cache_bytes_expected": expected_kv_cache_bytes(trace, model, batch, length),
                "cache_lengths": list(trace.cache_lengths) if trace is not None else [length] * dims.num_layers,
            }
        )
    _add_ratios(rows)
    return rows


def run_execution_pairs(
    model,
    inputs: dict,
    stagewise: BenchConfig,
    per_layer: BenchConfig,
    *,
    pairs: int = 10,
    log: Callable[[str], None] = print,
) -> dict[str, Any]:
    """Stage-wise against per-layer execution of one schedule, in back-to-back pairs (order
    alternating), decoder time only: their difference (the gathers and scatters per-layer adds
    at every compact layer) is small next to the noise of a shared machine, so it is measured
    as the median of per-pair ratios, with the share of pairs stage-wise won."""
    ratios, wins = [], 0
    for i in range(pairs + 1):
        order = (stagewise, per_layer) if i % 2 == 0 else (per_layer, stagewise)
        times = {}
        for c in order:
            gc.collect()
            with _Routed(model, c.config):
                timing = time_prefill(model, inputs)
                timing.out = None
            times[c.name] = timing.decoder
        if i == 0:
            continue  # warm-up pair
        ratios.append(times[per_layer.name] / times[stagewise.name])
        wins += times[stagewise.name] < times[per_layer.name]
    log(f"  execution: {pairs} pairs done")
    return {
        "stagewise": stagewise.name,
        "per_layer": per_layer.name,
        "pairs": pairs,
        "per_layer_over_stagewise": _median(ratios),
        "ratios": ratios,
        "stagewise_wins": wins,
        "data_movement": {c.name: data_movement(model, inputs, c.config) for c in (stagewise, per_layer)},
    }


@torch.no_grad()
def data_movement(model, inputs: dict, config: RoutingConfig) -> dict[str, float]:
    """What the engine's compact/scatter steps (`Layout.gather`, `Layout.scatter_`) move in one
    routed prefill: calls, bytes written, and the wall time spent in them (an untimed extra run)."""
    from reroute.layout import Layout

    device = model.device
    totals = {"calls": 0, "bytes": 0, "ms": 0.0}
    original_gather, original_scatter = Layout.gather, Layout.scatter_

    def timed(fn, moved):
        def wrapper(self, *args):
            _sync(device)
            start = time.perf_counter()
            out = fn(self, *args)
            _sync(device)
            totals["ms"] += 1e3 * (time.perf_counter() - start)
            totals["calls"] += 1
            totals["bytes"] += moved(out, *args)
            return out

        return wrapper

    Layout.gather = timed(original_gather, lambda out, full: out.numel() * out.element_size())
    Layout.scatter_ = timed(original_scatter, lambda out, full, compact: compact.numel() * compact.element_size())
    try:
        with _Routed(model, config):
            time_prefill(model, inputs)
    finally:
        Layout.gather, Layout.scatter_ = original_gather, original_scatter
    return totals


def _add_ratios(rows: list[dict[str, Any]]) -> None:
    """Speedups over the vanilla row: measured, theoretical (paper / exact-causal FLOPs), efficiency."""
    base = next(r for r in rows if r["method"] == "vanilla")
    for r in rows:
        r["prefill_speedup"] = base["prefill_ms"] / r["prefill_ms"]
        r["decode_speedup"] = base["decode_ms_per_token"] / r["decode_ms_per_token"] if "decode_ms_per_token" in r else None
        r["flops_speedup"] = base["flops"]["paper"] / r["flops"]["paper"]
        r["flops_speedup_exact_causal"] = base["flops"]["exact_causal"] / r["flops"]["exact_causal"]
        r["efficiency"] = r["prefill_speedup"] / r["flops_speedup"]
        if "prefill_ms_min" in r:  # best of the repeats: contention on a shared machine only ever adds time
            r["prefill_speedup_min"] = base["prefill_ms_min"] / r["prefill_ms_min"]
            r["efficiency_min"] = r["prefill_speedup_min"] / r["flops_speedup"]
            r["overhead_min"] = r["prefill_ms_min"] / base["prefill_ms_min"] - 1
        if "decoder_ms" in r:
            r["decoder_speedup"] = base["decoder_ms"] / r["decoder_ms"]
            r["decoder_efficiency"] = r["decoder_speedup"] / r["flops_speedup"]
            r["decoder_efficiency_exact"] = r["decoder_speedup"] / r["flops_speedup_exact_causal"]
        r["overhead"] = r["prefill_ms"] / base["prefill_ms"] - 1


def visual_count(model, inputs: dict) -> list[int]:
    """Visual tokens per sample of a batch."""
    return (inputs["input_ids"] == model.config.image_token_id).sum(dim=1).tolist()


@torch.no_grad()
def scorer_memory(model, inputs: dict, layer_index: int) -> dict[str, int]:
    """Bytes `reroute.scoring.last_token_attention` allocates at its peak for this prompt (measured),
    against the maps a full-matrix scorer (the reference code's) materialises (by their shapes)."""
    from reroute.backbones import backbone_for
    from reroute.scoring import last_token_attention

    backbone = backbone_for(model)
    text_model = backbone.text_model(model)
    layer = backbone.layers(text_model)[layer_index]
    ids, mask = inputs["input_ids"][:1], inputs["attention_mask"][:1].bool()
    hidden = text_model.embed_tokens(ids)  # the values do not matter, only the shapes
    length = ids.shape[1]
    positions = torch.arange(length, device=ids.device)[None]
    cos, sin = backbone.rotary(text_model)(hidden, positions)
    query = (mask * torch.arange(length, device=ids.device)).argmax(dim=1)
    fn = lambda: last_token_attention(layer, hidden, cos, sin, mask, query, backbone.apply_rotary)  # noqa: E731
    _, peak, _ = measure_memory(fn, model.device)
    heads = layer.self_attn.config.num_attention_heads
    return {
        "length": length,
        "scorer_peak_bytes": peak,
        "full_matrix_head_mean_bytes": length * length * 4,  # one (L, L) float32 map
        "full_matrix_per_head_bytes": heads * length * length * 4,  # (H, L, L) float32 probabilities
    }


def run_scaling(
    model,
    configs: Sequence[BenchConfig],
    images: Sequence[int] = (1, 4, 16),
    *,
    num_text: int = 64,
    repeats: int = 1,
    log: Callable[[str], None] = print,
) -> list[dict[str, Any]]:
    """Visual tokens 576 -> 2304 -> 9216 (several images per prompt): prefill time, memory,
    KV cache and the scorer's bytes. The configurations keep their keep ratios, so their
    budgets grow with the visual tokens. Each run is timed inside the memory profiler
    (its cost is microseconds per operator, against milliseconds-long operators here)."""
    device = model.device
    dims = decoder_dims(model)
    rows = []
    for n_images in images:
        inputs = make_inputs(model, num_images=n_images, text_lengths=(num_text,))
        length = inputs["input_ids"].shape[1]
        times: dict[str, list[float]] = {c.name: [] for c in configs}
        memory: dict[str, tuple[int, int, int]] = {}
        traces: dict[str, Trace | None] = {}
        for order in _round_robin(configs, repeats):
            for c in order:
                gc.collect()
                with _Routed(model, c.config) as handle:
                    timing, peak, retained = measure_memory(lambda: time_prefill(model, inputs), device)
                    memory[c.name] = (peak, retained, kv_cache_bytes(output_cache(timing.out)))
                    traces[c.name] = handle.trace if handle is not None else None
                    timing.out = None
                times[c.name].append(timing.wall)
        first_decision = min((c.config.decision_layers[0] for c in configs if c.config is not None), default=1)
        scorer = scorer_memory(model, inputs, first_decision)
        row_configs = []
        for c in configs:
            per_sample = tokens_per_layer(traces[c.name], inputs["attention_mask"], dims.num_layers)
            peak, retained, kv = memory[c.name]
            row_configs.append(
                {
                    "name": c.name,
                    "method": c.method,
                    "prefill_ms": 1e3 * _median(times[c.name]),
                    "avg_T": traces[c.name].avg_T if traces[c.name] is not None else float(visual_count(model, inputs)[0]),
                    "flops": decoder_flops(dims, per_sample),
                    "peak_bytes": peak,
                    "retained_bytes": retained,
                    "kv_cache_bytes": kv,
                }
            )
        _add_ratios(row_configs)
        rows.append({"images": n_images, "visual_tokens": visual_count(model, inputs)[0], "length": length,
                     "configs": row_configs, "scorer": scorer})  # fmt: skip
        log(f"  scaling: {n_images} image(s), {length} tokens done")
    return rows


BATCH_TEXT_LENGTHS = (64, 40, 88, 56, 72, 48, 80, 64)


def run_batch(
    model,
    configs: Sequence[BenchConfig],
    batch_sizes: Sequence[int] = (1, 4, 8),
    *,
    repeats: int = 2,
    warmup: int = 1,
    log: Callable[[str], None] = print,
) -> list[dict[str, Any]]:
    """Prefill throughput (real prompt tokens per second) of left-padded batches whose samples
    have different text lengths (``BATCH_TEXT_LENGTHS``, cycled)."""
    cases = []
    for b in batch_sizes:
        lengths = [BATCH_TEXT_LENGTHS[i % len(BATCH_TEXT_LENGTHS)] for i in range(b)]
        cases.append((b, make_inputs(model, text_lengths=lengths, seed=b)))
    items = [(b, inputs, c) for b, inputs in cases for c in configs]
    times: dict[tuple[int, str], list[float]] = {(b, c.name): [] for b, _, c in items}
    for r, order in enumerate(_round_robin(items, warmup + repeats)):
        if r < warmup:  # warming up on the smallest batch is enough (same kernels, same code paths)
            order = [item for item in order if item[0] == min(batch_sizes)]
        for b, inputs, c in order:
            gc.collect()
            with _Routed(model, c.config):
                timing = time_prefill(model, inputs)
                timing.out = None
            if r >= warmup:
                times[(b, c.name)].append(timing.wall)
        log(f"  batch: {'warm-up' if r < warmup else f'repeat {r - warmup + 1}/{repeats}'} done")
    rows = []
    for b, inputs, c in items:
        real = int(inputs["attention_mask"].sum())
        seconds = _median(times[(b, c.name)])
        rows.append(
            {
                "batch": b,
                "name": c.name,
                "prompt_tokens": real,
                "padded_tokens": inputs["input_ids"].numel(),
                "prefill_ms": 1e3 * seconds,
                "tokens_per_s": real / seconds,
            }
        )
    for row in rows:
        one = next(r for r in rows if r["name"] == row["name"] and r["batch"] == min(batch_sizes))
        row["throughput_vs_batch1"] = row["tokens_per_s"] / one["tokens_per_s"]
    return rows


@torch.no_grad()
def vision_tower_ms(model, inputs: dict, repeats: int = 3) -> float:
    """Median milliseconds of the vision tower and projector alone (outside the decoder)."""
    times = []
    for _ in range(repeats + 1):
        _sync(model.device)
        start = time.perf_counter()
        model.model.get_image_features(pixel_values=inputs["pixel_values"])
        _sync(model.device)
        times.append(time.perf_counter() - start)
    return 1e3 * _median(times[1:])


# --------------------------------------------------------------------------------------
# the whole benchmark
# --------------------------------------------------------------------------------------


@dataclass
class BenchOptions:
    shape: str | None = None  # default: llava-1.5-narrow on CPU, llava-1.5-7b on CUDA
    device: str | None = None  # default: cuda if available
    dtype: str | None = None  # default: the shape's (float32 on CPU, float16 on CUDA)
    threads: int = 1
    tiers: tuple[float, ...] = (192, 128, 64)
    ratios: str = "solved"
    reroute_preset: str = "reroute_vs_pdrop"
    num_text: int = 64
    repeats: int = 5
    warmup: int = 1
    new_tokens: int = 16
    execution_pairs: int = 20
    scaling_images: tuple[int, ...] = (1, 4, 16)
    scaling_repeats: int = 1
    batch_sizes: tuple[int, ...] = (1, 4, 8)
    batch_repeats: int = 2
    sections: tuple[str, ...] = ("latency", "scaling", "batch")
    seed: int = 0
    tune_malloc: bool = True
    quick: bool = False

    @classmethod
    def quick_defaults(cls, **overrides) -> BenchOptions:
        """A ~1-2 minute CPU run: tier 64 only, 2 repeats, 576 and 2304 visual tokens, batches 1 and 4."""
        values = dict(
            tiers=(64,), repeats=2, warmup=1, new_tokens=8, execution_pairs=4, scaling_images=(1, 4), batch_sizes=(1, 4),
            batch_repeats=1, quick=True,
        )  # fmt: skip
        values.update(overrides)
        return cls(**values)


def run_benchmark(options: BenchOptions, log: Callable[[str], None] = print) -> dict[str, Any]:
    """Build the model, run the chosen sections, return everything as plain data (for JSON)."""
    device = torch.device(options.device or ("cuda" if torch.cuda.is_available() else "cpu"))
    shape_name = options.shape or ("llava-1.5-7b" if device.type == "cuda" else "llava-1.5-narrow")
    shape = SHAPES[shape_name]
    malloc_tuned = tune_malloc() if options.tune_malloc else False
    if device.type == "cpu":
        torch.set_num_threads(options.threads)
    dtype = getattr(torch, options.dtype) if options.dtype else None
    started = time.perf_counter()
    log(f"building {shape.description} on {device} ...")
    model = build_model(shape, device=device, dtype=dtype, seed=options.seed)
    inputs = make_inputs(model, text_lengths=(options.num_text,), seed=options.seed)
    configs = bench_configs(model, options.tiers, ratios=options.ratios, reroute_preset=options.reroute_preset)
    result: dict[str, Any] = {
        "shape": dataclasses.asdict(shape),
        "device": str(device),
        "device_name": torch.cuda.get_device_name(device) if device.type == "cuda" else _cpu_name(),
        "dtype": str(model.dtype).removeprefix("torch."),
        "threads": torch.get_num_threads() if device.type == "cpu" else None,
        "malloc_tuned": malloc_tuned,
        "torch": torch.__version__,
        "options": dataclasses.asdict(options),
        "prompt": {"length": inputs["input_ids"].shape[1], "visual_tokens": visual_count(model, inputs)[0],
                   "text_tokens": options.num_text},  # fmt: skip
        "ratios_note": (
            f"ratios={options.ratios!r} from reroute.preset; 'reroute per-layer' and 'reroute stage-wise' both run "
            f"{options.reroute_preset!r}'s schedule"
        ),
    }
    # The heap of a process that imported torch and transformers makes every gc.collect() take
    # ~0.2 s; freezing what exists now leaves the collections between runs only our garbage.
    gc.collect()
    gc.freeze()
    try:
        _run_sections(model, inputs, configs, options, result, log)
    finally:
        gc.unfreeze()
    result["targets"] = check_targets(result)
    result["seconds"] = time.perf_counter() - started
    return result


def _run_sections(model, inputs, configs, options: BenchOptions, result: dict[str, Any], log) -> None:
    result["vision_tower_ms"] = vision_tower_ms(model, inputs)
    if "latency" in options.sections:
        log(f"latency: {len(configs)} configurations, {options.warmup} warm-up + {options.repeats} rounds ...")
        result["latency"] = run_latency(
            model, inputs, configs, repeats=options.repeats, warmup=options.warmup, new_tokens=options.new_tokens, log=log
        )
        low = min(options.tiers) if options.tiers else None
        by_name = {c.name: c for c in configs}
        if low is not None and options.execution_pairs > 0:
            result["execution"] = run_execution_pairs(
                model, inputs, by_name[f"reroute stage-wise @{low:g}"], by_name[f"reroute per-layer @{low:g}"],
                pairs=options.execution_pairs, log=log,
            )  # fmt: skip
    lowest = min(options.tiers) if options.tiers else None
    if "scaling" in options.sections and lowest is not None:
        chosen = [c for c in configs if c.method == "vanilla" or (c.tier == lowest and c.method in ("fastv", "reroute stage-wise"))]
        log(f"scaling: {list(options.scaling_images)} image(s) ...")
        result["scaling"] = run_scaling(
            model, chosen, options.scaling_images, num_text=options.num_text, repeats=options.scaling_repeats, log=log
        )
    if "batch" in options.sections and lowest is not None:
        chosen = [c for c in configs if c.method == "vanilla" or (c.tier == lowest and c.method == "reroute stage-wise")]
        log(f"batch: sizes {list(options.batch_sizes)} ...")
        result["batch"] = run_batch(
            model, chosen, options.batch_sizes, repeats=options.batch_repeats, warmup=1, log=log
        )


def _cpu_name() -> str:
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    import platform

    return platform.processor() or "cpu"


def check_targets(result: dict[str, Any]) -> list[dict[str, Any]]:
    """The issue's targets, each with the measured value and whether it holds."""
    targets = []
    rows = {r["name"]: r for r in result.get("latency", [])}
    tiers = [r["tier"] for r in rows.values() if r["tier"] is not None]
    if rows and tiers:
        low = min(tiers)
        stage = rows[f"reroute stage-wise @{low:g}"]
        targets.append({"target": f"reroute stage-wise @{low:g}: prefill speedup >= 0.9 x theoretical",
                        "value": stage["efficiency"], "best_of": stage["efficiency_min"],
                        "holds": stage["efficiency"] >= 0.9})  # fmt: skip
        for method in ("fastv", "pdrop"):
            r = rows[f"{method} remove @{low:g}"]
            targets.append({"target": f"{method} remove @{low:g}: prefill speedup >= 0.9 x theoretical",
                            "value": r["efficiency"], "best_of": r["efficiency_min"],
                            "holds": r["efficiency"] >= 0.9})  # fmt: skip
        for tier in sorted(set(tiers), reverse=True):
            s, p = rows[f"reroute stage-wise @{tier:g}"], rows[f"reroute per-layer @{tier:g}"]
            targets.append({"target": f"@{tier:g}: stage-wise prefill faster than per-layer (per-layer / stage-wise ms)",
                            "value": p["prefill_ms"] / s["prefill_ms"], "holds": s["prefill_ms"] < p["prefill_ms"]})  # fmt: skip
    execution = result.get("execution")
    if execution:
        ratio = execution["per_layer_over_stagewise"]
        targets.append({"target": f"stage-wise faster than per-layer, decoder time in {execution['pairs']} back-to-back "
                                  f"pairs (median per-layer / stage-wise; stage-wise won {execution['stagewise_wins']})",
                        "value": ratio, "holds": ratio > 1})  # fmt: skip
    if "reroute keep=1.0" in rows:
        o = rows["reroute keep=1.0"]["overhead"]
        targets.append({"target": "routing overhead at keep ratio 1.0 <= 3 %", "value": o,
                        "best_of": rows["reroute keep=1.0"]["overhead_min"], "holds": o <= 0.03})  # fmt: skip
    batch = result.get("batch", [])
    if batch:
        largest = max(r["batch"] for r in batch)
        for r in batch:
            if r["batch"] == largest and largest >= 8:
                targets.append({"target": f"{r['name']}: batch {largest} throughput >= 2 x batch 1",
                                "value": r["throughput_vs_batch1"], "holds": r["throughput_vs_batch1"] >= 2})  # fmt: skip
    return targets


# --------------------------------------------------------------------------------------
# output
# --------------------------------------------------------------------------------------


def _mib(n: float) -> str:
    return f"{n / MiB:.1f}"


def format_report(result: dict[str, Any]) -> str:
    lines = [
        f"reroute bench: {result['shape']['description']}",
        f"device {result['device']} ({result['device_name']}), {result['dtype']}, threads={result['threads']}, "
        f"torch {result['torch']}, malloc tuned: {result['malloc_tuned']}",
        f"prompt: {result['prompt']['length']} tokens ({result['prompt']['visual_tokens']} visual); "
        f"vision tower + projector {result['vision_tower_ms']:.1f} ms; {result['ratios_note']}",
    ]
    if "latency" in result:
        lines += [
            "",
            "Prefill (one forward, as generate runs it) and decode (generate, per token), medians. theory = decoder FLOPs",
            "speedup by the paper formula 4nd^2+2n^2d+2ndm over the traced per-layer tokens (exact: every matmul, causal",
            "attention); eff = prefill speedup / theory; 'decoder' = time inside the text model (no vision tower, no lm_head);",
            "dec eff = decoder speedup / theory, and / exact",
        ]
        header = (
            f"{'configuration':<27} {'avg_T':>5} {'prefill ms':>10} {'speedup':>7} {'decoder ms':>10} {'speedup':>7} "
            f"{'theory':>6} {'exact':>6} {'eff':>5} {'dec eff':>7} {'exact':>5} {'decode ms/tok':>13} {'peak MiB':>8} {'KV MiB':>6}"
        )
        lines += [header, "-" * len(header)]
        for r in result["latency"]:
            lines.append(
                f"{r['name']:<27} {r['avg_T']:>5.1f} {r['prefill_ms']:>10.1f} {r['prefill_speedup']:>6.2f}x "
                f"{r['decoder_ms']:>10.1f} {r['decoder_speedup']:>6.2f}x {r['flops_speedup']:>5.2f}x "
                f"{r['flops_speedup_exact_causal']:>5.2f}x {r['efficiency']:>5.2f} {r['decoder_efficiency']:>7.2f} "
                f"{r['decoder_efficiency_exact']:>5.2f} "
                f"{r['decode_ms_per_token']:>13.2f} {_mib(r['peak_bytes']):>8} {_mib(r['kv_cache_bytes']):>6}"
            )
        lines.append(
            "peak = bytes torch allocated during the prefill above the level before it (CPU: profiler allocation events); "
            "KV = the cache's tensors after prefill"
        )
    if "execution" in result:
        e = result["execution"]
        lines.append(
            f"stage-wise vs per-layer ({e['stagewise'].split('@')[-1]}), {e['pairs']} back-to-back pairs of decoder times: "
            f"per-layer / stage-wise = {e['per_layer_over_stagewise']:.4f} (median), stage-wise faster in "
            f"{e['stagewise_wins']}/{e['pairs']}"
        )
        for name, m in e["data_movement"].items():
            lines.append(
                f"  {name}: Layout.gather/scatter_ {m['calls']} calls, {_mib(m['bytes'])} MiB written, {m['ms']:.1f} ms"
            )
    if "scaling" in result:
        lines += ["", "Scaling with visual tokens (several 576-token images; keep ratios of the lowest tier)"]
        header = (
            f"{'visual':>6} {'configuration':<27} {'prefill ms':>10} {'speedup':>8} {'theory':>7} {'peak MiB':>9} "
            f"{'KV MiB':>7}"
        )
        lines += [header, "-" * len(header)]
        for s in result["scaling"]:
            for r in s["configs"]:
                lines.append(
                    f"{s['visual_tokens']:>6} {r['name']:<27} {r['prefill_ms']:>10.1f} {r['prefill_speedup']:>7.2f}x "
                    f"{r['flops_speedup']:>6.2f}x {_mib(r['peak_bytes']):>9} {_mib(r['kv_cache_bytes']):>7}"
                )
        lines.append("Scoring memory (one query row, O(L)) vs a full-matrix scorer (O(L^2), by its tensor shapes):")
        for s in result["scaling"]:
            sc = s["scorer"]
            lines.append(
                f"  L={sc['length']:>5}: scorer peak {_mib(sc['scorer_peak_bytes']):>6} MiB measured; full matrix "
                f"{_mib(sc['full_matrix_head_mean_bytes']):>7} MiB head-mean map, "
                f"{_mib(sc['full_matrix_per_head_bytes']):>8} MiB per-head probabilities"
            )
    if "batch" in result:
        lines += ["", "Prefill throughput, left-padded batches with different text lengths"]
        header = f"{'batch':>5} {'configuration':<27} {'tokens':>7} {'padded':>7} {'prefill ms':>10} {'tokens/s':>9} {'vs b1':>6}"
        lines += [header, "-" * len(header)]
        for r in result["batch"]:
            lines.append(
                f"{r['batch']:>5} {r['name']:<27} {r['prompt_tokens']:>7} {r['padded_tokens']:>7} "
                f"{r['prefill_ms']:>10.1f} {r['tokens_per_s']:>9.0f} {r['throughput_vs_batch1']:>5.2f}x"
            )
    if result.get("targets"):
        lines += ["", "Targets"]
        for t in result["targets"]:
            best = f" (best-of-repeats: {t['best_of']:.3f})" if "best_of" in t else ""
            lines.append(f"  [{'ok' if t['holds'] else 'MISS'}] {t['target']}: {t['value']:.3f}{best}")
    lines.append(f"\ntotal {result['seconds']:.0f} s")
    return "\n".join(lines)


def write_json(result: dict[str, Any], path: str) -> None:
    def default(o):
        if isinstance(o, float) and (math.isnan(o) or math.isinf(o)):
            return None
        raise TypeError(f"not JSON serialisable: {type(o).__name__}")

    with open(path, "w") as f:
        json.dump(result, f, indent=2, default=default, allow_nan=False)


def plot(result: dict[str, Any], path: str) -> None:
    """Measured prefill speedup against the theoretical FLOPs speedup, one point per configuration."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = [r for r in result.get("latency", []) if r["method"] != "vanilla"]
    fig, ax = plt.subplots(figsize=(6.5, 5))
    markers = {"fastv": "o", "pdrop": "s", "reroute per-layer": "^", "reroute stage-wise": "D", "overhead": "x"}
    for method, marker in markers.items():
        pts = [r for r in rows if r["method"] == method]
        if pts:
            ax.scatter([r["flops_speedup"] for r in pts], [r["prefill_speedup"] for r in pts], marker=marker, label=method)
    top = max([1.0] + [max(r["flops_speedup"], r["prefill_speedup"]) for r in rows]) * 1.1
    ax.plot([0, top], [0, top], "k--", lw=1, label="measured = theoretical")
    ax.plot([0, top], [0, 0.9 * top], "k:", lw=1, label="0.9 x theoretical")
    ax.set_xlim(0, top)
    ax.set_ylim(0, top)
    ax.set_xlabel("theoretical speedup (decoder FLOPs, paper formula)")
    ax.set_ylabel("measured prefill speedup over vanilla")
    ax.set_title(f"{result['shape']['name']} on {result['device']} ({result['dtype']}, threads={result['threads']})")
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
