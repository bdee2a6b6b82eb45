"""One resolved configuration: dataclass defaults < preset TOML < command-line flags.

Each concern has a frozen dataclass; ``RenderConfig`` holds them. Each field is its option's one
declaration (``config.options``: flag, help, ``--help`` panel, value shape). Every layer of settings is a
nested mapping ``{section: {key: value}}``; ``resolve`` merges the layers, rejects unknown keys
(naming the key and where it came from), coerces types and validates ranges.

Over 300 lines on purpose: the one declaration of every option (about 60 fields, each with its flag and
help) and their validation.
"""

from __future__ import annotations

import dataclasses
import functools
import math
import tomllib
from collections.abc import Collection, Mapping, Sequence
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any, get_type_hints

from hires_nst.config.catalog import (
    BACKBONES,
    COLOR_MODES,
    DEFAULT_CONTENT_LAYERS,
    DEFAULT_STYLE_LAYERS,
    OPTIMIZERS,
    PHOTO_SMOOTHING,
    POOLINGS,
    PRECISIONS,
    STYLE_LOSSES,
    get_backbone,
)
from hires_nst.config.devices import device_list, single_device
from hires_nst.config.options import (
    CHECKPOINTS,
    DEVICES,
    ESSENTIALS,
    EXPERIMENTS,
    OUTPUT,
    PYRAMID,
    STYLE,
    Option,
    Setting,
    did_you_mean,
    option,
    option_of,
    settings_of,
)
from hires_nst.config.printsize import FITS, MAX_DPI, ORIENTATIONS, paper_pixels
from hires_nst.config.schedule import check_pyramid
from hires_nst.errors import ConfigError

# Step sizes on the [0, 1] image. Adam's is crowsonkb's; the others were measured on Tubingen /
# Starry Night (default weights and layers, from the content image): each is the lowest final loss
# after 60 iterations at 128 px of a grid in ~3x steps (also checked at 64 px, 30 iterations).
# SGD and Adadelta see the gradient times the pixel count (optimize.PIXEL_SCALED).
DEFAULT_LR = {"lbfgs": 1.0, "lbfgs-torch": 1.0, "adam": 0.02, "adamw": 0.02, "sgd": 3e-4, "adagrad": 0.05,
              "adadelta": 3.0, "rmsprop": 0.005}
VIDEO_SUFFIXES = (".gif", ".webm", ".mp4")
# --format value -> file extension.
OUTPUT_FORMATS = {"png": ".png", "tif": ".tif", "tiff": ".tif", "jpg": ".jpg", "jpeg": ".jpg"}


