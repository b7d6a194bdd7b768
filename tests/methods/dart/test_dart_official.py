"""DART's selection against the official code's tensor function (docs/semantics.md §20).

`get_retained_image_token` below is carried from ZichenWen1/DART (read from its fork
xqy1111111/DART, upstream commit 5a19452c, llava/model/language_model/modeling_llama_self.py),
adapted only in imports: it is a module-level function here (its ``self`` is unused) and reads
its settings from a namespace standing in for the model config.

The official code iterates its pivots in CPython's set order, which for small ints is ascending
whenever every pivot position is below the set's table size (32 for 5 to 19 pivots); we process pivots in
ascending position. Every case here keeps the prompt under 32 tokens, so that order is the
official one, and the kept tokens must be equal.
"""

from __future__ import annotations

import math
from types import SimpleNamespace

import pytest
import torch

from reroute.methods.dart.select import dart_select


# ---------------------------------------------------------------- official (ZichenWen1/DART @ 5a19452)
def get_retained_image_token(self, config, last_layer_state: torch.Tensor, any_states: torch.Tensor) -> torch.Tensor:
    DART_config = config.DART_config
    K = DART_config['K']  # pruned layer
    image_token_start_index = DART_config['image_token_start_index']
    image_token_length = DART_config['image_token_length']
    MAX_NUM_TRUNCTION = DART_config['max_num_trunction']

    pivot_image_token = DART_config['pivot_image_token']
    pivot_text_token = DART_config['pivot_text_token']


    reduction_ratio = DART_config['reduction_ratio']
    TOKEN_TOPK = math.ceil((MAX_NUM_TRUNCTION if MAX_NUM_TRUNCTION is not None else (image_token_length * (1 - reduction_ratio))) // (pivot_image_token + pivot_text_token))

    device = last_layer_state.device

    if config.text_length is not None:
        text_length = config.text_length
        image_token_length = any_states.shape[2] - text_length
        retain_token_num_for_llava_next = min(DART_config['retain_token_num_for_llava_next'], image_token_length - pivot_image_token)
        TOKEN_TOPK = int((retain_token_num_for_llava_next if retain_token_num_for_llava_next is not None else (image_token_length * (1 - reduction_ratio)))  // (pivot_image_token + pivot_text_token))

    any_states = any_states.permute(0, 2, 1, 3).reshape(any_states.shape[0], any_states.shape[2], -1)

    k_states_image_token = any_states[0][image_token_start_index:image_token_start_index + image_token_length, :]
    k_states_query_token = any_states[0][image_token_start_index + image_token_length:, :]

    k_states_image_token_L1_norm = torch.norm(k_states_image_token, p=1, dim=-1)
    k_states_query_token_L1_norm = torch.norm(k_states_query_token, p=1, dim=-1)

    image_indices = (k_states_image_token_L1_norm.topk(pivot_image_token).indices + image_token_start_index).tolist() 
    query_indices = (k_states_query_token_L1_norm.topk(pivot_text_token).indices + image_token_start_index + image_token_length).tolist()
    indices_set = set(image_indices + query_indices)

    valid_indices = set(range(image_token_start_index, image_token_start_index + image_token_length)) - set(image_indices)

    valid_indices_list = list(valid_indices)  
    for item in list(indices_set):
        valid_vectors = last_layer_state[0][valid_indices_list, :]
        cos_sim = -torch.nn.functional.cosine_similarity(last_layer_state[0][item, :], valid_vectors, dim=-1)
        top_k_indices = cos_sim.topk(TOKEN_TOPK).indices

        top_k_real_indices = [valid_indices_list[i] for i in top_k_indices]
        indices_set.update(top_k_real_indices)
        
        valid_indices.difference_update(top_k_real_indices)
        valid_indices_list = list(valid_indices)  

    indices_set.difference_update(query_indices)

    retained_image_tokens_index = torch.tensor(list(indices_set), device=device)

    return retained_image_tokens_index
# ---------------------------------------------------------------- end of the official code


def _official_config(start: int, image: int, budget: int, image_pivots: int, text_pivots: int):
    dart = {
        "K": 2, "image_token_start_index": start, "image_token_length": image, "max_num_trunction": budget,
        "reduction_ratio": 0.778, "retain_token_num_for_llava_next": None,
        "pivot_image_token": image_pivots, "pivot_text_token": text_pivots,
    }  # fmt: skip
    return SimpleNamespace(DART_config=dart, text_length=None)


def _case(seed: int):
    """A prompt under 32 tokens: text prefix, an image block, the instruction; heads 4 x 4 dims, states 16 dims."""
    g = torch.Generator().manual_seed(seed)
    start = int(torch.randint(1, 5, (1,), generator=g))
    image = int(torch.randint(12, 23, (1,), generator=g))
    text = int(torch.randint(4, 32 - start - image, (1,), generator=g))
    length = start + image + text
    any_states = torch.randn(1, 4, length, 4, generator=g)  # (B, heads, L, head_dim), as the layer returns keys
    last_layer_state = torch.randn(1, length, 16, generator=g)
    return start, image, length, any_states, last_layer_state


CASES = range(200)


@pytest.mark.parametrize("pivots", [(4, 4), (2, 3), (5, 0), (1, 4)])
def test_selection_equals_the_official_code(pivots):
    image_pivots, text_pivots = pivots
    for seed in CASES:
        start, image, length, any_states, last_layer_state = _case(seed)
        # the official budget M gives M // pivots tokens per pivot (and fails when the image runs out)
        per_pivot = 1 + seed % 2 if image_pivots + 2 * (image_pivots + text_pivots) <= image else 1
        budget = per_pivot * (image_pivots + text_pivots)
        official = sorted(
            get_retained_image_token(
                None, _official_config(start, image, budget, image_pivots, text_pivots), last_layer_state, any_states
            ).tolist()
        )
        key_l1 = torch.norm(any_states.permute(0, 2, 1, 3).reshape(length, -1), p=1, dim=-1)
        candidates = torch.zeros(length, dtype=torch.bool)
        candidates[start : start + image] = True
        text_pool = torch.zeros(length, dtype=torch.bool)
        text_pool[start + image :] = True
        keep = image_pivots + budget  # what the official code retains: its image pivots + M // pivots per pivot
        ours = dart_select(key_l1, last_layer_state[0], candidates, text_pool, keep, image_pivots, text_pivots)
        assert torch.nonzero(ours).flatten().tolist() == official, seed


def test_keep_counts_between_the_official_budgets_spread_over_the_first_pivots():
    """A keep count the official code cannot express (4 + 8t + r): the first r pivots, by position, take one more."""
    start, image, length, any_states, states = _case(7)
    key_l1 = torch.norm(any_states.permute(0, 2, 1, 3).reshape(length, -1), p=1, dim=-1)
    candidates = torch.zeros(length, dtype=torch.bool)
    candidates[start : start + image] = True
    text_pool = torch.zeros(length, dtype=torch.bool)
    text_pool[start + image :] = True
    for keep in range(1, image + 1):
        assert int(dart_select(key_l1, states[0], candidates, text_pool, keep, 4, 4).sum()) == keep
