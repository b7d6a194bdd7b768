"""``output_attentions=True`` under SDPA answers as the stock model does (docs/semantics.md §18).

SDPA computes no attention weights. Whatever the installed transformers does then (since 5.0: its
attention function warns once through its logger and ``attentions`` is ``()``; in 4.57 a
UserWarning too and ``attentions`` None), the routed model does the same: the same warnings, the
same returned value, for a forward and for generate(). Eager attention returns the weights
(tests/runtime/test_generation_modes.py, tests/tools/test_stock_suite.py).
"""

from __future__ import annotations

import logging
import warnings

import torch
from tests.helpers.batches import mixed_batch

import reroute
from reroute import RoutingConfig

CONFIG = RoutingConfig("reroute", (1, 3, 4), (0.3, 0.5, 0.2))


class _Records(logging.Handler):
    def __init__(self):
        super().__init__()
        self.messages: list[str] = []

    def emit(self, record):
        self.messages.append(record.getMessage())


def _told(call):
    """``(result, warnings, transformers log messages)`` of ``call()``, with transformers' warn-once memory cleared."""
    logging.Logger.warning_once.cache_clear()  # transformers' `warning_once` is an lru_cache on Logger
    handler = _Records()
    logger = logging.getLogger("transformers")
    logger.addHandler(handler)
    try:
        with warnings.catch_warnings(record=True) as caught, torch.no_grad():
            warnings.simplefilter("always")
            result = call()
    finally:
        logger.removeHandler(handler)
    return result, [(w.category, str(w.message)) for w in caught], handler.messages


def _same(a, b) -> bool:
    """Equal values: None, tensors, or (nested) tuples of them."""
    if isinstance(a, tuple) and isinstance(b, tuple):
        return len(a) == len(b) and all(_same(x, y) for x, y in zip(a, b))
    if isinstance(a, torch.Tensor) and isinstance(b, torch.Tensor):
        return torch.equal(a, b)
    return a is None and b is None


def test_forward_under_sdpa_answers_as_stock(family, model):
    inputs = mixed_batch(family)
    stock, stock_warnings, stock_log = _told(lambda: model(**inputs, output_attentions=True))
    with reroute.apply(model, CONFIG):
        routed, routed_warnings, routed_log = _told(lambda: model(**inputs, output_attentions=True))
    assert routed_log == stock_log  # since 5.0 the attention function's own warning, once (none for Qwen2-VL)
    assert routed_warnings == stock_warnings
    assert _same(routed.attentions, stock.attentions)
    assert not torch.equal(routed.logits, stock.logits)  # routed (keep ratios below 1)


def test_generate_under_sdpa_answers_as_stock(family, model):
    inputs = mixed_batch(family)
    options = dict(
        do_sample=False, max_new_tokens=3, min_new_tokens=3, return_dict_in_generate=True, output_attentions=True
    )
    stock, stock_warnings, stock_log = _told(lambda: model.generate(**inputs, **options))
    with reroute.apply(model, CONFIG):
        routed, routed_warnings, routed_log = _told(lambda: model.generate(**inputs, **options))
    assert routed_log == stock_log and routed_warnings == stock_warnings
    assert _same(routed.attentions, stock.attentions) and len(routed.attentions) == 3