@dataclass(frozen=True)
class LossConfig:
    content_weight: float = option("--content-weight", "Weight of the content loss.", 1.0, panel=STYLE, metavar="W")
    style_weight: float = option("--style-weight", "Weight of the style loss (relative to content).", 15.0,
                                 panel=STYLE, metavar="W")
    tv_weight: float = option("--tv-weight", "Weight of the total-variation smoothness loss.", 0.0,
                              panel=STYLE, metavar="W")
    content_layers: tuple[str, ...] = option("--content-layers", "Content layers, e.g. conv4_2 or conv4_2,conv5_2; "
                                             "the backbone's default if not given (`hires-nst layers`).",
                                             DEFAULT_CONTENT_LAYERS, panel=EXPERIMENTS, metavar="LAYER[,...]",
                                             shown="backbone's")
    style_layers: tuple[str, ...] = option("--style-layers", "Style layers, e.g. conv1_1,conv2_1,conv3_1; the "
                                           "backbone's default if not given.", DEFAULT_STYLE_LAYERS,
                                           panel=EXPERIMENTS, metavar="LAYER[,...]", shown="backbone's")
    # Defaults chosen by sweeps scored with the independent scorer (docs/default-render.md):
    # halving paints the painting's motifs (Starry Night's swirls) and keeps the photo's subject;
    # descending (issue 17's default) kept the subject but painted no motif, equal painted over it.
    style_layer_weights: str = option("--style-layer-weights", "Weights of the style layers: halving (each half the "
                                      "one before: 16:8:4:2:1 for the default five; the default), descending (each a "
                                      "quarter: 256:64:16:4:1), equal (Gatys et al.), or one number per style layer "
                                      "(normalised to sum 1). Per pyramid stage: values separated by /, coarse to "
                                      "fine, the last for every finer stage (e.g. equal/descending).", "halving",
                                      panel=EXPERIMENTS, metavar="halving|descending|equal|W:W...[/...]")
    style_loss: str = option("--style-loss", "Style statistics compared: gram (Gatys et al., Gram matrices) or w2 "
                             "(Wasserstein-2 distance between Gaussian fits: mean and covariance; the default). Per "
                             "stage like --style-layer-weights (e.g. gram/w2).", "w2",
                             panel=STYLE, metavar="gram|w2[/...]")
    style_blend: tuple[float, ...] = option("--style-blend", "Blend weights of the style images, e.g. 0.7,0.3.", (),
                                            panel=STYLE, metavar="W,W...")
    preserve_color: str = option("--preserve-color", "Keep the photo's colours: off, luminance (style on luminance "
                                 "only) or match (recolour the style to the photo's palette).", "off",
                                 panel=STYLE, metavar="off|luminance|match")
    mask: str = option("--mask", "A mask image of the photo (resized to it): one region per colour, each styled as a "
                       "--region COLOUR=STYLE says.", "", panel=STYLE, metavar="FILE")
    photo: bool = option("--photo", "Photorealistic transfer (Luan et al. 2017; docs/photo.md): the style photo's "
                         "colours and light, the photo's lines kept straight, no brush texture. Fills in the "
                         "settings of PHOTO_MODE (e.g. --photo-weight) that no preset or flag gives.", False,
                         panel=STYLE)
    photo_weight: float = option("--photo-weight", "Weight of the photorealism regulariser: the Matting Laplacian of "
                                 "the photo (3x3 windows, eps 1e-7), per pixel; 0: off.", 0.0,
                                 panel=STYLE, metavar="W", shown="0; --photo: 1000")
    photo_smooth: str = option("--photo-smooth", "A last pass over the output at full size, guided by the photo: off, "
                               "guided (a guided filter) or affinity (closed-form Matting Laplacian smoothing).", "off",
                               panel=STYLE, metavar="off|guided|affinity")
    region: tuple[str, ...] = option("--region", "Where each style goes (repeat it): COLOUR=STYLE[:WEIGHT] with --mask "
                                     "(COLOUR a name, #rrggbb or grey level), or MASK.png:STYLE[:WEIGHT] with one "
                                     "grey-level mask per region; STYLE a PAINTING (its name or number) or photo to "
                                     "keep the photo. Unmasked places keep the photo.", (),
                                     panel=STYLE, metavar="COLOUR=STYLE[:W]", whole=True)


@dataclass(frozen=True)
class OptimConfig:
    optimizer: str = option("--optimizer", "lbfgs (as Gatys et al.; runs on the device), adam, adamw, sgd "
                            "(momentum 0.9), adagrad, adadelta, rmsprop, or lbfgs-torch (torch's L-BFGS, which reads "
                            "values back at every step).", "lbfgs", panel=EXPERIMENTS, metavar="NAME")
    lr: float = option("--lr", "Step size; 0 means the optimiser's default (lbfgs 1, adam/adamw 0.02, sgd 3e-4, "
                       "adagrad 0.05, adadelta 3, rmsprop 0.005).", 0.0,
                       panel=EXPERIMENTS, metavar="X", shown="per optimizer")
    init: str = option("--init", "Start from the content image, noise, or an image file.", "content",
                       panel=STYLE, metavar="content|noise|FILE")
    seed: int = option("--seed", "Random seed, for repeatable renders.", 0, panel=STYLE, metavar="N")
    # Measured (benchmarks/adam_warm_start.py, 64->128->256, 60/30/15 its): carried moments ended at
    # total loss 1.44 vs 1.37 restarting, so restarting is the default.
    warm_start: bool = option("--warm-start", "Adam, AdamW: carry their moments from stage to stage, resized.", False,
                              panel=EXPERIMENTS)
    tolerance: float = option("--tolerance", "End a stage early once its loss fell by less than this fraction over "
                              "the last --patience iterations (its iteration count is then a cap); 0: run every "
                              "iteration.", 0.005, panel=PYRAMID, metavar="FRACTION")
    patience: int = option("--patience", "Iterations over which --tolerance is judged.", 50, panel=PYRAMID, metavar="N")
    average_iterates: float = option("--average-iterates", "Write (and hand on to the next stage) the moving average "
                                     "of each stage's iterates with this decay, bias-corrected, e.g. 0.9; 0: the last "
                                     "iterate. Averaging cancels the steps' high-frequency jitter.", 0.0,
                                     panel=EXPERIMENTS, metavar="DECAY")


