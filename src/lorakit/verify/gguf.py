"""The GGUF equals the merged model, as llama.cpp runs it. Three rows per GGUF:

* chat prompt: the GGUF's end-of-turn id is the token training's answers end with, and llama.cpp
  renders each held-out conversation with the GGUF's own chat template to training's ids, the BOS
  llama-server adds (add_bos_token) included;
* raw text: llama.cpp tokenizes the held-out prompts' plain text, a fixed set of hard strings and the
  run's added tokens as the run's tokenizer does. An added token split apart fails (the GGUF lacks
  it); other text that splits otherwise warns, since chat prompts may still be right: it is what a
  client of llama.cpp's raw completion endpoint would send (docs/verify.md says what to do);
* answers: greedy answers equal transformers' on the merged model for f32 and f16 (and the largest
  logit gap stays within f16 rounding); for bf16 and quantized types the share of equal answers and
  the mean logit gap are held to ``THRESHOLDS``.

An adapter-only GGUF runs on the base its Modelfile names (``FROM``), as llama.cpp and ollama run it.
"""

from __future__ import annotations

from pathlib import Path

import gguf

from lorakit.verify.llamacpp import LlamaCpp, missing
from lorakit.verify.logits import first_pick_apart, logit_gap, picks
from lorakit.verify.report import FAIL, PASS, SKIP, WARN, Check, first_mismatch, token_text
from lorakit.verify.subject import Subject, training_ids

# Text whose splitting differs between tokenizers: leading spaces, digit runs, symbols, other scripts, emoji.
HARD_STRINGS = [
    " leading space", "  two spaces", "\ttab and\nnewline", "1234567890 3.14159 2026-12-06",
    "Pay $1234567 + 89 <= 100^2 ~ `x|y` now!!", "It's ½ ٢ 。，、 ۔ ، ok", "Grüße, Ελληνικά, Русский, 日本語, 한국어",
    "emoji 😀👍🏽 🇵🇹", "<not a special token>",
]
EXACT_TYPES = ("ALL_F32", "MOSTLY_F16")
F16_MAX_GAP = 0.04  # f16 rounding alone: a wrong rope base, norm or row order shows far above it
# file type: (least share of greedy answers equal to transformers', largest mean logit gap against float32)
THRESHOLDS = {"MOSTLY_BF16": (0.75, 0.02), "MOSTLY_Q8_0": (0.75, 0.02), "MOSTLY_Q6_K": (0.5, 0.03),
              "MOSTLY_Q5_K_M": (0.5, 0.05), "MOSTLY_Q4_K_M": (0.5, 0.07)}
LOOSEST = (0.5, 0.07)


def _base_of(adapter: Path) -> Path | None:
    """The base GGUF an adapter's Modelfile runs it on (``FROM ./base.gguf``), if there is one."""
    modelfile = adapter.with_name(adapter.stem + ".Modelfile")
    if not modelfile.is_file():
        return None
    for line in modelfile.read_text(encoding="utf-8").splitlines():
        if line.startswith("FROM "):
            return modelfile.parent / line[5:].strip()
    return None


def _field(reader: gguf.GGUFReader, key: str):
    return reader.fields[key].contents() if key in reader.fields else None


def check_gguf(subject: Subject, path: Path) -> list[Check]:
    name = f"gguf {path.name}"
    why = missing() or (None if path.is_file() else f"{path} does not exist")
    if why:
        return [Check(name, SKIP, why)]
    reader = gguf.GGUFReader(path)
    base, lora = path, None
    if _field(reader, "general.type") == "adapter":
        base, lora = _base_of(path), path
        if base is None or not base.is_file():
            return [Check(name, SKIP, f"{path} is a GGUF LoRA and no base GGUF was found from its Modelfile; "
                                      "export it with --with-base")]
        reader = gguf.GGUFReader(base)
    file_type = gguf.LlamaFileType(int(_field(reader, "general.file_type") or 0)).name
    longest = max(len(p) for p in subject.training_prompts()) + subject.limit() + 8
    with LlamaCpp(base, lora=lora, n_ctx=max(256, longest)) as llm:
        return [_chat_prompt(subject, llm, name), _raw_text(subject, llm, name),
                _answers(subject, llm, name, file_type)]


def _chat_prompt(subject: Subject, llm: LlamaCpp, name: str) -> Check:
    text_of = token_text(subject.training.tokenizer)
    end = training_ids(subject.training, subject.held.samples[0].conversation)[1][-1]
    meta = llm.metadata()
    eot = meta.get("tokenizer.ggml.eot_token_id")
    if (eot is not None and int(eot) != end) or not llm.is_end(end):
        found = f"{eot} ({text_of(int(eot))})" if eot is not None else "none"
        return Check(f"{name}: chat prompt", FAIL, f"the GGUF's end-of-turn id is {found} but training's answers end "
                     f"with {end} ({text_of(end)}): llama.cpp would not stop where the model learned to")
    first, differ = None, 0
    for sample, conversation, want in zip(subject.held.samples, subject.held.prompts, subject.training_prompts()):
        found = first_mismatch(want, llm.chat_prompt_ids(conversation), text_of,
                               f"{sample.origin} (llama.cpp chat template)")
        differ += found is not None
        first = first or found
    n = len(subject.held.prompts)
    if first is not None:
        return Check(f"{name}: chat prompt", FAIL, f"{differ} of {n} prompts rendered by the GGUF's chat template "
                     f"differ from training's ids; {first.lines()[0]}", mismatch=first)
    return Check(f"{name}: chat prompt", PASS, f"end-of-turn {end} ({text_of(end)}); the GGUF's chat template "
                 f"gives training's ids for all {n} prompts")


