"""A config as the user writes it: a YAML file plus ``--set key=value`` overrides, validated and resolved.

Validation errors name the key and, for a typo, the closest real key (``did you mean
lora.rank?``); data paths are made relative to the config file. ``reference`` lists every
key of the schema (``lorakit.config``) with its default and description, for ``lorakit config show``.
"""

from __future__ import annotations

import difflib
import json
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml
from pydantic import BaseModel, ValidationError
from pydantic_core import PydanticUndefined

from lorakit.config import TEMPLATE_SUFFIXES, ConfigError, DataSource, RunConfig
from lorakit.config.section import section_of
from lorakit.hub import looks_like_hub_id
from lorakit.outputs import write_text
from lorakit.paths import link_problem, resolve


class YamlLoader(yaml.SafeLoader):
    """PyYAML's safe loader, reading ``1e-4`` as a number as YAML 1.2 does.

    PyYAML follows YAML 1.1, where a float needs a dot (``1.0e-4``) and ``1e-4`` is a string;
    the strict config refuses a string for a number, and ``--set train.learning_rate=2e-5`` must
    keep working. A quoted ``"1e-4"`` stays a string, and is refused.
    """


YamlLoader.add_implicit_resolver(
    "tag:yaml.org,2002:float", re.compile(r"^[-+]?[0-9][0-9_]*(\.[0-9_]*)?[eE][-+]?[0-9]+$"), list("-+0123456789")
)


def read_yaml(text: str) -> Any:
    return yaml.load(text, Loader=YamlLoader)  # a SafeLoader: tags such as !!python/object are refused


# A strict field's kind of error: what it expects, in the words of the YAML (or JSON) that
# gave it, and the types that would have filled it.
_EXPECTED = {"int_type": ("an integer", (int,)), "float_type": ("a number", (int, float)),
             "bool_type": ("true or false", (bool,)), "string_type": ("a string", (str,)),
             "list_type": ("a list", (list,)), "dict_type": ("a mapping", (dict,))}
_KINDS = {bool: "a boolean", int: "an integer", float: "a decimal number", str: "a string", list: "a list",
          dict: "a mapping"}


def _mismatch(key: str, error_type: str, value: Any) -> str:
    """``lora.rank: expected an integer, got true (a boolean)``."""
    expected, fits = _EXPECTED[error_type]
    try:
        text = json.dumps(value)
    except (TypeError, ValueError):
        text = repr(value)
    got = "null" if value is None else f"{text} ({_KINDS.get(type(value), type(value).__name__)})"
    # "8", "1e-3", "true": the quotes made a string of what the field wanted.
    hint = "; write it without quotes" if isinstance(value, str) and type(_unquoted(value)) in fits else ""
    return f"{key}: expected {expected}, got {got}{hint}"


def _unquoted(text: str) -> Any:
    try:
        return read_yaml(text)
    except yaml.YAMLError:
        return text


def problems(err: ValidationError, model: type[BaseModel] = RunConfig, option: bool = False) -> list[str]:
    """One line per problem: the key, what is wrong, and for a typo the closest real key.

    ``option``: the fields are a command's options, named as on its command line (``--max-new-tokens``).
    """
    lines = []
    for e in err.errors():
        key = ".".join(str(p) for p in e["loc"])
        key = "--" + key.replace("_", "-") if option else key
        message = e["msg"].removeprefix("Value error, ")
        if e["type"] == "extra_forbidden":
            lines.append(f"unknown key '{key}'{_suggest(model, tuple(e['loc']))}")
        elif not e["loc"]:  # a check across sections (a model validator): its message says it all
            lines.append(message)
        elif e["type"] in _EXPECTED:
            lines.append(_mismatch(key, e["type"], e["input"]))
        else:
            lines.append(f"{key}: {message}")
    return lines


