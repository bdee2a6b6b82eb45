"""What a render is asked to do and what it returns: plain records that batch, CLI and outputs share."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from hires_nst.config.settings import RenderConfig


@dataclass(frozen=True)
class RenderJob:
    content: Path
    styles: tuple[Path, ...]
    output: Path
    config: RenderConfig = field(default_factory=RenderConfig)
    resume: bool = False  # reuse the finished stages in the work dir
    restart: bool = False  # discard whatever the work dir holds
    resume_command: str = ""  # the command line that continues this render (messages say it); "" for a batch


@dataclass(frozen=True)
class RenderResult:
    output: Path
    settings: Path
    width: int
    height: int
    seconds: float
    losses: dict[str, float]  # final losses at the output size
    work_dir: Path
    stages_reused: int = 0
