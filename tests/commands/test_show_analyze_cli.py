"""`reroute show` and `reroute analyze` end to end on the demo model, and their one-line errors."""

from __future__ import annotations

import json

import pytest

from reroute.budgets import preset_names
from reroute.cli import main
from reroute.demo import modeling, synthetic


@pytest.fixture(scope="module")
def image_file(tmp_path_factory):
    sample = synthetic.make_sample(0, "test", 0, kind="grounding")
    path = tmp_path_factory.mktemp("img") / "scene.png"
    sample.image.save(path)
    return path, sample


def test_show_writes_the_figure_and_prints_both_answers(model_dir, image_file, tmp_path, capsys):
    path, sample = image_file
    out = tmp_path / "show.png"
    box = ",".join(str(v) for v in sample.objects[sample.target].pixel_box)
    code = main(["show", "--model", str(model_dir), "--image", str(path), "--prompt", sample.question,
                 "--box", box, "--tier", "128", "--max-new-tokens", "12", "--output", str(out)])
    printed = capsys.readouterr().out.splitlines()
    assert code == 0 and out.stat().st_size > 20_000
    assert printed[0].startswith("remove (pdrop): ") and printed[1].startswith("reroute (reroute_vs_pdrop): ")


def test_show_with_a_config_file_pairs_it_with_the_other_action(model_dir, image_file, tmp_path, capsys):
    path, sample = image_file
    config = tmp_path / "routing.json"
    config.write_text(json.dumps({"action": "reroute", "decision_layers": [2, 5], "keep_ratios": [0.3, 0.2]}))
    code = main(["show", "--model", str(model_dir), "--image", str(path), "--prompt", sample.question,
                 "--config", str(config), "--max-new-tokens", "4", "--output", str(tmp_path / "f.svg")])
    printed = capsys.readouterr().out.splitlines()
    assert code == 0 and (tmp_path / "f.svg").exists()
    assert printed[0].startswith("remove (same schedule): ") and printed[1].startswith("reroute (config): ")


def test_analyze_writes_table_json_and_plots(model_dir, tmp_path):
    stem = tmp_path / "analysis" / "demo"
    code = main(["analyze", "--model-dir", str(model_dir), "--num-samples", "6", "--batch-size", "3",
                 "--output", str(stem)])
    assert code == 0
    saved = json.loads((stem.parent / "demo.json").read_text())
    rows = saved["rows"]
    assert [r["run"] for r in rows[::4]] == ["pdrop", "reroute_vs_pdrop", "fastv", "reroute_vs_fastv"][: len(rows[::4])]
    assert saved["meta"]["num_samples"] == 6 and saved["meta"]["num_visual"] == 144
    assert [r["run"] for r in saved["runs"]] == ["pdrop", "reroute_vs_pdrop", "fastv", "reroute_vs_fastv"]
    fastv, ours = saved["runs"][2], saved["runs"][3]
    assert fastv["avg_t"] == pytest.approx(ours["avg_t"], abs=1.0)  # the same budget
    for r in rows:
        assert r["n_samples"] == 6
        if r["decision"] == 0:
            assert r["reentry"] is None and r["spearman"] is None
        elif r["action"] == "remove":
            assert r["reentry"] == 0.0  # removed tokens never come back
    table = (stem.parent / "demo.md").read_text()
    assert table.count("\n| ") == len(rows) + 1 + len(saved["runs"]) + 1  # per decision, then per run
    assert (stem.parent / "demo.png").stat().st_size > 10_000


@pytest.mark.parametrize(
    "args, message",
    [
        (["show", "--image", "nowhere.png", "--prompt", "x"], "--image nowhere.png: no such file"),
        (["show", "--image", "IMG", "--prompt", "x", "--output", "f.jpg"],
         "--output f.jpg: the figure path must end in .png or .svg"),
        (["show", "--image", "IMG", "--prompt", "x", "--box", "1,2,3"],
         "--box '1,2,3': give x1,y1,x2,y2 with x2 > x1 and y2 > y1 (pixels, or 0-1 fractions)"),
        (["show", "--image", "IMG", "--prompt", "x", "--config", "missing.json"],
         "--config missing.json: no such file; give a JSON file with RoutingConfig fields"),
        (["analyze", "--presets", "pdrop,nope"],
         f"--presets 'pdrop,nope': use names from {', '.join(preset_names())}, comma-separated"),
        (["analyze", "--model-dir", "no_model_here"], "--model-dir no_model_here: no saved demo model there (config.json missing)"),
    ],
)
def test_user_errors_are_one_line(args, message, image_file, capsys):
    args = [str(image_file[0]) if a == "IMG" else a for a in args]
    assert main(args) == 2
    assert capsys.readouterr().err == f"reroute {args[0]}: {message}\n"


