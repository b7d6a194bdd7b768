"""The prompts the runtime tests route: one sample, and a padded batch that mixes image counts, image
sizes and prompt lengths."""

from __future__ import annotations


def single(family, num_images: int = 2, seed: int = 0):
    """One unpadded sample with ``num_images`` images."""
    return family.make_batch([family.make_prompt(num_images, size=0, seed=seed)])


def mixed_prompts(family) -> list:
    """Three prompts with 2, 1 and 0 images, two image sizes and different text lengths."""
    return [
        family.make_prompt(2, size=0, seed=1, text_before=3),
        family.make_prompt(1, size=1, seed=2, text_before=6),
        family.make_prompt(0, size=0, seed=3, text_before=2),
    ]


def mixed_batch(family, padding_side: str = "left"):
    """`mixed_prompts` as one batch padded on ``padding_side``."""
    return family.make_batch(mixed_prompts(family), padding_side)
