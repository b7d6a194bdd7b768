"""`reroute cost`: per-preset, per-tier decoder cost of a real model shape, without weights.

The named shapes are built from transformers' own config classes with the published
dimensions typed in, so nothing is downloaded and the numbers follow exactly what
`reroute.budgets.cost` reads from a loaded model. ``--model`` also takes a local folder holding a
``config.json`` or a hub id (its config alone is read, never weights).
"""

from __future__ import annotations

import argparse
import json

from reroute.backbones import released_shapes
from reroute.budgets import PAPER_TIERS, REFERENCE_NUM_VISUAL, preset, preset_names
from reroute.budgets.cost import CostReport, cost
from reroute.methods.nuwa import QWEN_RATIOS
from reroute.methods.nuwa.presets import NUWA_PRESETS, publishes_keep_ratios
from reroute.registry import PRESETS


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--model",
        default="llava-1.5-7b",
        help=f"a named shape ({', '.join(sorted(released_shapes()))}), a local folder with a config.json, or a hub id "
        "(its config only) (default: %(default)s)",
    )
    parser.add_argument(
        "--ratios",
        choices=("paper", "solved"),
        default="solved",
        help="published ratios, or the solver's that hit each tier exactly on this depth (default: %(default)s)",
    )
    parser.add_argument(
        "--num-visual",
        type=int,
        default=None,
        help=f"visual tokens of the prompt (default: one image at a named shape's default resolution, else "
        f"{REFERENCE_NUM_VISUAL})",
    )
    parser.add_argument("--num-text", type=int, default=64, help="all other prompt tokens (default: %(default)s)")
    parser.add_argument("--json", metavar="PATH", help="also write every row (full cost reports) as JSON here")


Row = tuple[str, int | None, float | None, CostReport]  # preset, paper tier, target avg_T, report


def target_avg_t(tier: int, num_visual: int) -> float:
    """The paper's tiers are budgets for 576 visual tokens; other counts keep the same fraction
    (so tier 64 is 1/9 of the visual tokens), as the published ratios do."""
    return tier * num_visual / REFERENCE_NUM_VISUAL


def load_config(model: str):
    """The config of a named shape, of a local folder (``config.json``, no network) or of a hub id."""
    import os

    from transformers import AutoConfig

    shapes = released_shapes()
    if model in shapes:
        return shapes[model].config()
    local = os.path.isdir(model)
    try:
        return AutoConfig.from_pretrained(model, local_files_only=local)
    except (OSError, ValueError) as error:
        reason = str(error).splitlines()[0] if str(error) else type(error).__name__
        where = "the folder has no readable config.json" if local else "no such folder, and the hub gave no config"
        raise ValueError(
            f"--model {model!r}: {where} ({reason}); pass one of {', '.join(sorted(shapes))}, "
            "a folder holding a config.json, or a hub id this machine can reach"
        ) from None


def unavailable(config) -> dict[str, str]:
    """The presets that refuse this model's family (Nüwa where the adapter declares no tower it knows), with why."""
    refusals = {name: PRESETS.get(name).refusal(config) for name in preset_names()}
    return {name: reason for name, reason in refusals.items() if reason is not None}


def rows(config, ratios: str, num_visual: int, num_text: int) -> list[Row]:
    """Vanilla, then every preset the model's family allows (`unavailable`) at the paper's three tiers
    (scaled to ``num_visual``).

    Nüwa's published Qwen2.5-VL settings are overall keep ratios (0.25 / 0.5 / 0.75), not
    tiers: with ``ratios="paper"`` on a Qwen shape its rows are at ``keep x num_visual``.
    """
    skipped = unavailable(config)
    table: list[Row] = [("vanilla", None, None, cost(None, config, num_visual, num_text))]
    for name in preset_names():
        if name in skipped:
            continue
        published = getattr(PRESETS.get(name), "paper_ratios", None)
        for tier in PAPER_TIERS:
            target = target_avg_t(tier, num_visual)
            if ratios == "paper" and published is not None and tier not in published:
                continue  # a method that publishes no set at this tier (V2Drop: one setting)
            if name in NUWA_PRESETS and ratios == "paper" and publishes_keep_ratios(config):
                keep = sorted(QWEN_RATIOS, reverse=True)[PAPER_TIERS.index(tier)]
                routing = preset(name, keep * num_visual, model=config, ratios="paper", num_visual=num_visual)
                table.append((name, None, keep * num_visual, cost(routing, config, num_visual, num_text)))
                continue
            # "paper" looks the set up by its published tier; "solved" hits the scaled target
            routing = preset(
                name,
                tier if ratios == "paper" else target,
                model=config,
                ratios=ratios,  # type: ignore[arg-type]
                num_visual=num_visual,
            )
            table.append((name, tier, target, cost(routing, config, num_visual, num_text)))
    return table