def test_a_bad_config_file_is_one_line(image_file, tmp_path, capsys):
    config = tmp_path / "routing.json"
    config.write_text(json.dumps({"action": "remove", "decision_layers": [2, 5], "keep_ratios": [0.2, 0.3]}))
    assert main(["show", "--image", str(image_file[0]), "--prompt", "x", "--config", str(config)]) == 2
    assert capsys.readouterr().err == (
        f"reroute show: --config {config}: keep_ratios grow from 0.2 to 0.3 at decision layer 5: removed tokens "
        "cannot come back; make the ratios non-increasing or use action='reroute'\n"
    )


@pytest.mark.parametrize("command", ["show", "analyze"])
def test_a_tier_without_published_ratios_is_one_line_before_loading(command, model_dir, image_file, capsys):
    args = ["--tier", "100", "--ratios", "paper"]
    if command == "show":
        args += ["--model", str(model_dir), "--image", str(image_file[0]), "--prompt", "x"]
    else:
        args += ["--model-dir", str(model_dir), "--num-samples", "1"]
    assert main([command, *args]) == 2
    assert capsys.readouterr().err == (  # nothing else on stderr: no model (and no loading bar) before the check
        f"reroute {command}: --ratios paper has published ratios for tiers 192, 128, 64 only, got --tier 100; "
        "use --ratios solved\n"
    )


class _FakeRecTask:
    """An evaluation task in the `reroute.eval.task.Task` contract, over the demo's grounding samples."""

    name, family, dataset_id = "fake_rec", "rec", "local/fake"

    def __init__(self, samples):
        self.samples = samples

    def load(self, data_dir, limit=None):
        from reroute.eval.task import EvalSample

        return [
            EvalSample(
                task=self.name, id=str(i), question=s.expression,
                target=[v / synthetic.IMAGE_SIZE for v in s.objects[s.target].pixel_box],
                load_images=lambda s=s: [s.image],
            )
            for i, s in enumerate(self.samples[:limit])
        ]

    def prompt(self, sample, model_family):
        assert model_family == "demo"
        return f"{synthetic.GROUNDING_PREFIX} {sample.question}."


def test_analyze_over_an_evaluation_task_equals_the_same_samples_from_the_demo_set(model_dir, tmp_path, monkeypatch):
    import sys
    import types

    from reroute.demo.analyze import demo_items, preset_configs
    from reroute.viz.collect import analyze_items

    samples = synthetic.make_dataset(4, seed=7, split="test", kind="grounding")
    fake = types.ModuleType("reroute.eval.tasks")
    fake.get_task = lambda name: _FakeRecTask(samples) if name == "fake_rec" else (_ for _ in ()).throw(KeyError(name))
    monkeypatch.setitem(sys.modules, "reroute.eval.tasks", fake)
    stem = tmp_path / "task"
    code = main(["analyze", "--task", "fake_rec", "--data-dir", str(tmp_path), "--model", str(model_dir),
                 "--num-samples", "4", "--batch-size", "2", "--presets", "pdrop,reroute_vs_pdrop", "--output", str(stem)])
    assert code == 0
    saved = json.loads((tmp_path / "task.json").read_text())
    assert saved["meta"]["num_grounding"] == 4 and saved["meta"]["dataset"].startswith("task fake_rec")

    model, processor = modeling.load_model(model_dir)
    configs = preset_configs(["pdrop", "reroute_vs_pdrop"], 64, model, 144, "solved")
    rows, _ = analyze_items(model, processor, demo_items(samples), configs, batch_size=2)  # the same batches
    assert saved["rows"] == json.loads(json.dumps([r.__dict__ for r in rows]))


def test_analyze_task_needs_a_data_dir(capsys):
    assert main(["analyze", "--task", "refcoco_val"]) == 2
    assert capsys.readouterr().err == "reroute analyze: --task refcoco_val: give --data-dir, the folder with the task's files\n"


@pytest.mark.parametrize("command", ["show", "analyze"])
def test_missing_matplotlib_is_one_line_before_any_work(command, monkeypatch, capsys):
    import sys

    def no_loading(*args, **kwargs):
        raise AssertionError("a model loaded before the extra was checked")

    # what each command calls first to load a model
    monkeypatch.setattr("reroute.commands.show.load_vlm" if command == "show" else "reroute.demo.analyze.analyze_demo",
                        no_loading)
    monkeypatch.setitem(sys.modules, "matplotlib", None)  # as if not installed: find_spec and import both fail
    assert main([command, "--image", "x.png", "--prompt", "x"] if command == "show" else [command]) == 2
    what = "the figure" if command == "show" else "the plots"
    assert capsys.readouterr().err == (
        f"reroute {command}: drawing {what} needs the 'viz' extra (missing: matplotlib): pip install 'reroute[viz]'\n"
    )


