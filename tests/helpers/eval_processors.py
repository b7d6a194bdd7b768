"""Tiny processors for the newer families' tiny models (tests.helpers.models_more, models.tiny_qwen): the real
transformers processor classes over a word-level tokenizer of the models' 64 ids, so `reroute eval` runs them
end to end on fixture images; nothing is downloaded.

Each carries a chat template reduced to one user turn (images, then the text) in its family's real format,
so a prompt is what the checkpoint's own template writes for the same turn (no system prompt). The video
processors need torchvision, which the test environment lacks: the processors are built for images only.
"""

from __future__ import annotations

from typing import Any

from tests.helpers.models import VOCAB
from tests.helpers.models_more import ANYRES_CROP, INTERN_TILE, PINPOINTS, QWEN3_PATCH

IMAGE, VIDEO, START, END = 60, 61, 62, 63

# the checkpoints' formats for one user turn (their chat_template.json, reduced)
VICUNA_TEMPLATE = (  # llava-hf/llava-v1.6-vicuna-7b-hf
    "{% for message in messages %}{{ message['role'].upper() }}: {% for c in message['content'] %}"
    "{% if c['type'] == 'image' %}<image>\n{% else %}{{ c['text'] }}{% endif %}{% endfor %} {% endfor %}"
    "{% if add_generation_prompt %}ASSISTANT:{% endif %}"
)

def _im_template(image: str) -> str:
    """A ChatML turn, ``image`` written per image before the text (OneVision: "<image>\n"; InternVL3-hf:
    "<IMG_CONTEXT>\n", which the processor expands to ``<img>`` + tile tokens + ``</img>``)."""
    return (
        "{% for message in messages %}<|im_start|>{{ message['role'] }}\n{% for c in message['content'] %}"
        "{% if c['type'] == 'image' %}" + image + "{% else %}{{ c['text'] }}{% endif %}{% endfor %}<|im_end|>\n"
        "{% endfor %}{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
    )


