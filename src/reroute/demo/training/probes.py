"""Stage 1's per-patch probes: training-only linear read-outs that teach every projected visual token
to name its object's colour, shape, size and box edges (or "background")."""

from __future__ import annotations

from collections.abc import Sequence

import torch

from reroute.demo import synthetic

PROBE_FIELDS = ("color", "shape", "size", "x1", "y1", "x2", "y2")


def probe_classes() -> dict[str, int]:
    """Classes per probe field; the last class of each is "no object here" (background patch)."""
    edges = synthetic.GRID + 1  # a box edge is a cell boundary 0..GRID
    sizes = max(*synthetic.SIZES, *synthetic.SLOT_SIZES) + 1  # a side of 0..max cells
    return {
        "color": len(synthetic.COLORS) + 1,
        "shape": len(synthetic.OBJECT_SHAPES) + 1,
        "size": sizes + 1,
        **{edge: edges + 1 for edge in ("x1", "y1", "x2", "y2")},
    }


class PatchProbes(torch.nn.Module):
    """Training-only linear read-outs of every visual token: its object's colour, shape, size and box
    edges (or "background"). Dense supervision (144 labels per image) teaches the vision tower and
    projector to make each visual token say what and where its object is; discarded after training."""

    def __init__(self, hidden_size: int):
        super().__init__()
        self.heads = torch.nn.ModuleDict({k: torch.nn.Linear(hidden_size, n) for k, n in probe_classes().items()})

    def loss(self, feats: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        """Mean cross-entropy over fields; ``feats`` (B*P, H), ``targets`` (B*P, len(PROBE_FIELDS)).

        The probes read the RMS-normalised token, as every decoder layer does, so the loss must
        separate directions and cannot be lowered by inflating the tokens' norm (probing raw
        tokens grew it to ~110, against ~0.2 for a word embedding)."""
        feats = torch.nn.functional.rms_norm(feats.float(), (feats.shape[-1],))
        losses = [
            torch.nn.functional.cross_entropy(self.heads[k](feats), targets[:, i])
            for i, k in enumerate(PROBE_FIELDS)
        ]
        return torch.stack(losses).mean()


def probe_targets(scenes: Sequence[Sequence[synthetic.SceneObject]]) -> torch.Tensor:
    """(B * P, len(PROBE_FIELDS)) class indices for every patch of every scene (row-major patches)."""
    g = synthetic.GRID
    classes = probe_classes()
    background = [classes[k] - 1 for k in PROBE_FIELDS]
    colors, shapes = list(synthetic.COLORS), list(synthetic.OBJECT_SHAPES)
    out = torch.tensor(background, dtype=torch.long).repeat(len(scenes), g * g, 1)
    for b, objects in enumerate(scenes):
        for o in objects:
            row = torch.tensor([colors.index(o.color), shapes.index(o.shape), o.size, *o.cell_box])
            for r in range(o.y, o.y + o.size):
                out[b, r * g + o.x : r * g + o.x + o.size] = row
    return out.reshape(-1, len(PROBE_FIELDS))


def visual_tokens(model, pixel_values: torch.Tensor) -> torch.Tensor:
    """The projected visual tokens, (B, P, H): what LLaVA merges into the decoder's input (and the probes read)."""
    feats = model.model.get_image_features(pixel_values=pixel_values).pooler_output
    if isinstance(feats, (list, tuple)):
        feats = torch.stack(list(feats))
    return feats.reshape(pixel_values.shape[0], -1, feats.shape[-1])