def _ratios(config) -> str:
    """Keep ratios; after a vision stage, its kept fraction and (Nüwa) per-cell count first (``K0.1944,n1|0.1429``)."""
    ratios = ",".join(f"{x:.4g}" for x in config.keep_ratios)
    if config.vision_stage is None:
        return ratios
    p = config.vision_parameters
    cell = f",n{p['per_cell']}" if "per_cell" in p else ""
    return f"K{p['keep_fraction']:.4g}{cell}|{ratios}"


def format_table(table: list[Row]) -> str:
    header = (
        "preset", "tier", "ratios", "layers", "avg_T", "avg_T int",
        "TFLOPs", "rel", "exact rel", "KV MB", "KV rel", "vision GFLOPs",
    )  # fmt: skip
    lines = [header]
    for name, _, target, r in table:
        cfg = r.config
        lines.append(
            (
                name,
                "-" if target is None else f"{target:g}" if target == int(target) else f"{target:.1f}",
                "-" if cfg is None else _ratios(cfg),
                "-" if cfg is None else ",".join(str(d) for d in cfg.decision_layers),
                f"{r.avg_t_continuous:.1f}",
                f"{r.avg_t:.1f}",
                f"{r.flops_paper / 1e12:.3f}",
                f"{r.flops_paper_ratio:.3f}",
                f"{r.flops_exact_ratio:.3f}",
                f"{r.kv_cache_bytes / 2**20:.1f}",
                f"{r.kv_cache_ratio:.3f}",
                f"{r.vision_stage_flops / 1e9:.2f}" if r.vision_stage_flops else "-",
            )
        )
    widths = [max(len(row[i]) for row in lines) for i in range(len(header))]
    return "\n".join("  ".join(cell.ljust(w) for cell, w in zip(row, widths)).rstrip() for row in lines)


def run(args: argparse.Namespace) -> int:
    from reroute.errors import UserError

    if args.num_visual is None:
        shape = released_shapes().get(args.model)
        args.num_visual = REFERENCE_NUM_VISUAL if shape is None else shape.visual_tokens
    if args.num_visual < 1 or args.num_text < 0:
        raise UserError(
            f"--num-visual must be at least 1 and --num-text at least 0, got {args.num_visual} and {args.num_text}"
        )
    try:
        config = load_config(args.model)
        table = rows(config, args.ratios, args.num_visual, args.num_text)
    except ValueError as error:
        raise UserError(str(error)) from None
    dims = table[0][3].dims
    print(
        f"{args.model}: {dims.num_layers} decoder layers, hidden {dims.hidden_size}, MLP {dims.intermediate_size}, "
        f"{dims.num_heads} heads / {dims.num_kv_heads} kv heads x {dims.head_dim}; "
        f"{args.num_visual} visual + {args.num_text} other tokens; {args.ratios} ratios"
    )
    if args.num_visual != REFERENCE_NUM_VISUAL:
        print(f"tiers 192/128/64 (of {REFERENCE_NUM_VISUAL} tokens) scaled to {args.num_visual} visual tokens")
    print("TFLOPs: decoder prefill, paper formula 4nd^2+2n^2d+2ndm; exact: every matmul (2 FLOPs/MAC). "
          "avg_T: continuous, and with the integer keep counts used.")  # fmt: skip
    if any(name in NUWA_PRESETS for name, *_ in table):
        print("nuwa rows: K = kept fraction of the visual tokens before the decoder (stage 1), n per 2x2 cell, then "
              "the decoder's keep ratios of K; the stage-1 merge adds the vision-side GFLOPs of the last column.")  # fmt: skip
    if any(report.config is not None and report.config.vision_stage not in (None, "nuwa") for *_, report in table):
        print("other vision-stage rows (divprune, visionzip, cdpruner): K = kept fraction before the decoder, then the decoder's "
              "keep ratios of K (1: the removal preset's decision keeps every token); the stage's own work is the last column.")  # fmt: skip
    print()
    print(format_table(table))
    refused: dict[str, list[str]] = {}
    for name, reason in unavailable(config).items():
        refused.setdefault(reason, []).append(name)
    for reason, names in refused.items():
        print(f"{', '.join(names)}: not available: {reason}")
    if args.json:
        payload = [
            {"model": args.model, "preset": name, "tier": tier, "target_avg_t": target, "ratios": args.ratios}
            | report.to_dict()
            for name, tier, target, report in table
        ]
        with open(args.json, "w") as f:
            json.dump(payload, f, indent=2)
        print(f"\nwrote {args.json}")
    return 0
