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

from lorakit.config import EMBEDDED_MODEL, TEMPLATE_SUFFIXES, RunConfig
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
NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,63}")  # a run's name, an uploaded file's: one plain folder entry
DATA_SUFFIXES = (".jsonl", ".json", ".csv", ".tsv", ".parquet")  # what an uploaded data file may be


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


def _local(text: str, key: str, access: Access, hub_like: bool = False) -> str:
    """A local path made absolute, refused outside the allowed folders; a hub name left as it is."""
    if hub_like and (text.startswith("hub:") or (looks_like_hub_id(text, file_like=False) and not Path(text).exists())):
        return text
    return str(access.path(text, key))


def _sources(value: Any, key: str, access: Access) -> Any:
    """``data.train`` or ``data.eval``: one source or a list, each a path or a ``{path: ...}`` mapping."""
    if isinstance(value, list):
        return [_sources(v, key, access) for v in value]
    if isinstance(value, dict) and isinstance(value.get("path"), str):
        return {**value, "path": _local(value["path"], key, access, hub_like=True)}
    return _local(value, key, access, hub_like=True) if isinstance(value, str) else value


def _code_file(spec: Any, key: str, access: Access) -> Any:
    """``file.py:function`` (a scorer, a reward): the file is a local path; ``package.module:function`` is not."""
    file, colon, function = spec.rpartition(":") if isinstance(spec, str) else ("", "", "")
    return f"{_local(file, key, access)}:{function}" if colon and file.endswith(".py") else spec


def _local_paths(raw: dict[str, Any], access: Access) -> None:
    """Every local file the config names: refused outside the folders the dashboard may read, else made absolute.

    Absolute, because the dashboard reads a relative path from where it runs and ``lorakit train``
    from the config file's folder; written whole, both read the same file. The caches are not
    among them: they are written, never shown.
    """
    data, model = raw.get("data") or {}, raw.get("model") or {}
    for key in ("train", "eval"):
        if key in data:
            data[key] = _sources(data[key], f"data.{key}", access)
    if isinstance(data.get("template"), str) and data["template"].endswith(TEMPLATE_SUFFIXES):
        data["template"] = _local(data["template"], "data.template", access)
    name = model.get("name")
    if isinstance(name, str) and name != EMBEDDED_MODEL and (name.startswith((".", "/", "~")) or Path(name).exists()):
        model["name"] = _local(name, "model.name", access)
    if isinstance(model.get("adapter"), str):
        model["adapter"] = _local(model["adapter"], "model.adapter", access)
    if isinstance((raw.get("eval") or {}).get("scorer"), str):
        raw["eval"]["scorer"] = _code_file(raw["eval"]["scorer"], "eval.scorer", access)
    if isinstance((raw.get("grpo") or {}).get("rewards"), list):
        raw["grpo"]["rewards"] = [_code_file(r, "grpo.rewards", access) for r in raw["grpo"]["rewards"]]


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
