"""`reroute show`: one figure of what remove and reroute decide on your image, at the same budget.

For a model (a Hub id or a local folder; default: the bundled demo model), one prompt and one
or more images, it runs a preset and its counterpart with the other action (or a config from a
JSON file and the same schedule under the other action), records every decision's scores,
generates each answer, and draws per decision the score heat map and the active / deferred /
removed patches (`reroute.viz.plot_decisions`), with each answer's box when it names one.
"""

from __future__ import annotations

import argparse
from pathlib import Path

from reroute.budgets.pairs import paired_presets, remove_and_reroute
from reroute.commands.common import (
    add_pixel_arguments,
    check_paper_tier,
    config_file_pair,
    family_protocol,
    load_vlm,
    parse_box,
)
from reroute.commands.extras import require_extra
from reroute.errors import UserError


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--model", default=None, help="Hub id or local folder of the VLM (default: the bundled demo model)")
    parser.add_argument("--image", action="append", required=True, help="image file (repeat for a multi-image prompt)")
    parser.add_argument("--prompt", required=True, help="the question or instruction (no image placeholder needed)")
    parser.add_argument("--preset", choices=paired_presets(), default="reroute_vs_pdrop",
                        help="shown with its counterpart of the other action (default: %(default)s)")
    parser.add_argument("--tier", type=float, default=64,
                        help="the paper's budget out of 576 visual tokens, scaled to the prompt's count (default: 64)")
    parser.add_argument("--ratios", choices=("solved", "paper"), default="solved")
    parser.add_argument("--config", default=None, help="routing.json (RoutingConfig fields) instead of --preset/--tier")
    parser.add_argument("--box", default=None, help="ground-truth box x1,y1,x2,y2 on the first image (pixels or 0-1)")
    parser.add_argument("--output", default="show.png", help="figure path, .png or .svg (default: %(default)s)")
    parser.add_argument("--max-new-tokens", type=int, default=32)
    parser.add_argument("--threads", type=int, default=None, help="torch CPU threads")
    add_pixel_arguments(parser)


def run(args: argparse.Namespace) -> int:
    import torch
    from PIL import Image

    from reroute import apply
    from reroute.backbones import backbone_for, grids_for
    from reroute.demo.synthetic import parse_box as parse_answer_box
    from reroute.viz.collect import prompt_text
    from reroute.viz import RunView, plot_decisions

    require_extra("viz", "drawing the figure")
    if not args.output.lower().endswith((".png", ".svg")):
        raise UserError(f"--output {args.output}: the figure path must end in .png or .svg")
    images = []
    for path in args.image:
        if not Path(path).is_file():
            raise UserError(f"--image {path}: no such file")
        images.append(Image.open(path).convert("RGB"))
    box = parse_box(args.box)
    pair = config_file_pair(args.config) if args.config else None
    if pair is None:
        check_paper_tier(args.ratios, args.tier)
    if args.threads:
        torch.set_num_threads(args.threads)

    model, processor = load_vlm(args.model)
    protocol = family_protocol(model, processor, args)  # its pixel bounds (Qwen-VL: the paper's by default)
    processor_kwargs = protocol.processor_kwargs if protocol is not None else {}
    text = prompt_text(processor, args.prompt, len(images))
    encoded = processor(images=images, text=[text], return_tensors="pt", **processor_kwargs)
    inputs = {k: v.to(model.device) for k, v in encoded.items()}
    grids = grids_for(model, processor, inputs, [im.size for im in images])
    num_visual = sum(len(g.positions) for g in grids)
    try:
        configs = pair or remove_and_reroute(args.preset, args.tier, model, num_visual, args.ratios)
    except ValueError as error:
        raise UserError(f"--preset {args.preset} --tier {args.tier:g}: {error}") from None
    if box is not None and max(box) <= 1.0:  # fractions of the first image
        width, height = images[0].size
        box = (box[0] * width, box[1] * height, box[2] * width, box[3] * height)

    tokenizer = getattr(processor, "tokenizer", processor)
    first_grid = next(g for g in grids if g.image_index == 0)
    family = backbone_for(model, processor)  # its answer-box frame: None leaves boxes in numbers above 1 undrawn
    runs = []
    for name, config in configs.items():
        with apply(model, config, record_scores=True) as handle, torch.no_grad():
            ids = model.generate(**inputs, max_new_tokens=args.max_new_tokens, do_sample=False)
        answer = tokenizer.decode(ids[0, inputs["input_ids"].shape[1] :], skip_special_tokens=True).strip()
        named = parse_answer_box(answer)
        answer_box = None
        if named is not None and max(named) <= 1.0:
            answer_box = first_grid.frame_to_image(named, (1.0, 1.0))
        elif named is not None and family.answer_frame is not None:
            answer_box = first_grid.frame_to_image(named, family.answer_frame(model.config, first_grid))
        runs.append(RunView.from_trace(handle.trace, name=name, answer=answer, answer_box=answer_box))
        print(f"{name}: {answer}")
        if named is not None and answer_box is None:
            print(f"  (its box is not drawn: {family.family} declares no answer-box frame for numbers above 1)")

    budget = "same budget" if args.config else f"paper tier {args.tier:g} ({args.ratios} ratios)"
    title = f"{args.prompt}\n{' vs '.join(configs)}, {budget}"
    Path(args.output).parent.mkdir(parents=True, exist_ok=True)
    plot_decisions(images, runs, grids, title=title, target_box=box, path=args.output)
    print(f"wrote {args.output}")
    return 0
