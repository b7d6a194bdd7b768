"""The bundled demo model as a registered family: a LLaVA-1.5 told apart by its closed vocabulary.

Its decoder, grids, answer-box frame, Nüwa tower and fixed visual-token count are LLaVA-1.5's
(it is a ``LlavaForConditionalGeneration``); what differs is its evaluation protocol (``--family
demo``): the conversation it was trained on (`reroute.demo.modeling.format_prompt`, one image),
its grounding question (`reroute.demo.synthetic.GROUNDING_PREFIX`) and bare short-answer
questions. Importing `reroute.demo` registers it.
"""

from __future__ import annotations

from functools import cache
from typing import Any

from reroute.backbones import register_backbone
from reroute.backbones.evaluation import EvalProtocol
from reroute.backbones.llava import LlavaBackbone
from reroute.demo import modeling, synthetic


def demo_conversation(processor: Any, user_text: str, num_images: int) -> str:
    """The prompt format the demo model was trained on; it takes exactly one image."""
    if num_images != 1:
        raise ValueError(f"the demo model takes exactly one image per prompt, got {num_images}")
    return modeling.format_prompt(user_text)


DEMO = EvalProtocol(
    name="demo",
    conversation=demo_conversation,
    grounding_prompt=f"{synthetic.GROUNDING_PREFIX} {{expression}}.",
    short_answer_post_prompt="",  # the demo model learned bare one-word questions
    box_format="normalized",  # it answers "[0.12, ...]" in 0..1, as LLaVA-1.5
    harness="the paper's harness readings (lmms-eval 0.7.1) on the demo model's own prompts",
)


def is_demo_tokenizer(tokenizer: Any) -> bool:
    """True when ``tokenizer`` has exactly the demo's closed vocabulary.

    The vocabulary (special tokens, the task words and every coordinate "0.00".."1.00" as one
    token) is what fixes the demo's prompt and answer formats, so it is the marker: a
    retrained demo model keeps it, a LLaVA-1.5 checkpoint (32k SentencePiece tokens) never
    has it.
    """
    get_vocab = getattr(tokenizer, "get_vocab", None)
    if get_vocab is None:
        return False
    vocab = get_vocab()
    if len(vocab) > 4096:  # cheap early exit for real tokenizers
        return False
    return vocab == _demo_vocabulary()


@cache
def _demo_vocabulary() -> dict[str, int]:
    # built once: every registry lookup with a processor asks (show and analyze, once per sample)
    return modeling.build_tokenizer().get_vocab()


@register_backbone
class DemoBackbone(LlavaBackbone):
    family = "the demo model"
    evaluation = DEMO

    @classmethod
    def recognizes(cls, processor: Any) -> bool:
        return is_demo_tokenizer(getattr(processor, "tokenizer", None))
