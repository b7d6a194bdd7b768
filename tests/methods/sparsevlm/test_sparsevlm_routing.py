"""SparseVLM through the real engine on every family (docs/semantics.md §21): its decisions equal a
slow re-derivation of the rule from the full attention map, the routed outputs equal the slow
reference, a batch equals its samples alone, generate() equals the reference decode, keep 1.0 is
stock, and the removal and rerouted presets run at the same avg_T and cost."""

from __future__ import annotations

import pytest
import torch
from tests.helpers.harness import decoder_inputs, rotary_positions, routed, sample_injections
from tests.helpers.models import FAMILIES
from tests.helpers.reference import _rotary_tables, _rotate_half, full_attention_map, reference_forward

import reroute
from reroute import RoutingConfig
from reroute.backbones import backbone_for
from reroute.backbones.llava import llava_1_5_7b

ATOL = 5e-5
PRESETS = ("sparsevlm", "reroute_vs_sparsevlm")
MODELS: dict = {}


@pytest.fixture(scope="module", params=sorted(FAMILIES))
def family(request):
    fam = FAMILIES[request.param]
    if request.param not in MODELS:
        MODELS[request.param] = fam.make_model()
    return fam, MODELS[request.param]


def config_for(model, name: str, tier: int = 192) -> RoutingConfig:
    """The preset at a tier in the paper's units (a fraction of the prompt's visual tokens, as `reroute demo`)."""
    return reroute.preset(name, tier, model=model)


# ----------------------------------------------------------------------------- a slow re-derivation of §21
def slow_raters(embeds: torch.Tensor, visual: list[bool]) -> list[int]:
    """Text tokens after the first visual token whose image relevance is strictly above the mean."""
    first = visual.index(True)
    pool = [j for j in range(first + 1, len(visual)) if not visual[j]]
    relevance = []
    image = [embeds[i].float() for i in range(len(visual)) if visual[i]]
    per_visual = [torch.stack([v @ embeds[t].float() for t in pool]).softmax(dim=0) for v in image]
    relevance = torch.stack(per_visual).mean(dim=0)
    chosen = [t for t, r in zip(pool, relevance) if r > relevance.mean()]
    return chosen or pool


def slow_scores(layer, states, cos, sin, keys: list[int], raters: list[int], visual: list[bool], params) -> dict[int, float]:
    """Mean over raters and kept heads of each rater's softmax row over the keys at or before it."""
    logits, _ = full_attention_map(layer, states, cos, sin)  # (H, L, L)
    heads, length = logits.shape[0], logits.shape[1]
    hd = cos.shape[-1]
    ones = torch.ones(length, hd)
    rotated_ones = ones * cos.float() + _rotate_half(ones) * sin.float()
    rows = []
    for r in raters:
        seen = [j for j in keys if j <= r]
        row = torch.zeros(heads, length)
        row[:, seen] = logits[:, r, seen].softmax(dim=-1)
        if params["gravity"]:
            for j in seen:
                row[:, j] = row[:, j] / (rotated_ones[r] @ rotated_ones[j] / hd**0.5)
        rows.append(row)
    kept = list(range(heads))
    count = max(1, min(heads, int(heads * params["head_fraction"] + 0.5)))
    if count < heads:
        columns = [j for j in keys if visual[j]]
        mass = [float(sum(row[h, columns].sum() for row in rows)) for h in range(heads)]
        kept = sorted(range(heads), key=lambda h: (-mass[h], h))[:count]
    total = sum(row[kept].mean(dim=0) for row in rows) / len(rows)
    return {j: float(total[j]) for j in keys}


@torch.no_grad()
def slow_run(model, inputs: dict, b: int, config: RoutingConfig, decisions):
    """Sample ``b`` alone: the reference's logits with ``decisions`` (the engine's, shifted to the real tokens),
    and the selections the slow rule makes on the reference's states at every decision."""
    captured = decoder_inputs(model, inputs)
    mask = inputs["attention_mask"].bool()
    real = torch.nonzero(mask[b]).flatten()
    offset, length = int(real[0]), len(real)
    embeds = captured["inputs_embeds"][b, offset : offset + length]
    visual = backbone_for(model).visual_mask(model.config, inputs["input_ids"])[b, offset : offset + length].tolist()
    visual[-1] = False  # the query is never visual
    text_model = model.model.language_model
    pos = rotary_positions(captured, b, length, offset)
    scoring_layers = sorted({d - 1 for d in config.decision_layers})
    entering: dict[int, torch.Tensor] = {}  # the reference's input of each scoring layer (DeepStack included)

    def keep_input(i):
        def hook(module, args):
            entering[i] = args[0][0].clone()  # returns None: the input is left as it is

        return hook

    hooks = [text_model.layers[i].register_forward_pre_hook(keep_input(i)) for i in scoring_layers]
    try:
        hidden, _ = reference_forward(
            text_model, pos, embeds, visual, config, decisions=decisions,
            injections=sample_injections(captured, b, offset, length),
        )  # fmt: skip
    finally:
        for hook in hooks:
            hook.remove()
    _, (cos, sin) = _rotary_tables(text_model, embeds, pos)
    raters = slow_raters(embeds, visual)
    params = config.scorer_parameters
    visual_positions = [j for j in range(length) if visual[j]]
    chosen = []
    for s, d in enumerate(config.decision_layers):
        if config.action == "remove" and s > 0:
            keys = sorted({j for j in range(length) if not visual[j]} | set(decisions[s - 1]))
        else:
            keys = list(range(length))
        scores = slow_scores(text_model.layers[d - 1], entering[d - 1], cos, sin, keys, raters, visual, params)
        candidates = [j for j in keys if visual[j]]
        k = config.keep_counts(len(visual_positions))[s]
        chosen.append(tuple(sorted(sorted(candidates, key=lambda j: (-scores[j], j))[:k])))
    return model.lm_head(hidden), chosen, offset


