"""The lmms-eval plugin end to end, in the lmms environment (`make test-lmms` builds it and runs this).

lmms-eval's own command line runs the bundled demo model on the tiny demo task (8 held-out
samples, written here with `reroute.demo.lmms_task`): routed through ``reroute_llava_hf``
(chat and simple classes, one process and ``accelerate launch`` with two), and unrouted through
lmms-eval's stock ``llava_hf``. Each run must give, sample for sample, the answers of the demo's
own evaluation (`reroute.demo.run.evaluate_config`) under the same routing, and the routed runs
must report the avg_T the routing implies.
"""

from __future__ import annotations

import gc
import importlib.util
import json
import os
import socket
import statistics
import subprocess
import sys
import weakref
from dataclasses import dataclass
from pathlib import Path

import pytest

import reroute
from reroute.demo import modeling, run
from reroute.demo import lmms_task as demo_task
from reroute.eval.lmms import RoutingArgs
from reroute.runtime.patching import Patch

MODEL_DIR = str(modeling.MODEL_DIR)
NUM_SAMPLES = 8
ROUTING = "preset=reroute_vs_fastv,tier=128"
BIN = Path(sys.executable).parent


@dataclass(frozen=True)
class Run:
    results: dict
    responses: list[str]  # by doc_id
    log: str

    @property
    def accuracy(self) -> float:
        return self.results["results"][demo_task.TASK_NAME]["accuracy,none"]

    @property
    def throughput(self) -> dict:
        return self.results.get("throughput", {})


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="session")
def workdir(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("lmms")


@pytest.fixture(scope="session")
def task_dir(workdir) -> Path:
    return demo_task.write_task(workdir / "task", NUM_SAMPLES).parent


@pytest.fixture(scope="session")
def lmms_eval(workdir, task_dir):
    """Runs lmms-eval's command line once per distinct command; returns its `Run`."""
    env = dict(os.environ, HF_HUB_OFFLINE="1", HF_DATASETS_OFFLINE="1", HF_HOME=str(workdir / "hf"), OMP_NUM_THREADS="1")
    env.pop("WORLD_SIZE", None)
    done: dict[tuple, Run] = {}

    def launch(model: str, model_args: str, *flags: str, processes: int = 1) -> Run:
        key = (model, model_args, flags, processes)
        if key in done:
            return done[key]
        out = workdir / f"out{len(done)}"
        args = [
            "--model", model, "--model_args", model_args,
            "--tasks", demo_task.TASK_NAME, "--include_path", str(task_dir), "--limit", str(NUM_SAMPLES),
            "--device", "cpu", "--batch_size", "1", "--output_path", str(out), "--log_samples", *flags,
        ]  # fmt: skip (flags come last: they override the defaults before them)
        if processes == 1:
            command = [str(BIN / "lmms-eval"), *args]
        else:
            command = [
                str(BIN / "accelerate"), "launch", "--multi_gpu", "--num_processes", str(processes), "--num_machines", "1",
                "--mixed_precision", "no", "--dynamo_backend", "no", "--main_process_port", str(_free_port()),
                "-m", "lmms_eval", *args,
            ]  # fmt: skip
        proc = subprocess.run(command, env=env, capture_output=True, text=True, timeout=900)
        log = proc.stdout + proc.stderr
        assert proc.returncode == 0, log[-4000:]
        (results_file,) = out.glob("*/*_results.json")
        (samples_file,) = out.glob("*/*_samples_*.jsonl")
        samples = sorted((json.loads(line) for line in samples_file.read_text().splitlines()), key=lambda s: s["doc_id"])
        assert [s["doc_id"] for s in samples] == list(range(NUM_SAMPLES))
        done[key] = Run(json.loads(results_file.read_text()), [s["filtered_resps"] for s in samples], log)
        return done[key]

    return launch


@pytest.fixture(scope="session")
def demo():
    model, processor = modeling.load_model()
    return model, processor


@pytest.fixture(scope="session")
def routed_config(demo) -> reroute.RoutingConfig:
    return RoutingArgs.from_values({"preset": "reroute_vs_fastv", "tier": 128}).resolve(demo[0])


@pytest.fixture(scope="session")
def demo_eval(demo):
    """The demo's own evaluation of the task's samples (batch 1, as lmms-eval's llava_hf runs): config -> (answers, avg_Ts)."""
    model, processor = demo
    samples = demo_task.samples(NUM_SAMPLES)

    def evaluate(config):
        predictions, avg_ts = run.evaluate_config(model, processor, samples, config, batch_size=1)
        return [p["prediction"] for p in predictions], [p["correct"] for p in predictions], avg_ts

    return evaluate


def _expected_avg_t(config, demo) -> float:
    layers = demo[0].config.text_config.num_hidden_layers
    return statistics.fmean(config.visual_counts_per_layer(modeling.NUM_IMAGE_TOKENS, layers))


# ----------------------------------------------------------------------------- end to end


def test_routed_run_equals_the_demo_evaluation(lmms_eval, demo_eval, routed_config, demo):
    result = lmms_eval("reroute_llava_hf", f"pretrained={MODEL_DIR},{ROUTING}")
    answers, correct, avg_ts = demo_eval(routed_config)
    assert [r.strip() for r in result.responses] == answers
    assert result.accuracy == pytest.approx(sum(correct) / NUM_SAMPLES)
    assert result.results["config"]["model_backend"] == "reroute.eval.lmms.llava_hf.RerouteLlavaHf (chat)"
    assert f"reroute: preset=reroute_vs_fastv, tier=128 of 576, ratios=solved -> {routed_config}" in result.log
    # what the prefills decided, in lmms-eval's results file: avg_T of the routing, for every sample
    assert result.throughput["avg_reroute_avg_T"] == pytest.approx(statistics.fmean(avg_ts))
    assert result.throughput["avg_reroute_avg_T"] == pytest.approx(_expected_avg_t(routed_config, demo))
    assert result.throughput["avg_reroute_num_visual"] == modeling.NUM_IMAGE_TOKENS
    assert result.throughput["avg_reroute_samples"] == result.throughput["avg_reroute_routed_samples"] == NUM_SAMPLES


def test_stock_llava_hf_unrouted_equals_the_demo_vanilla_evaluation(lmms_eval, demo_eval):
    # lmms-eval's own class (device_map given: its default "" is refused by transformers 5)
    result = lmms_eval("llava_hf", f"pretrained={MODEL_DIR},device_map=cpu")
    answers, correct, _ = demo_eval(None)
    assert [r.strip() for r in result.responses] == answers
    assert result.accuracy == pytest.approx(sum(correct) / NUM_SAMPLES)
    assert not any(key.startswith("avg_reroute") for key in result.throughput)


def test_routed_and_vanilla_runs_differ_as_the_routing_says(lmms_eval, demo):
    routed = lmms_eval("reroute_llava_hf", f"pretrained={MODEL_DIR},{ROUTING}")
    vanilla = lmms_eval("llava_hf", f"pretrained={MODEL_DIR},device_map=cpu")
    # vanilla: all 144 visual tokens in all 12 layers; routed: 144 before layer 1, then floor(144 r) = 21
    assert routed.throughput["avg_reroute_avg_T"] == pytest.approx((144 + 11 * 21) / 12)
    assert "avg_reroute_avg_T" not in vanilla.throughput
    assert vanilla.results["config"]["model_backend"] == "lmms_eval.models.chat.llava_hf.LlavaHf (chat)"


def test_simple_class_routes_the_same(lmms_eval):
    chat = lmms_eval("reroute_llava_hf", f"pretrained={MODEL_DIR},{ROUTING}")
    simple = lmms_eval("reroute_llava_hf", f"pretrained={MODEL_DIR},{ROUTING}", "--force_simple")
    assert simple.results["config"]["model_backend"] == "reroute.eval.lmms.llava_hf.RerouteLlavaHfSimple (simple)"
    assert simple.responses == chat.responses
    assert simple.throughput["avg_reroute_avg_T"] == chat.throughput["avg_reroute_avg_T"]


def test_accelerate_launch_with_two_processes(lmms_eval):
    single = lmms_eval("reroute_llava_hf", f"pretrained={MODEL_DIR},{ROUTING}")
    # On CPU each process loads onto device_map=cpu; on GPUs leave device_map out (process i takes cuda:i).
    double = lmms_eval("reroute_llava_hf", f"pretrained={MODEL_DIR},device_map=cpu,{ROUTING}", processes=2)
    assert "Running on rank 1" in double.log
    assert double.responses == single.responses
    assert double.accuracy == single.accuracy
    # rank 0 reports its own half of the prefills
    assert double.throughput["avg_reroute_samples"] == NUM_SAMPLES / 2
    assert double.throughput["avg_reroute_avg_T"] == single.throughput["avg_reroute_avg_T"]


# ----------------------------------------------------------------------------- the plugin in-process


def test_entry_point_registers_both_families():
    from lmms_eval.models import get_model

    from reroute.eval.lmms.llava_hf import RerouteLlavaHf, RerouteLlavaHfSimple
    from reroute.eval.lmms.qwen2_5_vl import RerouteQwen2_5_VL, RerouteQwen2_5_VLSimple

    assert get_model("reroute_llava_hf") is RerouteLlavaHf
    assert get_model("reroute_llava_hf", force_simple=True) is RerouteLlavaHfSimple
    assert get_model("reroute_qwen2_5_vl") is RerouteQwen2_5_VL
    assert get_model("reroute_qwen2_5_vl", force_simple=True) is RerouteQwen2_5_VLSimple


def test_lmms_eval_parses_routing_lists_in_model_args():
    from lmms_eval.utils import simple_parse_args_string

    model_args = simple_parse_args_string(
        "pretrained=x,action=remove,decision_layers=[2,7,15,23],keep_ratios=[0.5,0.25,0.125,0.0625],execution=stagewise"
    )
    args = RoutingArgs.pop_from(model_args)
    assert model_args == {"pretrained": "x"}
    assert args.resolve(None) == reroute.RoutingConfig("remove", (2, 7, 15, 23), (0.5, 0.25, 0.125, 0.0625))
    model_args = simple_parse_args_string("pretrained=x,preset=pdrop,tier=64,ratios=paper,num_visual=576")
    assert RoutingArgs.pop_from(model_args).resolve(32) == reroute.preset("pdrop", tier=64, ratios="paper")


def test_bad_routing_args_fail_before_the_model_loads():
    from reroute.eval.lmms.llava_hf import RerouteLlavaHf

    with pytest.raises(ValueError, match=r"^preset=fastv needs tier=: the budget avg_T, e\.g\. tier=128 \(of 576 visual tokens\)$"):
        RerouteLlavaHf(pretrained="/no/such/model", device="cpu", preset="fastv")


def test_without_routing_keys_the_plugin_is_the_stock_class(demo):
    from reroute.eval.lmms.llava_hf import RerouteLlavaHf

    lm = RerouteLlavaHf(pretrained=MODEL_DIR, device="cpu")
    assert lm.routing is None and Patch.installed(lm.model, "generate") is None
    lm.clean()


def test_clean_restores_the_model_and_frees_it():
    from reroute.eval.lmms.llava_hf import RerouteLlavaHf

    lm = RerouteLlavaHf(pretrained=MODEL_DIR, device="cpu", preset="reroute_vs_fastv", tier=128)
    model = lm.model
    assert lm.routing.active and Patch.installed(model, "generate") is not None
    lm.clean()
    assert not lm.routing.active and not hasattr(lm, "_model")
    # stock again for whoever holds it: none of apply's instance attributes is left
    assert "generate" not in model.__dict__ and "forward" not in model.model.__dict__ and not model._forward_hooks
    lm.clean()  # twice is harmless
    ref = weakref.ref(model)
    del model
    gc.collect()
    assert ref() is None  # nothing of the plugin keeps the weights alive


def test_importing_reroute_does_not_import_lmms_eval():
    code = "import sys, reroute, reroute.eval.lmms, reroute.demo.lmms_task; print('lmms_eval' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "False"


# ----------------------------------------------------------------------------- Qwen2.5-VL (full environment only)

needs_qwen_env = pytest.mark.skipif(
    importlib.util.find_spec("torchvision") is None or importlib.util.find_spec("qwen_vl_utils") is None,
    reason="reroute_qwen2_5_vl through lmms-eval needs torchvision (Qwen's processor) and qwen-vl-utils "
    "(lmms-eval's Qwen classes): see docs/lmms-eval.md",
)
# lmms-eval's qwen2_5_vl sends inputs to "cuda" when device_map is "auto" (its default); small images for a tiny model
QWEN_ARGS = "device_map=cpu,min_pixels=1024,max_pixels=16384"
QWEN_FLAGS = ("--batch_size", "2", "--gen_kwargs", "max_new_tokens=4")


@pytest.fixture(scope="session")
def tiny_qwen_dir(workdir) -> Path:
    from tiny_qwen import save_tiny_qwen

    return save_tiny_qwen(workdir / "qwen")


@needs_qwen_env
def test_qwen_routed_run_reports_the_routing(lmms_eval, tiny_qwen_dir):
    result = lmms_eval("reroute_qwen2_5_vl", f"pretrained={tiny_qwen_dir},{QWEN_ARGS},{ROUTING}", *QWEN_FLAGS)
    assert result.results["config"]["model_backend"] == "reroute.eval.lmms.qwen2_5_vl.RerouteQwen2_5_VL (chat)"
    config = RoutingArgs.from_values({"preset": "reroute_vs_fastv", "tier": 128}).resolve(12)
    num_visual = result.throughput["avg_reroute_num_visual"]  # every image is resized alike
    assert num_visual == int(num_visual) > 0
    assert result.throughput["avg_reroute_avg_T"] == pytest.approx(statistics.fmean(config.visual_counts_per_layer(int(num_visual), 12)))
    assert result.throughput["avg_reroute_samples"] == result.throughput["avg_reroute_routed_samples"] == NUM_SAMPLES


@needs_qwen_env
def test_qwen_keep_everything_equals_lmms_evals_own_class(lmms_eval, tiny_qwen_dir):
    # docs/semantics.md: keep ratio 1.0 is vanilla; here through lmms-eval's batched (left-padded) Qwen path
    keep_all = lmms_eval("reroute_qwen2_5_vl", f"pretrained={tiny_qwen_dir},{QWEN_ARGS},decision_layers=[1],keep_ratios=[1]", *QWEN_FLAGS)
    stock = lmms_eval("qwen2_5_vl", f"pretrained={tiny_qwen_dir},{QWEN_ARGS}", *QWEN_FLAGS)
    assert keep_all.responses == stock.responses
    assert keep_all.throughput["avg_reroute_routed_samples"] == NUM_SAMPLES


@needs_qwen_env
def test_qwen_simple_class_routes(lmms_eval, tiny_qwen_dir):
    result = lmms_eval("reroute_qwen2_5_vl", f"pretrained={tiny_qwen_dir},{QWEN_ARGS},{ROUTING}", "--force_simple", *QWEN_FLAGS)
    assert result.results["config"]["model_backend"] == "reroute.eval.lmms.qwen2_5_vl.RerouteQwen2_5_VLSimple (simple)"
    assert result.throughput["avg_reroute_samples"] == NUM_SAMPLES


def test_clip_gives_cdpruner_its_published_relevance(tmp_path, monkeypatch):
    """``clip=`` with a cdpruner preset loads `ClipRelevance` from that folder and routes with it: the stage
    embeds the instruction with CLIP's text tower on the plugin's own model."""
    from PIL import Image
    from transformers import AutoConfig

    from tests.helpers.clip_parts import write_clip
    from reroute.eval.lmms import models as plugin_models
    from reroute.eval.lmms.llava_hf import RerouteLlavaHf
    from reroute.methods.cdpruner import ClipRelevance

    write_clip(tmp_path, AutoConfig.from_pretrained(MODEL_DIR).vision_config, context=8)
    loaded, embedded = [], []
    original = plugin_models.instruction_encoder
    monkeypatch.setattr(plugin_models, "instruction_encoder", lambda *a: loaded.append(original(*a)) or loaded[-1])
    monkeypatch.setattr(ClipRelevance, "text_embeds", lambda self, ids, _f=ClipRelevance.text_embeds: embedded.append(ids) or _f(self, ids))
    lm = RerouteLlavaHf(pretrained=MODEL_DIR, device="cpu", preset="cdpruner", tier=64, clip=str(tmp_path))
    assert isinstance(loaded[0], ClipRelevance) and lm.routing.config.vision_stage == "cdpruner"
    processor = modeling.build_processor()
    inputs = processor(images=[Image.new("RGB", (64, 64), "red")], text=[modeling.format_prompt("what is red?")], return_tensors="pt")
    lm.model.generate(**inputs, max_new_tokens=2, do_sample=False)
    assert len(embedded) == 1 and len(embedded[0]) > 0  # the instruction after the image, once per image
    lm.clean()
