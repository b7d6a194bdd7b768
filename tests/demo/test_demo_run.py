"""`reroute demo` end to end on a few samples: a well-formed table, JSON, markdown and figure."""

from __future__ import annotations

import json

import pytest

from reroute.budgets import avg_t
from reroute.demo.run import METHODS, PAPER_TIERS, format_table, reroute_vs_remove, run_demo, wilson


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
    assert len(reroute_vs_remove(rows)) == 3 * len(PAPER_TIERS)  # fastv, pdrop and nuwa counterparts


def test_wilson_interval():
    interval = wilson(8, 10)
    assert interval.value == 0.8
    assert interval.low == pytest.approx(0.4902, abs=1e-4) and interval.high == pytest.approx(0.9433, abs=1e-4)
    assert wilson(0, 5).low == 0.0 and wilson(5, 5).high == 1.0
