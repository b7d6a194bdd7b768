"""VLM families reroute refuses on purpose, each with the reason (one line, raised by `backbone_for`).

These decoders cannot be run exactly by the routed loop, which gives each layer a compact
sequence with a full causal mask and a plain KV cache of the tokens it ran: a sliding window
would need the original distances between tokens, and a linear-attention (recurrent) layer
carries a state through every token in order, so a token cannot skip it and rejoin later.
"""

from __future__ import annotations

_SLIDING = "its decoder has sliding-window attention layers, which the routed loop cannot run exactly"
_LINEAR = "its decoder has linear-attention (recurrent state) layers, which a token cannot skip and rejoin exactly"

REFUSED: dict[str, str] = {
    "Gemma3ForConditionalGeneration": _SLIDING,
    "Gemma3nForConditionalGeneration": _SLIDING,
    "Qwen3_5ForConditionalGeneration": _LINEAR,
    "Qwen3_5MoeForConditionalGeneration": _LINEAR,
}


def refusal(model_class: str) -> str | None:
    """The one-line reason ``model_class`` is refused, or None."""
    reason = REFUSED.get(model_class)
    return None if reason is None else f"reroute does not support {model_class}: {reason}"
