"""benchmarks/fidelity_compare.py: the side-by-side tables of two demo models (issue 18's fidelity check)."""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

SCRIPT = Path(__file__).resolve().parents[2] / "benchmarks" / "fidelity_compare.py"


def _module():
    spec = importlib.util.spec_from_file_location("fidelity_compare", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _row(method, paper_tier, grounding, vqa):
    ci = lambda v, n: {"value": v, "low": v - 0.1, "high": v + 0.05, "n": n}  # noqa: E731
    return {"method": method, "paper_tier": paper_tier, "tier": None if paper_tier is None else paper_tier / 4,
            "grounding": ci(grounding, 6), "vqa": ci(vqa, 4)}


def _demo(path, fastv, reroute):
    rows = [_row("vanilla", None, 1.0, 0.75), _row("fastv", 128, fastv, 0.5), _row("reroute_vs_fastv", 128, reroute, 0.5)]
    path.write_text(json.dumps({"meta": {}, "rows": rows}))
    return str(path)


def _analysis(path):
    rows = [
        {"run": "reroute_vs_fastv", "decision": d, "reentry": r, "spearman": s}
        for d, (r, s) in enumerate([(None, None), (0.5, 0.25), (0.125, -0.5)])
    ]
    runs = [{"run": "reroute_vs_fastv", "box_active_layer_mean": 0.375}]
    path.write_text(json.dumps({"meta": {"tier": 32.0, "paper_tier": 128.0}, "rows": rows, "runs": runs}))
    return str(path)


def test_tables_put_each_models_removal_rerouting_and_edge_side_by_side(tmp_path, capsys):
    a = _demo(tmp_path / "a.json", fastv=0.25, reroute=0.75)
    b = _demo(tmp_path / "b.json", fastv=0.5, reroute=0.375)
    out = tmp_path / "cmp.md"
    assert _module().main(["--model", "A", a, _analysis(tmp_path / "an.json"), "--model", "B", b, "--output", str(out)]) == 0
    text = capsys.readouterr().out
    assert text == out.read_text()
    assert "| A | 1.000 [0.900, 1.050] | 0.750 [0.650, 0.800] | 10 (6) |" in text
    assert "| 32 (128) | fastv vs reroute_vs_fastv | 0.250 / 0.750 (+0.500) | 0.500 / 0.375 (-0.125) |" in text
    assert "pdrop" not in text  # a pair no model ran has no row
    assert "| A | 32 (128) | reroute_vs_fastv | 0.50 / 0.12 | 0.25 / -0.50 | 0.375 |" in text
