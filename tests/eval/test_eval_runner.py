"""The eval runner on the bundled demo model and tiny random LLaVA / Qwen2.5-VL models.

The key check: the demo model evaluated through `reroute eval` on a RefCOCO-layout file made
from its own held-out scenes scores every sample exactly as `reroute demo`'s own evaluation
does (vanilla and routed). Then: resume after a crash equals an uninterrupted run, batch 1
equals batch 4, the summary's cost equals `reroute.budgets.cost` per sample, prompts and frames per
family.
"""

from __future__ import annotations

import dataclasses
import json

import pytest
from tests.helpers.eval_demo_data import write_demo_refcoco
from tests.helpers.eval_fixtures import write_refcoco
from tests.helpers.models import LLAVA_IMAGE_TOKEN, QWEN_END, QWEN_IMAGE, QWEN_START, VOCAB, tiny_llava, tiny_qwen
from PIL import Image
from transformers.models.qwen2_vl.image_processing_pil_qwen2_vl import smart_resize

import reroute
from reroute.demo import modeling, synthetic
from reroute.demo.run import evaluate_config
from reroute.eval.families import Family, detect_family
from reroute.eval.records import read_records
from reroute.eval.runner import EvalRun, evaluate, evaluate_task
from reroute.eval.setup import pixel_bounds, routing_config
from reroute.eval.tasks import get_task

N_DEMO = 16


@pytest.fixture(scope="module")
def demo():
    return modeling.load_model()


@pytest.fixture(scope="module")
def demo_data(tmp_path_factory):
    data_dir = tmp_path_factory.mktemp("demo_refcoco")
    samples = write_demo_refcoco(data_dir, N_DEMO)
    return data_dir, samples


def routed_128(model):
    """reroute_vs_fastv at the paper's tier 128, scaled to the demo's 144 visual tokens (as `reroute demo`)."""
    return reroute.preset("reroute_vs_fastv", tier=128 * 144 / 576, model=model, num_visual=144)


def run_rec(model, processor, data_dir, out, config, batch_size=4, name="run", on_record=None, limit=None):
    task = get_task("refcoco_val")
    samples = task.load(data_dir, limit=limit)
    run = EvalRun(name, config, "demo", "demo", batch_size=batch_size)
    return evaluate(model, processor, [(task, samples)], run, out, progress=False, on_record=on_record)


# ------------------------------------------------------------------------------ the key check


@pytest.mark.parametrize("routed", [False, True], ids=["vanilla", "reroute_vs_fastv_128"])
def test_demo_model_scores_like_reroute_demo(demo, demo_data, tmp_path, routed):
    model, processor = demo
    data_dir, samples = demo_data
    config = routed_128(model) if routed else None
    summary = run_rec(model, processor, data_dir, tmp_path, config, batch_size=8)
    records = read_records(tmp_path / "run" / "refcoco_val.jsonl")

    predictions, _ = evaluate_config(model, processor, samples, config, batch_size=8)
    assert [r["id"] for r in records] == [f"val-{i}/0" for i in range(N_DEMO)]
    assert [r["answer"] for r in records] == [p["prediction"] for p in predictions]
    # the demo's own IoU (unclipped, normalised boxes) on the boxes the task parsed
    ours = [r["prediction"]["box"] is not None and synthetic.iou(r["prediction"]["box"], r["target"]) >= 0.5
            for r in records]
    assert ours == [p["correct"] for p in predictions]
    accuracy = sum(p["correct"] for p in predictions) / N_DEMO
    assert summary["tasks"]["refcoco_val"]["metrics"]["acc@0.5"]["value"] == pytest.approx(accuracy, abs=1e-12)
    # its boxes are 0..1 already: the careful reading (clipping, heuristic) scores the same
    assert summary["tasks"]["refcoco_val"]["metrics"]["careful/acc@0.5"]["value"] == pytest.approx(accuracy, abs=1e-12)
    assert accuracy > 0.5  # the model grounds: a broken prompt or box conversion would score near 0


# ------------------------------------------------------------------------------ resume, batches, summary


