"""The new-run form: which config keys it offers, and the config file it writes from them.

Each knob is a key of the config schema; its description, type and default are read from the
schema (``lorakit.config_file.reference``), never restated here. What the form leaves out can
be given as ``key=value`` lines, read exactly as ``lorakit train --set`` reads them, so every
setting of the schema is reachable and none exists only in the UI. The file written is an
ordinary YAML config; :func:`write_config` checks it with ``load_config``, the loader
``lorakit train`` uses, before anything is started.
"""

from __future__ import annotations

import re
import typing
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from lorakit.config import EMBEDDED_MODEL, RunConfig
from lorakit.config_file import apply_override, load_config, reference
from lorakit.hub import looks_like_hub_id
from lorakit.outputs import write_text
from lorakit.ui.guard import Access, UIError

# The keys that matter for a first run, in the order the form shows them.
KNOBS = ("model.name", "data.train", "method", "train.max_steps", "train.epochs", "train.batch_size",
         "train.learning_rate", "lora.rank", "lora.alpha", "data.max_length", "train.logging_steps",
         "train.save_steps", "data.val_fraction")
# Knobs whose value is text (a name or a path): taken as given, not parsed as YAML (a path may hold ':').
TEXT_KNOBS = ("model.name", "data.train")
NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,63}")


@dataclass(frozen=True)
class Knob:
    key: str
    type: str
    default: str
    description: str
    choices: list[str]  # a Literal's values, for a select; empty for free input


def _choices(key: str) -> list[str]:
    model: Any = RunConfig
    parts = key.split(".")
    for part in parts[:-1]:
        model = model.model_fields[part].annotation
    annotation = model.model_fields[parts[-1]].annotation
    return [str(a) for a in typing.get_args(annotation)] if typing.get_origin(annotation) is typing.Literal else []


def knobs() -> list[Knob]:
    """The form's fields, each as the schema describes it."""
    keys = {k.name: k for k in reference()}
    return [Knob(name, keys[name].type, keys[name].default, keys[name].description, _choices(name)) for name in KNOBS]


@dataclass(frozen=True)
class Written:
    """A config file the form wrote, its text, and the config ``lorakit train`` resolves from it."""

    path: Path
    text: str
    config: RunConfig


def _local_paths(raw: dict[str, Any], access: Access) -> None:
    """Data files and a local model folder: refused outside the folders the dashboard may read, else made absolute.

    Absolute, because the dashboard reads a relative path from where it runs and ``lorakit train``
    from the config file's folder; written whole, both read the same file.
    """
    data = raw.get("data", {})
    for i, source in enumerate(data.get("train") or []):
        hub = source.startswith("hub:") or (looks_like_hub_id(source, file_like=False) and not Path(source).exists())
        if isinstance(source, str) and not hub:
            data["train"][i] = str(access.path(source, "data.train"))
    name = raw.get("model", {}).get("name")
    if isinstance(name, str) and name != EMBEDDED_MODEL and (name.startswith((".", "/", "~")) or Path(name).exists()):
        raw["model"]["name"] = str(access.path(name, "model.name"))


def build(name: str, values: dict[str, str], extra: str, access: Access) -> dict[str, Any]:
    """The config's mapping: the form's values, then the ``key=value`` lines, then the run's name and folder."""
    if not NAME.fullmatch(name or ""):
        raise UIError(f"run name {name!r}: use letters, digits, '_', '-' or '.', starting with a letter or digit")
    raw: dict[str, Any] = {}
    for key, value in values.items():
        if key not in KNOBS:
            raise UIError(f"{key!r} is not a field of the form; give it as a key=value line")
        if value is None or not str(value).strip():
            continue  # left empty: the schema's default
        if key in TEXT_KNOBS:
            apply_override(raw, f"{key}=null")  # makes the sections, then the text goes in as text
            section, _, leaf = key.partition(".")
            raw[section][leaf] = [str(value).strip()] if key == "data.train" else str(value).strip()
        else:
            apply_override(raw, f"{key}={value}")
    for line in extra.splitlines():
        if line.strip() and not line.lstrip().startswith("#"):
            apply_override(raw, line.strip())
    raw["name"] = name
    raw["output_dir"] = str(access.run_path(name))
    _local_paths(raw, access)
    return raw


def write_config(path: Path, raw: dict[str, Any]) -> Written:
    """Write ``raw`` as YAML at ``path`` and load it back as ``lorakit train`` would; refused as it would be."""
    text = "# written by lorakit ui; train it with: lorakit train " + path.name + "\n"
    text += yaml.safe_dump(raw, sort_keys=False, allow_unicode=True)
    write_text(path, text, "the run's config")
    return Written(path, text, load_config(path))
