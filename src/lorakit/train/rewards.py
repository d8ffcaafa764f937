"""Reward functions for method grpo: the user's own and the built-in ones, called and checked.

A reward function follows TRL's convention::

    def reward(prompts: list[str], completions: list[str], **columns) -> list[float | None]

one value per completion, None where the function does not score that completion. ``prompts`` holds
each completion's prompt (the last user turn's text), ``completions`` the decoded answer without its
end-of-turn token. The keyword arguments are the rows' other columns (``reference``: the answer a
row carries), each a list aligned with the completions, plus ``completion_ids`` (the token ids, end
of turn included) and ``truncated`` (True where max_completion_length cut the completion).

Whatever goes wrong in one (it raises, returns a string or the wrong number of values) stops the run
with one line naming the function and the sample's file and line.
"""

from __future__ import annotations

import json
import math
import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import Any

import torch

from lorakit.errors import LorakitError
from lorakit.eval.scorer import module_from_file

BUILTIN = "builtin:"


class RewardError(LorakitError, ValueError):
    """A reward function cannot be loaded, or failed on a sample; the message says which and where."""


def _text(value: Any) -> str | None:
    return value if isinstance(value, str) else None


def exact(prompts: list[str], completions: list[str], reference: Sequence[Any] | None = None,
          **_: Any) -> list[float | None]:
    """1 where the completion equals the reference (surrounding whitespace aside), else 0; None without one."""
    refs = reference or [None] * len(completions)
    return [None if _text(r) is None else float(c.strip() == r.strip()) for c, r in zip(completions, refs)]


def _json(text: str) -> Any:
    try:
        return json.loads(text)
    except ValueError:
        return ValueError


def valid_json(prompts: list[str], completions: list[str], **_: Any) -> list[float | None]:
    """1 where the completion parses as JSON, else 0."""
    return [float(_json(c) is not ValueError) for c in completions]


def json_fields(prompts: list[str], completions: list[str], reference: Sequence[Any] | None = None,
                **_: Any) -> list[float | None]:
    """The share of the reference JSON object's fields the completion's JSON object has with equal values
    (0 when the completion is no JSON object); None where the reference is no JSON object.

    Reference {"name": "Lena", "age": 29} and completion {"name": "Lena", "age": 30}: 0.5.
    """
    scores: list[float | None] = []
    for completion, ref in zip(completions, reference or [None] * len(completions)):
        wanted = _json(ref) if isinstance(ref, str) else ref
        if not isinstance(wanted, dict) or not wanted:
            scores.append(None)
            continue
        got = _json(completion)
        got = got if isinstance(got, dict) else {}
        scores.append(sum(got.get(k, ValueError) == v for k, v in wanted.items()) / len(wanted))
    return scores


def regex(pattern: re.Pattern, prompts: list[str], completions: list[str], **_: Any) -> list[float | None]:
    """1 where the pattern is found in the completion (anchor it with ^ and $ to match the whole), else 0."""
    return [float(pattern.search(c) is not None) for c in completions]


def length(max_tokens: int, prompts: list[str], completions: list[str], completion_ids: Sequence[Sequence[int]],
           **_: Any) -> list[float | None]:
    """A length penalty: minus the completion's share of max_completion_length, from 0 (empty) to -1."""
    return [-len(ids) / max_tokens for ids in completion_ids]


_PLAIN = {"exact": exact, "valid_json": valid_json, "json_fields": json_fields}


@dataclass
class RewardFunction:
    spec: str  # as configured: "rewards.py:fn", "builtin:exact"
    name: str  # in logged values: the function's name, or the built-in's
    function: Callable[..., Any]


def _builtin(spec: str, max_completion_length: int) -> RewardFunction:
    name, _, argument = spec[len(BUILTIN):].partition(":")
    if name in _PLAIN and not argument:
        return RewardFunction(spec, name, _PLAIN[name])
    if name == "length" and not argument:
        return RewardFunction(spec, name, partial(length, max_completion_length))
    if name == "regex" and argument:
        try:
            return RewardFunction(spec, name, partial(regex, re.compile(argument)))
        except re.error as err:
            raise RewardError(f"grpo.rewards {spec}: the pattern does not compile: {err}") from None
    known = ", ".join([*(BUILTIN + n for n in [*_PLAIN, "length"]), BUILTIN + "regex:PATTERN"])
    raise RewardError(f"grpo.rewards {spec}: no such built-in reward; the built-ins are {known}")


