"""The training loop: stage 1 (``pretrain_vision``), stage 2 and the final evaluation (``train``),
and the log it writes (``setup_logging``). The package docstring tells what each stage learns."""

from __future__ import annotations

import json
import logging
import os
import random
import sys
import time
from dataclasses import asdict
from pathlib import Path

import torch

from reroute.demo import modeling, synthetic
from reroute.demo.evaluation import evaluate
from reroute.demo.training.attention import AttentionProbe, attention_targets
from reroute.demo.training.config import TrainConfig
from reroute.demo.training.data import encode_conversations
from reroute.demo.training.description import DESCRIPTION_LAYER, DescriptionProbes, description_targets
from reroute.demo.training.optim import cosine_lr, lr_at, param_groups
from reroute.demo.training.probes import PatchProbes, probe_targets, visual_tokens

log = logging.getLogger(__name__)


def format_metrics(m: dict) -> str:
    """One log line of ``evaluate``'s metrics."""
    subs = " ".join(f"{k}={v['acc']:.2f}" for k, v in m["by_subtype"].items())
    return f"grounding_acc50={m['grounding_acc50']:.3f} miou={m['grounding_miou']:.3f} vqa_acc={m['vqa_acc']:.3f} [{subs}]"


def pretrain_vision(model, processor, probes: PatchProbes, cfg: TrainConfig, t0: float) -> None:
    """Stage 1 (like LLaVA's feature alignment, but dense): vision tower + projector + probes only."""
    modules = [model.model.vision_tower, model.model.multi_modal_projector, probes]
    opt = torch.optim.AdamW(param_groups(modules, cfg.weight_decay), lr=cfg.vision_lr, betas=(0.9, 0.98))
    for step in range(cfg.vision_steps):
        for g in opt.param_groups:
            g["lr"] = cosine_lr(step, cfg.vision_steps, cfg.warmup_steps, cfg.vision_lr, cfg.min_lr_ratio) * g["lr_scale"]
        scenes = [
            synthetic.random_scene(
                random.Random(f"reroute-demo/vision/{cfg.seed}/{step * cfg.vision_batch_size + i}"), layout=cfg.layout
            )
            for i in range(cfg.vision_batch_size)
        ]
        pixels = processor.image_processor([synthetic.render(s) for s in scenes], return_tensors="pt")["pixel_values"]
        feats = visual_tokens(model, pixels)
        loss = probes.loss(feats.reshape(-1, feats.shape[-1]), probe_targets(scenes))
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_([p for grp in opt.param_groups for p in grp["params"]], cfg.grad_clip)
        opt.step()
        if step % 25 == 0 or step == cfg.vision_steps - 1:
            log.info("vision step %4d/%d probe loss %.4f  %.0fs", step, cfg.vision_steps, loss.item(), time.time() - t0)