@dataclass(frozen=True)
class PyramidConfig:
    max_size: int = option("--max-size", "Long side of the output in pixels (--print-size, when given, overrides "
                           "it).", 512, panel=ESSENTIALS, metavar="PX")
    min_size: int = option("--min-size", "Long side of the first pyramid stage; 0 means 128 (or max-size if "
                           "smaller).", 0, panel=PYRAMID, metavar="PX", shown="128")
    scale_factor: float = option("--scale-factor", "Size ratio between pyramid stages.", 2.0,
                                 panel=PYRAMID, metavar="X")
    iterations: tuple[int, ...] = option("--iterations", "Iterations per stage: one number, or a list per stage.", (),
                                         panel=ESSENTIALS, metavar="N[,N...]", shown="300,150,80,50...")
    fit_iterations: bool = option("--fit-iterations", "Fit an --iterations list to any number of stages: stages past "
                                  "its end repeat its last value, a shorter pyramid takes its first values "
                                  "(the preview and screen presets set this).", False, panel=PYRAMID)
    style_scale: float = option("--style-scale", "Style image long side relative to the stage's output.", 1.0,
                                panel=STYLE, metavar="X")
    style_upscale: bool = option("--style-upscale", "Allow enlarging the style image past its own size.", False,
                                 panel=STYLE)


@dataclass(frozen=True)
class ModelConfig:
    backbone: str = option("--backbone", "Feature network: vgg19, vgg16 or resnet50 (ResNet renders are never "
                           "tiled).", "vgg19", panel=EXPERIMENTS, metavar="vgg19|vgg16|resnet50")
    weights: str = option("--weights", "Network weights: original (VGG19 only, offline), torchvision (downloads "
                          "once), random (untrained), or a file.", "original", panel=EXPERIMENTS, metavar="NAME|FILE")
    pooling: str = option("--pooling", "Pooling: max or avg (ResNet: its stem pooling).", "max",
                          panel=EXPERIMENTS, metavar="max|avg")
    preprocessing: str = option("--preprocessing", "Input preprocessing: auto (from the weights), caffe, "
                                "torchvision.", "auto", panel=EXPERIMENTS, metavar="auto|caffe|torchvision")


@dataclass(frozen=True)
class DeviceConfig:
    device: str = option("--device", "auto (CUDA if present, else CPU), cpu, cuda or cuda:N.", "auto",
                         panel=DEVICES, metavar="DEVICE")
    devices: str = option("--devices", "Render on several devices, one process (rank) each: all (every CUDA "
                          "device) or a list such as cuda:0,cuda:1 or cpu,cpu (overrides --device); empty: the one "
                          "--device. Several machines: torchrun (see docs/performance.md).", "",
                          panel=DEVICES, metavar="all|DEVICE,...")
    precision: str = option("--precision", "Number format of the VGG passes: auto (bf16 where the device does it "
                            "natively, else fp32), fp32, bf16, or fp16 (CUDA only, with loss scaling). The image, "
                            "Gram matrices and losses stay fp32.", "auto", panel=DEVICES, metavar="auto|fp32|bf16|fp16")
    sync_every: int = option("--sync-every", "Read the loss back from the device (progress, NaN check) every N "
                             "iterations; 0 means every iteration on a CPU, every 10 on CUDA.", 0,
                             panel=DEVICES, metavar="N", shown="1 CPU, 10 CUDA")


@dataclass(frozen=True)
class TileSize:
    """``--tile-size`` parsed: ``auto`` (sized from free memory when each stage starts), a fixed
    core side in ``pixels``, or off (neither)."""

    pixels: int | None = None
    auto: bool = False


# The smallest --tile-size a person may type: one cell of the pooling grid of VGG's deepest block
# (2**4 px; ``tiles.plan_tiles`` rounds a side down to its layers' grid, at least one cell). Not the
# smallest tile the render picks itself (``memmodel.MIN_AUTO_TILE``, 64 px: below it the halo
# dwarfs the core): a typed size is taken as it is, for tests and experiments.
MIN_TYPED_TILE = 16


def parse_tile_size(text: str) -> TileSize:
    """The one reading of ``--tile-size`` (``TilingConfig.size``): auto, off, or whole pixels >= 16."""
    if text == "auto":
        return TileSize(auto=True)
    if text == "off":
        return TileSize()
    if text.isdigit() and int(text) >= MIN_TYPED_TILE:
        return TileSize(int(text))
    raise _fail("tiling", "tile_size", f"must be auto, off or a whole number of pixels >= {MIN_TYPED_TILE}", text)


