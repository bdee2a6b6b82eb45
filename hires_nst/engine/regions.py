"""The regions of a render (``--mask``, ``--region``): mask files read and turned into guides.

``regionspec`` parses what the settings say, ``guides`` holds the arithmetic; this module reads
the mask images and sizes their guides to the photo, once per render. A mask of another size than
the photo is resized to it (then cropped like the photo for a print size); each pyramid stage
resizes the guides again (``Regions.at_stage``).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from hires_nst.config.regionspec import RegionSpec, parse_regions, style_index
from hires_nst.config.settings import LossConfig
from hires_nst.core.guides import RegionGuide, colour_guides, grey_guide, resize_guides
from hires_nst.errors import ConfigError
from hires_nst.io import images


@dataclass(frozen=True)
class Regions:
    """The styled regions of one render, at the size of its content image."""

    guide: np.ndarray  # (R, H, W) float32 in [0, 1]: one guide per styled region
    styles: tuple[int, ...]  # region r's painting (index into the render's style images)
    weights: tuple[float, ...]

    def cropped(self, crop: tuple[int, int, int, int]) -> Regions:
        """Cut like the content for a print size: ``crop`` is (left, top, right, bottom)."""
        left, top, right, bottom = crop
        return dataclasses.replace(self, guide=np.ascontiguousarray(self.guide[:, top:bottom, left:right]))

    def at_stage(self, width: int, height: int, device: torch.device) -> RegionGuide:
        guide = torch.from_numpy(resize_guides(self.guide, width, height)).to(device)
        return RegionGuide(guide, self.styles, self.weights)


def load_regions(loss: LossConfig, paintings: Sequence[Path], width: int, height: int,
                 max_pixels: int) -> Regions | None:
    """The regions the settings give for a ``width`` x ``height`` photo (None: none given)."""
    if not loss.mask and not loss.region:
        return None
    specs = parse_regions(loss.mask, loss.region)
    styled = [(i, s) for i, s in enumerate(specs) if s.style is not None]
    if not styled:
        raise ConfigError("no --region has a style: every region keeps the photo")
    styles = tuple(style_index(s, paintings) for _, s in styled)
    unused = [f"{i + 1} ({p})" for i, p in enumerate(paintings) if i not in styles]
    if unused:
        raise ConfigError(f"with --region every painting is some region's style; painting {', '.join(unused)} is "
                          "in none")
    masks = _guides(loss.mask, specs, max_pixels)
    guide = np.stack([resize_guides(masks[i][None], width, height)[0] for i, _ in styled])  # masks may differ in size
    return Regions(guide, styles, tuple(s.weight for _, s in styled))


def _guides(mask: str, specs: Sequence[RegionSpec], max_pixels: int) -> list[np.ndarray]:
    """One (h, w) guide per spec at its mask's own size (all the same size with --mask)."""
    if mask:
        array = images.load_image(mask, "--mask image", max_pixels)
        colours = [s.colour for s in specs]
        return list(colour_guides(array, [c for c in colours if c is not None]))
    return [grey_guide(images.load_image(s.mask, f"the mask of --region {s.text!r}", max_pixels)) for s in specs]
