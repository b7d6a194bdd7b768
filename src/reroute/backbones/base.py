"""The family adapter: the runtime's adapter contract plus what the applications ask of a family.

`reroute.runtime.adapter.DecoderAdapter` says where a decoder's layers, norm and rotary
embedding are and which positions are visual; a `Backbone` is that for one family, and
the one place where everything else model-specific is declared. See docs/adding-a-backbone.md.
"""

from __future__ import annotations

from reroute.runtime.adapter import DecoderAdapter, LayerInjections, Positions, RotaryFn


class Backbone(DecoderAdapter):
    """One model family. Subclasses set ``model_classes`` and override what differs."""


__all__ = ["Backbone", "LayerInjections", "Positions", "RotaryFn"]