def test_resume_after_crash_equals_uninterrupted_run(demo, demo_data, tmp_path):
    model, processor = demo
    data_dir, _ = demo_data
    config = routed_128(model)
    full = run_rec(model, processor, data_dir, tmp_path / "full", config, limit=10)

    seen = []

    def crash_after_five(record):
        seen.append(record["id"])
        if len(seen) == 5:  # inside the second batch of 4
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        run_rec(model, processor, data_dir, tmp_path / "crash", config, on_record=crash_after_five, limit=10)
    path = tmp_path / "crash" / "run" / "refcoco_val.jsonl"
    assert [r["id"] for r in read_records(path)] == seen
    with open(path, "a") as f:  # a crash in the middle of the next write
        f.write('{"id": "val-5/0", "prompt": "USER: <im')

    resumed_ids = []
    resumed = run_rec(model, processor, data_dir, tmp_path / "crash", config, on_record=lambda r: resumed_ids.append(r["id"]), limit=10)
    assert resumed_ids == [f"val-{i}/0" for i in range(5, 10)]  # nothing done twice
    assert path.read_bytes() == (tmp_path / "full" / "run" / "refcoco_val.jsonl").read_bytes()
    assert resumed == full

    again = []
    run_rec(model, processor, data_dir, tmp_path / "crash", config, on_record=again.append, limit=10)
    assert again == []  # a finished run reruns nothing


def test_batch_size_does_not_change_results(demo, demo_data, tmp_path):
    model, processor = demo
    data_dir, _ = demo_data
    config = reroute.preset("reroute_vs_pdrop", tier=64 * 144 / 576, model=model, num_visual=144)
    one = run_rec(model, processor, data_dir, tmp_path / "b1", config, batch_size=1, limit=8)
    four = run_rec(model, processor, data_dir, tmp_path / "b4", config, batch_size=4, limit=8)
    assert (tmp_path / "b1/run/refcoco_val.jsonl").read_bytes() == (tmp_path / "b4/run/refcoco_val.jsonl").read_bytes()
    assert one == four


def test_summary_contents_and_cost_from_realised_counts(demo, demo_data, tmp_path):
    model, processor = demo
    data_dir, _ = demo_data
    config = routed_128(model)
    summary = run_rec(model, processor, data_dir, tmp_path, config, limit=6)
    records = read_records(tmp_path / "run" / "refcoco_val.jsonl")
    on_disk = json.loads((tmp_path / "run" / "summary.json").read_text())
    assert on_disk == summary
    assert summary["run"] == "run" and summary["model"] == "demo" and summary["family"] == "demo"
    assert summary["config"] == {"action": "reroute", "decision_layers": list(config.decision_layers),
                                 "keep_ratios": list(config.keep_ratios), "execution": "stagewise",
                                 "scorer": "last_token", "vision_stage": None, "vision_params": {},
                                 "scorer_params": {}}
    assert set(summary["versions"]) == {"reroute", "transformers", "torch"}
    task = summary["tasks"]["refcoco_val"]
    assert task["n"] == 6 and task["headline"] == "acc@0.5"
    for name, metric in task["metrics"].items():
        if metric["value"] is not None:
            assert metric["low"] <= metric["value"] <= metric["high"], name

    # every sample's per-layer counts are the schedule's integer counts (docs/semantics.md §1)
    expected_counts = config.visual_counts_per_layer(144, 12)
    assert all(r["visual_per_layer"] == expected_counts for r in records)
    assert task["avg_T"] == pytest.approx(sum(expected_counts) / 12)
    # cost relative to vanilla = reroute.budgets.cost summed over the samples' own text lengths
    reports = [reroute.cost(config, model, num_visual=r["num_visual"], num_text=r["num_text"]) for r in records]
    flops = sum(r.flops_paper for r in reports) / sum(r.vanilla.flops_paper for r in reports)
    kv = sum(r.kv_cache_bytes for r in reports) / sum(r.vanilla.kv_cache_bytes for r in reports)
    assert task["flops_paper_rel"] == pytest.approx(flops, rel=1e-12)
    assert task["kv_rel"] == pytest.approx(kv, rel=1e-12)
    md = (tmp_path / "run" / "summary.md").read_text()
    assert "| refcoco_val | 6 | acc@0.5 |" in md


def test_vanilla_counts_every_visual_token(demo, demo_data, tmp_path):
    model, processor = demo
    data_dir, _ = demo_data
    summary = run_rec(model, processor, data_dir, tmp_path, None, limit=4)
    task = summary["tasks"]["refcoco_val"]
    assert summary["config"] is None
    assert task["avg_T"] == 144 and task["flops_paper_rel"] == 1.0 and task["kv_rel"] == 1.0


