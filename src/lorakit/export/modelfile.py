"""An Ollama Modelfile next to the GGUF: the chat template in Go syntax, and the stop tokens.

Ollama renders prompts with Go templates, not Jinja. Rather than translate Jinja, we render
the model's own template on conversations whose contents are markers, read off the text
each role wraps its content in, and write a Go template that wraps contents the same way.
The pieces are checked by rebuilding two conversations from them and comparing with the
Jinja output; a template whose turns are not that regular (one that changes with the turn
number, say) gets no TEMPLATE line, and ollama falls back to the one in the GGUF.
"""

from __future__ import annotations

import json
import logging
import os
from dataclasses import dataclass, replace
from pathlib import Path

from transformers import PreTrainedTokenizerBase

from lorakit.errors import LorakitError
from lorakit.export.gguf_vocab import space_rule
from lorakit.outputs import write_text
from lorakit.templates import adds_bos, resolve_template

log = logging.getLogger(__name__)

_SYSTEM, _USER, _ASSISTANT = "@@LORAKIT_SYSTEM@@", "@@LORAKIT_USER@@", "@@LORAKIT_ASSISTANT@@"


class TemplateShapeError(LorakitError, ValueError):
    """The chat template is not a fixed wrapper per role, so it has no faithful Go form here."""


@dataclass(frozen=True)
class TurnPieces:
    """The text around each role's content, as the chat template writes it."""

    start: str  # before everything (a BOS the template writes itself)
    default_system: str  # written when the conversation has no system message
    system: tuple[str, str] | None  # None: the template drops or refuses system turns
    user: tuple[str, str]
    assistant: tuple[str, str]
    generation: str  # after the last user turn, where the answer starts

    def render(self, messages: list[dict], add_generation_prompt: bool) -> str:
        """The prompt these pieces give: what the Go template must produce."""
        if not messages:
            return ""  # what the Go template gives for an empty list
        text = self.start
        if messages[0]["role"] != "system":
            text += self.default_system
        for i, msg in enumerate(messages):
            if msg["role"] == "system" and self.system is None:
                continue
            before, after = getattr(self, msg["role"])
            last = i == len(messages) - 1
            text += before + msg["content"]
            if not (last and msg["role"] == "assistant"):
                text += after
        if add_generation_prompt:
            text += self.generation
        return text


def _split(block: str, marker: str) -> tuple[str, str]:
    if block.count(marker) != 1:
        raise TemplateShapeError(f"the template does not write a {marker} message's content exactly once")
    before, after = block.split(marker)
    return before, after


def _after(longer: str, prefix: str) -> str:
    if not longer.startswith(prefix):
        raise TemplateShapeError("adding a message changes how the earlier ones are written")
    return longer[len(prefix):]


