"""Every command: a bad path or value prints ONE line naming the problem and exits 2 (issue 16, item 12),
and so does a command line argparse refuses (bad choice, bad type, missing or unknown argument)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

import reroute

from reroute.cli import main
from reroute.errors import UserError


@pytest.mark.parametrize(
    "argv, message",
    [
        (
            ["demo", "--model-dir", "/no/such/dir"],
            "reroute demo: --model-dir /no/such/dir does not exist: give a folder written by "
            "`reroute train-demo-model --output`, or leave --model-dir out for the bundled model",
        ),
        (["demo", "--num-samples", "0"], "reroute demo: --num-samples and --batch-size must be >= 1, got 0 and 50"),
        (["demo", "--threads", "0"], "reroute demo: --threads must be >= 1, got 0"),
        (
            ["cost", "--num-visual", "0"],
            "reroute cost: --num-visual must be at least 1 and --num-text at least 0, got 0 and 64",
        ),
        (["bench", "--sections", "foo"], "reroute bench: unknown section(s) ['foo']: use any of latency,scaling,batch"),
        (["bench", "--dtype", "float7"], "reroute bench: --dtype 'float7' is not a torch dtype: use float32, bfloat16 or float16"),
        (["bench", "--device", "tpu0"], "reroute bench: --device 'tpu0' is not a torch device: use cpu or cuda"),
        (["bench", "--repeats", "0"], "reroute bench: --repeats must be >= 1, got 0"),
        (
            ["bench", "--json", "/no/such/dir/bench.json"],
            "reroute bench: --json /no/such/dir/bench.json: folder /no/such/dir does not exist; create it first",
        ),
        (["train-demo-model", "--steps", "0"], "reroute train-demo-model: --steps must be >= 1, got 0"),
        (["train-demo-model", "--lr", "-1"], "reroute train-demo-model: --lr must be > 0, got -1.0"),
    ],
)
def test_bad_input_is_one_line_and_exit_2(argv, message, capsys, tmp_path):
    assert main(argv) == 2
    captured = capsys.readouterr()
    assert captured.err == message + "\n" and "Traceback" not in captured.out


def test_a_file_given_as_output_folder(capsys, tmp_path):
    path = tmp_path / "model.txt"
    path.write_text("")
    assert main(["train-demo-model", "--output", str(path)]) == 2
    assert capsys.readouterr().err == f"reroute train-demo-model: --output {path} is a file, not a folder: give a folder for save_pretrained\n"


def test_a_model_dir_without_config(capsys, tmp_path):
    assert main(["demo", "--model-dir", str(tmp_path)]) == 2
    assert capsys.readouterr().err.startswith(f"reroute demo: --model-dir {tmp_path} has no config.json: ")


def test_user_error_and_os_error_from_any_command_are_one_line(monkeypatch, capsys):
    import reroute.commands.cost as cost

    def fail(args):
        raise UserError("something the user\ncan fix")

    monkeypatch.setattr(cost, "run", fail)
    assert main(["cost"]) == 2
    assert capsys.readouterr().err == "reroute cost: something the user can fix\n"

    def missing(args):
        open("/no/such/dir/x.json", "w")

    monkeypatch.setattr(cost, "run", missing)
    assert main(["cost"]) == 2
    assert capsys.readouterr().err == "reroute cost: [Errno 2] No such file or directory: '/no/such/dir/x.json'\n"


COMMAND_NAMES = "'demo', 'cost', 'bench', 'eval', 'paper-table', 'train-demo-model', 'show', 'analyze'"

#: one command line argparse refuses per command (its own message, then the line main prints around it)
ARGPARSE_ERRORS = [
    (["demo", "--num-samples", "many"], "argument --num-samples: invalid int value: 'many'"),
    (["cost", "--ratios", "published"], "argument --ratios: invalid choice: 'published' (choose from 'paper', 'solved')"),
    (["cost", "--num-visual", "144", "--nope", "1"], "unrecognized arguments: --nope 1"),
    (["bench", "--tiers", "64,low"], "argument --tiers: '64,low' is not a comma-separated list of numbers"),
    (["eval", "--data-dir", "data"], "the following arguments are required: --model"),
    (["paper-table", "--model", "m", "--data-dir", "d", "--ratios", "published"],
     "argument --ratios: invalid choice: 'published' (choose from 'solved', 'paper')"),
    (["train-demo-model", "--layout", "hex"], "argument --layout: invalid choice: 'hex' (choose from 'grid', 'slots')"),
    (["show", "--image", "x.png"], "the following arguments are required: --prompt"),
    (["analyze", "--tier", "low"], "argument --tier: invalid float value: 'low'"),
]


@pytest.mark.parametrize("argv, message", ARGPARSE_ERRORS, ids=[argv[0] for argv, _ in ARGPARSE_ERRORS])
def test_argparse_errors_are_one_line_naming_the_command(argv, message, capsys):
    assert main(argv) == 2
    captured = capsys.readouterr()
    command = argv[0]
    assert captured.err == f"reroute {command}: error: {message} (see reroute {command} --help)\n"
    assert captured.out == ""  # no usage block


def test_an_unknown_command_or_option_before_it_is_one_line(capsys):
    assert main(["evaluate"]) == 2
    assert capsys.readouterr().err == (
        f"reroute: error: argument COMMAND: invalid choice: 'evaluate' (choose from {COMMAND_NAMES}) (see reroute --help)\n"
    )
    assert main(["--verbose"]) == 2
    assert capsys.readouterr().err == "reroute: error: unrecognized arguments: --verbose (see reroute --help)\n"


def test_no_command_prints_the_help_and_help_still_works(capsys):
    assert main([]) == 2
    assert capsys.readouterr().out.startswith("usage: reroute [-h] COMMAND ...")
    for argv in (["--help"], ["cost", "--help"]):
        with pytest.raises(SystemExit) as exit_info:
            main(argv)
        assert exit_info.value.code == 0
        captured = capsys.readouterr()
        assert captured.out.startswith(f"usage: reroute {' '.join(argv[:-1])}".rstrip() + " [-h]") and captured.err == ""


def test_bench_plot_without_matplotlib_is_one_line(monkeypatch, capsys):
    def no_benchmark(*args, **kwargs):
        raise AssertionError("the benchmark ran before the extra was checked")

    monkeypatch.setattr("reroute.bench.run_benchmark", no_benchmark)
    monkeypatch.setitem(sys.modules, "matplotlib", None)  # as if not installed: find_spec and import both fail
    assert main(["bench", "--quick", "--plot", "speedup.png"]) == 2
    assert capsys.readouterr().err == (
        "reroute bench: --plot needs the 'viz' extra (missing: matplotlib): pip install 'reroute[viz]'\n"
    )


@pytest.mark.parametrize(
    "argv, line",
    [
        (["cost", "--ratios", "x"],
         "reroute cost: error: argument --ratios: invalid choice: 'x' (choose from 'paper', 'solved') (see reroute cost --help)"),
        (["cost", "--num-visual", "0"],
         "reroute cost: --num-visual must be at least 1 and --num-text at least 0, got 0 and 64"),
    ],
)
def test_the_process_exits_2_with_one_line(argv, line):
    """`python -m reroute` as a user runs it: the exit status itself, and nothing but the line on stderr."""
    src = str(Path(reroute.__file__).resolve().parent.parent)
    result = subprocess.run([sys.executable, "-m", "reroute", *argv], capture_output=True, text=True, timeout=120,
                            env={"PYTHONPATH": src, "PATH": "/usr/bin:/bin"})
    assert (result.returncode, result.stderr, result.stdout) == (2, line + "\n", "")