def _from_file(spec: str) -> RewardFunction:
    where, _, name = spec.rpartition(":")
    path = Path(where).expanduser()
    module = module_from_file(path, f"grpo.rewards {spec}", RewardError)
    function = getattr(module, name, None)
    if not callable(function):
        found = sorted(k for k, v in vars(module).items() if callable(v) and not k.startswith("_"))
        what = "has no" if function is None else f"has a {type(function).__name__}, not a function,"
        raise RewardError(f"grpo.rewards {spec}: {path} {what} '{name}' (its functions: {', '.join(found) or 'none'})")
    return RewardFunction(spec, name, function)


def load_rewards(specs: Sequence[str], max_completion_length: int) -> list[RewardFunction]:
    """The configured reward functions: ``builtin:NAME`` or ``path/to/file.py:function``."""
    if not specs:
        raise RewardError("method grpo needs reward functions: set grpo.rewards, e.g. [\"builtin:valid_json\"] "
                          "or [\"rewards.py:my_reward\"]")
    loaded = []
    for spec in specs:
        if spec.startswith(BUILTIN):
            loaded.append(_builtin(spec, max_completion_length))
        elif spec.rpartition(":")[0].endswith(".py"):
            loaded.append(_from_file(spec))
        else:
            raise RewardError(f"grpo.rewards '{spec}' must look like 'file.py:function' or 'builtin:NAME'")
    names = [r.name for r in loaded]
    for reward in loaded:  # logged values are named by function: two of one name get their spec
        if names.count(reward.name) > 1:
            reward.name = reward.spec
    return loaded


def _number(value: Any) -> float | None:
    """A returned value as a score (NaN for None), or None when it is not a number."""
    if value is None:
        return math.nan
    if isinstance(value, (bool, int, float)):
        return float(value)
    if isinstance(value, torch.Tensor) and value.numel() == 1:
        return float(value)
    try:
        import numpy as np
    except ImportError:  # pragma: no cover - numpy comes with torch
        return None
    return float(value) if isinstance(value, np.number) else None


def _call(reward: RewardFunction, prompts: list[str], completions: list[str], columns: dict[str, list],
          origins: list[str]) -> list[Any]:
    try:
        return list(reward.function(prompts=prompts, completions=completions, **columns))
    except Exception as err:  # the user's code: find the sample it fails on, to name it
        for k, origin in enumerate(origins):
            try:
                reward.function(prompts=prompts[k:k + 1], completions=completions[k:k + 1],
                                **{key: value[k:k + 1] for key, value in columns.items()})
            except Exception:  # noqa: BLE001 - this sample fails alone: it is the one to name
                raise RewardError(f"reward function {reward.spec} failed on {origin}: {type(err).__name__}: "
                                  f"{err}") from err
        raise RewardError(f"reward function {reward.spec} failed on the batch starting at {origins[0]}: "
                          f"{type(err).__name__}: {err}") from err


def score(rewards: Sequence[RewardFunction], prompts: list[str], completions: list[str], columns: dict[str, list],
          origins: list[str]) -> torch.Tensor:
    """The (completions, functions) scores, NaN where a function returned None; ``origins``: each
    completion's sample (file and line), for the messages."""
    scores = torch.full((len(completions), len(rewards)), math.nan)
    for j, reward in enumerate(rewards):
        values = _call(reward, prompts, completions, columns, origins)
        if len(values) != len(completions):
            raise RewardError(f"reward function {reward.spec} returned {len(values)} values for {len(completions)} "
                              f"completions (the batch starting at {origins[0]}); return one per completion")
        for k, value in enumerate(values):
            number = _number(value)
            if number is None:
                raise RewardError(f"reward function {reward.spec} returned {value!r:.60} for {origins[k]}; "
                                  "return a number, or None to leave the completion unscored")
            scores[k, j] = number
    return scores
