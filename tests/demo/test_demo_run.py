"""`reroute demo` end to end on a few samples: a well-formed table, JSON, markdown and figure; on a base
install (no matplotlib) the same results and table, then one line on how to get the figure."""

from __future__ import annotations

import json
import sys

import pytest

from reroute.budgets import PAPER_TIERS, avg_t, preset_names
from reroute.budgets.presets import counterparts
from reroute.cli import main
from reroute.demo.run import format_table, reroute_vs_remove, run_demo, wilson

METHODS = preset_names()


def test_demo_smoke_run_writes_a_well_formed_table(model_dir, tmp_path):
    rows = run_demo(model_dir, num_samples=4, batch_size=4, output=tmp_path, progress=False)
    assert [r.method for r in rows[:5]] == ["vanilla", "fastv", "pdrop", "reroute_vs_fastv", "reroute_vs_pdrop"]
    assert len(rows) == 1 + len(METHODS) * len(PAPER_TIERS)
    vanilla = rows[0]
    assert vanilla.flops_ratio == 1.0 and vanilla.kv_ratio == 1.0 and vanilla.avg_t == 144
    for row in rows[1:]:
        # the realised budget is the integer-count avg_T the budget module predicts, within a token of the tier
        assert row.avg_t == pytest.approx(avg_t(row.config, 12, 144, integer=True))
        assert abs(row.avg_t - row.tier) < 1
        assert 0 < row.flops_ratio < 1 and 0 < row.kv_ratio < 1
        assert row.grounding.n + row.vqa.n == 4
    saved = json.loads((tmp_path / "results.json").read_text())
    assert len(saved["rows"]) == len(rows) and saved["meta"]["num_visual"] == 144
    table = (tmp_path / "results.md").read_text()
    assert table.strip() == format_table(rows) and len(table.strip().splitlines()) == len(rows) + 2
    assert (tmp_path / "decisions.png").stat().st_size > 10_000
    assert len(reroute_vs_remove(rows)) == len(counterparts()) * len(PAPER_TIERS)  # every removal preset's counterpart


def test_wilson_interval():
    interval = wilson(8, 10)
    assert interval.value == 0.8
    assert interval.low == pytest.approx(0.4902, abs=1e-4) and interval.high == pytest.approx(0.9433, abs=1e-4)
    assert wilson(0, 5).low == 0.0 and wilson(5, 5).high == 1.0


@pytest.mark.parametrize("matplotlib", ["installed", "missing"])
def test_demo_command_prints_its_table_before_the_figure(matplotlib, model_dir, tmp_path, monkeypatch, capsys):
    """Results and table first; the figure when matplotlib is there, else one line on how to get it, and exit 0."""
    if matplotlib == "missing":
        monkeypatch.setitem(sys.modules, "matplotlib", None)  # as if not installed: find_spec and import both fail
    out = tmp_path / "demo"
    code = main(["demo", "--model-dir", str(model_dir), "--num-samples", "3", "--batch-size", "3", "--output", str(out)])
    printed = capsys.readouterr().out
    assert code == 0
    table = (out / "results.md").read_text().strip()
    assert len(json.loads((out / "results.json").read_text())["rows"]) == 1 + len(METHODS) * len(PAPER_TIERS)
    hint = "no decisions.png: the figure needs the 'viz' extra (missing: matplotlib): pip install 'reroute[viz]'"
    if matplotlib == "missing":
        assert not (out / "decisions.png").exists()
        assert printed.count(hint) == 1 and table in printed
        assert printed.index(table) < printed.index(hint) < printed.index(f"wrote {out}/results.json, results.md\n")
    else:
        assert (out / "decisions.png").stat().st_size > 10_000
        assert hint not in printed and table in printed
        assert printed.index(table) < printed.index(f"wrote {out}/results.json, results.md, decisions.png\n")