@dataclass(frozen=True)
class TilingConfig:
    # Kept as typed (a string) so that settings files and work-dir fingerprints stay as they were;
    # the engine reads ``size``.
    tile_size: str = option("--tile-size", "Exact tiled optimisation: auto (largest tile that fits the device's free "
                            "memory, untiled if the image fits), off, or a tile side in pixels.", "auto",
                            panel=DEVICES, metavar="auto|off|PX")
    halo: int = option("--halo", "Context around each tile in pixels; 0 means the exact minimum for the layers.", 0,
                       panel=DEVICES, metavar="PX", shown="exact minimum")

    @functools.cached_property  # not a field: to_dict and the fingerprint see only the typed text
    def size(self) -> TileSize:
        """``tile_size`` parsed once, by ``validate`` (the first to ask): what the engine reads."""
        return parse_tile_size(self.tile_size)


@dataclass(frozen=True)
class OutputConfig:
    work_dir: str = option("--work-dir", "Checkpoints of this render; empty means OUT.work beside the output "
                           "(out.png.work).", "", panel=CHECKPOINTS, metavar="DIR")
    save_every: int = option("--save-every", "Save the stage in progress every N iterations (0: never): --resume goes "
                             "on from there, and current.png shows it.", 0, panel=CHECKPOINTS, metavar="N")
    save_minutes: float = option("--save-minutes", "Save the stage in progress every N minutes (0: never), so that a "
                                 "crash or Ctrl-C loses at most that much of a long stage.", 10.0,
                                 panel=CHECKPOINTS, metavar="MIN")
    save_stages: bool = option("--save-stages", "Also write a contact sheet of every stage beside the output.", False,
                               panel=OUTPUT)
    keep_checkpoints: bool = option("--keep-checkpoints", "Keep the stage checkpoints (.pt) of a finished render in "
                                    "the work dir, so that a larger --max-size can reuse them; --no-keep-checkpoints "
                                    "deletes them once the output is written (stage PNGs and trace stay).", True,
                                    panel=CHECKPOINTS)
    animate: str = option("--animate", "Record the image as it evolves, across all stages, into this .gif, .webm "
                          "(plays in browsers) or .mp4.", "", panel=OUTPUT, metavar="FILE")
    animate_every: int = option("--animate-every", "With --animate: one frame every N iterations (and at each stage's "
                                "end).", 10, panel=OUTPUT, metavar="N")
    animate_size: int = option("--animate-size", "With --animate: long side of the frames in pixels (at most the "
                               "output's).", 512, panel=OUTPUT, metavar="PX")
    format: str = option("--format", "File format for an output named without an extension (png, tif, jpg); "
                         "an output's own extension always wins.", "", panel=OUTPUT, metavar="png|tif|jpg")
    bit_depth: int = option("--bit-depth", "Bits per channel of PNG/TIFF outputs: 8 or 16 (JPEG is always 8).", 8,
                            panel=OUTPUT, metavar="8|16")


@dataclass(frozen=True)
class PrintConfig:
    print_size: str = option("--print-size", "Paper size (A0-A6, letter, legal, tabloid) or WxH in mm, cm or in "
                             "(e.g. 500x700mm, 8x10in): sets the output size from --dpi and overrides --max-size.", "",
                             panel=ESSENTIALS, metavar="PAPER")
    dpi: int = option("--dpi", "Dots per inch: sizes --print-size, and is written into every output file.", 300,
                      panel=OUTPUT, metavar="DPI")
    fit: str = option("--fit", "With --print-size: fit (the whole photo inside the paper) or crop (fill the paper, "
                      "centre-cropping the photo to its aspect ratio).", "fit", panel=OUTPUT, metavar="fit|crop")
    orientation: str = option("--orientation", "With --print-size: auto (paper turned like the photo), portrait "
                              "or landscape.", "auto", panel=OUTPUT, metavar="auto|portrait|landscape")


@dataclass(frozen=True)
class InputConfig:
    max_input_pixels: int = option("--max-input-pixels", "Refuse input images with more pixels than this "
                                   "(decompression-bomb guard); raise it for trusted huge scans.", 250_000_000,
                                   panel=OUTPUT, metavar="N")


