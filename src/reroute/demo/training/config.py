"""The demo model's training settings: one dataclass, the defaults that made the bundled weights."""

from __future__ import annotations

from dataclasses import dataclass

from reroute.demo import modeling


@dataclass
class TrainConfig:
    seed: int = 0
    layout: str | None = None  # scene layout (synthetic.LAYOUTS); None = synthetic.DEFAULT_LAYOUT
    # stage 1: vision tower + projector on dense per-patch targets (PatchProbes)
    vision_steps: int = 300
    vision_batch_size: int = 64
    vision_lr: float = 2e-3
    # stage 2: the whole model on multi-turn conversations
    steps: int = 1500
    batch_size: int = 16
    lr: float = 2e-3
    min_lr_ratio: float = 0.05
    warmup_steps: int = 30
    weight_decay: float = 0.05
    grad_clip: float = 1.0
    threads: int = 2
    turns: int = 8  # questions per image in a training sequence (LLaVA-style multi-turn)
    curriculum: float = 0.1  # fraction of the steps trained on easier scenes (1-3 objects)
    eval_every: int = 200
    eval_samples: int = 96  # held-out "val" samples scored during training
    test_samples: int = 500  # held-out "test" samples scored at the end
    eval_batch_size: int = 50
    probe_weight: float = 0.5  # PatchProbes loss kept on during stage 2; 0 = off
    qk_lr_scale: float = 1.0  # learning-rate multiplier of the decoder's q/k projections
    attn_weight: float = 0.5  # supervised attention (ATTENTION_PLAN, AttentionProbe); 0 = off
    description_weight: float = 0.5  # DescriptionProbes on the last prompt position; 0 = off
    checkpoint: bool = False  # save_pretrained into <output>/checkpoint at every periodic eval
    output: str = str(modeling.MODEL_DIR)