def _suggest(model_cls: type[BaseModel], loc: tuple[Any, ...]) -> str:
    """Walk ``loc`` down the nested models and offer the closest real key."""
    cls: Any = model_cls
    for part in loc[:-1]:
        field = cls.model_fields.get(part) if isinstance(part, str) else None
        # An optional section (``QuantizationConfig | None``) suggests from the section's keys.
        cls = section_of(field) if field is not None else None
        if cls is None:
            return ""
    prefix = ".".join(str(p) for p in loc[:-1])
    close = difflib.get_close_matches(str(loc[-1]), list(cls.model_fields), n=1, cutoff=0.5)
    if close:
        return f" (did you mean {prefix + '.' if prefix else ''}{close[0]}?)"
    return f" (known keys: {', '.join(cls.model_fields)})"


def _validate(raw: dict[str, Any], source: str) -> RunConfig:
    try:
        return RunConfig.model_validate(raw)
    except ValidationError as err:
        lines = "\n".join(f"  {line}" for line in problems(err))
        raise ConfigError(f"invalid configuration in {source}:\n{lines}") from None


def apply_override(raw: dict[str, Any], assignment: str) -> None:
    """Apply one ``a.b.c=value`` override; the value is parsed as YAML (numbers, lists, null)."""
    if "=" not in assignment:
        raise ConfigError(f"override '{assignment}' must look like key=value, e.g. lora.rank=8")
    key, text = assignment.split("=", 1)
    parts = key.strip().split(".")
    node = raw
    for part in parts[:-1]:
        child = node.setdefault(part, {})
        if not isinstance(child, dict):
            raise ConfigError(f"override '{assignment}': '{part}' is not a section")
        node = child
    try:
        node[parts[-1]] = read_yaml(text) if text.strip() else None
    except yaml.YAMLError as err:
        # One line, as the CLI prints it: the parser's own message spans several, with a caret.
        problem = getattr(err, "problem", None) or str(err).splitlines()[0]
        raise ConfigError(f"--set {assignment}: the value is not valid YAML ({problem}); quote it to pass it as "
                          f"text, e.g. --set '{key.strip()}=\"...\"', or write it as YAML (8, 1e-4, true, [a, b])"
                          ) from None


def _resolve_source(source: DataSource, base: Path, key: str) -> DataSource:
    """Make a local path absolute; leave hub names alone (they have no folder to be relative to)."""
    text = source.path
    if text.startswith("hub:"):
        return source
    path = Path(text).expanduser()
    if not path.is_absolute():
        local = base / path
        # A link that leads nowhere is still a local file, to be named as such, not a hub name.
        if looks_like_hub_id(text, file_like=False) and not local.exists() and not link_problem(local):
            return source
        path = local
    return source.model_copy(update={"path": str(resolve(path, ConfigError, key))})


def _resolve_paths(cfg: RunConfig, base: Path) -> RunConfig:
    """Data files are relative to the config file, so a config folder can be moved whole."""

    def fix(p: Path, key: str) -> Path:
        p = p.expanduser()
        return p if p.is_absolute() else resolve(base / p, ConfigError, key)

    cfg.data.train = [_resolve_source(s, base, "data.train") for s in cfg.data.train]
    cfg.data.eval = [_resolve_source(s, base, "data.eval") for s in cfg.data.eval]
    if cfg.data.template.endswith(TEMPLATE_SUFFIXES):
        cfg.data.template = str(fix(Path(cfg.data.template), "data.template"))
    if cfg.data.hub_cache is not None:
        cfg.data.hub_cache = fix(cfg.data.hub_cache, "data.hub_cache")
    if cfg.model.adapter is not None:  # a run folder, like output_dir relative to where the command runs
        cfg.model.adapter = resolve(cfg.model.adapter.expanduser(), ConfigError, "model.adapter")
    name_path = Path(cfg.model.name).expanduser()
    if not name_path.is_absolute() and (base / name_path).exists():
        cfg.model.name = str((base / name_path).resolve())
    if cfg.eval.scorer and cfg.eval.scorer.rpartition(":")[0].endswith(".py"):
        file, _, function = cfg.eval.scorer.rpartition(":")
        cfg.eval.scorer = f"{fix(Path(file), 'eval.scorer')}:{function}"
    return cfg


