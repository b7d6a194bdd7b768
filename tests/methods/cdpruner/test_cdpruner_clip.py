"""CDPruner as published (docs/semantics.md §22): `ClipRelevance` (CLIP's text tower and visual projection)
given to `reroute.apply`, against the official code (official.py: the tower's embeddings and
`encode_images`) on a tiny LLaVA-1.5 whose CLIP parts are random, with word-level tokenizers built here."""

from __future__ import annotations

import re

import pytest
import torch
from transformers import CLIPTextConfig, CLIPTextModelWithProjection, CLIPVisionModelWithProjection
from tests.helpers.clip_parts import clip_tokenizer, vlm_tokenizer, write_clip
from tests.helpers.models import LLAVA_IMAGE_TOKEN, llava_batch, llava_prompt, tiny_llava, tiny_qwen
from tests.helpers.vision_stage_checks import (
    PER_IMAGE,
    check_batch_equals_alone,
    check_equals_reference,
    check_generate_equals_reference,
    mixed,
)
from tests.methods.cdpruner.official import official_embeds, official_encode

import reroute
from reroute.methods import StageImage
from reroute.methods.cdpruner import ClipRelevance

CONTEXT = 5  # CLIP's context length here: instructions of 4+ words take two segments, as long questions do at 77


@pytest.fixture(scope="module")
def setup():
    """(model, ClipRelevance, the official code's parts)."""
    model = tiny_llava()
    torch.manual_seed(1)
    tokens = clip_tokenizer()
    text_config = CLIPTextConfig(
        vocab_size=len(tokens), hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4,
        max_position_embeddings=CONTEXT, projection_dim=24, eos_token_id=tokens.eos_token_id, bos_token_id=tokens.bos_token_id,
        pad_token_id=0,
    )  # fmt: skip
    text_tower = CLIPTextModelWithProjection(text_config).eval()
    vision_config = model.config.vision_config.to_dict() | {"projection_dim": 24}
    with_projection = CLIPVisionModelWithProjection(type(model.config.vision_config)(**vision_config)).eval()
    clip = ClipRelevance(text_tower.text_model, text_tower.text_projection, with_projection.visual_projection, tokens, vlm_tokenizer())
    return model, clip, (tokens, text_tower, with_projection.visual_projection)