def test_resuming_with_another_config_is_refused(demo, demo_data, tmp_path):
    model, processor = demo
    data_dir, _ = demo_data
    run_rec(model, processor, data_dir, tmp_path, None, limit=2)
    with pytest.raises(ValueError, match=rf"^{tmp_path / 'run'} holds a run with another config; use another --output "
                       r"or --run-name, or delete the folder$"):
        run_rec(model, processor, data_dir, tmp_path, routed_128(model), limit=2)


def test_truncated_last_line_is_dropped_and_damaged_middle_line_refused(tmp_path):
    path = tmp_path / "t.jsonl"
    path.write_text('{"id": "a"}\n{"id": "b"}\n{"id": "c", "pr')
    assert [r["id"] for r in read_records(path)] == ["a", "b"]
    assert path.read_text() == '{"id": "a"}\n{"id": "b"}\n'
    path.write_text('{"id": "a"}\n{"id": \n{"id": "c"}\n')
    with pytest.raises(ValueError, match=rf"^{path}: line 2 is not a JSON record; delete or repair the file to resume$"):
        read_records(path)


# ------------------------------------------------------------------------------ families


def _tokenizer(specials: dict[str, int]):
    """A WordLevel tokenizer over the tiny models' 64 ids: ``specials`` at their ids, words "w<i>" elsewhere."""
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    vocab = dict(specials)
    free = [i for i in range(VOCAB) if i not in specials.values()]
    vocab.update({f"w{i}": i for i in free})
    tok = Tokenizer(models.WordLevel(vocab=vocab, unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    tok.add_special_tokens(list(specials))
    return PreTrainedTokenizerFast(tokenizer_object=tok, pad_token="<pad>", eos_token="</s>", unk_token="<unk>")


def tiny_llava_processor():
    from transformers import CLIPImageProcessorPil, LlavaProcessor

    tokenizer = _tokenizer({"<pad>": 0, "<s>": 1, "</s>": 2, "<image>": LLAVA_IMAGE_TOKEN, "<unk>": 4})
    image_processor = CLIPImageProcessorPil(size={"height": 32, "width": 32}, crop_size={"height": 32, "width": 32})
    return LlavaProcessor(image_processor=image_processor, tokenizer=tokenizer, patch_size=8,
                          vision_feature_select_strategy="default", num_additional_image_tokens=1, image_token="<image>")


# Qwen2.5-VL's chat template, reduced to one user turn of images then text (no system prompt)
QWEN_TEMPLATE = (
    "{% for message in messages %}<|im_start|>{{ message['role'] }}\n{% for c in message['content'] %}"
    "{% if c['type'] == 'image' %}<|vision_start|><|image_pad|><|vision_end|>{% else %}{{ c['text'] }}{% endif %}"
    "{% endfor %}<|im_end|>\n{% endfor %}{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)
QWEN_MAX_PIXELS = 32 * 32
#: the tiny processor's own bounds (patches of 4 px): the family's default, the paper's, is for 14 px patches
TINY_PIXELS = {"min_pixels": 64, "max_pixels": QWEN_MAX_PIXELS}


def tiny_qwen_processor():
    from transformers import Qwen2_5_VLProcessor, Qwen2VLImageProcessorPil

    class ImageOnlyProcessor(Qwen2_5_VLProcessor):
        # The video processor needs torchvision, which the test environment lacks; images only.
        def check_argument_for_proper_class(self, name, arg):
            if name == "video_processor" and arg is None:
                return None
            return super().check_argument_for_proper_class(name, arg)

    tokenizer = _tokenizer({"<pad>": 0, "<s>": 1, "</s>": 2, "<unk>": 4, "<|im_start|>": 5, "<|im_end|>": 6,
                            "<|image_pad|>": QWEN_IMAGE, "<|video_pad|>": 61, "<|vision_start|>": QWEN_START,
                            "<|vision_end|>": QWEN_END})
    image_processor = Qwen2VLImageProcessorPil(patch_size=4, temporal_patch_size=2, merge_size=2,
                                               size={"shortest_edge": 64, "longest_edge": QWEN_MAX_PIXELS})
    return ImageOnlyProcessor(image_processor=image_processor, tokenizer=tokenizer, video_processor=None,
                              chat_template=QWEN_TEMPLATE)


class ShortAnswers:
    """A task with 2-token answers: random tiny models never stop on their own (128 steps would be slow)."""

    def __init__(self, task):
        self.task = task
        self.name, self.family, self.dataset_id = task.name, task.family, task.dataset_id

    def __getattr__(self, attr):
        return getattr(self.task, attr)

    def max_new_tokens(self) -> int:
        return 2


def test_detect_family(demo):
    assert detect_family(*demo) == "demo"
    assert detect_family(tiny_llava(), tiny_llava_processor()) == "llava"
    assert detect_family(tiny_qwen("qwen2_5_vl"), tiny_qwen_processor()) == "qwen2_5_vl"
    assert detect_family(tiny_qwen("qwen2_vl"), tiny_qwen_processor()) == "qwen2_vl"


def test_llava_prompt_and_left_padded_batch():
    processor = tiny_llava_processor()
    family = Family("llava")
    assert family.prompt(processor, "w9 w10", 1) == "USER: <image>\nw9 w10 ASSISTANT:"
    assert family.prompt(processor, "w9", 2) == "USER: <image>\n<image>\nw9 ASSISTANT:"
    image = Image.new("RGB", (40, 30), (200, 10, 10))
    prompts = [family.prompt(processor, "w9", 1), family.prompt(processor, "w9 w10 w11", 1)]
    encoded = family.encode(processor, prompts, [[image], [image]])
    mask = encoded.inputs["attention_mask"]
    assert mask[0].tolist()[:2] == [0, 0] and mask[:, -1].tolist() == [1, 1]  # left padding
    assert (encoded.inputs["input_ids"] == LLAVA_IMAGE_TOKEN).sum(1).tolist() == [16, 16]
    assert encoded.frames == [None, None]
    assert processor.tokenizer.padding_side == "right"  # restored


def test_tiny_llava_and_qwen_run_routed_through_the_runner(tmp_path):
    """Both prompt paths end to end on a RefCOCO fixture; Qwen's resized frame reaches parse."""
    from transformers.models.qwen2_vl.image_processing_pil_qwen2_vl import smart_resize

    write_refcoco(tmp_path / "data", n_objects=3)
    task = ShortAnswers(get_task("refcoco_val"))
    samples = task.load(tmp_path / "data")
    for name, model, processor in (("llava", tiny_llava(), tiny_llava_processor()),
                                   ("qwen2_5_vl", tiny_qwen("qwen2_5_vl"), tiny_qwen_processor())):
        config = reroute.RoutingConfig(action="reroute", decision_layers=(2, 4), keep_ratios=(0.5, 0.25))
        pixels = TINY_PIXELS if name == "qwen2_5_vl" else {}
        run = EvalRun(name, config, name, name, rec_frame="resized", batch_size=4, **pixels)
        records = evaluate_task(model, processor, task, samples, run, tmp_path / name, progress=False)
        assert [r["id"] for r in records] == [s.id for s in samples]
        n_vis = records[0]["num_visual"]
        assert all(r["visual_per_layer"] == config.visual_counts_per_layer(r["num_visual"], 6) for r in records)
        if name == "llava":
            assert n_vis == 16 and all(r["frame"] is None for r in records)
            assert records[0]["prompt"].startswith("USER: <image>\nBounding box coordinates")
        else:
            height, width = smart_resize(48, 64, factor=8, min_pixels=64, max_pixels=QWEN_MAX_PIXELS)
            assert (width, height) != (64, 48)
            assert [r["frame"] for r in records] == [[width, height]] * len(records)
            assert n_vis == width * height // 64
            assert records[0]["prompt"] == (
                "<|im_start|>user\n<|vision_start|><|image_pad|><|vision_end|>Locate " + samples[0].question
                + " in this image and output the bbox coordinates in JSON format.<|im_end|>\n<|im_start|>assistant\n"
            )


def test_qwen_frame_is_given_to_parse_only_when_asked(tmp_path):
    """rec_frame="resized" hands the resized frame to Task.parse; "original" hands None."""
    write_refcoco(tmp_path / "data", n_objects=1)
    task = get_task("refcoco_val")
    samples = task.load(tmp_path / "data", limit=1)
    seen = []

    class Spy(ShortAnswers):
        def parse(self, sample, answer, model_family, frame=None):
            seen.append(frame)
            return self.task.parse(sample, "[8, 4, 24, 20]", model_family, frame)

    model, processor = tiny_qwen("qwen2_5_vl"), tiny_qwen_processor()
    out = {}
    for frame in ("original", "resized"):
        run = EvalRun(frame, None, "q", "qwen2_5_vl", rec_frame=frame, batch_size=1, **TINY_PIXELS)
        out[frame] = evaluate_task(model, processor, Spy(task), samples, run, tmp_path / frame, progress=False)[0]
    resized = tuple(out["resized"]["frame"])
    assert seen == [None, resized]
    # the headline reads pixels in the original image (the paper's harness) whatever the frame
    assert out["original"]["prediction"]["box"] == pytest.approx([8 / 64, 4 / 48, 24 / 64, 20 / 48])
    assert out["resized"]["prediction"]["box"] == pytest.approx([8 / 64, 4 / 48, 24 / 64, 20 / 48])
    assert out["original"]["prediction"]["careful_box"] == pytest.approx([8 / 64, 4 / 48, 24 / 64, 20 / 48])
    w, h = resized
    assert out["resized"]["prediction"]["careful_box"] == pytest.approx([8 / w, 4 / h, 24 / w, 20 / h])


def test_crashed_rank_partial_file_is_resumed_by_one_process(demo, demo_data, tmp_path):
    """Rank 1 of 2 dies after 2 samples (its partial file stays); one process finishes the run identically."""
    from reroute.eval.runner import partial_path
    from reroute.eval.shard import Shard

    model, processor = demo
    data_dir, _ = demo_data
    config = routed_128(model)
    task = get_task("refcoco_val")
    samples = task.load(data_dir, limit=6)
    full = run_rec(model, processor, data_dir, tmp_path / "full", config, limit=6)

    run = EvalRun("run", config, "demo", "demo", batch_size=4)
    done = []

    def die_after_two(record):
        done.append(record["id"])
        if len(done) == 2:
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        evaluate_task(model, processor, task, samples, run, tmp_path / "crash" / "run", shard=Shard(rank=1, world=2),
                      progress=False, on_record=die_after_two)
    partial = partial_path(tmp_path / "crash" / "run", "refcoco_val", 1)
    assert done == ["val-1/0", "val-3/0"] and [r["id"] for r in read_records(partial)] == done

    resumed = []
    summary = run_rec(model, processor, data_dir, tmp_path / "crash", config, limit=6, on_record=lambda r: resumed.append(r["id"]))
    assert resumed == ["val-0/0", "val-2/0", "val-4/0", "val-5/0"]
    assert not partial.exists()
    assert (tmp_path / "crash/run/refcoco_val.jsonl").read_bytes() == (tmp_path / "full/run/refcoco_val.jsonl").read_bytes()
    assert summary == full


# ------------------------------------------------------------------------------ resolution


def real_qwen_processor():
    """The Qwen2.5-VL processor classes at the checkpoint's own image settings (14 px patches, merged
    2 x 2, 3,136 to 12,845,056 pixels), with the tiny tokenizer: built here, nothing downloaded."""
    from transformers import Qwen2VLImageProcessorPil

    processor = tiny_qwen_processor()
    # Qwen2.5-VL-7B-Instruct's preprocessor_config.json: min_pixels 3136, max_pixels 12845056
    processor.image_processor = Qwen2VLImageProcessorPil(size={"shortest_edge": 3136, "longest_edge": 12845056})
    return processor


#: (width, height) -> visual tokens of one image: at the paper's bounds (200,704 to 451,584 pixels),
#: at the checkpoint's (by hand: smart_resize to multiples of 28, then (w / 28) x (h / 28))
PAPER_TOKENS = {(300, 200): 280, (500, 375): 266, (640, 480): 391, (2000, 1500): 540}
CHECKPOINT_TOKENS = {(300, 200): 77, (500, 375): 234, (640, 480): 391, (2000, 1500): 3834}


def test_qwen_default_resolution_is_the_papers():
    """Qwen2.5-VL's protocol at default flags gives each image the paper's visual tokens (at most 576)."""
    from reroute.backbones.qwen2_5_vl import QWEN2_5_VL

    processor = real_qwen_processor()
    run = EvalRun("r", None, "q", "qwen2_5_vl")
    assert run.identity()["min_pixels"] == 200704 and run.identity()["max_pixels"] == 451584
    checkpoint = dataclasses.replace(QWEN2_5_VL, processor_kwargs={})
    for (width, height), tokens in PAPER_TOKENS.items():
        image = Image.new("RGB", (width, height), (90, 120, 30))
        for protocol, expected in ((run.protocol(), tokens), (checkpoint, CHECKPOINT_TOKENS[width, height])):
            prompt = protocol.prompt(processor, "w9", 1)
            encoded = protocol.encode(processor, [prompt], [[image]])
            assert int((encoded.inputs["input_ids"] == QWEN_IMAGE).sum()) == expected, (width, height)
        assert tokens <= 576


#: Qwen3-VL (32-px tokens): at its default bounds (256 to 576 tokens, docs/semantics.md §9), and at the
#: checkpoint's 65,536 to 16,777,216 pixels (by hand: smart_resize to multiples of 32, then (w / 32) x (h / 32))
QWEN3_TOKENS = {(300, 200): 280, (500, 375): 266, (640, 480): 300, (2000, 1500): 540}
QWEN3_CHECKPOINT_TOKENS = {(300, 200): 70, (500, 375): 192, (640, 480): 300, (2000, 1500): 2914}


def test_qwen3_default_resolution_gives_the_papers_token_range():
    """Qwen3-VL's protocol at default flags: the paper's 256..576 tokens per image at 16-px patches merged 2 x 2."""
    from transformers import Qwen2VLImageProcessorPil
    from tests.helpers.eval_processors import IMAGE, tiny_qwen_vl_processor

    from reroute.backbones.qwen3_vl import QWEN3_VL

    processor = tiny_qwen_vl_processor("qwen3_vl")
    # Qwen3-VL-8B-Instruct's preprocessor_config.json: 16-px patches, 65,536 to 16,777,216 pixels
    processor.image_processor = Qwen2VLImageProcessorPil(
        patch_size=16, temporal_patch_size=2, merge_size=2, size={"shortest_edge": 65536, "longest_edge": 16777216}
    )
    run = EvalRun("r", None, "q", "qwen3_vl")
    assert (run.identity()["min_pixels"], run.identity()["max_pixels"]) == (262144, 589824)
    checkpoint = dataclasses.replace(QWEN3_VL, processor_kwargs={})
    for (width, height), tokens in QWEN3_TOKENS.items():
        image = Image.new("RGB", (width, height), (90, 120, 30))
        for protocol, expected in ((run.protocol(), tokens), (checkpoint, QWEN3_CHECKPOINT_TOKENS[width, height])):
            encoded = protocol.encode(processor, [protocol.prompt(processor, "w9", 1)], [[image]])
            assert int((encoded.inputs["input_ids"] == IMAGE).sum()) == expected, (width, height)
        assert 256 <= tokens <= 576


def test_pixel_bounds_are_the_runs_and_refused_where_the_family_has_none():
    run = EvalRun("r", None, "q", "qwen2_5_vl", max_pixels=200704 * 2)
    assert pixel_bounds(run.protocol()) == (200704, 401408)
    assert (run.identity()["min_pixels"], run.identity()["max_pixels"]) == (200704, 401408)
    assert "min_pixels" not in EvalRun("r", None, "l", "llava").identity()  # LLaVA's run.json is as before
    with pytest.raises(ValueError, match=r"^min_pixels does not apply to the llava family: its protocol declares "
                       r"no pixel bounds for its processor; drop min_pixels$"):
        EvalRun("r", None, "l", "llava", min_pixels=100)
    with pytest.raises(ValueError, match=r"^min_pixels 500000 and max_pixels 451584: give 0 < min_pixels <= max_pixels$"):
        EvalRun("r", None, "q", "qwen2_5_vl", min_pixels=500000)


def test_qwen_tier_is_a_fraction_of_each_samples_realised_tokens(tmp_path):
    """Two pixel bounds, two visual-token counts per image: each record's num_visual is what the
    processor realised, and a routed run at paper tier 128 keeps about 128 / 576 of it."""
    write_refcoco(tmp_path / "data", n_objects=2)
    task = ShortAnswers(get_task("refcoco_val"))
    samples = task.load(tmp_path / "data")
    model, processor = tiny_qwen("qwen2_5_vl"), tiny_qwen_processor()
    config = routing_config("reroute_vs_fastv", 128, "solved", model)
    counts = {}
    for max_pixels in (32 * 32, 64 * 48):
        run = EvalRun(f"p{max_pixels}", config, "q", "qwen2_5_vl", min_pixels=64, max_pixels=max_pixels)
        records = evaluate_task(model, processor, task, samples, run, tmp_path / run.name, progress=False)
        height, width = smart_resize(48, 64, factor=8, min_pixels=64, max_pixels=max_pixels)
        counts[max_pixels] = {r["num_visual"] for r in records}
        assert counts[max_pixels] == {width * height // 64}
        for r in records:
            assert r["visual_per_layer"] == config.visual_counts_per_layer(r["num_visual"], 6)
            assert abs(r["avg_T"] - 128 / 576 * r["num_visual"]) <= 1.0
    assert counts[32 * 32] != counts[64 * 48]