def train(cfg: TrainConfig, command: str | None = None) -> dict:
    """Train from scratch, evaluate on the held-out split, ``save_pretrained`` into ``cfg.output``."""
    torch.set_num_threads(cfg.threads)
    torch.manual_seed(cfg.seed)
    torch.use_deterministic_algorithms(True)
    t0 = time.time()
    model, processor = modeling.build_model(cfg.seed)
    probes = PatchProbes(model.config.text_config.hidden_size)
    describe = DescriptionProbes(model.config.text_config.hidden_size)
    model.train()
    log.info(
        "model: %.2fM parameters, %d visual tokens/image; config %s",
        modeling.num_parameters(model) / 1e6,
        modeling.NUM_IMAGE_TOKENS,
        json.dumps(asdict(cfg)),
    )
    if cfg.vision_steps:
        pretrain_vision(model, processor, probes, cfg, t0)
    probe = AttentionProbe()
    if cfg.attn_weight > 0:
        probe.install(model)
    groups = param_groups([model, probes, describe], cfg.weight_decay, cfg.qk_lr_scale)
    described: list[torch.Tensor] = []
    description_hook = model.model.language_model.layers[DESCRIPTION_LAYER].register_forward_hook(
        lambda module, args, output: described.append(output[0] if isinstance(output, tuple) else output)
    )
    opt = torch.optim.AdamW(groups, lr=cfg.lr, betas=(0.9, 0.98), eps=1e-8)
    val = synthetic.make_dataset(cfg.eval_samples, cfg.seed, "val", layout=cfg.layout)
    history = []
    ema = None
    for step in range(cfg.steps):
        for g in opt.param_groups:
            g["lr"] = lr_at(step, cfg) * g["lr_scale"]
        objects = (1, 3) if step < cfg.curriculum * cfg.steps else (synthetic.MIN_OBJECTS, synthetic.MAX_OBJECTS)
        convs = [
            synthetic.make_conversation(cfg.seed, "train", step * cfg.batch_size + i, cfg.turns, *objects, cfg.layout)
            for i in range(cfg.batch_size)
        ]
        batch = encode_conversations(processor, convs)
        feats = visual_tokens(model, batch["pixel_values"])
        embeds = model.get_input_embeddings()(batch["input_ids"])
        is_visual = (batch["input_ids"] == model.config.image_token_id).unsqueeze(-1).expand_as(embeds)
        embeds = embeds.masked_scatter(is_visual, feats.reshape(-1, feats.shape[-1]).to(embeds.dtype))
        described.clear()
        lm_loss = model(inputs_embeds=embeds, attention_mask=batch["attention_mask"], labels=batch["labels"]).loss
        description_loss = (
            describe.loss(described[0], description_targets(convs, batch, model.config.image_token_id, processor.tokenizer))
            if cfg.description_weight > 0
            else lm_loss * 0.0
        )
        probe_loss = (
            probes.loss(feats.reshape(-1, feats.shape[-1]), probe_targets([c[0].objects for c in convs]))
            if cfg.probe_weight > 0
            else lm_loss * 0.0
        )
        attn_loss = (
            probe.loss(attention_targets(convs, batch, model.config.image_token_id, processor.tokenizer))
            if cfg.attn_weight > 0
            else lm_loss * 0.0
        )
        loss = lm_loss + cfg.probe_weight * probe_loss + cfg.attn_weight * attn_loss + cfg.description_weight * description_loss
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), cfg.grad_clip)
        opt.step()
        ema = loss.item() if ema is None else 0.95 * ema + 0.05 * loss.item()
        if step % 25 == 0 or step == cfg.steps - 1:
            log.info(
                "step %5d/%d loss %.4f (ema %.4f; lm %.4f probe %.4f attn %.4f described %.4f) lr %.2e  %.0fs",
                step, cfg.steps, loss.item(), ema, lm_loss.item(), probe_loss.item(), attn_loss.item(), description_loss.item(),
                lr_at(step, cfg), time.time() - t0,
            )
        if cfg.eval_every and ((step + 1) % cfg.eval_every == 0) and step + 1 < cfg.steps:
            _, m = evaluate(model, processor, val, cfg.eval_batch_size)
            history.append({"step": step + 1, "loss_ema": ema, **m})
            log.info("eval @%d (val, %d samples): %s", step + 1, len(val), format_metrics(m))
            if cfg.checkpoint:
                model.set_attn_implementation("sdpa")
                model.save_pretrained(Path(cfg.output) / "checkpoint")
                if cfg.attn_weight > 0:
                    probe.install(model)
    description_hook.remove()
    train_time = time.time() - t0
    model.set_attn_implementation("sdpa")
    model.eval()
    test = synthetic.make_dataset(cfg.test_samples, cfg.seed, "test", layout=cfg.layout)
    _, metrics = evaluate(model, processor, test, cfg.eval_batch_size)
    log.info("final test (%d samples): %s", len(test), format_metrics(metrics))
    total_time = time.time() - t0

    out = Path(cfg.output)
    out.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(out)
    processor.save_pretrained(out)
    result = {
        "command": command,
        "config": asdict(cfg),
        "train_seconds": round(train_time, 1),
        "total_seconds": round(total_time, 1),
        "test_split": {"seed": cfg.seed, "split": "test", "n": len(test)},
        "test_metrics": metrics,
        "val_history": history,
        "torch": torch.__version__,
        "num_parameters": modeling.num_parameters(model),
    }
    (out / "metrics.json").write_text(json.dumps(result, indent=2) + "\n")
    log.info("saved to %s in %.0fs", out, total_time)
    return result


def setup_logging(log_file: str | os.PathLike | None = None) -> None:
    """Log to stdout (and to ``log_file``, truncated) with timestamps: the training log the bundled model ships."""
    handlers: list[logging.Handler] = [logging.StreamHandler(sys.stdout)]
    if log_file:
        Path(log_file).parent.mkdir(parents=True, exist_ok=True)
        handlers.append(logging.FileHandler(log_file, mode="w"))
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s", handlers=handlers, force=True)