def official_images(fraction: float, clip: ClipRelevance, parts):
    """The official CDPruner per image: the question (the sample's real tokens after its last image token,
    decoded) through the official tower code, then `encode_images` on the layer LLaVA reads."""
    text_tokenizer, text_tower, visual_projection = parts

    @torch.no_grad()
    def images(model, inputs):
        ids, real = inputs["input_ids"], inputs["attention_mask"].bool()
        config, tower = model.config, model.model.vision_tower
        hidden = tower(inputs["pixel_values"], output_hidden_states=True).hidden_states[config.vision_feature_layer][:, 1:]
        out, i = [], 0
        for b in range(ids.shape[0]):
            placed = torch.nonzero(ids[b] == LLAVA_IMAGE_TOKEN).flatten()
            if not len(placed):
                continue
            last = int(placed[-1])
            question = clip.tokenizer.decode(ids[b, last + 1 :][real[b, last + 1 :]].tolist(), skip_special_tokens=True)
            for _ in range(len(placed) // PER_IMAGE):
                image_embeds, text_embeds = official_embeds(
                    question, text_tokenizer, text_tower, CONTEXT, getattr(tower, 'vision_model', tower), visual_projection, hidden[i : i + 1], "cpu"
                )
                count = max(1, round(PER_IMAGE * fraction))
                tokens, mask = official_encode(hidden[i : i + 1], image_embeds, text_embeds, model.model.multi_modal_projector, count)
                kept = torch.nonzero(mask[0]).flatten()
                out.append(StageImage(kept, tokens[0, kept], (4, 4)))
                i += 1
        return out

    return images


def config_of(model, name: str):
    return reroute.preset(name, tier=PER_IMAGE * 3 / 8, model=model, num_visual=PER_IMAGE)


def test_embeddings_equal_the_official_tower_code(setup):
    model, clip, (text_tokenizer, text_tower, visual_projection) = setup
    for text_after in (2, 3, 9):  # one full segment, two, three
        prompt = llava_prompt(1, text_after=text_after, seed=text_after)
        ids = torch.tensor(prompt.ids)
        tail = ids[int(torch.nonzero(ids == LLAVA_IMAGE_TOKEN).max()) + 1 :]
        question = clip.tokenizer.decode(tail.tolist(), skip_special_tokens=True)
        patches = model.model.vision_tower(prompt.images, output_hidden_states=True).hidden_states[-2][:, 1:]
        image_embeds, text_embeds = official_embeds(
            question, text_tokenizer, text_tower, CONTEXT, getattr(model.model.vision_tower, 'vision_model', model.model.vision_tower), visual_projection, patches, "cpu"
        )
        assert text_embeds.shape[0] == (len(tail) + 2 - 1) // CONTEXT + 1  # the words, start and end
        torch.testing.assert_close(clip.text_embeds(tail), text_embeds, rtol=0, atol=0)
        torch.testing.assert_close(clip.image_embeds(model, patches[0]), image_embeds[0], rtol=0, atol=1e-6)


@pytest.mark.parametrize("name", ["cdpruner", "cdpruner_reroute"])
def test_equals_the_reference_with_the_official_selection(setup, name):
    model, clip, parts = setup
    config = config_of(model, name)
    images = official_images(config.vision_parameters["keep_fraction"], clip, parts)
    check_equals_reference(model, config, llava_batch(mixed(llava_prompt_of), "left"), images, instruction_encoder=clip)
    check_generate_equals_reference(model, config, llava_batch([llava_prompt_of(2, seed=4)], "left"), images, instruction_encoder=clip)


def test_batch_equals_samples_alone(setup):
    model, clip, _ = setup
    check_batch_equals_alone(model, config_of(model, "cdpruner"), mixed(llava_prompt_of), llava_batch, instruction_encoder=clip)


def llava_prompt_of(num_images: int, seed: int, text_before: int = 3):
    return llava_prompt(num_images, text_before=text_before, text_after=7, seed=seed)  # two CLIP segments


def test_loads_from_a_local_folder(setup, tmp_path):
    """`ClipRelevance.from_pretrained` reads a CLIP checkpoint folder (a hub id works the same way)."""
    model, clip, _ = setup
    write_clip(tmp_path, model.config.vision_config, CONTEXT)
    loaded = ClipRelevance.from_pretrained(str(tmp_path), tokenizer=clip.tokenizer)
    assert loaded.refusal(model) is None
    with reroute.apply(model, config_of(model, "cdpruner"), instruction_encoder=loaded), torch.no_grad():
        model(**llava_batch([llava_prompt_of(1, seed=0)], "left"))


def test_wrong_encoders_are_refused_in_one_line(setup):
    model, clip, _ = setup
    config = config_of(model, "cdpruner")
    message = (
        "vision stage 'cdpruner' reads a reroute.methods.cdpruner.ClipRelevance as instruction_encoder, not str; "
        "build one with ClipRelevance.from_pretrained(clip_path, tokenizer)"
    )
    with pytest.raises(ValueError, match=f"^{re.escape(message)}$"):
        reroute.apply(model, config, instruction_encoder="openai/clip-vit-large-patch14-336")
    qwen = tiny_qwen("qwen2_5_vl")
    with pytest.raises(ValueError, match=r"^instruction_encoder=ClipRelevance needs LLaVA-1\.5's layout .*embedding space$"):
        reroute.apply(qwen, config_of(qwen, "cdpruner"), instruction_encoder=clip)
    with pytest.raises(ValueError, match=r"^vision stage 'divprune' reads no instruction_encoder; drop it \(vision_stage='cdpruner' reads one\)$"):
        reroute.apply(model, reroute.preset("divprune", 6, model=model, num_visual=16), instruction_encoder=clip)
    with pytest.raises(ValueError, match=r"^instruction_encoder is read by a vision stage \(vision_stage='cdpruner'\); this config has none: drop it$"):
        reroute.apply(model, reroute.preset("fastv", 6, model=model, num_visual=16), instruction_encoder=clip)
    assert "forward" not in model.model.__dict__ and "generate" not in model.__dict__
