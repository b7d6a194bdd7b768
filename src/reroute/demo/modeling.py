"""Tokenizer, processor and model of the bundled demo VLM (a real ``LlavaForConditionalGeneration``).

* vision tower: ``CLIPVisionConfig`` ViT, 96 px images, patch 8 -> 144 patches (+ CLS, dropped by
  ``vision_feature_select_strategy="default"``) -> 144 visual tokens per image;
* projector: LLaVA's 2-layer GELU MLP;
* decoder: ``LlamaConfig`` (12 layers, GQA, RoPE), untied input/output embeddings as in LLaVA-1.5's
  Vicuna;
* tokenizer: a ``tokenizers`` WordLevel model over the task's closed vocabulary, with every box
  coordinate "0.00" .. "1.00" a single token, wrapped in ``PreTrainedTokenizerFast``;
* processor: ``LlavaProcessor`` with a CLIP image processor (PIL backend).

Prompts follow LLaVA-1.5: ``"USER: <image>\\n{question} ASSISTANT:"``; the answer follows and
ends with ``</s>``.
"""

from __future__ import annotations

import math
import os
from pathlib import Path

import torch

from reroute.demo import synthetic

MODEL_DIR = Path(__file__).resolve().parent / "model"

IMAGE_TOKEN = "<image>"
PAD, BOS, EOS, UNK = "<pad>", "<s>", "</s>", "<unk>"
SPECIAL_TOKENS = [PAD, BOS, EOS, UNK, IMAGE_TOKEN]  # ids 0..4