def load_config(path: Path | None, overrides: list[str] | None = None) -> RunConfig:
    """Read YAML (or start from defaults), apply overrides, validate, resolve paths."""
    raw: dict[str, Any] = {}
    base = Path.cwd()
    source = "defaults"
    if path is not None:
        if not path.exists():
            raise ConfigError(f"config file {path} does not exist")
        if path.is_dir():
            raise ConfigError(f"{path} is a folder; give the YAML config file itself (e.g. {path / 'config.yaml'})")
        try:
            loaded = read_yaml(path.read_text(encoding="utf-8"))
        except UnicodeDecodeError as err:
            raise ConfigError(f"{path} is not a text file (byte {err.start} is not UTF-8); "
                              "give a YAML config file") from None
        except OSError as err:
            raise ConfigError(f"cannot read the config file {path}: {err.strerror}") from None
        except yaml.YAMLError as err:
            raise ConfigError(f"{path} is not valid YAML: {err}") from None
        if loaded is not None and not isinstance(loaded, dict):
            raise ConfigError(f"{path} must hold a mapping of settings at the top level")
        raw = loaded or {}
        raw.setdefault("name", path.stem)
        base = path.resolve().parent
        source = str(path)
    for assignment in overrides or []:
        apply_override(raw, assignment)
    cfg = _validate(raw, source)
    # What the chosen method cannot train with (pairs data for SFT, packing for pairs) is refused
    # here too, so every command that loads the config refuses it. Imported here: the methods
    # import the config's schema, and the schema names no method's needs.
    from lorakit.train.methods import method_for

    method_for(cfg)
    return _resolve_paths(cfg, base)


def save_config(cfg: RunConfig, path: Path) -> None:
    data = cfg.model_dump(mode="json")
    write_text(path, yaml.safe_dump(data, sort_keys=False, allow_unicode=True), "the run's config")


def read_saved_config(path: Path) -> RunConfig:
    """Read a config written by :func:`save_config` (paths already resolved)."""
    return _validate(read_yaml(path.read_text(encoding="utf-8")), str(path))


@dataclass(frozen=True)
class Key:
    """One setting of the schema: its dotted name, its type, its default and what it does."""

    name: str
    type: str
    default: str
    description: str


def _type_name(annotation: Any) -> str:
    text = str(annotation).replace("typing.", "").replace("pathlib.", "")
    return text.removeprefix("<class '").removesuffix("'>")


def _default(field: Any) -> str:
    if field.default is not PydanticUndefined:
        return "null" if field.default is None else str(field.default)
    return str(field.default_factory()) if field.default_factory is not None else "(required)"


def reference(model: type[BaseModel] = RunConfig, prefix: str = "") -> list[Key]:
    """Every key of ``model``, sections first-level-down in order, each with its default and description."""
    keys: list[Key] = []
    for name, field in model.model_fields.items():
        section = section_of(field)
        if section is not None and section is not DataSource:
            if field.description:  # an optional section (model.quantization) says what it is for
                keys.append(Key(prefix + name, "section", _default(field), field.description))
            keys += reference(section, f"{prefix}{name}.")
            continue
        keys.append(Key(prefix + name, _type_name(field.annotation), _default(field), field.description or ""))
    return keys


def reference_markdown() -> str:
    """Every key as a Markdown table: ``lorakit config show --markdown`` and the docs' config reference."""
    rows = ["| key | type | default | what it does |", "|---|---|---|---|"]
    for k in reference():
        cells = (f"`{k.name}`", k.type, f"`{k.default}`", k.description)
        rows.append("| " + " | ".join(c.replace("|", "\\|") for c in cells) + " |")
    return "\n".join(rows) + "\n"
