"""`reroute bench`: prefill/decode latency, memory and throughput, side by side with the FLOPs limit."""

from __future__ import annotations

import argparse


def _floats(text: str) -> tuple[float, ...]:
    try:
        return tuple(float(x) for x in text.split(",") if x)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a comma-separated list of numbers") from None


def _ints(text: str) -> tuple[int, ...]:
    try:
        return tuple(int(x) for x in text.split(",") if x)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a comma-separated list of integers") from None


def add_arguments(parser: argparse.ArgumentParser) -> None:
    from reroute.bench import BENCH_SHAPES

    parser.add_argument("--shape", choices=sorted(BENCH_SHAPES), default=None,
                        help="model shape (default: llava-1.5-narrow on CPU, llava-1.5-7b on CUDA)")
    parser.add_argument("--device", default=None, help="cpu or cuda (default: cuda if available)")
    parser.add_argument("--dtype", default=None, help="float32, bfloat16, float16 (default: float32 on CPU, float16 on CUDA)")
    parser.add_argument("--threads", type=int, default=1, help="CPU threads for torch (default 1)")
    parser.add_argument("--tiers", type=_floats, default=None, help="avg_T tiers (default 192,128,64; --quick 64)")
    parser.add_argument("--ratios", choices=("solved", "paper"), default="solved",
                        help="keep ratios: the budget solver's (hit each tier exactly) or the paper's published ones")
    parser.add_argument("--reroute-preset", choices=("reroute_vs_pdrop", "reroute_vs_fastv"), default="reroute_vs_pdrop",
                        help="the schedule of the 'reroute per-layer' and 'reroute stage-wise' rows")
    parser.add_argument("--repeats", type=int, default=None, help="timed rounds (default 5; --quick 2)")
    parser.add_argument("--warmup", type=int, default=1, help="untimed rounds first (default 1)")
    parser.add_argument("--new-tokens", type=int, default=None, help="tokens generated to time decode (default 16; --quick 8)")
    parser.add_argument("--execution-pairs", type=int, default=None,
                        help="back-to-back stage-wise/per-layer pairs at the lowest tier (default 20; --quick 4; 0: skip)")
    parser.add_argument("--images", type=_ints, default=None,
                        help="images per prompt for the scaling section (576 visual tokens each on the LLaVA shapes; default 1,4,16; --quick 1,4)")
    parser.add_argument("--batch-sizes", type=_ints, default=None, help="batch sizes for throughput (default 1,4,8; --quick 1,4)")
    parser.add_argument("--sections", default="latency,scaling,batch", help="any of latency,scaling,batch")
    parser.add_argument("--quick", action="store_true", help="a short run: tier 64 only, fewer repeats, smaller scaling and batches")
    parser.add_argument("--no-tune-malloc", dest="tune_malloc", action="store_false",
                        help="keep glibc's default malloc thresholds (page faults then add noise to CPU timings)")
    parser.add_argument("--json", metavar="PATH", help="write every number as JSON")
    parser.add_argument("--plot", metavar="PATH", help="write a plot of measured vs theoretical speedup (PNG)")  # fmt: skip


def options_from_args(args: argparse.Namespace):
    from reroute.bench import BenchOptions

    chosen = {
        "shape": args.shape,
        "device": args.device,
        "dtype": args.dtype,
        "threads": args.threads,
        "ratios": args.ratios,
        "reroute_preset": args.reroute_preset,
        "warmup": args.warmup,
        "tune_malloc": args.tune_malloc,
        "sections": tuple(s for s in args.sections.split(",") if s),
    }
    optional = {"tiers": args.tiers, "repeats": args.repeats, "new_tokens": args.new_tokens,
                "execution_pairs": args.execution_pairs,
                "scaling_images": args.images, "batch_sizes": args.batch_sizes}  # fmt: skip
    chosen.update({k: v for k, v in optional.items() if v is not None})
    return BenchOptions.quick_defaults(**chosen) if args.quick else BenchOptions(**chosen)


def _check(args: argparse.Namespace) -> None:
    """Refuse what would fail deep inside the benchmark, with one line naming the option."""
    from pathlib import Path

    import torch

    from reroute.commands.extras import require_extra
    from reroute.errors import UserError

    if args.plot is not None:
        require_extra("viz", "--plot")
    unknown = set(s for s in args.sections.split(",") if s) - {"latency", "scaling", "batch"}
    if unknown:
        raise UserError(f"unknown section(s) {sorted(unknown)}: use any of latency,scaling,batch")
    if args.device is not None:
        try:
            device = torch.device(args.device)
        except RuntimeError:
            raise UserError(f"--device {args.device!r} is not a torch device: use cpu or cuda") from None
        if device.type == "cuda" and not torch.cuda.is_available():
            raise UserError("--device cuda was asked for but torch sees no CUDA device: use --device cpu")
    if args.dtype is not None and not isinstance(getattr(torch, args.dtype, None), torch.dtype):
        raise UserError(f"--dtype {args.dtype!r} is not a torch dtype: use float32, bfloat16 or float16")
    counts = {"--threads": args.threads, "--repeats": args.repeats, "--new-tokens": args.new_tokens}
    for option, value in counts.items():
        if value is not None and value < 1:
            raise UserError(f"{option} must be >= 1, got {value}")
    for option, path in {"--json": args.json, "--plot": args.plot}.items():
        if path is not None and not Path(path).resolve().parent.is_dir():
            raise UserError(f"{option} {path}: folder {Path(path).resolve().parent} does not exist; create it first")
    for option, values in {"--tiers": args.tiers, "--images": args.images, "--batch-sizes": args.batch_sizes}.items():
        if values is not None and (not values or min(values) <= 0):
            raise UserError(f"{option} needs positive values, got {args.__dict__[option[2:].replace('-', '_')]}")


def run(args: argparse.Namespace) -> int:
    from reroute.bench import format_report, plot, run_benchmark, write_json

    _check(args)
    result = run_benchmark(options_from_args(args))
    print()
    print(format_report(result))
    if args.json:
        write_json(result, args.json)
        print(f"wrote {args.json}")
    if args.plot:
        plot(result, args.plot)
        print(f"wrote {args.plot}")
    return 0
