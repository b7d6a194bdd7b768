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


def decoder_refusal(text_config) -> str | None:
    """The one-line reason a supported family's decoder is refused for this config, or None.

    Mistral decoders (LLaVA-NeXT's llava-v1.6-mistral) apply ``sliding_window`` to every layer
    when it is set, without listing it in ``layer_types``.
    """
    window = getattr(text_config, "sliding_window", None)
    if getattr(text_config, "model_type", None) in ("mistral", "mixtral") and window is not None:
        return (
            f"the {text_config.model_type} decoder uses a sliding window of {window} tokens, which the routed loop "
            "cannot run exactly; load the model with text_config.sliding_window=None (the same model for prompts "
            f"shorter than {window} tokens)"
        )
    return None