def mixed(fam, padding_side="right"):
    prompts = [fam.make_prompt(2, seed=1, text_before=3), fam.make_prompt(1, seed=2, text_before=5), fam.make_prompt(0, seed=3)]
    return prompts, fam.make_batch(prompts, padding_side)


# ----------------------------------------------------------------------------- the invariants
@pytest.mark.parametrize("name", PRESETS)
def test_engine_equals_slow_rule_and_reference(family, name):
    fam, model = family
    config = config_for(model, name)
    _, inputs = mixed(fam, "left")
    out, trace = routed(model, config, inputs)
    mask = inputs["attention_mask"].bool()
    for b in range(2):  # the routed samples
        shifted = [tuple(j - int(torch.nonzero(mask[b])[0]) for j in sel) for sel in trace[b].selected]
        logits, chosen, _ = slow_run(model, inputs, b, config, [list(s) for s in shifted])
        assert chosen == shifted
        torch.testing.assert_close(out.logits[b, mask[b]], logits, atol=ATOL, rtol=0)
    assert not trace[2].routed


@pytest.mark.parametrize("name", PRESETS)
def test_batch_equals_samples_alone(family, name):
    fam, model = family
    config = config_for(model, name)
    prompts, inputs = mixed(fam, "right")
    out, _ = routed(model, config, inputs)
    mask = inputs["attention_mask"].bool()
    with reroute.apply(model, config), torch.no_grad():
        batch_ids = model.generate(**mixed(fam, "left")[1], max_new_tokens=4, min_new_tokens=4, do_sample=False)
        for b, prompt in enumerate(prompts):
            alone_inputs = fam.make_batch([prompt])
            alone = model(**alone_inputs)
            torch.testing.assert_close(out.logits[b, mask[b]], alone.logits[0], atol=ATOL, rtol=0)
            alone_ids = model.generate(**alone_inputs, max_new_tokens=4, min_new_tokens=4, do_sample=False)
            assert torch.equal(batch_ids[b, -4:], alone_ids[0, -4:])


@pytest.mark.parametrize("name", PRESETS)
@torch.no_grad()
def test_generate_equals_reference_decode(family, name):
    """Greedy generate()'s logits == the reference's over prompt + generated tokens, with the decisions the slow
    rule takes on the prompt (generated tokens are text: never raters, candidates or removed)."""
    fam, model = family
    config = config_for(model, name)
    inputs = fam.make_batch([fam.make_prompt(1, seed=4, text_before=4)])
    new = 6
    suppress = list(backbone_for(model).visual_token_ids(model.config))
    with reroute.apply(model, config) as handle:
        out = model.generate(
            **inputs, max_new_tokens=new, min_new_tokens=new, do_sample=False, suppress_tokens=suppress,
            return_dict_in_generate=True, output_logits=True,
        )  # fmt: skip
    ids = out.sequences
    decisions = [list(s) for s in handle.trace[0].selected]
    _, chosen, _ = slow_run(model, inputs, 0, config, decisions)
    assert [tuple(d) for d in decisions] == chosen
    prompt_length = inputs["input_ids"].shape[1]
    extended = dict(inputs, input_ids=ids[:, :-1], attention_mask=torch.ones_like(ids[:, :-1]))
    if "mm_token_type_ids" in inputs:
        pad = torch.zeros(1, new - 1, dtype=torch.long)
        extended["mm_token_type_ids"] = torch.cat([inputs["mm_token_type_ids"], pad], dim=1)
    captured = decoder_inputs(model, extended)
    visual = backbone_for(model).visual_mask(model.config, ids[:, :-1])[0].tolist()
    visual[prompt_length - 1 :] = [False] * (len(visual) - prompt_length + 1)
    length = ids.shape[1] - 1
    hidden, _ = reference_forward(
        model.model.language_model, rotary_positions(captured, 0, length, 0), captured["inputs_embeds"][0], visual,
        config, decisions=decisions, injections=sample_injections(captured, 0, 0, length),
    )  # fmt: skip
    # every step's raw logits (before the processors) are the reference's at its position
    torch.testing.assert_close(torch.cat(out.logits), model.lm_head(hidden)[prompt_length - 1 :], atol=ATOL, rtol=0)


