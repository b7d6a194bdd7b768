"""reroute.runtime.compat: the supported transformers range and the per-model decisions, on the installed release.

`make test-compat` runs this file and the engine's equivalence tests on 4.57.6 and 5.4.0;
`make test` on 5.24.0 (docs/compat.md).
"""

from __future__ import annotations

import inspect
import re

import pytest
import torch
from tests.helpers.models import FAMILIES

import reroute
from reroute import RoutingConfig
from reroute.runtime import compat
from reroute.backbones import backbone_for
from reroute.runtime.patching import Patch

RANGE_ERROR = (
    "transformers {v} is not supported; reroute runs on transformers >=4.57,<5.25: "
    "pip install 'transformers>=4.57,<5.25'"
)


@pytest.mark.parametrize("version", ["4.57.0", "4.57.6", "5.4.0", "5.23.0", "5.24.0", "5.24.3", "5.24.0.dev0"])
def test_supported_releases_pass(version):
    assert compat.unsupported_release(version) is None
    compat.check_release(version)


@pytest.mark.parametrize("version", ["4.56.2", "4.46.0", "5.25.0", "5.25.0.dev0", "6.0.0"])
def test_unsupported_release_is_refused_in_one_line(version):
    with pytest.raises(RuntimeError, match=f"^{re.escape(RANGE_ERROR.format(v=version))}$"):
        compat.check_release(version)


def test_installed_release_is_supported():
    assert compat.unsupported_release() is None


def test_apply_refuses_an_unsupported_release_before_touching_the_model(monkeypatch):
    model = FAMILIES["llava"].make_model()
    monkeypatch.setattr(compat, "TRANSFORMERS_VERSION", "4.56.2")
    with pytest.raises(RuntimeError, match=f"^{re.escape(RANGE_ERROR.format(v='4.56.2'))}$"):
        reroute.apply(model, RoutingConfig("remove", (2,), (0.25,)))
    assert Patch.installed(model, "generate") is None
    assert Patch.installed(model.model.language_model, "forward") is None


@pytest.mark.parametrize("family", list(FAMILIES))
def test_cache_keyword_is_the_layers_own(family):
    """The layers take the cache under the keyword the stock decoder passes (``cache`` from 5.24)."""
    model = FAMILIES[family].make_model()
    layer = backbone_for(model).layers(backbone_for(model).text_model(model))[0]
    decided = compat.Compat.for_model(layer, model.config.get_text_config())
    assert decided.cache_keyword == compat.CACHE_KEYWORD
    assert decided.cache_keyword in inspect.signature(layer.forward).parameters


@pytest.mark.parametrize("family", ["qwen2_5_vl", "qwen2_vl"])
def test_merged_tables_rotate_as_the_stock_attention_does(family):
    """The engine's (B, L, d) tables with the plain rotation give exactly the rotation the family's own
    attention applies to what its rotary module returns, per-axis (before 5.23) or merged (since)."""
    model = FAMILIES[family].make_model()
    backbone = backbone_for(model)
    text_model = backbone.text_model(model)
    layer = backbone.layers(text_model)[0]
    decided = compat.Compat.for_model(layer, model.config.get_text_config())
    g = torch.Generator().manual_seed(0)
    positions = torch.randint(0, 50, (3, 2, 7), generator=g)  # the three axes differ, as inside an image
    hidden = torch.randn(2, 7, 64, generator=g)
    q, k = torch.randn(2, 4, 7, 16, generator=g), torch.randn(2, 2, 7, 16, generator=g)
    cos, sin = decided.rotary_tables(backbone.rotary(text_model), hidden, positions)
    assert cos.shape == sin.shape == (2, 7, 16)
    got = compat.apply_rotary_pos_emb(q, k, cos, sin)
    module = inspect.getmodule(type(layer.self_attn))
    raw_cos, raw_sin = backbone.rotary(text_model)(hidden, positions)
    if decided.mrope_section is not None:  # per-axis tables: the stock merge inside the attention
        expected = module.apply_multimodal_rotary_pos_emb(q, k, raw_cos, raw_sin, list(decided.mrope_section))
        # and the per-axis layers get back exactly the merged tables from the engine's expansion
        lc, ls = decided.layer_position_embeddings(cos, sin)
        assert torch.equal(module.apply_multimodal_rotary_pos_emb(q, k, lc, ls, list(decided.mrope_section))[0], got[0])
    else:
        assert not hasattr(module, "apply_multimodal_rotary_pos_emb")
        expected = module.apply_rotary_pos_emb(q, k, raw_cos, raw_sin)
    assert torch.equal(got[0], expected[0]) and torch.equal(got[1], expected[1])


def test_decoder_output_carries_the_cache_where_the_release_reads_it():
    cache = compat.new_cache(FAMILIES["llava"].make_model().config.get_text_config())
    out = compat.decoder_output(torch.zeros(1, 1, 4), cache)
    assert compat.output_cache(out) is cache
    assert getattr(out, compat.CACHE_KEYWORD) is cache


def test_vision_stage_is_refused_before_5_24_in_one_line(monkeypatch):
    assert compat.vision_stage_refusal("nuwa", "5.24.0") is None
    model = FAMILIES["llava"].make_model()
    monkeypatch.setattr(compat, "TRANSFORMERS_VERSION", "5.4.0")
    message = "vision_stage='nuwa' needs transformers>=5.24,<5.25 (installed: 5.4.0); upgrade transformers, or route without a vision stage"
    with pytest.raises(ValueError, match=f"^{re.escape(message)}$"):
        reroute.apply(model, RoutingConfig("remove", (2,), (0.25,), vision_stage="nuwa"))
    assert Patch.installed(model, "generate") is None
