"""The family adapter: the runtime's adapter contract plus everything else model-specific.

`reroute.runtime.adapter.DecoderAdapter` says where a decoder's layers, norm and rotary
embedding are and which positions are visual; a `Backbone` is that for one family, and the
one place where everything else model-specific is declared (docs/adding-a-backbone.md):

- ``grids``: where each visual token of a processed prompt lies on its image (`reroute show`,
  `reroute analyze`); ``answer_frame``: the frame of answer boxes not given as 0-1 fractions;
- ``evaluation``: the `EvalProtocol` (conversation, batch encoding, task prompts) `reroute eval`
  writes for it; ``visual_tokens_per_image``: the count when the family fixes it (tier scaling);
- ``nuwa_tower``: which of Nüwa's stage-1 variants its vision tower supports ("clip_cls": a
  CLIP ViT whose CLS attention gives saliency, LLaVA-1.5; "qwen2_5_vit": Qwen2.5-VL's tower);
- ``released``: the released checkpoints' shapes `reroute cost` and `reroute bench` know by name.

``None`` (or no shapes) means "not declared": every consumer then refuses the family in one line
(`Backbone.require`), naming what the adapter lacks, and never borrows another family's rules.
Declarations are class attributes, so a subclass inherits them: a subclass for another family
(the demo's is a LLaVA-1.5) overrides what differs.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, ClassVar

from reroute.backbones.evaluation import EvalProtocol
from reroute.errors import UserError
from reroute.runtime.adapter import DecoderAdapter, LayerInjections, Positions, RotaryFn


class NotDeclared(UserError, ValueError):
    """A consumer needs something the family's adapter does not declare (one line: the family,
    the declaration, what needs it). A `UserError`, so the command line prints it as such."""


@dataclass(frozen=True)
class ReleasedShape:
    """A released checkpoint's config with its published dimensions typed in (no download, no weights).

    name: what ``reroute cost --model`` takes (``"llava-1.5-7b"``).
    config: builds the transformers config.
    visual_tokens: one image's visual tokens at the family's default resolution, counted the way
        its processor counts them (``reroute cost``'s default ``--num-visual``).
    """

    name: str
    config: Callable[[], Any]
    visual_tokens: int


#: declaration -> how messages name it
_DECLARATIONS = {
    "grids": "token grid",
    "answer_frame": "answer-box frame",
    "evaluation": "evaluation protocol",
    "nuwa_tower": "Nüwa tower kind",
    "visual_tokens_per_image": "fixed visual-token count per image",
}


class Backbone(DecoderAdapter):
    """One model family. Subclasses set ``model_classes``, ``family`` and what they declare."""

    #: the family's name in messages ("LLaVA-1.5")
    family: ClassVar[str] = ""
    #: ``config.model_type`` values of its models (and of their decoders' configs), for lookups by config
    model_types: ClassVar[tuple[str, ...]] = ()
    #: (config, processor, inputs, image_sizes, sample) -> list[TokenGrid] (`reroute.backbones.grids`)
    grids: ClassVar[Callable[..., list] | None] = None
    #: (config, grid) -> (width, height): the frame of answer boxes given in numbers above 1
    answer_frame: ClassVar[Callable[..., tuple[float, float]] | None] = None
    #: how `reroute eval` prompts and encodes this family (`reroute.backbones.evaluation`)
    evaluation: ClassVar[EvalProtocol | None] = None
    #: (config) -> visual tokens of every image, where the family fixes the count
    visual_tokens_per_image: ClassVar[Callable[[Any], int] | None] = None
    #: Nüwa's stage-1 variant for this vision tower ("clip_cls", "qwen2_5_vit")
    nuwa_tower: ClassVar[str | None] = None
    #: released checkpoints' shapes, by name
    released: ClassVar[tuple[ReleasedShape, ...]] = ()

    @classmethod
    def recognizes(cls, processor: Any) -> bool:
        """Whether this adapter, among those handling the model's class, is the one for this processor:
        a specialisation (the demo model: a LLaVA-1.5 told apart by its vocabulary) narrows it."""
        return True

    @classmethod
    def refusal(cls, model: Any) -> str | None:
        """Why this adapter cannot route ``model`` although it handles the class (one line), or None."""
        return None

    def require(self, declaration: str, needed_for: str) -> Any:
        """The declared ``declaration``, or `NotDeclared`: "<family> declares no <what> (<Adapter>.<name>): <needed_for>"."""
        value = getattr(self, declaration)
        if value is None:
            raise NotDeclared(
                f"{self.family} declares no {_DECLARATIONS[declaration]} ({type(self).__name__}.{declaration}): {needed_for}"
            )
        return value


#: every registered adapter, in registration order (`reroute.backbones` imports every module of the package,
#: so an adapter file registers its class with `register_backbone` and needs no other edit)
BACKBONES: list[type[Backbone]] = []


def register_backbone(cls: type[Backbone]) -> type[Backbone]:
    """Add a family's adapter to the registry (a class decorator); a class registered twice is refused."""
    if cls in BACKBONES:
        raise ValueError(f"{cls.__name__} is already registered")
    if not cls.family or not cls.model_classes:
        raise ValueError(f"{cls.__name__} needs `family` and `model_classes` to be registered")
    BACKBONES.append(cls)
    return cls


__all__ = [
    "BACKBONES",
    "Backbone",
    "EvalProtocol",
    "LayerInjections",
    "NotDeclared",
    "Positions",
    "ReleasedShape",
    "RotaryFn",
    "register_backbone",
]
