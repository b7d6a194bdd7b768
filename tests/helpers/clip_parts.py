"""Tiny CLIP parts for CDPruner's published relevance (`reroute.methods.cdpruner.ClipRelevance`): word-level
tokenizers built here (nothing downloaded) and a random CLIP checkpoint folder whose vision side matches a
model's tower."""

from __future__ import annotations

from pathlib import Path

import torch
from tokenizers import Tokenizer, models, pre_tokenizers, processors
from transformers import CLIPConfig, CLIPModel, PreTrainedTokenizerFast

from tests.helpers.models import LLAVA_IMAGE_TOKEN, VOCAB


def word_tokenizer(words: list[str], specials: dict[str, str], template: bool) -> PreTrainedTokenizerFast:
    """A word-level fast tokenizer over ``words`` (ids in order); ``template`` wraps a text in start and end."""
    tokenizer = Tokenizer(models.WordLevel({w: i for i, w in enumerate(words)}, unk_token="<unk>"))
    tokenizer.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    if template:
        start, end = specials["bos_token"], specials["eos_token"]
        tokenizer.post_processor = processors.TemplateProcessing(
            single=f"{start} $A {end}", special_tokens=[(start, words.index(start)), (end, words.index(end))]
        )
    return PreTrainedTokenizerFast(tokenizer_object=tokenizer, **specials)


def vlm_tokenizer() -> PreTrainedTokenizerFast:
    """The tiny LLaVA's vocabulary: 0 pad, 1 bos, the image token, words w4..w63."""
    words = ["<pad>", "<s>", "<unk>", "<image>"] + [f"w{i}" for i in range(4, VOCAB)]
    assert words[LLAVA_IMAGE_TOKEN] == "<image>"
    return word_tokenizer(words, {"pad_token": "<pad>", "bos_token": "<s>", "unk_token": "<unk>", "additional_special_tokens": ["<image>"]}, False)


def clip_tokenizer() -> PreTrainedTokenizerFast:
    """CLIP's side: its own ids for the same words (shuffled), start and end of text."""
    words = [f"w{i}" for i in range(4, VOCAB)]
    words = ["<unk>", "<|startoftext|>"] + [words[i] for i in torch.randperm(len(words), generator=torch.Generator().manual_seed(0))] + ["<|endoftext|>"]
    return word_tokenizer(words, {"bos_token": "<|startoftext|>", "eos_token": "<|endoftext|>", "unk_token": "<unk>"}, True)


def write_clip(folder: Path, vision_config, context: int, seed: int = 1) -> None:
    """A random CLIP checkpoint (text tower of context ``context``, the tower config ``vision_config``) and
    its tokenizer in ``folder``, loadable by ``ClipRelevance.from_pretrained(folder, tokenizer=...)``."""
    tokens = clip_tokenizer()
    text = dict(
        vocab_size=len(tokens), hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4,
        max_position_embeddings=context, eos_token_id=tokens.eos_token_id, bos_token_id=tokens.bos_token_id, pad_token_id=0,
    )  # fmt: skip
    torch.manual_seed(seed)
    CLIPModel(CLIPConfig(text_config=text, vision_config=vision_config.to_dict(), projection_dim=24)).save_pretrained(folder)
    tokens.save_pretrained(folder)
