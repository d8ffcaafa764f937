"""The training methods, by the name the config's ``method`` takes.

Adding a method is a module here (see ``base.Method``), its line below, its tests and its docs.
"""

from __future__ import annotations

from lorakit.config import RunConfig
from lorakit.train.methods.base import Method
from lorakit.train.methods.dpo import DPO
from lorakit.train.methods.grpo import GRPO
from lorakit.train.methods.kto import KTO
from lorakit.train.methods.orpo import ORPO
from lorakit.train.methods.sft import SFT
from lorakit.train.methods.simpo import SimPO

METHODS: dict[str, type[Method]] = {m.name: m for m in (SFT, DPO, ORPO, SimPO, KTO, GRPO)}


def method_for(cfg: RunConfig) -> Method:
    """The configured method, with its settings; a ConfigError for settings it cannot train with."""
    method = METHODS[cfg.method]
    method.check(cfg)
    return method.from_config(cfg)
