"""A family is one adapter: what each adapter declares, how consumers find it, and the one-line refusals
where a family declares nothing (never another family's rules). Mistral 3 is the family added by
walking docs/adding-a-backbone.md: its adapter, its tiny model (tests/helpers/models_more.py) and these
tests; the invariant suite runs it through ``FAMILIES``."""

from __future__ import annotations

import re

import pytest
import torch
from tests.helpers.harness import reference_logits, routed, visual_mask
from tests.helpers.models import FAMILIES
from tests.helpers.models_more import (
    IMAGE,
    MISTRAL3_MERGE,
    MISTRAL3_PATCH,
    mistral3_batch,
    mistral3_prompt,
    qwen3_batch,
    qwen3_prompt,
    tiny_mistral3,
)

import reroute
from reroute import RoutingConfig
from reroute.backbones import (
    BACKBONES,
    NotDeclared,
    backbone_for,
    backbone_for_config,
    evaluation_protocols,
    grids_for,
    register_backbone,
    released_shapes,
)
from reroute.backbones.llava import LlavaBackbone
from reroute.backbones.mistral3 import Mistral3Backbone
from reroute.cli import main
from reroute.errors import UserError


def _one_line(message: str):
    return pytest.raises(NotDeclared, match=f"^{re.escape(message)}$")


# ----------------------------------------------------------------------------- the registry
def test_the_declarations_of_every_builtin_family():
    """What each adapter declares (None: not declared); the consumers' behaviour follows from this table."""
    table = {
        b.__name__: (
            b.grids is not None, b.answer_frame is not None, None if b.evaluation is None else b.evaluation.name,
            b.nuwa_tower, b.visual_tokens_per_image is not None, tuple(s.name for s in b.released),
        )
        for b in BACKBONES
        if b.__module__.startswith("reroute.backbones.")
    }
    assert table == {
        "LlavaBackbone": (True, True, "llava", "clip_cls", True, ("llava-1.5-7b",)),
        "Qwen2_5VLBackbone": (True, True, "qwen2_5_vl", "qwen2_5_vit", False, ("qwen2.5-vl-7b",)),
        "Qwen2VLBackbone": (True, True, "qwen2_vl", None, False, ()),
        "LlavaNextBackbone": (False, False, "llava_next", None, False, ("llava-next-7b", "llava-onevision-7b")),
        "InternVLBackbone": (False, False, "internvl", None, False, ("internvl3-8b",)),
        "Qwen3VLBackbone": (True, True, "qwen3_vl", None, False, ("qwen3-vl-8b",)),
        "Mistral3Backbone": (True, False, None, None, False, ("mistral-small-3.1-24b",)),
    }


def test_the_demo_is_a_registered_llava_told_apart_by_its_processor(model_dir):
    from reroute.demo import modeling
    from reroute.demo.family import DemoBackbone

    model, processor = modeling.load_model(model_dir)
    assert type(backbone_for(model, processor)) is DemoBackbone
    assert type(backbone_for(model)) is LlavaBackbone  # the decoder adapter apply() uses: the same layout
    assert type(backbone_for_config(model.config)) is LlavaBackbone  # a config alone cannot tell the demo apart
    assert list(evaluation_protocols()) == ["internvl", "llava", "llava_next", "qwen2_vl", "qwen2_5_vl", "qwen3_vl", "demo"]
    with pytest.raises(ValueError, match=r"^DemoBackbone is already registered$"):
        register_backbone(DemoBackbone)


def test_a_config_finds_its_family_and_an_unknown_one_is_refused():
    shapes = released_shapes()
    assert type(backbone_for_config(shapes["qwen2.5-vl-7b"].config())).__name__ == "Qwen2_5VLBackbone"
    assert type(backbone_for_config(shapes["qwen2.5-vl-7b"].config().text_config)).__name__ == "Qwen2_5VLBackbone"
    from transformers import LlamaConfig

    with pytest.raises(TypeError, match=r"^no family adapter for model type 'llama'; registered model types: internvl, llava, "):
        backbone_for_config(LlamaConfig())


# ----------------------------------------------------------------------------- refusals by what is not declared
def test_show_and_analyze_refuse_a_family_without_token_grids():
    model = FAMILIES["llava_next"].make_model(num_layers=2)
    inputs = FAMILIES["llava_next"].make_batch([FAMILIES["llava_next"].make_prompt(1)])
    with _one_line(
        "LLaVA-NeXT/OneVision declares no token grid (LlavaNextBackbone.grids): "
        "show and analyze place each visual token on its image with it"
    ):
        grids_for(model, None, inputs, [(16, 16)])
    assert issubclass(NotDeclared, UserError) and issubclass(NotDeclared, ValueError)  # the CLI prints it in one line