@dataclass(frozen=True)
class RenderConfig:
    loss: LossConfig = field(default_factory=LossConfig)
    optim: OptimConfig = field(default_factory=OptimConfig)
    pyramid: PyramidConfig = field(default_factory=PyramidConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    device: DeviceConfig = field(default_factory=DeviceConfig)
    tiling: TilingConfig = field(default_factory=TilingConfig)
    output: OutputConfig = field(default_factory=OutputConfig)
    print: PrintConfig = field(default_factory=PrintConfig)
    input: InputConfig = field(default_factory=InputConfig)

    def to_dict(self) -> dict[str, dict[str, Any]]:
        return {f.name: dataclasses.asdict(getattr(self, f.name)) for f in fields(self)}

    @property
    def lr(self) -> float:
        """The step size actually used."""
        return self.optim.lr or DEFAULT_LR[self.optim.optimizer]


SECTIONS: dict[str, type] = get_type_hints(RenderConfig)

# What --photo (loss.photo) sets where no layer set it: docs/photo.md gives the measurements.
PHOTO_MODE: dict[str, dict[str, Any]] = {"loss": {"photo_weight": 1000.0}}


def resolve(*layers: tuple[str, Mapping[str, Any]]) -> RenderConfig:
    """Merge ``(source, {section: {key: value}})`` layers in order, later ones winning."""
    merged: dict[str, dict[str, Any]] = {name: {} for name in SECTIONS}
    set_by: dict[tuple[str, str], int] = {}  # (section, key) -> index of the layer that set it last
    for index, (source, layer) in enumerate(layers):
        for section, values in layer.items():
            if section not in SECTIONS:
                hint = did_you_mean(section, SECTIONS)
                raise ConfigError(f"{source}: unknown section [{section}]; {hint + ' ' if hint else ''}"
                                  f"known: {', '.join(SECTIONS)}")
            if not isinstance(values, Mapping):
                raise ConfigError(f"{source}: [{section}] must be a table of settings")
            for key, value in values.items():
                merged[section][key] = _coerce(section, key, value, source)
                set_by[section, key] = index
    if merged["loss"].get("photo"):
        for section, values in PHOTO_MODE.items():
            for key, value in values.items():
                merged[section].setdefault(key, value)
    _adapt_first_stage(merged["pyramid"], set_by)
    _default_layers(merged)
    config = RenderConfig(**{name: cls(**merged[name]) for name, cls in SECTIONS.items()})
    validate(config)
    return config


def _adapt_first_stage(pyramid: dict[str, Any], set_by: Mapping[tuple[str, str], int]) -> None:
    """A --min-size from an earlier layer (a preset) than the --max-size gives way to it: the first
    stage goes back to the default (128 px, or the whole size when smaller). Set by the same layer, or
    typed after the size, a --min-size above --max-size stays an error that names both."""
    min_layer, max_layer = set_by.get(("pyramid", "min_size")), set_by.get(("pyramid", "max_size"))
    if min_layer is None or max_layer is None or min_layer >= max_layer:
        return
    if pyramid["min_size"] > pyramid["max_size"]:
        del pyramid["min_size"]


def _default_layers(merged: dict[str, dict[str, Any]]) -> None:
    """Layers not given come from the backbone (the dataclass defaults are VGG's)."""
    name = merged["model"].get("backbone", ModelConfig.backbone)
    if name not in BACKBONES:
        return  # validate() names the flag
    backbone = get_backbone(name)
    merged["loss"].setdefault("content_layers", backbone.content_layers)
    merged["loss"].setdefault("style_layers", backbone.style_layers)


# --style-layer-weights by name: each layer weighs this fraction of the one before it (equal: 1).
LAYER_RATIOS = {"descending": 4.0, "halving": 2.0}
STAGE_SEPARATOR = "/"  # --style-layer-weights equal/descending: one value per pyramid stage, coarse to fine


def at_stage(text: str, stage: int) -> str:
    """A per-stage setting's value at ``stage`` (0-based): ``a/b/c`` gives a, b, then c for every
    later stage; a value without ``/`` holds for all."""
    parts = [p.strip() for p in text.split(STAGE_SEPARATOR)]
    return parts[min(stage, len(parts) - 1)]


def stage_parts(text: str) -> list[str]:
    """Every value a per-stage setting names (for validation)."""
    return [p.strip() for p in text.split(STAGE_SEPARATOR)]


def parse_layer_weights(text: str, layers: Sequence[str]) -> tuple[float, ...] | None:
    """``--style-layer-weights``: None for ``equal``, else one weight >= 0 per layer (positive sum).

    ``halving`` is 16:8:4:2:1 for the default five layers, ``descending`` crowsonkb's 256:64:16:4:1,
    and the same ratios for any other number of them.
    """
    if text.strip() == "equal":
        return None
    if text.strip() in LAYER_RATIOS:
        ratio = LAYER_RATIOS[text.strip()]
        return tuple(ratio ** (len(layers) - 1 - i) for i in range(len(layers)))
    flag = "--style-layer-weights"
    try:
        weights = tuple(float(v) for v in text.replace(":", ",").split(",") if v.strip())
    except ValueError:
        raise ConfigError(f"{flag} must be 'halving', 'descending', 'equal' or numbers like 16:8:4:2:1, "
                          f"got {text!r}") from None
    if len(weights) != len(layers):
        raise ConfigError(f"{flag} has {len(weights)} weights for {len(layers)} style layers ({', '.join(layers)})")
    if any(not w >= 0 for w in weights) or sum(weights) <= 0 or sum(weights) == float("inf"):
        raise ConfigError(f"{flag} needs finite weights >= 0 with a positive sum, got {text!r}")
    return weights


def load_toml(path: str | Path) -> dict[str, Any]:
    """Read a settings TOML file, with errors that name the file."""
    path = Path(path)
    try:
        return tomllib.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise ConfigError(f"settings file not found: {path}") from None
    except (tomllib.TOMLDecodeError, UnicodeDecodeError) as exc:
        raise ConfigError(f"{path}: not valid TOML ({exc})") from None


def all_settings() -> list[Setting]:
    """Every setting of every section (read on each call, so that a section replaced in a test counts)."""
    return list(settings_of(SECTIONS))


def named_layer(values: Mapping[str, Any], source: str, taken: Collection[str] = ()) -> dict[str, dict[str, Any]]:
    """Settings by their own names (``max_size=1024``: flags, keywords) as a layer ``{section: {name: value}}``.
    A name no section declares, or one in ``taken`` (the caller's own parameters), is an error naming it."""
    section_of = {s.name: s.section for s in all_settings() if s.name not in taken}
    layer: dict[str, dict[str, Any]] = {}
    for name, value in values.items():
        if name not in section_of:  # the name meant; every name (there are 50) only when none is close
            hint = did_you_mean(name, section_of) or f"known: {', '.join(sorted(section_of))}"
            raise ConfigError(f"{source}: unknown setting {name!r}; {hint}")
        layer.setdefault(section_of[name], {})[name] = value
    return layer


def flag_of(section: str, key: str) -> str:
    return _option(section, key).flag


def _option(section: str, key: str) -> Option:
    return option_of({f.name: f for f in fields(SECTIONS[section])}[key])


def _coerce(section: str, key: str, value: Any, source: str) -> Any:
    known = {f.name for f in fields(SECTIONS[section])}
    if key not in known:
        raise ConfigError(f"{source}: unknown setting {section}.{key}; {_elsewhere(key, section)}"
                          f"known in [{section}]: {', '.join(sorted(known))}")
    kind = get_type_hints(SECTIONS[section])[key]
    where = f"{source}: {section}.{key} ({flag_of(section, key)})"
    if _option(section, key).whole and isinstance(value, str):
        value = [value]
    try:
        return _convert(kind, value)
    except (TypeError, ValueError, OverflowError):  # OverflowError: int(inf)
        problem = f"must be {_describe(kind)}, got {value!r}"
        raise ConfigError(f"{where} {problem}", setting=key, problem=problem, source=source) from None


def _elsewhere(key: str, section: str) -> str:
    """Where a preset key that ``section`` lacks belongs (another table), or the name it is close to."""
    home = [s.section for s in all_settings() if s.name == key]
    if home:
        return f"{key} is a [{home[0]}] setting; "
    hint = did_you_mean(key, [f.name for f in fields(SECTIONS[section])])
    return f"{hint} " if hint else ""


def _convert(kind: Any, value: Any) -> Any:
    if kind is bool or isinstance(value, bool):
        if not isinstance(value, bool) or kind is not bool:
            raise TypeError
        return value
    if kind in (int, float):
        if isinstance(value, str):
            value = value.strip()
        number = kind(value)
        if kind is int and isinstance(value, float) and not value.is_integer():
            raise ValueError
        return number
    if kind is str:
        if not isinstance(value, (str, Path)):
            raise TypeError
        return str(value)
    item = kind.__args__[0]  # tuple[X, ...]
    if isinstance(value, str):
        value = [v for v in value.replace(":", ",").split(",") if v.strip()]
    elif not isinstance(value, Sequence):
        value = [value]
    return tuple(_convert(item, v) for v in value)


def _describe(kind: Any) -> str:
    if kind in (int, float, str, bool):
        return {int: "an integer", float: "a number", str: "a string", bool: "true or false"}[kind]
    plural = {int: "integers", float: "numbers", str: "strings", bool: "true/false values"}[kind.__args__[0]]
    return f"a list of {plural} (e.g. 1,2,3)"


def _fail(section: str, key: str, message: str, value: Any) -> ConfigError:
    """The error of one setting: worded with its flag; ``setting`` and ``problem`` let ``stylize()`` word it
    with its keyword instead."""
    problem = f"{message}, got {value!r}"
    return ConfigError(f"{flag_of(section, key)} ({section}.{key}) {problem}", setting=key, problem=problem)


# Numbers: every float finite, every int a 64-bit one (torch and numpy take them), unless named here.
INT64 = (-(2**63), 2**63 - 1)
INT_RANGES = {("optim", "seed"): (-(2**63), 2**64 - 1)}  # torch.manual_seed's range
MAX_LOSS_WEIGHT = 1e12  # the losses are relative (content 1, style 10 by default): far beyond any use
MAX_STYLE_SCALE = 16.0  # a painting 16x the stage's long side holds 256x its pixels


def _check_numbers(config: RenderConfig) -> None:
    """Every number of every section, found by type (a field added later is covered too)."""
    for section, cls in SECTIONS.items():
        hints = _hints(cls)
        for f in fields(cls):
            value = getattr(getattr(config, section), f.name)
            for number in value if isinstance(value, tuple) else (value,):
                if isinstance(number, bool) or hints[f.name] is bool:
                    continue
                if isinstance(number, float) and not math.isfinite(number):
                    raise _fail(section, f.name, "must be a finite number", value)
                low, high = INT_RANGES.get((section, f.name), INT64)
                if isinstance(number, int) and not low <= number <= high:
                    raise _fail(section, f.name, f"must be between {low} and {high}", value)


@functools.cache
def _hints(cls: type) -> dict[str, Any]:
    return get_type_hints(cls)


def _check_loss_numbers(loss: LossConfig) -> None:
    for key in ("content_weight", "style_weight", "tv_weight", "photo_weight"):
        if not 0 <= getattr(loss, key) <= MAX_LOSS_WEIGHT:
            raise _fail("loss", key, f"must be >= 0 and at most {MAX_LOSS_WEIGHT:g}", getattr(loss, key))
    blend = loss.style_blend
    if any(w < 0 for w in blend) or (blend and not 0 < sum(blend) < math.inf):
        raise _fail("loss", "style_blend", "needs finite weights >= 0 with a positive sum", blend)


def validate(config: RenderConfig) -> None:
    """Range checks that no type can express. Raises ConfigError naming the flag."""
    loss, optim, pyramid, model = config.loss, config.optim, config.pyramid, config.model
    _check_loss_numbers(loss)
    _validate_model(config)
    if not loss.style_layers:
        raise _fail("loss", "style_layers", "needs at least one layer", loss.style_layers)
    for part in stage_parts(loss.style_layer_weights):
        parse_layer_weights(part, loss.style_layers)
    if any(part not in STYLE_LOSSES for part in stage_parts(loss.style_loss)):
        raise _fail("loss", "style_loss", f"must be one of {', '.join(STYLE_LOSSES)} (or one per stage, e.g. "
                    "gram/w2)", loss.style_loss)
    if loss.photo_smooth not in PHOTO_SMOOTHING:
        raise _fail("loss", "photo_smooth", f"must be one of {', '.join(PHOTO_SMOOTHING)}", loss.photo_smooth)
    if loss.preserve_color not in COLOR_MODES:
        raise _fail("loss", "preserve_color", f"must be one of {', '.join(COLOR_MODES)}", loss.preserve_color)
    _validate_regions(config)
    _validate_tiling(config)
    _validate_output(config.output)
    single_device(config.device.device, flag_of("device", "device"))  # their names; the machine: placement
    device_list(config.device.devices, flag_of("device", "devices"))
    if config.device.precision not in PRECISIONS:
        raise _fail("device", "precision", f"must be one of {', '.join(PRECISIONS)}", config.device.precision)
    if config.device.sync_every < 0:
        raise _fail("device", "sync_every", "must be >= 0", config.device.sync_every)
    if optim.optimizer not in OPTIMIZERS:
        raise _fail("optim", "optimizer", f"must be one of {', '.join(OPTIMIZERS)}", optim.optimizer)
    if optim.lr < 0:
        raise _fail("optim", "lr", "must be > 0 (or 0 for the default)", optim.lr)
    if not 0 <= optim.tolerance < 1:  # also refuses nan
        raise _fail("optim", "tolerance", "must be >= 0 and < 1 (0: never stop early)", optim.tolerance)
    if optim.patience < 1:
        raise _fail("optim", "patience", "must be >= 1", optim.patience)
    if not 0 <= optim.average_iterates < 1:  # also refuses nan
        raise _fail("optim", "average_iterates", "must be >= 0 and < 1 (0: off)", optim.average_iterates)
    if pyramid.max_size < 16:
        raise _fail("pyramid", "max_size", "must be at least 16 pixels", pyramid.max_size)
    if pyramid.min_size < 0 or 0 < pyramid.min_size < 16:
        raise _fail("pyramid", "min_size", "must be at least 16 pixels", pyramid.min_size)
    check_pyramid(pyramid.min_size, pyramid.max_size, pyramid.scale_factor)  # again with a print size's max
    if any(n < 1 for n in pyramid.iterations):
        raise _fail("pyramid", "iterations", "must be >= 1", pyramid.iterations)
    if not 0 < pyramid.style_scale <= MAX_STYLE_SCALE:
        raise _fail("pyramid", "style_scale", f"must be > 0 and at most {MAX_STYLE_SCALE:g}", pyramid.style_scale)
    if model.pooling not in POOLINGS:
        raise _fail("model", "pooling", f"must be one of {', '.join(POOLINGS)}", model.pooling)
    if model.preprocessing not in ("auto", "caffe", "torchvision"):
        raise _fail("model", "preprocessing", "must be auto, caffe or torchvision", model.preprocessing)
    _validate_files(config)
    _check_numbers(config)  # last: the checks above say a number's range where they know it


def _validate_files(config: RenderConfig) -> None:
    """Output format, print size and input limits."""
    output, printing = config.output, config.print
    if output.format and output.format.lower() not in OUTPUT_FORMATS:
        raise _fail("output", "format", "must be png, tif or jpg", output.format)
    if output.bit_depth not in (8, 16):
        raise _fail("output", "bit_depth", "must be 8 or 16", output.bit_depth)
    if not 1 <= printing.dpi <= MAX_DPI:
        raise _fail("print", "dpi", f"must be between 1 and {MAX_DPI}", printing.dpi)
    if printing.fit not in FITS:
        raise _fail("print", "fit", f"must be one of {', '.join(FITS)}", printing.fit)
    if printing.orientation not in ORIENTATIONS:
        raise _fail("print", "orientation", f"must be one of {', '.join(ORIENTATIONS)}", printing.orientation)
    if printing.print_size:
        paper_pixels(printing.print_size, printing.dpi)  # raises ConfigError naming --print-size
    if config.input.max_input_pixels < 1:
        raise _fail("input", "max_input_pixels", "must be at least 1", config.input.max_input_pixels)


def _validate_model(config: RenderConfig) -> None:
    """Backbone, its layer names and its weights."""
    model = config.model
    if model.backbone not in BACKBONES:
        raise _fail("model", "backbone", f"must be one of {', '.join(BACKBONES)}", model.backbone)
    backbone = get_backbone(model.backbone)
    for key in ("content_layers", "style_layers"):
        for name in getattr(config.loss, key):
            backbone.canonical(name)
    if model.weights == "original" and model.backbone != "vgg19":
        raise _fail("model", "weights", "original (the Caffe VGG19) exists only for --backbone vgg19; use "
                    "torchvision, random or a file", model.weights)


def _validate_tiling(config: RenderConfig) -> None:
    """--tile-size, read here into ``TilingConfig.size`` (once: the engine reads that), and --halo."""
    tiling, backbone = config.tiling, config.model.backbone
    if tiling.size.pixels is not None and not get_backbone(backbone).tileable:
        raise _fail("tiling", "tile_size", f"is not available with --backbone {backbone}: tiling is exact "
                    "only for VGG backbones (use auto or off: ResNet renders run untiled)", tiling.tile_size)
    if tiling.halo < 0:
        raise _fail("tiling", "halo", "must be >= 0", tiling.halo)


def _validate_regions(config: RenderConfig) -> None:
    """--mask and --region: their syntax (regionspec), and what they cannot be combined with."""
    loss = config.loss
    if not loss.mask and not loss.region:
        return
    from hires_nst.config.regionspec import parse_regions  # here: Pillow's colour names, which --help needs not

    parse_regions(loss.mask, loss.region)
    if loss.style_blend:
        raise _fail("loss", "style_blend", "cannot be combined with --region (each region has its own style)",
                    loss.style_blend)
    if not get_backbone(config.model.backbone).tileable:
        raise _fail("loss", "region", f"needs a VGG backbone (guides follow VGG's pooling), not "
                    f"{config.model.backbone}", loss.region)


def _validate_output(output: OutputConfig) -> None:
    if output.save_every < 0:
        raise _fail("output", "save_every", "must be >= 0", output.save_every)
    if not output.save_minutes >= 0:  # also refuses nan
        raise _fail("output", "save_minutes", "must be >= 0", output.save_minutes)
    if output.animate and Path(output.animate).suffix.lower() not in VIDEO_SUFFIXES:
        raise _fail("output", "animate", "must end in .gif, .webm or .mp4", output.animate)
    if output.animate_every < 1:
        raise _fail("output", "animate_every", "must be >= 1", output.animate_every)
    if output.animate_size < 16:
        raise _fail("output", "animate_size", "must be at least 16 pixels", output.animate_size)
