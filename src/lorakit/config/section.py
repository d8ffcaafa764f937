"""What every section of the config shares: strict fields, and the marks a field may carry."""

from __future__ import annotations

from pathlib import Path
from typing import Any, get_args

from pydantic import AfterValidator, BaseModel, ConfigDict
from pydantic.fields import FieldInfo

# A field so marked may change when a run resumes: it says how long to go on, how often to save, evaluate
# and log, what is done around training, or where files go; every other key must match the checkpoint's run.
RESUMABLE = {"resumable": True}


def _expand_home(path: Path | None) -> Path | None:
    return path.expanduser() if path is not None else None


# On a path field (``Annotated[Path, EXPAND_HOME]``): ~ is the user's home, expanded here, once, wherever the
# config comes from (a YAML file, --set, a saved run, Python).
EXPAND_HOME = AfterValidator(_expand_home)


class Section(BaseModel):
    # Strict: `rank: true` or `rank: "8"` is a mistake to name, not a value to convert (an int
    # still fills a float). Paths alone are lax: YAML can only write them as strings.
    model_config = ConfigDict(extra="forbid", validate_assignment=True, strict=True)


def section_of(field: FieldInfo) -> type[BaseModel] | None:
    """The section a field holds (``model.quantization``'s, optional or not), or None for a plain value."""
    options = (field.annotation, *get_args(field.annotation))
    sections = [a for a in options if isinstance(a, type) and issubclass(a, BaseModel)]
    return sections[0] if sections else None


def resumable_keys(model: type[BaseModel], prefix: str = "") -> list[str]:
    """The dotted keys marked :data:`RESUMABLE` in ``model``; a marked section stands for all its keys."""
    keys: list[str] = []
    for name, field in model.model_fields.items():
        extra: Any = field.json_schema_extra
        section = section_of(field)
        if isinstance(extra, dict) and extra.get("resumable"):
            keys.append(prefix + name)
        elif section is not None:
            keys += resumable_keys(section, f"{prefix}{name}.")
    return keys
