"""`reroute eval` and `reroute paper-table` on the command line: errors, config files, sharding, the table."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from tests.helpers.clip_parts import write_clip
from tests.helpers.eval_demo_data import write_demo_refcoco
from tests.helpers.eval_fixtures import write_pope

import reroute
from reroute.budgets import preset_names
from reroute.cli import main
from reroute.demo.modeling import MODEL_DIR
from reroute.eval.records import read_records

SRC = Path(reroute.__file__).resolve().parent.parent


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory):
    path = tmp_path_factory.mktemp("data")
    write_demo_refcoco(path, 6)
    write_pope(path, per_category=2)
    return path


def eval_args(data_dir, output, *extra):
    return ["eval", "--model", str(MODEL_DIR), "--data-dir", str(data_dir), "--output", str(output), "--no-progress", *extra]


ERRORS = [
    (["--model", "/no/such/model"], "reroute eval: --model /no/such/model: no such folder (and not a Hub id like org/name)"),
    (["--tasks", "refcoco_val,nope"], None),  # H1's message, checked as one line naming the task
    (["--preset", "fastv"], "reroute eval: --preset fastv needs --tier (the paper's tiers are 192, 128, 64)"),
    (["--tier", "64"], "reroute eval: --tier applies to routed presets; drop it with --preset vanilla"),
    (["--preset", "fastv", "--tier", "100", "--ratios", "paper"],
     "reroute eval: --ratios paper has published ratios for tiers 192, 128, 64 only, got --tier 100; use --ratios solved"),
    (["--preset", "fastv", "--tier", "-1"], "reroute eval: --tier must be > 0, got -1"),
    (["--batch-size", "0"], "reroute eval: --batch-size must be >= 1, got 0"),
    (["--limit", "0"], "reroute eval: --limit must be >= 1, got 0"),
]


@pytest.mark.parametrize("extra,message", ERRORS, ids=[str(i) for i in range(len(ERRORS))])
def test_user_errors_are_one_line(data_dir, tmp_path, capsys, extra, message):
    args = eval_args(data_dir, tmp_path, *extra)
    if extra[:2] == ["--model", "/no/such/model"]:
        args = ["eval", "--data-dir", str(data_dir), "--output", str(tmp_path), *extra]
    assert main(args) == 2
    err = capsys.readouterr().err
    if message is None:
        assert err.startswith("reroute eval: unknown task 'nope'; valid tasks: refcoco_val,")
    else:
        assert err == message + "\n"
    assert err.count("\n") == 1
    assert not (tmp_path / "vanilla").exists()  # nothing written before the error


def test_missing_data_file_and_missing_folder(data_dir, tmp_path, capsys):
    empty = tmp_path / "empty"
    empty.mkdir()
    assert main(eval_args(empty, tmp_path / "out", "--tasks", "pope")) == 2
    err = capsys.readouterr().err
    assert err.startswith("reroute eval: no 'test' split of lmms-lab/POPE under ") and err.count("\n") == 1
    assert main(eval_args(tmp_path / "nowhere", tmp_path / "out")) == 2
    assert capsys.readouterr().err == (
        f"reroute eval: --data-dir {tmp_path / 'nowhere'}: no such folder; point it at the folder holding the benchmark files\n"
    )


def test_bad_choice_is_one_line(data_dir, tmp_path, capsys):
    assert main(eval_args(data_dir, tmp_path, "--preset", "fastvv", "--tier", "64")) == 2
    choices = ", ".join(repr(name) for name in ("vanilla", *preset_names()))  # every registered preset
    assert capsys.readouterr().err == (
        f"reroute eval: error: argument --preset: invalid choice: 'fastvv' (choose from {choices}) (see reroute eval --help)\n"
    )


def test_paper_table_user_error_is_one_line(data_dir, tmp_path, capsys):
    base = ["paper-table", "--model", str(MODEL_DIR), "--data-dir", str(data_dir), "--output", str(tmp_path)]
    assert main([*base, "--batch-size", "0"]) == 2
    assert capsys.readouterr().err == "reroute paper-table: --batch-size must be >= 1, got 0\n"
    assert not any(tmp_path.iterdir())


@pytest.mark.parametrize("missing", ["datasets", "pyarrow"])
@pytest.mark.parametrize("command", ["eval", "paper-table"])
def test_a_missing_eval_extra_is_one_line_before_any_work(command, missing, data_dir, tmp_path, monkeypatch, capsys):
    import reroute.eval.setup as eval_setup

    def no_loading(*args, **kwargs):
        raise AssertionError("the model loaded before the extra was checked")

    monkeypatch.setattr(eval_setup, "load_model", no_loading)
    monkeypatch.setitem(sys.modules, missing, None)  # as if not installed: find_spec and import both fail
    assert main([command, "--model", str(MODEL_DIR), "--data-dir", str(data_dir), "--output", str(tmp_path)]) == 2
    assert capsys.readouterr().err == (
        f"reroute {command}: reading the benchmark files needs the 'eval' extra (missing: {missing}): "
        "pip install 'reroute[eval]'\n"
    )
    assert not any(tmp_path.iterdir())


def test_config_file_errors(data_dir, tmp_path, capsys):
    bad = tmp_path / "bad.json"
    bad.write_text(json.dumps({"action": "reroute", "decision_layers": [2], "keep_ratios": [1.5]}))
    assert main(eval_args(data_dir, tmp_path, "--config", str(bad))) == 2
    assert capsys.readouterr().err == (
        f"reroute eval: --config {bad}: keep ratio 1.5 is outside (0, 1]: each keep ratio must be > 0 and <= 1\n"
    )
    bad.write_text(json.dumps({"action": "remove", "decision_layers": [20], "keep_ratios": [0.5]}))
    assert main(eval_args(data_dir, tmp_path, "--config", str(bad))) == 2
    assert capsys.readouterr().err == (
        "reroute eval: decision layer 20 is outside the decoder: LlamaModel has 12 layers "
        "(valid decision layers are 1..11)\n"
    )
    bad.write_text(json.dumps({"action": "remove", "decision_layer": [2], "keep_ratios": [0.5]}))
    assert main(eval_args(data_dir, tmp_path, "--config", str(bad))) == 2
    assert capsys.readouterr().err == (
        f"reroute eval: --config {bad}: RoutingConfig has no field 'decision_layer': use action, "
        "decision_layers, execution, keep_ratios, scorer, scorer_params, vision_params, vision_stage\n"
    )
    assert main(eval_args(data_dir, tmp_path, "--config", str(tmp_path / "none.json"))) == 2
    assert capsys.readouterr().err == f"reroute eval: --config {tmp_path / 'none.json'}: no such file\n"
    bad.write_text("{")
    assert main(eval_args(data_dir, tmp_path, "--config", str(bad))) == 2
    assert capsys.readouterr().err.startswith(f"reroute eval: --config {bad} is not valid JSON")
    assert main(eval_args(data_dir, tmp_path, "--config", str(bad), "--preset", "fastv")) == 2
    assert capsys.readouterr().err == (
        "reroute eval: --config replaces --preset and --tier: give either --config or --preset/--tier\n"
    )


def test_config_file_equals_its_preset(data_dir, tmp_path):
    from reroute.demo import modeling

    model, _ = modeling.load_model()
    config = reroute.preset("reroute_vs_fastv", tier=64 * 144 / 576, model=model, num_visual=144)
    path = tmp_path / "mine.json"
    path.write_text(json.dumps({"action": config.action, "decision_layers": list(config.decision_layers),
                                "keep_ratios": list(config.keep_ratios)}))
    common = ("--tasks", "refcoco_val", "--limit", "3")
    assert main(eval_args(data_dir, tmp_path, "--config", str(path), *common)) == 0
    assert main(eval_args(data_dir, tmp_path, "--preset", "reroute_vs_fastv", "--tier", "64", *common)) == 0
    from_file = json.loads((tmp_path / "config-mine" / "summary.json").read_text())
    from_preset = json.loads((tmp_path / "reroute_vs_fastv-64-solved" / "summary.json").read_text())
    assert from_file["config"] == from_preset["config"]
    assert from_file["tasks"] == from_preset["tasks"]


def test_help_explains_tiers_and_launching_on_many_gpus(capsys):
    with pytest.raises(SystemExit):
        main(["eval", "--help"])
    out = capsys.readouterr().out
    assert "accelerate launch --num_processes 8 -m reroute eval" in out
    assert "--num_machines 2" in out
    assert "tier * N / 576" in out


def test_two_accelerate_processes_equal_one(data_dir, tmp_path):
    """`accelerate launch --num_processes 2 --cpu` writes byte-identical files to a one-process run."""
    args = ["--preset", "reroute_vs_pdrop", "--tier", "64", "--tasks", "refcoco_val,pope", "--limit", "3", "--batch-size", "2"]
    assert main(eval_args(data_dir, tmp_path / "one", *args)) == 0
    env = dict(os.environ, PYTHONPATH=f"{SRC}{os.pathsep}{os.environ.get('PYTHONPATH', '')}", OMP_NUM_THREADS="1")
    launch = [sys.executable, "-m", "accelerate.commands.launch", "--num_processes", "2", "--num_machines", "1",
              "--mixed_precision", "no", "--dynamo_backend", "no", "--cpu", "-m", "reroute"]
    result = subprocess.run(launch + eval_args(data_dir, tmp_path / "two", *args), env=env, capture_output=True,
                            text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-2000:]
    one, two = tmp_path / "one" / "reroute_vs_pdrop-64-solved", tmp_path / "two" / "reroute_vs_pdrop-64-solved"
    assert sorted(p.name for p in two.iterdir()) == ["pope.jsonl", "refcoco_val.jsonl", "run.json", "summary.json", "summary.md"]
    for name in ("refcoco_val.jsonl", "pope.jsonl", "summary.json", "summary.md"):
        assert (one / name).read_bytes() == (two / name).read_bytes(), name
    assert len(read_records(two / "pope.jsonl")) == 3


def test_paper_table_every_method_and_tier_resumable(data_dir, tmp_path, monkeypatch, capsys):
    args = ["paper-table", "--model", str(MODEL_DIR), "--data-dir", str(data_dir), "--output", str(tmp_path),
            "--tasks", "refcoco_val", "--limit", "1", "--no-progress"]
    assert main(args) == 0
    table = (tmp_path / "paper_table.md").read_text()
    rows = [line for line in table.splitlines()[2:]]
    assert [tuple(cell.strip() for cell in row.split("|")[1:3]) for row in rows] == [("vanilla", "-")] + [
        (method, str(tier))
        for method in ("fastv", "pdrop", "reroute_vs_fastv", "reroute_vs_pdrop", "nuwa", "nuwa_reroute")  # the paper's
        for tier in (192, 128, 64)
    ]
    assert table.splitlines()[0] == "| method | tier | refcoco_val acc@0.5 | avg_T | FLOPs rel | KV rel |"
    data = json.loads((tmp_path / "paper_table.json").read_text())
    assert [r["avg_T"] for r in data["rows"]][:1] == [144.0]

    # every sample is on disk: a rerun generates nothing and writes the same table
    import reroute.eval.runner as runner

    def no_generation(*a, **k):
        raise AssertionError("a finished run generated again")

    monkeypatch.setattr(runner, "generate", no_generation)
    assert main(args) == 0
    assert (tmp_path / "paper_table.md").read_text() == table


def test_cdpruner_as_published_with_a_clip_checkpoint(data_dir, tmp_path, capsys):
    """``--clip`` loads CDPruner's CLIP parts (here a random checkpoint folder matching the demo model's tower),
    is part of the run's identity, and is refused for a method that does not read it."""
    from transformers import AutoConfig

    clip = tmp_path / "clip"
    write_clip(clip, AutoConfig.from_pretrained(MODEL_DIR).vision_config, context=8)
    args = eval_args(data_dir, tmp_path / "out", "--tasks", "refcoco_val", "--limit", "2", "--preset", "cdpruner", "--tier", "64")
    assert main([*args, "--clip", str(clip)]) == 0
    run = tmp_path / "out" / "cdpruner-64-solved-clip"
    assert json.loads((run / "run.json").read_text())["clip"] == str(clip)
    assert len(read_records(run / "refcoco_val.jsonl")) == 2
    capsys.readouterr()
    assert main([*args, "--run-name", "cdpruner-64-solved-clip"]) == 2  # the same folder without CLIP: another run
    assert capsys.readouterr().err == (
        f"reroute eval: {run} holds a run with another clip; use another --output or --run-name, or delete the folder\n"
    )
    assert main(eval_args(data_dir, tmp_path / "out", "--preset", "fastv", "--tier", "64", "--clip", str(clip))) == 2
    assert capsys.readouterr().err == "reroute eval: --clip is read by the cdpruner presets (vision_stage='cdpruner') only; drop it\n"


