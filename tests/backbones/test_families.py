"""A family is one adapter: what each adapter declares, how consumers find it, and the one-line refusals
where a family declares nothing (never another family's rules)."""

from __future__ import annotations

import re

import pytest
from tests.helpers.models import FAMILIES
from tests.helpers.models_more import qwen3_batch, qwen3_prompt

import reroute
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
        "Qwen2VLBackbone": (True, True, None, None, False, ()),
        "LlavaNextBackbone": (False, False, None, None, False, ("llava-next-7b", "llava-onevision-7b")),
        "InternVLBackbone": (False, False, None, None, False, ("internvl3-8b",)),
        "Qwen3VLBackbone": (True, True, None, None, False, ("qwen3-vl-8b",)),
    }


def test_the_demo_is_a_registered_llava_told_apart_by_its_processor(model_dir):
    from reroute.demo import modeling
    from reroute.demo.family import DemoBackbone

    model, processor = modeling.load_model(model_dir)
    assert type(backbone_for(model, processor)) is DemoBackbone
    assert type(backbone_for(model)) is LlavaBackbone  # the decoder adapter apply() uses: the same layout
    assert type(backbone_for_config(model.config)) is LlavaBackbone  # a config alone cannot tell the demo apart
    assert list(evaluation_protocols()) == ["llava", "qwen2_5_vl", "demo"]
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

    model = FAMILIES["qwen3_vl"].make_model(num_layers=2)
    with _one_line(
        "Qwen3-VL declares no evaluation protocol (Qwen3VLBackbone.evaluation): "
        "pass --family with one of llava, qwen2_5_vl, demo"
    ):
        detect_family(model, None)
    with _one_line(
        "Qwen3-VL declares no evaluation protocol (Qwen3VLBackbone.evaluation): "
        "tasks write their prompts for llava, qwen2_5_vl, demo"
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
    table, last = capsys.readouterr().out.rstrip("\n").rsplit("\n", 1)
    assert not re.search(r"^nuwa", table, flags=re.MULTILINE)  # no rows, and no note about rows
    assert last == f"nuwa, nuwa_reroute: not available: {lacks}"
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
