"""CDPruner as a vision stage (docs/semantics.md §22): ``vision_stage="cdpruner"``.

Each image's decoder-ready tokens (`reroute.methods.projected`: LLaVA-1.5's projector output,
Qwen2-VL's / Qwen2.5-VL's merger output) are selected by CDPruner's conditional DPP
(`cdpruner_select`); the picks enter the decoder unchanged at the prompt positions they had, the
others are removed before layer 0. Parameter ``keep_fraction`` ``f``: ``K = round(N f)``.

The instruction is the prompt's text after the image: the sample's valid tokens after its last
image or video token (the question and the template's tail). Relevance, in one of two spaces:

- as published, with ``reroute.apply(..., instruction_encoder=ClipRelevance(...))`` (LLaVA-1.5):
  the instruction decoded and embedded by CLIP's text tower, the patches through CLIP's visual
  projection, the code's negated cosine (`reroute.methods.cdpruner.clip`);
- without it (every supported family; CLIP's text tower is in no VLM checkpoint): the decoder's
  input-embedding space, where the projector already maps the image tokens: the decoder's
  embeddings of the instruction's ids against the projected tokens, the paper's plain cosine (the
  code's sign flip is CLIP's, `instruction_relevance`).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import torch
from torch import nn

from reroute.methods.cdpruner.clip import ClipRelevance
from reroute.methods.cdpruner.dpp import cdpruner_select
from reroute.methods.projected import OneGridStage, one_grid_refusal, projected_images
from reroute.methods.vision_stage import StageImage, StagePrompt, register_vision_stage

NO_PROMPT = (
    "vision stage 'cdpruner' reads the instruction from the prompt's input_ids, and this call brought none "
    "(inputs_embeds); pass input_ids with the pixel values"
)
IMAGES_AND_PROMPT = (
    "vision stage 'cdpruner' cannot match the images to the prompt: its image tokens are not the images' tokens "
    "in order; pass the processor's input_ids and pixel values together"
)


def cdpruner_refusal(model: Any) -> str | None:
    """Why CDPruner's stage cannot run on ``model`` (a model or a config), or None."""
    return one_grid_refusal("cdpruner", model)


def instruction_ids(prompt: StagePrompt, sample: int) -> torch.Tensor:
    """The ids of sample ``sample``'s instruction: its valid tokens after its last image or video token."""
    visual = torch.nonzero(prompt.visual[sample]).flatten()
    start = int(visual[-1]) + 1 if len(visual) else 0
    after = prompt.valid[sample, start:]
    return prompt.input_ids[sample, start:][after]


def owners(prompt: StagePrompt, image_token_id: int, sizes: list[int]) -> list[int]:
    """The sample each image belongs to: image ``i`` (``sizes[i]`` tokens) fills the next run of image tokens."""
    counts = (prompt.input_ids == image_token_id).sum(dim=1).tolist()
    out, sample, filled = [], 0, 0
    for size in sizes:
        while sample < len(counts) and filled == counts[sample]:
            sample, filled = sample + 1, 0
        if sample == len(counts) or filled + size > counts[sample]:
            raise ValueError(IMAGES_AND_PROMPT)
        out.append(sample)
        filled += size
    if not out or filled != counts[sample] or any(counts[sample + 1 :]):
        raise ValueError(IMAGES_AND_PROMPT)
    return out


@register_vision_stage
class CDPrunerStage(OneGridStage):
    """CDPruner on each image's projected tokens, conditioned on its prompt. Parameter: ``keep_fraction``."""

    name = "cdpruner"
    reads_prompt = True

    def check_instruction_encoder(self, model: nn.Module, encoder: object) -> None:
        if encoder is None:
            return
        if not isinstance(encoder, ClipRelevance):
            raise ValueError(
                f"vision stage 'cdpruner' reads a reroute.methods.cdpruner.ClipRelevance as instruction_encoder, "
                f"not {type(encoder).__name__}; build one with ClipRelevance.from_pretrained(clip_path, tokenizer)"
            )
        if (reason := encoder.refusal(model)) is not None:
            raise ValueError(reason)

    @torch.no_grad()
    def reduce(self, model: nn.Module, params: Mapping[str, float], inputs: Mapping[str, Any]) -> list[StageImage]:
        self.check_model(model)
        prompt = inputs.get("prompt")
        if prompt is None:
            raise ValueError(NO_PROMPT)
        images = projected_images(model, inputs)
        samples = owners(prompt, model.config.image_token_id, [image.grid[0] * image.grid[1] for image in images])
        clip, embed = inputs.get("instruction_encoder"), model.get_input_embeddings()
        # each sample's instruction embedded once, whatever its number of images
        texts = {}
        for sample in dict.fromkeys(samples):
            ids = instruction_ids(prompt, sample)
            texts[sample] = embed(ids.to(embed.weight.device)) if clip is None else clip.text_embeds(ids)
        out = []
        for (tokens, grid, patches), sample in zip(images, samples):
            count, text = self.kept_count(len(tokens), params), texts[sample].to(tokens.device)
            if clip is None:  # the decoder's embedding space: the projected tokens and the instruction's embeddings
                kept = cdpruner_select(tokens, tokens, text, count, negate=False)
            else:  # as published: CLIP's joint space, the code's sign
                kept = cdpruner_select(tokens, clip.image_embeds(model, patches).to(tokens.device), text, count)
            out.append(StageImage(kept=kept, tokens=tokens[kept], grid=grid))
        return out

    def flops(self, num_tokens: int, params: Mapping[str, float], model_config) -> int:
        """Matmul FLOPs for one image: the ``N x N`` cosine matrix of the ``D``-wide tokens and the DPP's ``K``
        Cholesky rows (``2 i N`` for the ``i``-th). The relevance (``2 N M D``, ``M`` the instruction's tokens,
        unknown to a cost without a prompt) is not counted."""
        width = model_config.text_config.hidden_size
        kept = self.kept_count(num_tokens, params)
        return 2 * num_tokens * num_tokens * width + kept * (kept - 1) * num_tokens