# ------------------------------------------------------------------------------ as the paper ran it


def parsed(command, *extra):
    import argparse

    from reroute.commands import eval as eval_command
    from reroute.commands import paper_table

    parser = argparse.ArgumentParser()
    {"eval": eval_command, "paper-table": paper_table}[command].add_arguments(parser)
    return parser.parse_args(["--model", "m", "--data-dir", "d", *extra])


def test_paper_table_runs_batch_1_and_eval_keeps_batching():
    assert parsed("paper-table").batch_size == 1
    assert parsed("eval").batch_size == 8
    assert parsed("paper-table", "--max-pixels", "1000").max_pixels == 1000
    assert parsed("eval").min_pixels is None and parsed("eval").max_pixels is None  # the family's own


def test_pixel_flags_are_refused_on_a_family_without_bounds(data_dir, tmp_path, capsys):
    assert main(eval_args(data_dir, tmp_path, "--min-pixels", "200704")) == 2
    assert capsys.readouterr().err.split("\n")[-2:] == [
        "reroute eval: --min-pixels does not apply to the demo family: its protocol declares no pixel bounds for its processor; "
        "drop --min-pixels", ""
    ]
    assert not (tmp_path / "vanilla").exists()


def test_paper_table_runs_nuwa_on_qwen_at_its_published_keep_ratios():
    """On Qwen2.5-VL Nüwa's rows are its published settings (keep 0.75 / 0.5 / 0.25, ratios "paper");
    every other row keeps --ratios; on LLaVA nothing changes."""
    from tests.helpers.models import tiny_llava, tiny_qwen

    from reroute.commands.paper_table import table_runs
    from reroute.eval.setup import routing_config
    from reroute.methods.nuwa.params import QWEN_RATIOS

    qwen = tiny_qwen("qwen2_5_vl")
    rows = table_runs("solved", qwen)
    nuwa = [r for r in rows if r.method in ("nuwa", "nuwa_reroute")]
    assert [(r.method, r.tier, r.keep, r.ratios, r.name) for r in nuwa] == [
        (method, tier, keep, "paper", f"{method}-{tier}-paper")
        for method in ("nuwa", "nuwa_reroute") for tier, keep in ((192, 0.75), (128, 0.5), (64, 0.25))
    ]
    assert {r.ratios for r in rows if r.method not in ("vanilla", "nuwa", "nuwa_reroute")} == {"solved"}
    for row in nuwa:
        config = routing_config(row.method, row.preset_tier(), row.ratios, qwen)
        published = QWEN_RATIOS[row.keep]
        assert dict(config.vision_params) == {"keep_fraction": published.stage1_fraction, "per_cell": published.per_cell}
        assert config.keep_ratios == (published.stage2_fraction,) * len(config.decision_layers)
        assert row.labels() == {"method": row.method, "tier": row.tier, "ratios": "paper", "keep": row.keep}
    llava = table_runs("solved", tiny_llava())
    assert all(r.keep is None and r.ratios in (None, "solved") for r in llava)
    assert [r.name for r in llava] == [r.name for r in table_runs("solved")]


