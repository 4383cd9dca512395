"""The root configuration of rollforge: one dataclass tree, defaults = the tiny CPU setup.

Sections are owned by the package that uses them (pipeline.config for the generator); later
stages add theirs here. Load with `infra.config.load_config(Config, path, overrides)`.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from pipeline.config import GeneratorConfig


@dataclass
class OutputConfig:
    """Where a command writes when it is not told otherwise."""

    dir: str = "outputs"


@dataclass
class Config(GeneratorConfig):
    output: OutputConfig = field(default_factory=OutputConfig)