ONEVISION_TEMPLATE = _im_template("<image>\n")  # llava-hf/llava-onevision-qwen2-7b-ov-hf
INTERNVL_TEMPLATE = _im_template("<IMG_CONTEXT>\n")  # OpenGVLab/InternVL3-8B-hf
QWEN_TEMPLATE = (  # Qwen2-VL and Qwen3-VL
    "{% for message in messages %}<|im_start|>{{ message['role'] }}\n{% for c in message['content'] %}"
    "{% if c['type'] == 'image' %}<|vision_start|><|image_pad|><|vision_end|>{% else %}{{ c['text'] }}{% endif %}"
    "{% endfor %}<|im_end|>\n{% endfor %}{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)


def word_tokenizer(specials: dict[str, int], **attributes: Any):
    """A WordLevel tokenizer over the tiny models' 64 ids: ``specials`` at their ids, words "w<i>" elsewhere,
    any other word <unk>; ``attributes`` are set on it (InternVL's processor reads its image tokens there)."""
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    base = {"<pad>": 0, "<s>": 1, "</s>": 2, "<unk>": 4, "<|im_start|>": 5, "<|im_end|>": 6}
    vocab = {**base, **specials}
    free = [i for i in range(VOCAB) if i not in vocab.values()]
    vocab.update({f"w{i}": i for i in free})
    tok = Tokenizer(models.WordLevel(vocab=vocab, unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    tok.add_special_tokens([t for t in vocab if not t.startswith("w")])
    tokenizer = PreTrainedTokenizerFast(tokenizer_object=tok, pad_token="<pad>", eos_token="</s>", unk_token="<unk>")
    for name, value in attributes.items():
        setattr(tokenizer, name, value)
    return tokenizer


def _images_only(cls):
    """``cls`` accepting no video processor (the video processors need torchvision)."""

    class ImagesOnly(cls):
        def check_argument_for_proper_class(self, name, arg):
            if name == "video_processor" and arg is None:
                return None
            return super().check_argument_for_proper_class(name, arg)

    ImagesOnly.__name__ = cls.__name__
    return ImagesOnly


def tiny_llava_next_processor(family: str = "llava_next"):
    """LLaVA-NeXT's (Vicuna template) or OneVision's (Qwen2 template) processor for `tiny_llava_next`: 16-px
    crops of 8-px patches on its grid pinpoints."""
    from transformers import (
        LlavaNextImageProcessorPil,
        LlavaNextProcessor,
        LlavaOnevisionImageProcessorPil,
        LlavaOnevisionProcessor,
    )

    tokenizer = word_tokenizer({"<image>": IMAGE, "<video>": VIDEO})
    crop = {"height": ANYRES_CROP, "width": ANYRES_CROP}
    if family == "llava_next":
        image_processor = LlavaNextImageProcessorPil(
            size={"shortest_edge": ANYRES_CROP}, crop_size=crop, image_grid_pinpoints=PINPOINTS
        )
        return LlavaNextProcessor(
            image_processor=image_processor, tokenizer=tokenizer, patch_size=8,
            vision_feature_select_strategy="default", num_additional_image_tokens=1,  # CLIP's CLS, dropped
            chat_template=VICUNA_TEMPLATE,
        )
    image_processor = LlavaOnevisionImageProcessorPil(size=crop, image_grid_pinpoints=PINPOINTS)
    return _images_only(LlavaOnevisionProcessor)(
        image_processor=image_processor, tokenizer=tokenizer, video_processor=None,
        num_image_tokens=(ANYRES_CROP // 8) ** 2, vision_feature_select_strategy="full",
        chat_template=ONEVISION_TEMPLATE,
    )


def tiny_qwen_vl_processor(family: str = "qwen2_vl", min_pixels: int = 64, max_pixels: int = 32 * 32):
    """Qwen2-VL's (for `tests.helpers.models.tiny_qwen`) or Qwen3-VL's (`tiny_qwen3_vl`) processor: 4-px
    patches merged 2 x 2, ``min_pixels``..``max_pixels``."""
    from transformers import (
        Qwen2VLImageProcessorPil,
        Qwen2VLProcessor,
        Qwen3VLProcessor,
    )

    tokenizer = word_tokenizer({"<|image_pad|>": IMAGE, "<|video_pad|>": VIDEO, "<|vision_start|>": START,
                                "<|vision_end|>": END})
    image_processor = Qwen2VLImageProcessorPil(
        patch_size=QWEN3_PATCH, temporal_patch_size=2, merge_size=2,
        size={"shortest_edge": min_pixels, "longest_edge": max_pixels},
    )
    cls = Qwen2VLProcessor if family == "qwen2_vl" else Qwen3VLProcessor
    return _images_only(cls)(image_processor=image_processor, tokenizer=tokenizer, video_processor=None,
                             chat_template=QWEN_TEMPLATE)


def tiny_internvl_processor(max_patches: int = 2):
    """InternVL's processor for `tiny_internvl`: 16-px tiles (4 tokens each after pixel shuffle), up to
    ``max_patches`` tiles plus a thumbnail, ``<img><IMG_CONTEXT>...</img>`` per image."""
    from transformers import GotOcr2ImageProcessorPil, InternVLProcessor

    tokens = {"<IMG_CONTEXT>": IMAGE, "<video>": VIDEO, "<img>": START, "</img>": END}
    tokenizer = word_tokenizer(
        tokens, start_image_token="<img>", end_image_token="</img>", context_image_token="<IMG_CONTEXT>",
        video_token="<video>", start_image_token_id=START, end_image_token_id=END, context_image_token_id=IMAGE,
    )
    image_processor = GotOcr2ImageProcessorPil(
        size={"height": INTERN_TILE, "width": INTERN_TILE}, crop_to_patches=True, min_patches=1,
        max_patches=max_patches,
    )
    return _images_only(InternVLProcessor)(
        image_processor=image_processor, tokenizer=tokenizer, video_processor=None, image_seq_length=4,
        chat_template=INTERNVL_TEMPLATE,
    )
