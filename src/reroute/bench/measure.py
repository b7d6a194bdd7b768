"""Measuring one forward or generate: timers, memory, KV-cache bytes, traced FLOPs."""

from __future__ import annotations

import ctypes
import ctypes.util
import statistics
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import torch

import reroute
from reroute.bench.shapes import PAD_TOKEN_ID
from reroute.config import RoutingConfig
from reroute.runtime.dims import DecoderDims, decoder_dims, exact_layer_flops, paper_layer_flops
from reroute.runtime.trace import Trace

MiB = 2**20


# --------------------------------------------------------------------------------------
# measuring
# --------------------------------------------------------------------------------------


def synchronize(device: torch.device) -> None:
    """Wait for the device's queued kernels (CUDA), so a timestamp taken next counts them."""
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
    """docs/semantics.md §7: sum over layers of ``2 x batch x n_layer x kv_heads x head_dim x bytes``
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
        synchronize(device)
        torch.cuda.reset_peak_memory_stats(device)
        base = torch.cuda.memory_allocated(device)
        result = fn()
        synchronize(device)
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
        synchronize(self.device)
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
        synchronize(device)
        marks.append(time.perf_counter())

    text_model = backbone_for(model).text_model(model)
    hooks = [text_model.register_forward_pre_hook(mark), text_model.register_forward_hook(mark)]
    try:
        synchronize(device)
        cpu, start = time.process_time(), time.perf_counter()
        out = model(**inputs, use_cache=True, logits_to_keep=1)
        synchronize(device)
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
    synchronize(device)
    start = time.perf_counter()
    model.generate(
        **inputs,
        max_new_tokens=new_tokens,
        min_new_tokens=new_tokens,
        do_sample=False,
        pad_token_id=PAD_TOKEN_ID,
        logits_processor=LogitsProcessorList([stamps]),
    )
    synchronize(device)
    t = stamps.times
    decode = (t[-1] - t[0]) / (len(t) - 1) if len(t) > 1 else float("nan")
    return t[0] - start, decode


class Routed:
    """``with Routed(model, config) as handle``: apply/restore around one measurement, or nothing for
    vanilla (``config=None``; the handle is then None)."""

    def __init__(self, model, config: RoutingConfig | None) -> None:
        self.model, self.config, self.handle = model, config, None

    def __enter__(self):
        if self.config is not None:
            self.handle = reroute.apply(self.model, self.config)
        return self.handle

    def __exit__(self, *exc) -> None:
        if self.handle is not None:
            self.handle.restore()


def median(values: Sequence[float]) -> float:
    """The median of the timed repeats; NaN when there were none."""
    return statistics.median(values) if values else float("nan")


def round_robin(items: Sequence, rounds: int) -> list[list]:
    """Every round visits every item once; the starting item rotates from round to round."""
    n = len(items)
    return [[items[(r + i) % n] for i in range(n)] for r in range(rounds)]


@torch.no_grad()
def vision_tower_ms(model, inputs: dict, repeats: int = 3) -> float:
    """Median milliseconds of the vision tower and projector alone (outside the decoder)."""
    times = []
    for _ in range(repeats + 1):
        synchronize(model.device)
        start = time.perf_counter()
        model.model.get_image_features(pixel_values=inputs["pixel_values"])
        synchronize(model.device)
        times.append(time.perf_counter() - start)
    return 1e3 * median(times[1:])


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