@pytest.mark.parametrize("missing", ["datasets", "pyarrow"])
def test_analyze_task_without_the_eval_extra_is_one_line(missing, monkeypatch, capsys, tmp_path):
    import sys

    monkeypatch.setitem(sys.modules, missing, None)
    assert main(["analyze", "--task", "refcoco_val", "--data-dir", str(tmp_path)]) == 2
    assert capsys.readouterr().err == (
        f"reroute analyze: --task needs the 'eval' extra (missing: {missing}): pip install 'reroute[eval]'\n"
    )


# ------------------------------------------------------------------------------ pixel bounds


def test_pixel_bounds_are_refused_on_the_demo_family(model_dir, image_file, tmp_path, capsys):
    path, sample = image_file
    show = ["show", "--model", str(model_dir), "--image", str(path), "--prompt", sample.question,
            "--output", str(tmp_path / "f.png"), "--max-pixels", "451584"]
    assert main(show) == 2
    assert capsys.readouterr().err.split("\n")[-2:] == [  # after transformers' weight-loading bar
        "reroute show: --max-pixels does not apply to the demo family: its protocol declares no pixel bounds for its processor; "
        "drop --max-pixels", ""
    ]
    assert main(["analyze", "--model-dir", str(model_dir), "--min-pixels", "1000", "--output", str(tmp_path / "a")]) == 2
    assert capsys.readouterr().err == (
        "reroute analyze: --min-pixels does not apply to the demo family: its protocol declares no pixel bounds for its processor; "
        "drop --min-pixels\n"
    )
    assert not (tmp_path / "f.png").exists() and not (tmp_path / "a.md").exists()


def test_show_and_analyze_count_qwen_tokens_at_the_papers_bounds_or_the_flags():
    """`family_protocol` (show, analyze) gives Qwen2.5-VL the paper's bounds, or the flags'; `count_visual`
    (what analyze scales the tier to) sees the realised tokens."""
    import argparse

    from PIL import Image
    from tests.eval.test_eval_runner import real_qwen_processor
    from tests.helpers.models import tiny_qwen

    from reroute.commands.common import family_protocol
    from reroute.errors import UserError
    from reroute.viz.collect import PromptItem, count_visual, prompt_text

    model, processor = tiny_qwen("qwen2_5_vl"), real_qwen_processor()
    item = PromptItem((Image.new("RGB", (2000, 1500)),), prompt_text(processor, "w9", 1))
    paper = family_protocol(model, processor, argparse.Namespace(min_pixels=None, max_pixels=None))
    assert count_visual(model, processor, item, paper.processor_kwargs) == 540
    assert count_visual(model, processor, item) == 3834  # the checkpoint's own bounds
    smaller = family_protocol(model, processor, argparse.Namespace(min_pixels=None, max_pixels=256 * 28 * 28))
    assert count_visual(model, processor, item, smaller.processor_kwargs) == 234  # 504 x 364 px: 18 x 13 tokens
    with pytest.raises(UserError, match=r"^--min-pixels 500000 and --max-pixels 451584: give 0 < --min-pixels <= --max-pixels$"):
        family_protocol(model, processor, argparse.Namespace(min_pixels=500000, max_pixels=None))


def test_pixel_flags_on_a_family_without_a_protocol_are_one_line(monkeypatch):
    import argparse

    from tests.eval.test_eval_runner import real_qwen_processor
    from tests.helpers.models import tiny_qwen

    from reroute.backbones import backbone_for
    from reroute.commands.common import family_protocol
    from reroute.errors import UserError

    model, processor = tiny_qwen("qwen2_vl"), real_qwen_processor()
    # as a family that declares no evaluation protocol (whatever Qwen2-VL declares now)
    monkeypatch.setattr(type(backbone_for(model, processor)), "evaluation", None)
    assert family_protocol(model, processor, argparse.Namespace(min_pixels=None, max_pixels=None)) is None
    with pytest.raises(UserError, match=r"^--max-pixels: Qwen2-VL declares no processor bounds; drop --max-pixels$"):
        family_protocol(model, processor, argparse.Namespace(min_pixels=None, max_pixels=1000))
