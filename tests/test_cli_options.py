"""The sampling options of generate, chat and serve are the schema's GenerationConfig fields."""

from __future__ import annotations

import typer.main

from lorakit.cli import app
from lorakit.config import GenerationConfig

FIELDS = GenerationConfig.model_fields
SAMPLING = ["max_new_tokens", "temperature", "top_p", "top_k", "min_p", "repetition_penalty", "seed",
            "context_length"]


def _options(command: str) -> dict:
    group = typer.main.get_command(app)
    return {p.name: p for p in group.commands[command].params if p.name in FIELDS}


def test_each_command_offers_the_sampling_options_it_should():
    assert sorted(_options("generate")) == sorted([*SAMPLING, "batch_size"])
    assert sorted(_options("chat")) == sorted(SAMPLING)
    # serve: a request sets the rest; these are what it answers with when it does not.
    assert sorted(_options("serve")) == sorted(["max_new_tokens", "temperature", "context_length"])


def test_every_sampling_option_is_named_and_defaults_as_its_field():
    for command in ("generate", "chat", "serve"):
        for name, option in _options(command).items():
            assert option.opts == ["--" + name.replace("_", "-")], (command, name)
            assert option.default == FIELDS[name].default, (command, name)
