"""The model families lorakit knows: module names, end-of-turn tokens, embeddings, quirks.

A recipe written for one architecture breaks on the next in predictable places: LoRA
targets named for Llama (``q_proj``) match nothing in Bloom (``query_key_value``), an
instruct template ends turns with a token that is not the tokenizer's EOS, a template adds
a BOS the tokenizer adds again. This registry holds what differs, so target presets resolve
to real names, ``lorakit models`` can show it, and training logs what it recognised. A
model outside it still trains: ``all-linear`` needs no names, and the end-of-turn tokens
come from the tokenizer's own template.
"""

from __future__ import annotations

from dataclasses import dataclass

from transformers import PretrainedConfig

# Target presets users can name in lora.target_modules; each resolves through the family.
PRESETS = ("attention", "attention+mlp", "all-linear")


@dataclass(frozen=True)
class Family:
    name: str
    examples: str  # checkpoints users bring, for `lorakit models`
    model_types: tuple[str, ...]  # config.model_type values of this architecture
    attention: tuple[str, ...]  # leaf names of the attention projections (fused ones stay fused)
    mlp: tuple[str, ...]
    end_tokens: tuple[str, ...]  # tokens its chat templates close an assistant turn with
    embedding: str  # input embedding leaf name
    output: str  # output head leaf name
    tied: bool | None  # input and output embeddings share one matrix; None: depends on the checkpoint
    quirks: tuple[str, ...] = ()

    def targets(self, preset: str) -> list[str] | str:
        """The leaf names a preset means here; 'all-linear' stays peft's own keyword."""
        if preset == "attention":
            return list(self.attention)
        if preset == "attention+mlp":
            return [*self.attention, *self.mlp]
        if preset == "all-linear":
            return "all-linear"
        raise ValueError(f"unknown target preset {preset!r}; presets: {', '.join(PRESETS)}")

    def tie_text(self) -> str:
        if self.tied is None:
            return "per checkpoint (read from config.tie_word_embeddings)"
        return "tied" if self.tied else "separate"


_PROJ_ATTENTION = ("q_proj", "k_proj", "v_proj", "o_proj")
_PROJ_MLP = ("gate_proj", "up_proj", "down_proj")
_FUSED_ATTENTION = ("query_key_value", "dense")
_FUSED_MLP = ("dense_h_to_4h", "dense_4h_to_h")

FAMILIES: tuple[Family, ...] = (
    Family(
        "llama", "TinyLlama-1.1B-Chat, Llama-3.2-1B/3B-Instruct, Falcon3, SmolLM2",
        ("llama",), _PROJ_ATTENTION, _PROJ_MLP, ("<|eot_id|>", "</s>", "<|im_end|>", "<|endoftext|>"),
        "embed_tokens", "lm_head", None,
        (
            "Llama 3 ends a turn with <|eot_id|>, not the EOS <|end_of_text|>: both stop generation",
            "Llama 3 templates write <|begin_of_text|> and the tokenizer adds BOS too; lorakit tokenizes "
            "rendered text without special tokens, so there is one BOS",
            "TinyLlama-Chat (zephyr format) closes turns with </s>, the EOS",
            "Llama-3.2-1B/3B tie embed_tokens and lm_head; TinyLlama and 8B+ do not",
        ),
    ),
    Family(
        "qwen", "Qwen2/2.5, Qwen3 (hybrid thinking), Qwen3-Instruct-2507",
        ("qwen2", "qwen3"), _PROJ_ATTENTION, _PROJ_MLP, ("<|im_end|>",),
        "embed_tokens", "lm_head", None,
        (
            "ChatML: turns end with <|im_end|>; base checkpoints' EOS is <|endoftext|>",
            "no BOS token",
            "Qwen3's template writes an empty <think>\\n\\n</think> before the last answer: "
            "data.think=keep trains it, data.think=strip_empty removes it (and makes multi-turn "
            "conversations render as a growing prefix again)",
            "checkpoints up to 4B tie embed_tokens and lm_head",
        ),
    ),
    Family(
        "phi3", "Phi-3-mini/medium, Phi-3.5-mini",
        ("phi3",), ("qkv_proj", "o_proj"), ("gate_up_proj", "down_proj"), ("<|end|>",),
        "embed_tokens", "lm_head", False,
        (
            "q, k and v are one fused qkv_proj, gate and up one gate_up_proj: q_proj/v_proj match nothing",
            "turns end with <|end|>, not the EOS <|endoftext|>; some template versions append the EOS "
            "after the last turn (not trained: labels stop at <|end|>)",
        ),
    ),
    Family(
        "falcon", "falcon-rw-1b, falcon-7b(-instruct) (Falcon3 is a Llama)",
        ("falcon",), _FUSED_ATTENTION, _FUSED_MLP, ("<|endoftext|>",),
        "word_embeddings", "lm_head", True,
        (
            "fused query_key_value; the attention output is named dense",
            "no chat template on base checkpoints: lorakit falls back to alpaca unless data.template says otherwise",
        ),
    ),
    Family(
        "bloom", "bloom-560m/1b1, bloomz, bloom-1b4-zh",
        ("bloom",), _FUSED_ATTENTION, _FUSED_MLP, ("</s>",),
        "word_embeddings", "lm_head", True,
        (
            "fused query_key_value; embeddings are word_embeddings (+ word_embeddings_layernorm)",
            "no chat template: lorakit falls back to alpaca; human-assistant suits BELLE-style data",
        ),
    ),
    Family(
        "mistral", "Mistral-7B-Instruct v0.1-v0.3, Zephyr",
        ("mistral",), _PROJ_ATTENTION, _PROJ_MLP, ("</s>",),
        "embed_tokens", "lm_head", False,
        (
            "[INST] ... [/INST] answer</s>: the turn ends with the EOS",
            "the official template refuses a system turn or roles that do not alternate",
        ),
    ),
    Family(
        "gemma", "Gemma 2B/7B, Gemma 2, Gemma 3 (text)",
        ("gemma", "gemma2", "gemma3_text", "gemma3"), _PROJ_ATTENTION, _PROJ_MLP, ("<end_of_turn>",),
        "embed_tokens", "lm_head", True,
        (
            "turns end with <end_of_turn>, not the EOS <eos>; the assistant role is called model",
            "the template writes <bos> itself (one BOS with lorakit)",
            "Gemma 1/2 templates refuse a system turn; Gemma 3 folds it into the first user turn",
            "embeddings are tied and large (256k vocabulary): modules_to_save on them costs memory",
        ),
    ),
)

# Every end-of-turn token of every family: a template that writes one of them ends turns with it.
END_OF_TURN_TOKENS: tuple[str, ...] = tuple(dict.fromkeys(t for f in FAMILIES for t in f.end_tokens))


def model_type_of(config: PretrainedConfig) -> str:
    return str(getattr(config, "model_type", "") or "")


def recognise(config: PretrainedConfig) -> Family | None:
    """The family of a model from its config's model_type (the text model's, for a multimodal wrapper)."""
    types = {model_type_of(config)}
    text = config.get_text_config() if hasattr(config, "get_text_config") else None
    if text is not None:
        types.add(model_type_of(text))
    return next((f for f in FAMILIES if types & set(f.model_types)), None)


def describe(family: Family) -> dict:
    """One family as plain data, for ``lorakit models --json``."""
    return {
        "family": family.name,
        "examples": family.examples,
        "model_types": list(family.model_types),
        "targets": {preset: family.targets(preset) for preset in PRESETS},
        "end_tokens": list(family.end_tokens),
        "embeddings": [family.embedding, family.output],
        "tied": family.tied,
        "quirks": list(family.quirks),
    }