def turn_pieces(tokenizer: PreTrainedTokenizerBase, template: str, strip_bos: bool) -> TurnPieces:
    """Read the per-role wrappers off ``template``; ``strip_bos``: the runtime adds BOS itself.

    The pieces are read from conversations that end with a user turn, the ones a prompt is made
    of: a template may write the last answer differently (Qwen3's empty think block) or close a
    finished conversation with EOS (Phi-3), neither of which is ever part of a prompt. A template
    that drops or refuses system turns (Mistral) gets pieces without a system role.
    """

    def render(messages: list[dict], gen: bool = False) -> str:
        return tokenizer.apply_chat_template(
            messages, chat_template=template, tokenize=False, add_generation_prompt=gen
        )

    system = [{"role": "system", "content": _SYSTEM}]
    user = [{"role": "user", "content": _USER}]
    assistant = [{"role": "assistant", "content": _ASSISTANT}]
    try:
        r_u, r_uau, r_gen_u = render(user), render(user + assistant + user), render(user, gen=True)
    except Exception as err:  # jinja raises whatever the template raises
        raise TemplateShapeError(f"the template refuses a plain user/assistant conversation: {err}") from None
    try:
        r_s, r_su, r_suau, r_gen = (render(system), render(system + user), render(system + user + assistant + user),
                                    render(system + user, gen=True))
        has_system = _SYSTEM in r_su
    except Exception:  # a template that refuses system turns
        has_system = False
    if not has_system:
        r_s, r_su, r_suau, r_gen = "", r_u, r_uau, r_gen_u
    # A closing EOS after a finished conversation (never in a prompt) is not part of any turn.
    eos = tokenizer.eos_token or ""
    finished = [r for r in (r_s, r_su, r_suau, r_u, r_uau) if r]
    if eos and all(r.endswith(eos) for r in finished) and not r_gen.endswith(eos):
        r_s, r_su, r_suau, r_u, r_uau = (r[: -len(eos)] if r else r for r in (r_s, r_su, r_suau, r_u, r_uau))
    bos = tokenizer.bos_token or ""
    # SmolLM's BOS is <|im_start|>, which also opens every chatml turn, so whether the template
    # writes a BOS of its own cannot be read off the text alone: try the likelier reading first.
    starts = [bos, ""] if "bos_token" in template else ["", bos]
    problem = "no reading of the template fits"
    for start in dict.fromkeys(s for s in starts if r_su.startswith(s) and r_u.startswith(s)):
        try:
            pieces = _pieces(start, strip_bos, has_system, r_s, r_su, r_suau, r_gen, r_u)
        except TemplateShapeError as err:
            problem = str(err)
            continue
        checks = [user + assistant + user, user + assistant + user + assistant + user, user]
        if has_system:
            checks += [system + user + assistant + user, system + user]
        if all(pieces.render(m, True) == render(m, gen=True)[len(start) - len(pieces.start):] for m in checks):
            return pieces
        problem = "the template's turns are not fixed wrappers around the contents"
    raise TemplateShapeError(problem)


def _pieces(start: str, strip_bos: bool, has_system: bool, r_s: str, r_su: str, r_suau: str, r_gen: str,
            r_u: str) -> TurnPieces:
    user_block = _after(r_su, r_s) if has_system else r_u[len(start):]
    if not r_u.endswith(user_block):
        raise TemplateShapeError("the template writes a user turn differently when there is no system message")
    # The answer's wrapper as it stands between two user turns: where every answer of a prompt stands.
    if not (r_suau.startswith(r_su) and r_suau.endswith(user_block)) or len(r_suau) < len(r_su) + len(user_block):
        raise TemplateShapeError("adding a message changes how the earlier ones are written")
    return TurnPieces(
        start="" if strip_bos else start,
        default_system=r_u[len(start):-len(user_block)] if has_system else "",
        system=_split(r_s[len(start):], _SYSTEM) if has_system else None,
        user=_split(user_block, _USER),
        assistant=_split(r_suau[len(r_su):len(r_suau) - len(user_block)], _ASSISTANT),
        generation=_after(r_gen, r_su),
    )


def _go(text: str) -> str:
    """A Go string constant: JSON's escapes (\\n, \\", \\uXXXX) are all valid Go escapes."""
    return "{{ " + json.dumps(text, ensure_ascii=False) + " }}" if text else ""


def go_template(pieces: TurnPieces) -> str:
    """The Go template ollama renders, built only from string constants and .Messages."""
    # An empty message list renders nothing (ollama renders one when it loads a model); the
    # guard also keeps ``index .Messages 0`` from failing on it.
    lines = ["{{- if .Messages }}"]
    if pieces.start:
        lines.append("{{-" + _go(pieces.start)[2:])  # "{{-": no newline from the line above
    if pieces.default_system:
        lines.append('{{- if ne (index .Messages 0).Role "system" }}' + _go(pieces.default_system) + "{{ end }}")
    lines += [
        "{{- range $i, $m := .Messages }}",
        "{{- $last := eq (len (slice $.Messages $i)) 1 }}",
        '{{- if eq $m.Role "system" }}'
        + (_go(pieces.system[0]) + "{{ $m.Content }}" + _go(pieces.system[1]) if pieces.system else ""),
        '{{- else if eq $m.Role "user" }}' + _go(pieces.user[0]) + "{{ $m.Content }}" + _go(pieces.user[1])
        + "{{ if $last }}" + _go(pieces.generation) + "{{ end }}",
        '{{- else if eq $m.Role "assistant" }}' + _go(pieces.assistant[0]) + "{{ $m.Content }}"
        + "{{ if not $last }}" + _go(pieces.assistant[1]) + "{{ end }}",
        "{{- end }}",
        "{{- end }}",
        "{{- end }}",
    ]
    return "\n".join(lines)