IMAGE_SIZE = synthetic.IMAGE_SIZE
PATCH_SIZE = synthetic.CELL
NUM_IMAGE_TOKENS = (IMAGE_SIZE // PATCH_SIZE) ** 2  # 144

# Size of the network (kept here so the tests and the trainer agree).
VISION = dict(hidden_size=128, intermediate_size=512, num_hidden_layers=4, num_attention_heads=4)
# 12 decoder layers (set by the lead): the demo runs the paper's tier 64 (64 of 576 visual
# tokens on average), and with the presets' first decision scaled from layer 3 of 32 to layer
# 1 of L, the layers before it alone give 144/L tokens: L must be >= 10 for tier 64 (16 of
# 144) to be reachable at all. 8 layers cannot run tier 64.
TEXT = dict(
    hidden_size=128, intermediate_size=384, num_hidden_layers=12, num_attention_heads=4, num_key_value_heads=2, rope_theta=10000.0
)

# Input word embeddings start at unit scale: at the usual 0.02 a word's identity is a few percent
# of the residual stream once the first layer has written to it (measured: norm 0.6 against 21).
# One of the three changes (with training.description.DescriptionProbes and RMS-normalised patch probes) after
# which the answer position learned which object the question names.
EMBED_INIT_STD = 1.0

# CLIP normalisation is irrelevant for a tower trained from scratch: map [0, 255] to about [-1, 1].
IMAGE_MEAN = [0.5, 0.5, 0.5]
IMAGE_STD = [0.5, 0.5, 0.5]


def format_prompt(question: str) -> str:
    """The exact prompt the model was trained on (LLaVA-1.5 style); the answer is generated after it."""
    return f"USER: {IMAGE_TOKEN}\n{question} ASSISTANT:"


def format_answer(answer: str) -> str:
    """The training target that follows ``format_prompt``: the answer, then ``</s>``."""
    return f" {answer}{EOS}"


def format_followup(question: str) -> str:
    """A later turn of a multi-turn conversation about the same image (used in training only)."""
    return f"USER: {question} ASSISTANT:"


def build_tokenizer():
    """A WordLevel tokenizer over the task's closed vocabulary, as a ``PreTrainedTokenizerFast``."""
    from tokenizers import Regex, Tokenizer, decoders, models, pre_tokenizers, processors
    from transformers import PreTrainedTokenizerFast

    vocab = {tok: i for i, tok in enumerate(SPECIAL_TOKENS)}
    for word in synthetic.vocabulary():
        vocab.setdefault(word, len(vocab))
    tok = Tokenizer(models.WordLevel(vocab=vocab, unk_token=UNK))
    tok.pre_tokenizer = pre_tokenizers.Sequence(
        [
            pre_tokenizers.WhitespaceSplit(),
            # a coordinate "0.37" is one token; otherwise words and single punctuation marks
            pre_tokenizers.Split(Regex(r"\d\.\d\d|\w+|[^\w\s]"), behavior="isolated"),
        ]
    )
    tok.post_processor = processors.TemplateProcessing(
        single=f"{BOS} $A", pair=f"{BOS} $A $B", special_tokens=[(BOS, vocab[BOS])]
    )
    tok.decoder = decoders.WordPiece(prefix="##", cleanup=True)  # joins words with spaces, tidies punctuation
    tok.add_special_tokens(SPECIAL_TOKENS)
    return PreTrainedTokenizerFast(
        tokenizer_object=tok,
        bos_token=BOS,
        eos_token=EOS,
        pad_token=PAD,
        unk_token=UNK,
        extra_special_tokens={"image_token": IMAGE_TOKEN},
        padding_side="left",
        model_max_length=512,
    )


def build_image_processor():
    from transformers import CLIPImageProcessorPil

    return CLIPImageProcessorPil(
        size={"height": IMAGE_SIZE, "width": IMAGE_SIZE},
        crop_size={"height": IMAGE_SIZE, "width": IMAGE_SIZE},
        do_center_crop=True,
        do_convert_rgb=True,
        image_mean=IMAGE_MEAN,
        image_std=IMAGE_STD,
    )


#: The demo's prompt format as a chat template, so ``apply_chat_template`` (lmms-eval, ``reroute
#: show``) builds the same prompts as the demo; every processor built here carries it, so a model
#: saved by ``train-demo-model`` is as complete as the bundled one.
CHAT_TEMPLATE_FILE = MODEL_DIR / "chat_template.jinja"


def build_processor():
    """``LlavaProcessor``: expands ``<image>`` to ``NUM_IMAGE_TOKENS`` placeholders, makes ``pixel_values``."""
    from transformers import LlavaProcessor

    return LlavaProcessor(
        chat_template=CHAT_TEMPLATE_FILE.read_text(),
        image_processor=build_image_processor(),
        tokenizer=build_tokenizer(),
        patch_size=PATCH_SIZE,
        vision_feature_select_strategy="default",
        num_additional_image_tokens=1,  # CLIP's CLS token
        image_token=IMAGE_TOKEN,
    )


def build_config(tokenizer=None):
    from reroute.backbones.released import llava_config

    tokenizer = tokenizer or build_tokenizer()
    vision = dict(
        image_size=IMAGE_SIZE,
        patch_size=PATCH_SIZE,
        num_channels=3,
        hidden_act="gelu",
        attention_dropout=0.0,
        **VISION,
    )
    text = dict(
        vocab_size=len(tokenizer),
        max_position_embeddings=512,
        rms_norm_eps=1e-5,
        hidden_act="silu",
        tie_word_embeddings=False,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
        **TEXT,
    )
    config = llava_config(
        text,
        vision,
        image_token_index=tokenizer.convert_tokens_to_ids(IMAGE_TOKEN),
        image_seq_length=NUM_IMAGE_TOKENS,
        projector_hidden_act="gelu",
        vision_feature_select_strategy="default",
        vision_feature_layer=-1,  # a small tower trained from scratch: use its last layer
        tie_word_embeddings=False,
    )
    config.bos_token_id = tokenizer.bos_token_id
    config.eos_token_id = tokenizer.eos_token_id
    config.pad_token_id = tokenizer.pad_token_id
    return config


def _init_coordinate_embeddings(model, tokenizer, seed: int) -> None:
    """Give the 101 coordinate tokens a smooth (Fourier-feature) embedding, so nearby values start nearby."""
    emb = model.get_input_embeddings().weight
    ids = [tokenizer.convert_tokens_to_ids(f"{i / 100:.2f}") for i in range(101)]
    g = torch.Generator().manual_seed(seed + 1)
    freqs = torch.arange(1, 9, dtype=torch.float32)
    v = torch.linspace(0, 1, 101)[:, None]
    feats = torch.cat([torch.sin(math.pi * freqs * v), torch.cos(math.pi * freqs * v)], dim=1)  # 101 x 16
    proj = torch.randn(feats.shape[1], emb.shape[1], generator=g) / math.sqrt(feats.shape[1])
    with torch.no_grad():
        smooth = feats @ proj
        smooth = smooth / smooth.std() * emb.std()
        emb[ids] = 0.5 * emb[ids] + smooth


def _init_vision_positions(model, scale: float = 0.3) -> None:
    """Start the ViT's learned position embeddings from a 2-D sine-cosine table (the CLS row at 0)."""
    tower = model.model.vision_tower
    tower = getattr(tower, "vision_model", tower)
    pos = tower.embeddings.position_embedding.weight  # (1 + g*g, d)
    d, g = pos.shape[1], IMAGE_SIZE // PATCH_SIZE
    quarter = d // 4
    omega = 1.0 / (100.0 ** (torch.arange(quarter, dtype=torch.float32) / quarter))
    rows, cols = torch.meshgrid(torch.arange(g, dtype=torch.float32), torch.arange(g, dtype=torch.float32), indexing="ij")
    parts = []
    for coord in (cols.flatten(), rows.flatten()):
        angle = coord[:, None] * omega[None, :]
        parts += [torch.sin(angle), torch.cos(angle)]
    table = torch.cat(parts, dim=1)  # (g*g, 4*quarter)
    with torch.no_grad():
        pos.zero_()
        pos[1:, : table.shape[1]] = scale * table


def build_model(seed: int = 0, processor=None):
    """A freshly initialised model (deterministic for ``seed``) and its processor."""
    from reroute.backbones.released import build_llava

    processor = processor or build_processor()
    model = build_llava(build_config(processor.tokenizer), seed=seed).train()  # a fresh module trains
    with torch.no_grad():
        model.get_input_embeddings().weight.normal_(0.0, EMBED_INIT_STD)
    _init_coordinate_embeddings(model, processor.tokenizer, seed)
    _init_vision_positions(model)
    model.generation_config.pad_token_id = processor.tokenizer.pad_token_id
    model.generation_config.eos_token_id = processor.tokenizer.eos_token_id
    model.generation_config.bos_token_id = processor.tokenizer.bos_token_id
    return model, processor


def load_model(path: str | os.PathLike | None = None, attn_implementation: str = "sdpa"):
    """The bundled (or a saved) model in float32 on CPU, in eval mode, and its processor."""
    from transformers import AutoProcessor, LlavaForConditionalGeneration

    path = str(path or MODEL_DIR)
    model = LlavaForConditionalGeneration.from_pretrained(
        path, dtype=torch.float32, attn_implementation=attn_implementation
    )
    model.eval()
    processor = AutoProcessor.from_pretrained(path)
    return model, processor


def num_parameters(model) -> int:
    seen, total = set(), 0
    for p in model.parameters():
        if id(p) not in seen:
            seen.add(id(p))
            total += p.numel()
    return total