def _raw_text(subject: Subject, llm: LlamaCpp, name: str) -> Check:
    tokenizer = subject.training.tokenizer
    text_of = token_text(tokenizer)
    added = [t for t in tokenizer.get_added_vocab() if t not in tokenizer.all_special_tokens]
    added += [t for t in subject.training.new_tokens if t not in added]
    lost = [t for t in added if llm.tokenize(t) != tokenizer(t, add_special_tokens=False)["input_ids"]]
    if lost:
        return Check(f"{name}: raw text", FAIL, f"llama.cpp splits the run's added token(s) {', '.join(lost)}: the GGUF "
                     "lacks them; export it again from this run")
    texts = [m["content"] for c in subject.held.prompts for m in c if m["role"] == "user"] + HARD_STRINGS
    differ = [t for t in texts if llm.tokenize(t) != tokenizer(t, add_special_tokens=False)["input_ids"]]
    details = {"texts": len(texts), "differing": differ[:5]}
    if not differ:
        return Check(f"{name}: raw text", PASS, f"llama.cpp tokenizes all {len(texts)} texts (held-out prompts and "
                     "hard strings) as the run's tokenizer does", details=details)
    example = differ[0]
    mismatch = first_mismatch(tokenizer(example, add_special_tokens=False)["input_ids"], llm.tokenize(example),
                              text_of, f"raw text {example!r}")
    rule = "" if llm.metadata().get("tokenizer.ggml.add_space_prefix") is None else (
        f" (the GGUF's add_space_prefix is {llm.metadata()['tokenizer.ggml.add_space_prefix']})")
    return Check(f"{name}: raw text", WARN, f"{len(differ)} of {len(texts)} plain texts split otherwise in llama.cpp"
                 f"{rule}, e.g. {example!r}: the GGUF format cannot express this tokenizer's rule. Chat prompts are "
                 "checked above; a raw completion client must send the tokens (docs/verify.md)",
                 mismatch=mismatch, details=details)


def _answers(subject: Subject, llm: LlamaCpp, name: str, file_type: str) -> Check:
    prompts, reference = subject.training_prompts(), subject.merged_answers()
    want = [answer for answer, _ in reference]
    # llama.cpp's greedy answer equals transformers' exactly when, teacher-forced along it, llama.cpp ranks each
    # of its tokens first and takes none before the last for an end of generation: one pass per answer
    got_rows = [llm.logits(ids + answer) for ids, answer in zip(prompts, want)]
    gaps = [logit_gap(rows, want_rows) for rows, (_, want_rows) in zip(got_rows, reference)]
    apart = [first_pick_apart(rows, len(ids), answer) for rows, ids, answer in zip(got_rows, prompts, want)]
    apart = [k if k is not None else next((j for j, t in enumerate(answer[:-1]) if llm.is_end(t)), None)
             for k, answer in zip(apart, want)]
    equal = sum(k is None for k in apart) / len(want)
    mean, worst = sum(g.mean for g in gaps) / len(gaps), max(g.max for g in gaps)
    details = {"file_type": file_type, "equal_answers": equal, "mean_gap": mean, "max_gap": worst}
    numbers = f"{file_type.removeprefix('MOSTLY_').removeprefix('ALL_').lower()}: {equal:.0%} of greedy answers " \
              f"equal transformers' on the merged model, mean logit gap {mean:.2%}, largest {worst:.2%}"
    if file_type in EXACT_TYPES:
        first = next((k for k in range(len(want)) if apart[k] is not None), None)
        if first is None and worst <= F16_MAX_GAP:
            return Check(f"{name}: answers", PASS, numbers, details=details)
        mismatch = None if first is None else first_mismatch(
            want[first], picks(got_rows[first], len(prompts[first]), len(want[first])),
            token_text(subject.session.tokenizer), f"{subject.held.samples[first].origin} (llama.cpp's top tokens)")
        return Check(f"{name}: answers", FAIL, f"{numbers} (f16 allows no changed answer and {F16_MAX_GAP:.0%})",
                     mismatch=mismatch, details=details)
    least, most = THRESHOLDS.get(file_type, LOOSEST)
    details.update(least_equal=least, most_mean_gap=most)
    verdict = PASS if equal >= least and mean <= most else WARN
    return Check(f"{name}: answers", verdict, f"{numbers} (thresholds: {least:.0%} equal, mean gap {most:.0%})",
                 details=details)
