"""A user's own per-sample score, named in the config as ``file.py:function`` or ``module:function``.

Generic text metrics cannot tell whether an answer is valid JSON or the right number; a
three-line function can. It is called once per sample and side, and its values averaged.
"""

from __future__ import annotations

import importlib
import importlib.util
import inspect
import math
from collections.abc import Callable
from pathlib import Path
from typing import Any

from lorakit.errors import LorakitError


class ScorerError(LorakitError, ValueError):
    """The configured scorer cannot be loaded, or failed on a sample; the message says which."""


class UserScorer:
    """Wraps the user's function so a wrong return value or an exception names the sample."""

    def __init__(self, spec: str, function: Callable[..., Any]):
        self.spec = spec
        self.name = getattr(function, "__name__", spec.rpartition(":")[2])
        self.function = function
        self.wants_sample = _takes_three(function, spec)

    def __call__(self, prediction: str, reference: str, record: dict[str, Any], origin: str) -> float:
        args = (prediction, reference, record) if self.wants_sample else (prediction, reference)
        try:
            value = self.function(*args)
        except Exception as err:  # the user's code: any failure is reported with the sample
            raise ScorerError(f"scorer {self.spec} failed on {origin}: {type(err).__name__}: {err}") from err
        if isinstance(value, bool):
            return float(value)
        if not isinstance(value, (int, float)) or math.isnan(value):
            raise ScorerError(
                f"scorer {self.spec} returned {value!r} for {origin}; it must return a number or a bool"
            )
        return float(value)


def _takes_three(function: Callable[..., Any], spec: str) -> bool:
    """True for fn(prediction, reference, sample), False for fn(prediction, reference)."""
    try:
        signature = inspect.signature(function)
    except (TypeError, ValueError):  # some builtins have no signature: call them with two
        return False
    params = list(signature.parameters.values())
    if any(p.kind is p.VAR_POSITIONAL for p in params):
        return True
    positional = [p for p in params if p.kind in (p.POSITIONAL_ONLY, p.POSITIONAL_OR_KEYWORD)]
    required = [p for p in positional if p.default is p.empty]
    if len(required) > 3 or len(positional) < 2:
        raise ScorerError(
            f"scorer {spec} must take (prediction, reference) or (prediction, reference, sample); "
            f"it takes ({', '.join(p.name for p in params)})"
        )
    return len(positional) >= 3


def module_from_file(path: Path, label: str, error: type[LorakitError] = ScorerError) -> Any:
    """The Python file a user's function lives in, imported; ``label`` begins each message ("scorer f.py:fn")."""
    if not path.is_file():
        raise error(f"{label}: file {path} does not exist")
    module_spec = importlib.util.spec_from_file_location(f"lorakit_user_{path.stem}", path)
    if module_spec is None or module_spec.loader is None:
        raise error(f"{label}: {path} cannot be loaded as Python")
    module = importlib.util.module_from_spec(module_spec)
    try:
        module_spec.loader.exec_module(module)
    except Exception as err:
        raise error(f"{label}: importing {path} failed: {type(err).__name__}: {err}") from err
    return module


def load_scorer(spec: str) -> UserScorer:
    """``path/to/file.py:fn`` (a relative path is taken from the current folder) or ``module:fn``."""
    where, sep, name = spec.rpartition(":")
    if not sep or not where or not name:
        raise ScorerError(f"scorer '{spec}' must look like 'file.py:function' or 'module:function'")
    if where.endswith(".py"):
        module = module_from_file(Path(where).expanduser(), f"scorer {spec}")
    else:
        try:
            module = importlib.import_module(where)
        except ImportError as err:
            raise ScorerError(f"scorer {spec}: cannot import module '{where}': {err}") from err
    function = getattr(module, name, None)
    if function is None:
        found = sorted(k for k, v in vars(module).items() if callable(v) and not k.startswith("_"))
        raise ScorerError(f"scorer {spec}: '{where}' has no '{name}' (it defines: {', '.join(found) or 'nothing'})")
    if not callable(function):
        raise ScorerError(f"scorer {spec}: '{name}' is a {type(function).__name__}, not a function")
    return UserScorer(spec, function)
