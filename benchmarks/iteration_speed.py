"""Seconds per iteration (loss + gradient through VGG19, the default layers) at 128/256/512 px.

Usage: python benchmarks/iteration_speed.py [--device auto] [--sizes 128,256,512] [--repeats 5]
Prints one JSON object. A benchmark, not a test: run it on a quiet machine and compare ratios.
"""

from __future__ import annotations

import argparse
import json
import platform
import time

import torch

from hires_nst.config.settings import RenderConfig
from hires_nst.engine.objective import Objective, make_targets
from hires_nst.engine.plan import loss_weights
from hires_nst.engine.render import build_extractor
from hires_nst.runtime.placement import resolve_device


def seconds_per_iteration(size: int, device: torch.device, repeats: int) -> float:
    config = RenderConfig()
    extractor = build_extractor(config, device)
    weights = loss_weights(config)
    generator = torch.Generator().manual_seed(0)
    content = torch.rand(1, 3, size, size, generator=generator).to(device)
    style = torch.rand(1, 3, size, size, generator=generator).to(device)
    objective = Objective(extractor, make_targets(extractor, content, [style], (), weights), weights)
    image = content.clone()
    objective(image)  # warm-up (allocator, cuDNN autotune)
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    start = time.perf_counter()
    for _ in range(repeats):
        objective(image)
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    return (time.perf_counter() - start) / repeats


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="auto")
    parser.add_argument("--sizes", default="128,256,512")
    parser.add_argument("--repeats", type=int, default=5)
    args = parser.parse_args()
    device = resolve_device(args.device)
    sizes = [int(s) for s in args.sizes.split(",")]
    result = {
        "device": str(device),
        "device_name": torch.cuda.get_device_name(device) if device.type == "cuda" else platform.processor(),
        "threads": torch.get_num_threads(),
        "torch": torch.__version__,
        "seconds_per_iteration": {str(s): round(seconds_per_iteration(s, device, args.repeats), 4) for s in sizes},
    }
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
