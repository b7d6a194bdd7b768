"""torch.compile on a routed model (docs/semantics.md §17): the compiled forward equals eager, and generate()'s
compiled decode step (static cache + compile_config, fullgraph) runs routed, equals eager and never recompiles.

Kept few and tiny (two decoder layers): compiling on two CPU cores is slow. The backend is ``aot_eager``
(dynamo's graph capture and AOTAutograd, no code generation); `benchmarks/decode_compile.py` runs inductor.
"""

from __future__ import annotations

import pytest
import torch
import torch._dynamo
from tests.helpers.batches import mixed_prompts
from tests.helpers.models import FAMILIES
from torch._dynamo.utils import counters
from transformers import CompileConfig

import reroute
from reroute import RoutingConfig

CONFIG = RoutingConfig("reroute", (1,), (0.3,))
STEPS = 16
GREEDY = dict(do_sample=False, max_new_tokens=STEPS + 1, min_new_tokens=STEPS + 1)  # prefill + 16 decode steps


def _model_and_batch(name: str):
    family = FAMILIES[name]
    return family.make_model(num_layers=2), family.make_batch(mixed_prompts(family)[:2], "left")


def _compile_config() -> CompileConfig:
    config = CompileConfig(fullgraph=True, dynamic=False, backend="aot_eager", mode=None)
    config._compile_all_devices = True  # generate() compiles on accelerators only unless told (transformers' own tests do this)
    return config


def test_compiled_forward_equals_eager():
    model, inputs = _model_and_batch("llava")
    with reroute.apply(model, CONFIG) as handle, torch.no_grad():
        eager = model(**inputs).logits
        trace = handle.trace
        torch._dynamo.reset()
        compiled = torch.compile(model.forward, backend="aot_eager")(**inputs).logits
        assert handle.trace == trace  # the same decisions
    # the prefill's selection breaks the graph (data-dependent counts); every piece computes what eager does
    assert (compiled - eager).abs().max().item() <= 1e-6


@pytest.mark.parametrize("name", ["llava", "qwen2_5_vl"])
def test_compiled_decode_equals_eager_and_never_recompiles(name):
    model, inputs = _model_and_batch(name)
    with reroute.apply(model, CONFIG) as handle, torch.no_grad():
        options = dict(cache_implementation="static", return_dict_in_generate=True, output_logits=True, **GREEDY)
        eager = model.generate(**inputs, **options)
        torch._dynamo.reset()
        counters.clear()
        compiled = model.generate(**inputs, compile_config=_compile_config(), **options)
        assert min(handle.trace.cache_lengths) < max(handle.trace.cache_lengths)  # it routed
        assert torch.equal(compiled.sequences, eager.sequences)
        for a, b in zip(compiled.logits, eager.logits):
            torch.testing.assert_close(a, b, atol=1e-5, rtol=0)
        # one graph for all 16 decode steps (prefill stays eager), no graph break (fullgraph), no recompilation
        assert counters["stats"]["unique_graphs"] == 1
        assert not counters["graph_break"]
        # a second call on prompts of the same routed counts (the same slots per layer) reuses that graph
        with torch.compiler.set_stance("fail_on_recompile"):
            again = model.generate(**inputs, compile_config=_compile_config(), **options)
        assert torch.equal(again.sequences, eager.sequences)
