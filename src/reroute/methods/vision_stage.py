"""Vision-side stages: reduce the visual tokens after the vision tower and projector, before
the decoder (Nüwa's stage 1). ``RoutingConfig(vision_stage=None)`` (the default) has none.

A stage is chosen by name and configured by ``RoutingConfig.vision_params`` (a flat mapping of
numbers), which the stage checks at config construction.
"""

from __future__ import annotations

from collections.abc import Mapping
from contextvars import ContextVar
from dataclasses import dataclass

import torch
from torch import nn

from reroute.registry import VISION_STAGES


@dataclass(frozen=True)
class StageImage:
    """What a vision stage keeps of one image.

    kept: ``(K,)`` long, ascending indices of the kept tokens among the image's tokens (the
        order in which the stock model places them in the prompt: raster order).
    tokens: ``(K, D)`` decoder-ready features (after the projector / merger) for those tokens.
    grid: ``(H, W)`` the image's token grid (``H * W`` tokens in the prompt).
    """

    kept: torch.Tensor
    tokens: torch.Tensor
    grid: tuple[int, int]


@dataclass(frozen=True)
class StagePrompt:
    """The prompt whose images a stage reduces, for a stage that reads it (``VisionStage.reads_prompt``).

    input_ids: ``(B, L)`` the prompt's ids; valid: ``(B, L)`` bool, False at padding; visual: ``(B, L)``
    bool, the image and video positions. Image ``i`` of the call fills the ``i``-th run of image
    positions in batch order (the stock models' placement).
    """

    input_ids: torch.Tensor
    valid: torch.Tensor
    visual: torch.Tensor


# The prompt of the call that is encoding images: set by `reroute.apply` around generate() (which encodes
# them before the first forward on transformers 5.24) and around the multimodal forward, reset in `finally`.
CURRENT_PROMPT: ContextVar[StagePrompt | None] = ContextVar("reroute_stage_prompt", default=None)


