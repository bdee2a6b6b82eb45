"""A slow reference for ``core.matting``: the Matting Laplacian built entry by entry as a sparse
matrix, the way Levin et al.'s getLaplacian1.m (and Luan et al.'s copy of it) builds it."""

from __future__ import annotations

import torch
from torch import Tensor


def sparse_matting_laplacian(image: Tensor, epsilon: float, radius: int = 1) -> Tensor:
    """``L`` of an (3, H, W) float64 image as a sparse (N, N) COO tensor, N = H * W, pixels in
    row-major order; only windows wholly inside the image, as in Levin's code."""
    channels, height, width = image.shape
    side = 2 * radius + 1
    area = side * side
    index = torch.arange(height * width).reshape(height, width)
    rows, cols, values = [], [], []
    eye = torch.eye(channels, dtype=image.dtype)
    for top in range(height - side + 1):
        for left in range(width - side + 1):
            window = image[:, top:top + side, left:left + side].reshape(channels, area).T  # (|w|, 3)
            mean = window.mean(0)
            cov = window.T @ window / area - torch.outer(mean, mean)
            centred = window - mean
            inner = centred @ torch.linalg.inv(cov + epsilon / area * eye) @ centred.T  # (|w|, |w|)
            block = torch.eye(area, dtype=image.dtype) - (1 + inner) / area
            pixels = index[top:top + side, left:left + side].reshape(area)
            rows.append(pixels.repeat_interleave(area))
            cols.append(pixels.repeat(area))
            values.append(block.reshape(-1))
    n = height * width
    return torch.sparse_coo_tensor(torch.stack([torch.cat(rows), torch.cat(cols)]), torch.cat(values),
                                   (n, n), check_invariants=True).coalesce()
