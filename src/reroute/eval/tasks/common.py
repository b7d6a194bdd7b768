"""What every benchmark module shares: the family's protocol, argument checks, unique ids, the short-answer post-prompt."""

from __future__ import annotations

from collections import Counter
from collections.abc import Sequence

from PIL import Image

from reroute.backbones import EvalProtocol, evaluation_protocols
from reroute.eval.tasks.files import ParquetSplit

#: the prefix of the metrics of reroute's careful reading of answers (the headline, the paper's harness, has none)
CAREFUL = "careful/"

#: lmms-eval's default post-prompt for short-answer VQA (POPE, GQA, MME)
SHORT_ANSWER_POST_PROMPT = "\nAnswer the question using a single word or phrase."


def family_protocol(model_family: str) -> EvalProtocol:
    """The evaluation protocol a family's adapter declares under ``model_family``; one-line ValueError
    for a name no adapter declares."""
    protocols = evaluation_protocols()
    if model_family not in protocols:
        raise ValueError(f"unknown model family {model_family!r}; expected one of {', '.join(protocols)}")
    return protocols[model_family]


def check_family(model_family: str) -> None:
    """One-line ValueError for a model family no task knows (`family_protocol`)."""
    family_protocol(model_family)


def check_limit(limit: int | None) -> None:
    """One-line ValueError unless ``limit`` is None or a positive integer."""
    if limit is not None and (isinstance(limit, bool) or not isinstance(limit, int) or limit < 1):
        raise ValueError(f"limit must be a positive integer or None, got {limit!r}")


def check_unique(ids: Sequence[str], dataset_id: str) -> None:
    """One-line ValueError when sample ids repeat (the files are not what the task expects)."""
    repeated = [i for i, n in Counter(ids).items() if n > 1]
    if repeated:
        raise ValueError(
            f"{dataset_id}: {len(repeated)} sample id(s) repeat (first: {repeated[0]!r}); the files do not match the task"
        )


class RowImages:
    """``load_images`` of a sample: the image of one row of a split, decoded on call."""

    def __init__(self, split: ParquetSplit, row: int) -> None:
        self.split, self.row = split, row

    def __call__(self) -> list[Image.Image]:
        return [self.split.image(self.row)]

    def __repr__(self) -> str:
        return f"RowImages({self.split.dataset_id}, row={self.row})"