class VisionStage:
    """Base vision-side stage. Subclasses set ``name`` and ``params`` (the accepted parameter
    names with their defaults) and implement ``reduce``, ``kept_count`` and ``flops``.

    The routed forward places each image's kept tokens at the prompt positions they had
    (positions are never renumbered) and removes the image's other tokens before the first
    decoder layer (docs/semantics.md, "Nüwa").
    """

    name: str = ""
    #: accepted parameters and their defaults
    params: Mapping[str, float] = {}
    #: True for a stage conditioned on the prompt's text: `reduce` then receives ``inputs["prompt"]``, a
    #: `StagePrompt` (None where the call brought no ``input_ids``), and ``inputs["instruction_encoder"]``
    reads_prompt: bool = False

    def check_params(self, params: Mapping[str, float]) -> None:
        """Raise a one-line ValueError for an unknown or out-of-range parameter."""
        unknown = sorted(set(params) - set(self.params))
        if unknown:
            raise ValueError(
                f"vision stage {self.name!r} has no parameter {unknown[0]!r}: use {', '.join(sorted(self.params))}"
            )

    def resolved(self, params: Mapping[str, float]) -> dict[str, float]:
        """``params`` with the defaults filled in."""
        return {**self.params, **params}

    def reduce(self, model: nn.Module, params: Mapping[str, float], inputs: Mapping[str, torch.Tensor]) -> list[StageImage]:
        """One `StageImage` per image of ``inputs`` (the VLM forward's keyword arguments), in prompt order."""
        raise NotImplementedError

    def check_model(self, model: nn.Module) -> None:
        """Raise a one-line ValueError if the stage cannot run on ``model`` (checked by `reroute.apply`)."""

    def check_instruction_encoder(self, model: nn.Module, encoder: object) -> None:
        """Raise a one-line ValueError unless ``encoder`` (`reroute.apply`'s ``instruction_encoder``) serves this
        stage on ``model``; a stage that reads none refuses any, so that nothing given is silently ignored."""
        if encoder is not None:
            raise ValueError(f"vision stage {self.name!r} reads no instruction_encoder; drop it (vision_stage='cdpruner' reads one)")

    def image_features(self, model: nn.Module, params: Mapping[str, float], instruction_encoder: object = None):
        """A replacement for the inner model's ``get_image_features`` (same arguments) that runs
        this stage instead of the stock encoder.

        It returns the stock output structure, one ``(N_i, D)`` tensor per image: the kept
        tokens at their rows, and NaN rows for the dropped ones. The stock model places them at
        the image's positions as usual (so the kept tokens land where they were), and the NaN
        rows tell the routed decoder which positions the stage dropped (`split_dropped`). This
        is the one channel that survives generate(), which encodes images before the first
        forward and repeats the features for beams and several sequences per prompt.
        """
        from transformers.modeling_outputs import BaseModelOutputWithPooling

        def get_image_features(pixel_values=None, image_grid_thw=None, *args, **kwargs):
            inputs = {"pixel_values": pixel_values, "image_grid_thw": image_grid_thw}
            if self.reads_prompt:
                inputs["prompt"] = CURRENT_PROMPT.get()
                inputs["instruction_encoder"] = instruction_encoder
            images = self.reduce(model, params, inputs)
            rows = []
            for image in images:
                if len(image.kept) > 1 and not bool((image.kept[1:] > image.kept[:-1]).all()):
                    # repeated picks would enter fewer tokens than the stage's count, silently under budget
                    raise RuntimeError(f"vision stage {self.name!r} kept token indices that are not strictly ascending")
                full = image.tokens.new_full((image.grid[0] * image.grid[1], image.tokens.shape[-1]), float("nan"))
                full[image.kept] = image.tokens
                rows.append(full)
            return BaseModelOutputWithPooling(pooler_output=rows)

        return get_image_features

    def kept_count(self, num_tokens: int, params: Mapping[str, float]) -> int:
        """Tokens kept of an image of ``num_tokens`` tokens."""
        raise NotImplementedError

    def kept_continuous(self, num_tokens: int, params: Mapping[str, float]) -> float:
        """``kept_count`` before rounding (budgets in continuous counts, like the papers' tiers)."""
        return float(self.kept_count(num_tokens, params))

    def flops(self, num_tokens: int, params: Mapping[str, float], model_config) -> int:
        """FLOPs the stage adds for one image of ``num_tokens`` tokens (for `reroute.budgets.cost`)."""
        return 0

    def __repr__(self) -> str:
        return f"{type(self).__name__}(name={self.name!r})"




def kept_by_fraction(num_tokens: int, keep_fraction: float) -> int:
    """``K = round(N f)`` of an image of ``N`` tokens, in ``1..N``: the product rounded to 9 decimals
    first (so ``576 * 64 / 576`` is 64, not 63.99...), then Python's round (DivPrune's, VisionZip's and
    CDPruner's count)."""
    return min(num_tokens, max(1, round(round(num_tokens * keep_fraction, 9))))


def check_keep_fraction(stage: str, fraction: object) -> None:
    """A one-line ValueError unless ``fraction`` (a stage's ``keep_fraction``, ``K / N``) is a number in (0, 1]."""
    if isinstance(fraction, bool) or not isinstance(fraction, (int, float)) or not 0.0 < fraction <= 1.0:
        raise ValueError(f"vision stage {stage!r}: keep_fraction={fraction!r} is not in (0, 1]; pass K / N, e.g. 64 / 576")


#: class decorator: registers one instance under ``cls.name`` (duplicates refused)
register_vision_stage = VISION_STAGES.register_class
get_vision_stage = VISION_STAGES.get


def split_dropped(inputs_embeds: torch.Tensor, visual: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """``(embeds, present)`` from merged embeddings whose dropped image rows are NaN
    (`VisionStage.image_features`): ``present`` ``(B, L)`` is False exactly there, and those
    rows become zeros (they enter no layer; their output rows are present, not meaningful)."""
    dropped = visual & torch.isnan(inputs_embeds).all(dim=-1)
    return inputs_embeds.masked_fill(dropped[..., None], 0.0), ~dropped