def test_paper_table_methods_choose_the_pairs(data_dir, tmp_path, capsys):
    from reroute.budgets import counterparts
    from reroute.commands.paper_table import table_runs

    rows = table_runs("solved", None, ("dart",))
    assert [r.name for r in rows] == ["vanilla"] + [
        f"{m}-{t}-solved" for m in ("dart", "reroute_vs_dart") for t in (192, 128, 64)
    ]
    assert {r.method for r in table_runs("solved", None, tuple(counterparts()))} - {"vanilla"} == set(
        counterparts()
    ) | set(counterparts().values())
    args = ["paper-table", "--model", str(MODEL_DIR), "--data-dir", str(data_dir), "--output", str(tmp_path / "t"),
            "--methods", "magic", "--no-progress"]
    assert main(args) == 2
    assert capsys.readouterr().err == (
        f"reroute paper-table: --methods: unknown method 'magic': use one of {', '.join(counterparts())}, or all\n"
    )
    assert not (tmp_path / "t").exists()


def test_paper_table_gives_clip_to_the_cdpruner_rows_only(data_dir, tmp_path, capsys):
    """``paper-table --clip``: the CLIP parts load once and reach the cdpruner rows (their run.json records it);
    without cdpruner among the methods, ``--clip`` is refused before anything runs."""
    from transformers import AutoConfig

    clip = tmp_path / "clip"
    write_clip(clip, AutoConfig.from_pretrained(MODEL_DIR).vision_config, context=8)
    out = tmp_path / "t"
    args = ["paper-table", "--model", str(MODEL_DIR), "--data-dir", str(data_dir), "--output", str(out),
            "--tasks", "refcoco_val", "--limit", "1", "--no-progress", "--clip", str(clip)]
    assert main([*args, "--methods", "cdpruner"]) == 0
    identities = {run.name: json.loads((run / "run.json").read_text()) for run in out.iterdir() if run.is_dir()}
    assert sorted(identities) == sorted(["vanilla"] + [f"{m}-{t}-solved" for m in ("cdpruner", "cdpruner_reroute") for t in (192, 128, 64)])
    assert {name: identity.get("clip") for name, identity in identities.items()} == {
        name: None if name == "vanilla" else str(clip) for name in identities
    }
    capsys.readouterr()
    assert main([*args[:6], str(tmp_path / "u"), *args[7:], "--methods", "fastv"]) == 2
    assert capsys.readouterr().err == (
        "reroute paper-table: --clip is read by the cdpruner presets only; add cdpruner to --methods or drop --clip\n"
    )
    assert not (tmp_path / "u").exists()
