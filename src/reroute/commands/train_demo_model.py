"""`reroute train-demo-model`: reproduce the bundled demo model's weights from a seed.

The shipped model in ``reroute/demo/model/`` was made with the command recorded in its
``metrics.json`` / ``training_log.txt``. Bit-exact reproduction needs the same ``--threads``
(CPU kernels split reductions by thread count) and the same torch version.
"""

from __future__ import annotations

import argparse
import shlex
import sys


def add_arguments(parser: argparse.ArgumentParser) -> None:
    from reroute.demo.training import TrainConfig

    d = TrainConfig()
    parser.add_argument("--seed", type=int, default=d.seed, help="model init and data stream seed (default %(default)s)")
    parser.add_argument(
        "--vision-steps", type=int, default=d.vision_steps, help="stage 1 steps: vision tower + projector on per-patch targets"
    )
    parser.add_argument("--steps", type=int, default=d.steps, help="stage 2 steps: the whole model (default %(default)s)")
    parser.add_argument("--batch-size", type=int, default=d.batch_size, help="conversations per step (default %(default)s)")
    parser.add_argument("--lr", type=float, default=d.lr, help="stage 2 peak learning rate (default %(default)s)")
    parser.add_argument("--warmup-steps", type=int, default=d.warmup_steps, help="linear warmup (default %(default)s)")
    parser.add_argument("--threads", type=int, default=d.threads, help="torch.set_num_threads (default %(default)s)")
    parser.add_argument("--eval-every", type=int, default=d.eval_every, help="held-out eval period in steps, 0 = never")
    parser.add_argument("--eval-samples", type=int, default=d.eval_samples, help="'val' samples per periodic eval")
    parser.add_argument("--test-samples", type=int, default=d.test_samples, help="'test' samples in the final eval")
    parser.add_argument("--turns", type=int, default=d.turns, help="questions per image in a training sequence")
    parser.add_argument("--curriculum", type=float, default=d.curriculum, help="fraction of steps on 1-3 object scenes")
    parser.add_argument("--probe-weight", type=float, default=d.probe_weight, help="weight of the per-patch probe loss in stage 2")
    parser.add_argument(
        "--description-weight", type=float, default=d.description_weight, help="weight of the question-description probe loss"
    )
    parser.add_argument("--attn-weight", type=float, default=d.attn_weight, help="weight of the supervised-attention loss")
    parser.add_argument("--layout", default=d.layout, choices=["grid", "slots"], help="scene layout (default: synthetic.DEFAULT_LAYOUT)")
    parser.add_argument("--checkpoint", action="store_true", help="save <output>/checkpoint at every periodic eval")
    parser.add_argument(
        "--output", default=d.output, help="folder for save_pretrained (default: the package's demo/model/)"
    )
    parser.add_argument("--log-file", default=None, help="also write the log here (default: <output>/training_log.txt)")


def _check(args: argparse.Namespace) -> None:
    """Refuse values that would fail deep inside training, with one line naming the option."""
    from pathlib import Path

    from reroute.errors import UserError

    for option in ("steps", "batch_size", "threads", "turns"):
        value = getattr(args, option)
        if value < 1:
            raise UserError(f"--{option.replace('_', '-')} must be >= 1, got {value}")
    for option in ("vision_steps", "warmup_steps", "eval_every", "eval_samples", "test_samples"):
        value = getattr(args, option)
        if value < 0:
            raise UserError(f"--{option.replace('_', '-')} must be >= 0, got {value}")
    if not args.lr > 0:
        raise UserError(f"--lr must be > 0, got {args.lr}")
    if not 0 <= args.curriculum <= 1:
        raise UserError(f"--curriculum is a fraction of the steps in [0, 1], got {args.curriculum}")
    output = Path(args.output)
    if output.exists() and not output.is_dir():
        raise UserError(f"--output {args.output} is a file, not a folder: give a folder for save_pretrained")


def run(args: argparse.Namespace) -> int:
    _check(args)
    from pathlib import Path

    from reroute.demo.training import TrainConfig, setup_logging, train

    cfg = TrainConfig(
        seed=args.seed,
        vision_steps=args.vision_steps,
        steps=args.steps,
        batch_size=args.batch_size,
        lr=args.lr,
        warmup_steps=args.warmup_steps,
        threads=args.threads,
        eval_every=args.eval_every,
        eval_samples=args.eval_samples,
        test_samples=args.test_samples,
        turns=args.turns,
        curriculum=args.curriculum,
        probe_weight=args.probe_weight,
        attn_weight=args.attn_weight,
        description_weight=args.description_weight,
        layout=args.layout,
        checkpoint=args.checkpoint,
        output=args.output,
    )
    setup_logging(args.log_file or Path(args.output) / "training_log.txt")
    command = "reroute train-demo-model " + " ".join(shlex.quote(a) for a in sys.argv[2:]) if len(sys.argv) > 1 else None
    result = train(cfg, command=command)
    m = result["test_metrics"]
    print(
        f"held-out test ({m['n']} samples): grounding Acc@0.5 {m['grounding_acc50']:.3f} "
        f"({m['n_grounding']}), VQA accuracy {m['vqa_acc']:.3f} ({m['n_vqa']}); saved to {cfg.output}"
    )
    return 0