def stop_tokens(tokenizer: PreTrainedTokenizerBase) -> list[str]:
    """The end-of-turn tokens lorakit's own generation stops at."""
    ids = resolve_template(tokenizer, "auto").end_token_ids if tokenizer.chat_template else {tokenizer.eos_token_id}
    return sorted(tokenizer.convert_ids_to_tokens(i) for i in ids if i is not None)


def _quoted(text: str) -> str:
    if '"""' in text:
        raise TemplateShapeError('the text contains """, which a Modelfile cannot quote')
    return '"""' + text + '"""'


def _relative(target: Path, folder: Path) -> str:
    """ollama resolves FROM and ADAPTER paths against the Modelfile's folder."""
    rel = Path(os.path.relpath(target.resolve(), folder.resolve())).as_posix()
    return rel if rel.startswith("../") else "./" + rel


def adapter_note(base: str, adapter: str) -> list[str]:
    """The comment an adapter's Modelfile opens with: Ollama 0.34.1 and later refuse ``ADAPTER`` (ollama PR
    #14969), so the merged export is the Ollama path, and ``--lora`` the llama.cpp one."""
    return [
        "# Ollama 0.34.1 and later refuse a Modelfile with an ADAPTER line; earlier releases take this one as it is.",
        "# For Ollama, export the merged model (lorakit export gguf RUN --out NAME.gguf, without --adapter-only)",
        "# and `ollama create NAME -f NAME.Modelfile` from the Modelfile written beside it.",
        f"# llama.cpp takes the adapter as it is: llama-cli -m {base} --lora {adapter}",
    ]


def modelfile_path(gguf_path: Path) -> Path:
    """``out/demo-q8_0.gguf`` -> ``out/demo-q8_0.Modelfile``: one per GGUF, so exports into one folder keep theirs."""
    return gguf_path.with_name(gguf_path.stem + ".Modelfile")


def write_modelfile(gguf_path: Path, tokenizer: PreTrainedTokenizerBase, system_prompt: str | None = None,
                    adapter: Path | None = None) -> Path:
    """Write ``<name>.Modelfile`` beside ``gguf_path``: ``ollama create NAME -f <name>.Modelfile`` uses it.

    ``adapter``: a GGUF LoRA file; the Modelfile then runs ``gguf_path`` as the base with it (``ADAPTER``),
    is named after the adapter, and starts with a comment saying which Ollama releases take it.
    """
    path = modelfile_path(adapter if adapter is not None else gguf_path)
    lines = []
    if adapter is not None:
        lines += adapter_note(_relative(gguf_path, path.parent), _relative(adapter, path.parent))
    lines.append(f"FROM {_relative(gguf_path, path.parent)}")
    if adapter is not None:
        lines.append(f"ADAPTER {_relative(adapter, path.parent)}")
    template = tokenizer.chat_template if isinstance(tokenizer.chat_template, str) else None
    if template:
        try:
            # ollama puts the BOS before the prompt itself where the GGUF says add_bos_token
            pieces = turn_pieces(tokenizer, template, strip_bos=adds_bos(tokenizer))
            # the GGUF's chat template writes the same lead (see gguf_vocab.SpaceRule)
            pieces = replace(pieces, start=space_rule(tokenizer).lead + pieces.start)
            lines.append("TEMPLATE " + _quoted(go_template(pieces)))
        except TemplateShapeError as err:
            log.warning("Modelfile without TEMPLATE (ollama will use the GGUF's chat template): %s", err)
    if system_prompt:
        lines.append("SYSTEM " + _quoted(system_prompt))
    for token in stop_tokens(tokenizer):
        lines.append(f"PARAMETER stop {json.dumps(token)}")
    return write_text(path, "\n".join(lines) + "\n", "the Modelfile")  # a link there is replaced, not followed