def test_eval_and_analyze_refuse_a_family_without_an_evaluation_protocol():
    from reroute.eval.families import detect_family
    from reroute.viz.collect import model_family

    model = FAMILIES["mistral3"].make_model(num_layers=2)
    with _one_line(
        "Mistral 3 declares no evaluation protocol (Mistral3Backbone.evaluation): "
        "pass --family with one of internvl, llava, llava_next, qwen2_vl, qwen2_5_vl, qwen3_vl, demo"
    ):
        detect_family(model, None)
    with _one_line(
        "Mistral 3 declares no evaluation protocol (Mistral3Backbone.evaluation): "
        "tasks write their prompts for internvl, llava, llava_next, qwen2_vl, qwen2_5_vl, qwen3_vl, demo"
    ):
        model_family(model, None)


def test_nuwa_and_cost_refuse_a_family_without_a_nuwa_tower(capsys):
    """No LLaVA settings borrowed: the presets refuse, and `reroute cost` prints no Nüwa rows, one line why."""
    lacks = (
        "Qwen3-VL declares no Nüwa tower kind (Qwen3VLBackbone.nuwa_tower): Nüwa's stage 1 is defined for "
        "LlavaForConditionalGeneration and Qwen2_5_VLForConditionalGeneration"
    )
    with _one_line(lacks):
        reroute.preset("nuwa", 64, model=released_shapes()["qwen3-vl-8b"].config(), num_visual=196)
    assert main(["cost", "--model", "qwen3-vl-8b"]) == 0
    lines = capsys.readouterr().out.rstrip("\n").split("\n")
    notes = [line for line in lines if ": not available: " in line]  # one per refused preset pair, at the end
    assert lines[-len(notes) :] == notes
    assert not any(re.match(r"nuwa", line) for line in lines[: -len(notes)])  # no rows, and no note about rows
    assert f"nuwa, nuwa_reroute: not available: {lacks}" in notes
    assert main(["cost", "--model", "llava-1.5-7b"]) == 0
    assert "not available" not in capsys.readouterr().out


# ----------------------------------------------------------------------------- grids declared beyond today's three
def test_qwen3_vl_grids_follow_the_qwen_maths():
    model = FAMILIES["qwen3_vl"].make_model(num_layers=2)
    inputs = qwen3_batch([qwen3_prompt(1, seed=0), qwen3_prompt(2, size=1, seed=1)], "left")
    grids = grids_for(model, None, inputs, [(40, 20), (30, 30)], sample=1)
    assert [(g.rows, g.cols, g.region, g.image_index) for g in grids] == [
        (2, 4, (0.0, 0.0, 40.0, 20.0), 0), (2, 2, (0.0, 0.0, 30.0, 30.0), 1),
    ]  # fmt: skip
    ids = inputs["input_ids"][1].tolist()
    assert [p for g in grids for p in g.positions] == [i for i, t in enumerate(ids) if t == model.config.image_token_id]
    assert backbone_for(model).answer_frame(model.config, grids[0]) == (1000.0, 1000.0)  # relative, as Qwen2-VL


# ----------------------------------------------------------------------------- Mistral 3, the eighth family
def test_mistral3_routes_exactly_as_the_reference():
    """Beyond the invariant suite (which runs it through FAMILIES): [IMG_BREAK] / [IMG_END] are text, never
    candidates, and remove / reroute equal the slow reference on a padded batch of 0, 1 and 2 images."""
    model = tiny_mistral3(num_layers=4)
    prompts = [mistral3_prompt(2, size=1, seed=1), mistral3_prompt(1, seed=2, text_before=6), mistral3_prompt(0, seed=3)]
    inputs = mistral3_batch(prompts, "left")
    assert visual_mask(model, inputs).sum(1).tolist() == [8 + 6, 6, 0]  # the [IMG] placeholders only
    with torch.no_grad():
        stock = model(**inputs).logits
    with reroute.apply(model, RoutingConfig("remove", (1,), (1.0,))), torch.no_grad():
        assert torch.equal(model(**inputs).logits, stock)
    mask = inputs["attention_mask"].bool()
    for config in (RoutingConfig("remove", (1, 3), (0.5, 0.25)), RoutingConfig("reroute", (1, 3), (0.3, 0.5))):
        out, _ = routed(model, config, inputs)
        for b, (ref, _) in enumerate(reference_logits(model, inputs, visual_mask(model, inputs), config)):
            torch.testing.assert_close(out.logits[b, torch.nonzero(mask[b]).flatten()], ref, atol=2e-5, rtol=0)


def test_mistral3_grids_are_the_img_positions_in_raster_order():
    model = tiny_mistral3(num_layers=2)
    inputs = mistral3_batch([mistral3_prompt(1, seed=0), mistral3_prompt(2, size=1, seed=1)], "left")
    grids = grids_for(model, None, inputs, [(64, 128), (60, 30)], sample=1)  # original (width, height)
    assert [(g.rows, g.cols, g.region) for g in grids] == [(4, 2, (0.0, 0.0, 64.0, 128.0)), (2, 3, (0.0, 0.0, 60.0, 30.0))]
    ids = inputs["input_ids"][1].tolist()
    assert [p for g in grids for p in g.positions] == [i for i, t in enumerate(ids) if t == IMAGE]
    # each grid row is one row of [IMG] the processor closed with a break (or end) token
    for g in grids:
        for r in range(g.rows):
            row = g.positions[r * g.cols : (r + 1) * g.cols]
            assert list(row) == list(range(row[0], row[0] + g.cols)) and ids[row[-1] + 1] != IMAGE
    with pytest.raises(ValueError, match=r"^sample 1 has 2 images but 1 image sizes: give one size per image$"):
        grids_for(model, None, inputs, [(64, 128)], sample=1)


