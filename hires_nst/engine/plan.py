"""The render plan: every decision about a render's stages, taken once before any pixel moves.

files -> config -> **plan** -> engine -> files. ``plan_schedule`` turns the resolved config and the
content's size into the pyramid's stages and the print crop; ``make_plan`` adds, for every stage
on the placement's devices, its tiling (tile side, halo, windows, each device's band) and its
memory estimate. The printed schedule, the disk check, the objectives and the checkpoints read
this plan: nothing else derives a halo (``TileGrid.for_layers``) or asks whether the backbone can
be tiled, and the windows a stage runs on are laid out here, once per plan (``TileGrid.tiles``).
Two deciders lay out tilings of their own with the same ``plan_tiles`` to price them: the memory
model (``memmodel.plan_tile`` tries candidate tile sides) and the spread decision (``bandplan``
times rank 0's whole-image tiling against the ranks' bands, ``bands.band_tiles``). Whether several
ranks share a stage is decided with them when it starts (``bandplan``), and recorded in its
``StagePlan.bands``.

``--tile-size auto`` sizes tiles from the free memory, which changes while a render runs: the
plan's ``at_start`` measures it again when a stage starts (the one lazy decision), and
``smaller`` is the tiling an out-of-memory retry falls back to.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from dataclasses import dataclass

import torch

from hires_nst.config.catalog import VGG_BLOCKS, alias, get_backbone
from hires_nst.config.printsize import MAX_DPI, PrintPlan, print_plan
from hires_nst.config.regionspec import parse_regions
from hires_nst.config.schedule import DEFAULT_MIN_SIZE, Stage, make_schedule, shortest_long_side
from hires_nst.config.settings import RenderConfig, TileSize, at_stage, parse_layer_weights, stage_parts
from hires_nst.core import losses
from hires_nst.core.bands import Band, BandPlan
from hires_nst.core.memmodel import MIN_AUTO_TILE, whole_image_bytes_per_pixel
from hires_nst.core.tiles import Tile, TileGrid
from hires_nst.engine.objective import Weights
from hires_nst.errors import ConfigError, DeviceError
from hires_nst.runtime.placement import (
    MEMORY_MARGIN,
    Placement,
    auto_tile_size,
    available_bytes,
    estimate_stage_bytes,
)

Crop = tuple[int, int, int, int]  # (left, top, right, bottom) in content pixels


def plan_schedule(config: RenderConfig, width: int, height: int) -> tuple[list[Stage], Crop | None]:
    """The pyramid for a ``width`` x ``height`` content image: up to --max-size, or to the pixel size
    of --print-size at --dpi (which then overrides --max-size), with the crop that fills the paper."""
    pyramid, printing = config.pyramid, config.print
    crop, max_size = None, pyramid.max_size
    if printing.print_size:
        plan = _print_plan_for_the_network(config, width, height)
        width, height, crop, max_size = plan.width, plan.height, plan.crop, max(plan.width, plan.height)
    # A print's size is never typed as --max-size: a first stage asked larger than the print gives way.
    min_size = pyramid.min_size if pyramid.min_size <= max_size else max_size
    schedule = make_schedule(width, height, max_size=max_size, min_size=min_size,
                             factor=pyramid.scale_factor, iterations=pyramid.iterations,
                             fit_iterations=pyramid.fit_iterations, min_short=min_side(config))
    return schedule, crop


def _print_plan_for_the_network(config: RenderConfig, width: int, height: int) -> PrintPlan:
    """The print plan, refused when its output is too thin for the network; the advice names the
    knob that sizes it: --dpi (or the paper), never --max-size, which --print-size overrides."""
    printing = config.print

    def plan_at(dpi: int) -> PrintPlan:
        return print_plan(printing.print_size, dpi, printing.fit, printing.orientation, width, height)

    def thick_enough(plan: PrintPlan) -> bool:
        return shortest_long_side(plan.width, plan.height, min_side(config)) <= max(plan.width, plan.height)

    plan = plan_at(printing.dpi)
    if thick_enough(plan):
        return plan
    dpi = printing.dpi + 1
    while dpi < MAX_DPI and not thick_enough(plan_at(dpi)):
        dpi += 1
    raise ConfigError(f"--print-size {printing.print_size} at --dpi {printing.dpi} makes a {plan.width}x{plan.height} "
                      f"px output, too thin for the network: its short side must be at least {min_side(config)} px; "
                      f"use --dpi {dpi} or more, or a larger --print-size")


def min_side(config: RenderConfig) -> int:
    """The shortest image side the network takes with these layers (content and styles alike)."""
    return get_backbone(config.model.backbone).min_side([*config.loss.content_layers, *config.loss.style_layers])


def raised_first_stage(config: RenderConfig, schedule: Sequence[Stage]) -> str:
    """What to say when the first stage is not the --min-size asked ("" if it is): a thin image's is
    longer (the network's minimum), a print smaller than --min-size is rendered in one stage."""
    asked = config.pyramid.min_size or min(DEFAULT_MIN_SIZE, schedule[-1].long_side)
    first = schedule[0]
    if asked > schedule[-1].long_side:
        return (f"the print is {schedule[-1].width}x{schedule[-1].height} px, smaller than --min-size {asked}: "
                f"the pyramid starts at {first.long_side} px")
    if first.long_side <= asked:
        return ""
    return (f"the first stage is {first.width}x{first.height} px (long side {first.long_side}, not {asked}): "
            f"the network needs a short side of at least {min_side(config)} px")


def loss_weights(config: RenderConfig, stage: int = 0) -> Weights:
    """The loss weights of pyramid stage ``stage`` (0-based): style layers weighted, and style
    statistics compared, as ``--style-layer-weights`` and ``--style-loss`` say for that stage."""
    loss = config.loss
    layer_weights = parse_layer_weights(at_stage(loss.style_layer_weights, stage), loss.style_layers)
    style_loss = at_stage(loss.style_loss, stage)
    if layer_weights is None:
        return Weights.equal_layers(loss.content_weight, loss.style_weight, loss.tv_weight, loss.content_layers,
                                    loss.style_layers, style_loss, loss.photo_weight)
    style: dict[str, float] = {}
    # a layer named twice (relu1_1, conv1_1) adds up
    for name, weight in zip(loss.style_layers, layer_weights, strict=True):
        style[alias(name)] = style.get(alias(name), 0.0) + weight
    content = losses.normalised_weights({alias(n): 1.0 for n in loss.content_layers})
    return Weights(loss.content_weight, loss.style_weight, loss.tv_weight, content, losses.normalised_weights(style),
                   style_loss, loss.photo_weight)


@dataclass(frozen=True)
class Tiling:
    """How one stage is split, in numbers: ``tile`` None means untiled."""

    tile: int | None  # on this rank's device, for the whole image (also sizes the targets' tiles)
    halo: int
    tiles: int  # how many windows each pass runs on this device


@dataclass(frozen=True)
class StagePlan:
    """One stage as it will run: its tiling and the windows that realise it."""

    stage: Stage
    tiling: Tiling
    grid: TileGrid  # cuts the stage's image, and its content and style images for the targets
    tiles: tuple[Tile, ...]  # the stage image's windows on this device (one: untiled)
    memory: int  # estimated peak bytes of one iteration on this device (memmodel)
    budget: int = 0  # the bytes its tiling was planned to fit (--tile-size auto; 0: not planned by memory)
    # Several ranks: every rank's band, set when the stage starts if sharing it pays (bandplan).
    bands: BandPlan | None = None

    @property
    def halo(self) -> int:
        return self.tiling.halo


@dataclass(frozen=True)
class Rules:
    """What every stage's tiling is decided from: the typed --tile-size, the grid of the layers
    (None: the backbone cannot be tiled) and this rank's device (``share``: ranks on its memory)."""

    size: TileSize
    grid: TileGrid | None
    devices: tuple[torch.device, ...]
    backbone: str
    # What the memory model (memmodel) needs besides sizes: the precision as sized on this rank's
    # device, the optimiser, the layers, the style loss, iterate averaging, the styled regions.
    precision: str = "fp32"
    optimizer: str = "lbfgs"
    layers: tuple[str, ...] = ()
    share: int = 1  # CPU ranks of one local launch share the host's memory
    style_loss: str = "w2"
    average: bool = False
    regions: int = 0

    def _model(self) -> dict:
        return {"precision": self.precision, "optimizer": self.optimizer,
                **({"layers": self.layers} if self.layers else {}),
                "style_loss": self.style_loss, "average": self.average, "regions": self.regions}

    def _budget(self) -> int:
        """Bytes this rank's device may use: its free memory with a margin, shared by the CPU ranks
        of one local launch."""
        device = self.devices[0]
        return int(available_bytes(device) * MEMORY_MARGIN[device.type]) // max(1, self.share)

    def plan(self, stage: Stage, forced: int | None = None) -> StagePlan:
        """``stage``'s plan from --tile-size (auto: the free memory now), or with a ``forced`` tile."""
        if self.grid is None:  # ResNet: no exact tiling (see backbones.py)
            return self._realise(stage, TileGrid(None, 0, 1))
        tile = forced if forced is not None else self._tile_side(stage.width, stage.height, stage.pixels)
        return self._realise(stage, TileGrid(tile, self.grid.halo, self.grid.align))

    def _tile_side(self, width: int, height: int, image_pixels: int) -> int | None:
        """--tile-size for a ``width`` x ``height`` area of an image of ``image_pixels``: the whole
        image's buffers (image, gradient, optimiser state) are paid first, as every rank holds them."""
        if self.size.pixels is not None or not self.size.auto:
            return self.size.pixels
        assert self.grid is not None
        budget = self._budget()
        outside = image_pixels - width * height  # the whole image: auto_tile_size counts its buffers itself
        if outside > 0:
            budget -= int(outside * whole_image_bytes_per_pixel(image_pixels, **self._model()))
        return auto_tile_size(width, height, self.grid.halo, max(budget, 0), self.grid.align, **self._model())

    def band_tile(self, band: Band, stage: Stage) -> int | None:
        """This rank's tile side in its ``band`` of ``stage`` (None: the band is one window)."""
        return self._tile_side(band.bounds.width, band.bounds.height, stage.pixels)

    def _realise(self, stage: Stage, grid: TileGrid) -> StagePlan:
        """The plan of ``stage`` cut by ``grid``: its windows laid out once (``TileGrid.tiles``), and
        the grid untiled (tile None) where they are one window."""
        tiles = tuple(grid.tiles(stage.width, stage.height))
        if len(tiles) < 2:
            grid = dataclasses.replace(grid, tile=None)
        tiling = Tiling(grid.tile, grid.halo, len(tiles))
        memory = estimate_stage_bytes(stage.width, stage.height, grid.tile, grid.halo, grid.align, tiles=tiles,
                                      **self._model())
        budget = self._budget() if self.size.auto and self.grid is not None else 0
        return StagePlan(stage, tiling, grid, tiles, memory, budget)


def styled_regions(mask: str, regions: Sequence[str]) -> int:
    """How many regions of --mask/--region have a style (each a guide and Gaussian fits): 0 without."""
    if not mask and not regions:
        return 0
    return sum(spec.style is not None for spec in parse_regions(mask, regions))


def tiling_rules(config: RenderConfig, placement: Placement) -> Rules:
    """The per-render constants of every stage's tiling: decided once from the config."""
    backbone = get_backbone(config.model.backbone)
    grid = None
    if backbone.tileable:
        layers = [*config.loss.content_layers, *config.loss.style_layers]
        grid = TileGrid.for_layers(layers, None, config.tiling.halo, VGG_BLOCKS[backbone.name])
    main, world = placement.main, placement.world
    share = world.local_size if main.type == "cpu" else 1
    loss = config.loss
    style_loss = "w2" if "w2" in stage_parts(loss.style_loss) else "gram"  # any stage's w2: size all for it
    return Rules(config.tiling.size, grid, placement.devices, backbone.name, placement.precision.memory_precision(main),
                 config.optim.optimizer, (*loss.content_layers, *loss.style_layers), share, style_loss,
                 config.optim.average_iterates > 0, styled_regions(loss.mask, loss.region))


@dataclass(frozen=True)
class RenderPlan:
    """The whole render: every stage's plan, the print crop, the loss weights, and the rules that
    made the stages' tilings."""

    stages: tuple[StagePlan, ...]
    crop: Crop | None
    weights: tuple[Weights, ...]  # per stage (--style-layer-weights and --style-loss may differ by stage)
    rules: Rules

    @property
    def schedule(self) -> list[Stage]:
        return [p.stage for p in self.stages]

    def at_start(self, index: int) -> StagePlan:
        """Stage ``index``'s plan as it starts: with --tile-size auto the free memory is measured again."""
        planned = self.stages[index]
        return self.rules.plan(planned.stage) if self.rules.size.auto else planned

    def smaller(self, plan: StagePlan) -> StagePlan:
        """After an out-of-memory error: half the (smallest) tile, or untiled, half the long side;
        DeviceError below the smallest tile or for a backbone that cannot be tiled."""
        stage, tiling = plan.stage, plan.tiling
        current = tiling.tile or stage.long_side
        where = f"out of memory at stage {stage.index + 1} ({stage.width}x{stage.height})"
        if self.rules.grid is None:
            raise DeviceError(f"{where}; {self.rules.backbone} renders cannot be tiled: free device memory or "
                              "lower --max-size")
        if current // 2 < MIN_AUTO_TILE:
            raise DeviceError(f"{where} even with {current} px tiles; free device memory or lower --max-size")
        return self.rules.plan(stage, forced=current // 2)


def make_plan(config: RenderConfig, schedule: Sequence[Stage], crop: Crop | None, placement: Placement) -> RenderPlan:
    """The render plan of ``schedule`` (from ``plan_schedule``) on ``placement``."""
    rules = tiling_rules(config, placement)
    return RenderPlan(tuple(rules.plan(stage) for stage in schedule), crop,
                      tuple(loss_weights(config, stage.index) for stage in schedule), rules)