def test_keep_one_is_stock(family):
    fam, model = family
    _, inputs = mixed(fam, "left")
    with torch.no_grad():
        stock = model(**inputs).logits
    for action in ("remove", "reroute"):
        out, _ = routed(model, RoutingConfig(action, (1, 3), (1.0, 1.0), scorer="sparsevlm"), inputs)
        assert torch.equal(out.logits, stock)


def test_removal_and_rerouted_presets_run_at_the_same_budget(family):
    fam, model = family
    _, inputs = mixed(fam, "left")
    # tier 64 is out of reach on 6 layers (layer 0 alone holds 576 / 6 = 96): its pair is costed on 32 layers below
    for tier in (192, 128):
        removal, rerouted = (config_for(model, name, tier) for name in PRESETS)
        (_, a), (_, b) = routed(model, removal, inputs), routed(model, rerouted, inputs)
        assert [s.visual_per_layer for s in a] == [s.visual_per_layer for s in b]
        assert a.avg_T == b.avg_T > 0
        for n in (16, 576):
            ca, cb = reroute.cost(removal, model, num_visual=n), reroute.cost(rerouted, model, num_visual=n)
            assert (ca.avg_t, ca.flops_exact, ca.kv_cache_bytes) == (cb.avg_t, cb.flops_exact, cb.kv_cache_bytes)


@pytest.mark.parametrize("ratios", ["solved", "paper"])
@pytest.mark.parametrize("tier", [192, 128, 64])
def test_llava_presets(tier, ratios):
    """LLaVA-1.5's 32 layers: decisions 3, 7, 16 (scored with layers 2, 6, 15); `paper` is SparseVLM+'s
    count table over 576 (avg_T 206.75 / 144.125 / 81.8125), `solved` hits the tier; the pair costs the same."""
    table = {192: (300, 200, 118), 128: (238, 108, 60), 64: (66, 34, 20)}[tier]
    removal, rerouted = (reroute.preset(name, tier, ratios=ratios) for name in PRESETS)
    assert (removal.action, rerouted.action) == ("remove", "reroute")
    assert removal.decision_layers == rerouted.decision_layers == (3, 7, 16)
    assert removal.keep_ratios == rerouted.keep_ratios and removal.scorer == rerouted.scorer == "sparsevlm"
    a, b = reroute.cost(removal, llava_1_5_7b()), reroute.cost(rerouted, llava_1_5_7b())
    assert (a.avg_t, a.flops_exact, a.kv_cache_bytes) == (b.avg_t, b.flops_exact, b.kv_cache_bytes)
    if ratios == "paper":
        assert removal.keep_counts(576) == table
        assert a.avg_t_continuous == pytest.approx((3 * 576 + 4 * table[0] + 9 * table[1] + 16 * table[2]) / 32)
    else:
        assert a.avg_t_continuous == pytest.approx(tier)
        counts = [r * 576 for r in removal.keep_ratios]  # the published table's proportions, scaled
        assert counts[1] / counts[0] == pytest.approx(table[1] / table[0])
        assert counts[2] / counts[0] == pytest.approx(table[2] / table[0])


def test_params_and_refusals():
    with pytest.raises(ValueError, match=r"^sparsevlm's head_fraction must be in \(0, 1\], got 0$"):
        RoutingConfig("remove", (3,), (0.5,), scorer="sparsevlm", scorer_params={"head_fraction": 0})
    with pytest.raises(ValueError, match=r"^sparsevlm's gravity must be 0 or 1, got 0.5$"):
        RoutingConfig("remove", (3,), (0.5,), scorer="sparsevlm", scorer_params={"gravity": 0.5})
    with pytest.raises(ValueError, match=r"^scorer 'sparsevlm' has no parameter 'heads': it accepts gravity, head_fraction$"):
        RoutingConfig("remove", (3,), (0.5,), scorer="sparsevlm", scorer_params={"heads": 14})
    with pytest.raises(ValueError, match=r"^ratios='paper' has no SparseVLM table for tier 96: "):
        reroute.preset("sparsevlm", 96, ratios="paper")


def test_scoring_cost_counts_every_text_token_as_a_rater():
    """`reroute.cost` charges SparseVLM one query row per text token (the raters' upper bound): with one
    text token it is the one-row cost of the same schedule under `last_token`, and it grows with the text."""
    sparse = reroute.preset("sparsevlm", 128)
    one_row = RoutingConfig(sparse.action, sparse.decision_layers, sparse.keep_ratios)
    dims = llava_1_5_7b()
    assert reroute.cost(sparse, dims, num_text=1).scoring_flops == reroute.cost(one_row, dims, num_text=1).scoring_flops
    assert reroute.cost(sparse, dims, num_text=64).scoring_flops > reroute.cost(one_row, dims, num_text=64).scoring_flops