def test_mistral3_merger_orders_its_features_row_major():
    """The k-th [IMG] holds merged cell (k // cols, k % cols): the patch merger's output order, checked by
    letting it pass each 2 x 2 window's top-left patch through."""
    from transformers.models.mistral3.modeling_mistral3 import Mistral3PatchMerger

    config = tiny_mistral3(num_layers=1).config
    merger = Mistral3PatchMerger(config)
    rows, cols = 3, 4  # merged cells; the tower gave (2 rows) x (2 cols) patches each
    patches = torch.arange(2 * rows * 2 * cols, dtype=torch.float32)  # patch index, row-major over the patch grid
    features = patches[:, None].expand(-1, config.vision_config.hidden_size)
    with torch.no_grad():
        merger.merging_layer.weight.zero_()
        merger.merging_layer.weight[0, 0] = 1.0  # output 0 = channel 0 of the window's first patch
        out = merger(features, [(2 * rows * MISTRAL3_PATCH, 2 * cols * MISTRAL3_PATCH)])[:, 0]
    top_left = [(2 * (k // cols)) * (2 * cols) + 2 * (k % cols) for k in range(rows * cols)]
    assert out.tolist() == top_left and MISTRAL3_MERGE == 2


def test_mistral3_commands_work_or_refuse_by_its_declarations(capsys):
    """cost: its released shape, without Nüwa rows; eval and analyze --task: refused (no evaluation protocol);
    show: grids declared, no answer-box frame (boxes in numbers above 1 are not drawn)."""
    from reroute.eval.families import detect_family

    assert main(["cost", "--model", "mistral-small-3.1-24b"]) == 0
    out = capsys.readouterr().out
    assert out.startswith(
        "mistral-small-3.1-24b: 40 decoder layers, hidden 5120, MLP 32768, 32 heads / 8 kv heads x 128; 256 visual"
    )
    assert (
        "\nnuwa, nuwa_reroute: not available: Mistral 3 declares no Nüwa tower kind "
        "(Mistral3Backbone.nuwa_tower): Nüwa's stage 1 is defined for LlavaForConditionalGeneration and "
        "Qwen2_5_VLForConditionalGeneration\n"
    ) in out
    model = tiny_mistral3(num_layers=2)
    with _one_line(
        "Mistral 3 declares no evaluation protocol (Mistral3Backbone.evaluation): "
        "pass --family with one of internvl, llava, llava_next, qwen2_vl, qwen2_5_vl, qwen3_vl, demo"
    ):
        detect_family(model, None)
    assert backbone_for(model).answer_frame is None and backbone_for(model).grids is not None


def test_mistral3_released_shape_counts_as_the_processor_does():
    import numpy as np
    from transformers.models.pixtral.image_processing_pil_pixtral import get_resize_output_image_size

    config = released_shapes()["mistral-small-3.1-24b"].config()
    cell = config.vision_config.patch_size * config.spatial_merge_size
    height, width = get_resize_output_image_size(np.zeros((448, 448, 3)), size=(1540, 1540), patch_size=(cell, cell))
    assert (height // cell) * (width // cell) == released_shapes()["mistral-small-3.1-24b"].visual_tokens
    assert config.get_text_config().sliding_window is None


@pytest.mark.parametrize(
    "decoder, message",
    [
        ("mistral", "the mistral decoder uses a sliding window of 4096 tokens, which the routed loop cannot run exactly; "
                    "load the model with text_config.sliding_window=None (the same model for prompts shorter than "
                    "4096 tokens)"),
        ("ministral3", "reroute supports Mistral3ForConditionalGeneration with a Mistral decoder (Mistral Small 3.1 / "
                       "3.2), not a ministral3 one: its layers are not tested against the routed loop"),
    ],
)  # fmt: skip
def test_mistral3_refuses_decoders_it_cannot_run_or_has_not_tested(decoder, message):
    model = tiny_mistral3(num_layers=2, decoder=decoder)
    if decoder == "mistral":
        model.model.language_model.config.sliding_window = 4096
    with pytest.raises((TypeError, ValueError), match=f"^{re.escape(message)}$"):
        reroute.apply(model, RoutingConfig("remove", (1,), (0.5,)))
    assert "forward" not in model.model.language_model.__dict__  # refused before any change
    assert Mistral3Backbone.refusal(tiny_mistral3(num_layers=2)) is None
