"""Every command: a bad path or value prints ONE line naming the problem and exits 2 (issue 16, item 12)."""

from __future__ import annotations

import pytest

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
