"""Encoding many samples: in parallel, and kept on disk so the next run over them is instant.

Rendering a chat template and finding the answer spans costs a few milliseconds a sample
(several template renders each), so 50,000 alpaca samples take minutes on one core, paid
again on every run, every resume and every ``data inspect``. Two remedies, both plain:

- a cache file per *encoding fingerprint* (tokenizer files, template, max_length,
  truncation, train_on, and the versions of this code and of the libraries that render),
  holding the outcome of each sample keyed by a hash of the sample's content. Any change to
  how tokens are made gives a new file; any change to a sample gives a new key; a new seed,
  split or subset reuses what is there.
- forked worker processes for the samples the cache does not have.

Hand-written rather than ``datasets.map(num_proc=..., cache_file_name=...)``: our samples
are Python conversations carrying their file and line, outcomes include counted drops, and
``datasets`` only fingerprints datasets that are themselves backed by cache files.
"""

from __future__ import annotations

import hashlib
import json
import multiprocessing
import os
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import tokenizers
import transformers
from transformers import PreTrainedTokenizerBase

from lorakit.data.encode import PROMPT_ONLY, Encoded, SampleDropped, encode_conversation, encode_prompt, encode_text
from lorakit.templates import ChatTemplate, Conversation

# Bump whenever encode.py can produce different ids or labels for the same input.
# 2: a conversation whose user turns are all blank is dropped (empty prompt)
# 3: the BOS the tokenizer puts before plain text leads a rendering that does not start with it
ENCODER_VERSION = 3
# Below this many samples to encode, starting workers costs more than it saves.
PARALLEL_FROM = 2000

Outcome = Encoded | str  # a string is the reason the sample was dropped


@dataclass(frozen=True)
class EncodeSettings:
    max_length: int
    truncation: str
    train_on: str


def encode_one(
    tokenizer: PreTrainedTokenizerBase,
    template: ChatTemplate,
    conversation: Conversation,
    text: str | None,
    settings: EncodeSettings,
) -> Outcome:
    """One sample's ids and labels, or why it is dropped; a ValueError means bad data and stops the run."""
    try:
        if text is not None:
            return encode_text(tokenizer, text, settings.max_length, settings.truncation)
        if settings.train_on == PROMPT_ONLY:
            return encode_prompt(tokenizer, template, conversation, settings.max_length, settings.truncation)
        return encode_conversation(
            tokenizer, template, conversation, settings.max_length, settings.truncation, settings.train_on
        )
    except SampleDropped as dropped:
        return dropped.reason


def sample_key(conversation: Conversation, text: str | None) -> bytes:
    payload = json.dumps([conversation, text], ensure_ascii=False, sort_keys=True)
    return hashlib.blake2b(payload.encode("utf-8"), digest_size=16).digest()


def fingerprint(tokenizer: PreTrainedTokenizerBase, template: ChatTemplate, settings: EncodeSettings) -> str:
    """Everything that decides the tokens of a given sample, hashed."""
    backend = getattr(tokenizer, "backend_tokenizer", None)
    vocab = backend.to_str() if backend is not None else json.dumps(sorted(tokenizer.get_vocab().items()))
    parts = [
        str(ENCODER_VERSION), transformers.__version__, tokenizers.__version__, type(tokenizer).__name__,
        vocab, json.dumps(tokenizer.special_tokens_map, sort_keys=True, default=str),
        # Every field of the template (its text, end tokens, think handling) decides the tokens.
        json.dumps(asdict(template), sort_keys=True, default=sorted),
        json.dumps([settings.max_length, settings.truncation, settings.train_on]),
    ]
    digest = hashlib.sha256()
    for part in parts:
        digest.update(part.encode("utf-8"))
        digest.update(b"\0")
    return digest.hexdigest()[:32]


class EncodeCache:
    """The outcomes of one fingerprint: a numpy archive, rewritten whole and atomically."""

    def __init__(self, folder: Path, key: str):
        self.path = folder / f"{key}.npz"
        self._outcomes: dict[bytes, Outcome] = {}
        self._dirty = False
        if self.path.is_file():
            try:
                self._outcomes = _read(self.path)
            except (OSError, ValueError, KeyError):
                self._outcomes = {}  # a damaged cache is only a slower run: rebuild it

    def __len__(self) -> int:
        return len(self._outcomes)

    def get(self, key: bytes) -> Outcome | None:
        found = self._outcomes.get(key)
        if isinstance(found, Encoded):  # a fresh copy: callers set origin and may truncate
            return Encoded(list(found.input_ids), list(found.labels), found.cut_tokens, found.lost_end,
                           found.answers_without_end)
        return found

    def put(self, key: bytes, outcome: Outcome) -> None:
        self._outcomes[key] = outcome
        self._dirty = True

    def save(self) -> None:
        if not self._dirty:
            return
        self.path.parent.mkdir(parents=True, exist_ok=True)
        partial = self.path.with_name(f"{self.path.stem}.{os.getpid()}.partial.npz")
        _write(partial, self._outcomes)
        os.replace(partial, self.path)  # several ranks may write the same file: each write is whole
        self._dirty = False


def _write(path: Path, outcomes: dict[bytes, Outcome]) -> None:
    keys = list(outcomes)
    encoded = [o if isinstance(o, Encoded) else None for o in outcomes.values()]
    reasons = sorted({o for o in outcomes.values() if isinstance(o, str)})
    lengths = [len(e.input_ids) if e else 0 for e in encoded]
    np.savez(
        path,
        keys=np.frombuffer(b"".join(keys), dtype=np.uint8).reshape(len(keys), 16),
        offsets=np.concatenate([[0], np.cumsum(lengths, dtype=np.int64)]),
        ids=np.array([t for e in encoded if e for t in e.input_ids], dtype=np.int32),
        labels=np.array([t for e in encoded if e for t in e.labels], dtype=np.int32),
        cut=np.array([e.cut_tokens if e else 0 for e in encoded], dtype=np.int32),
        lost_end=np.array([bool(e and e.lost_end) for e in encoded]),
        without_end=np.array([e.answers_without_end if e else 0 for e in encoded], dtype=np.int32),
        reason=np.array([-1 if e else reasons.index(o) for e, o in zip(encoded, outcomes.values())], dtype=np.int32),
        reasons=np.array(reasons, dtype=str),
    )


def _read(path: Path) -> dict[bytes, Outcome]:
    with np.load(path, allow_pickle=False) as arc:
        keys, offsets, reason, reasons = arc["keys"], arc["offsets"], arc["reason"], arc["reasons"]
        ids, labels = arc["ids"].tolist(), arc["labels"].tolist()
        cut, lost_end, without_end = arc["cut"].tolist(), arc["lost_end"].tolist(), arc["without_end"].tolist()
    out: dict[bytes, Outcome] = {}
    bounds = offsets.tolist()
    for k, key in enumerate(keys):
        if reason[k] >= 0:
            out[key.tobytes()] = str(reasons[reason[k]])
        else:
            a, b = bounds[k], bounds[k + 1]
            out[key.tobytes()] = Encoded(ids[a:b], labels[a:b], cut[k], lost_end[k], without_end[k])
    return out


# ------------------------------------------------------------------ parallel encoding
class BadSample(Exception):
    """Sample ``index`` is malformed (not merely too long); ``message`` says how."""

    def __init__(self, index: int, message: str):
        super().__init__(index, message)  # both in args, so it crosses a process boundary
        self.index, self.message = index, message


_WORKER: tuple | None = None  # (tokenizer, template, settings), inherited by forked workers


def _encode_range(
    tokenizer: PreTrainedTokenizerBase, template: ChatTemplate, settings: EncodeSettings,
    start: int, items: Sequence[tuple[Conversation, str | None]],
) -> list[Outcome]:
    outcomes = []
    for k, (conv, text) in enumerate(items):
        try:
            outcomes.append(encode_one(tokenizer, template, conv, text, settings))
        except ValueError as err:
            raise BadSample(start + k, str(err)) from None
    return outcomes


def _encode_chunk(job: tuple[int, list[tuple[Conversation, str | None]]]) -> list[Outcome]:
    assert _WORKER is not None
    return _encode_range(*_WORKER, *job)


def worker_count(requested: int, todo: int) -> int:
    """``requested`` workers, or with 0 one per usable core once there is enough to do."""
    if requested:
        return requested
    if todo < PARALLEL_FROM or not hasattr(os, "sched_getaffinity"):
        return 1
    return min(len(os.sched_getaffinity(0)), 8)


def encode_all(
    items: Sequence[tuple[Conversation, str | None]],
    tokenizer: PreTrainedTokenizerBase,
    template: ChatTemplate,
    settings: EncodeSettings,
    workers: int,
) -> list[Outcome]:
    """Outcomes in input order; raises BadSample naming the first bad item found."""
    if workers <= 1 or len(items) < 2 or "fork" not in multiprocessing.get_all_start_methods():
        return _encode_range(tokenizer, template, settings, 0, items)
    global _WORKER
    _WORKER = (tokenizer, template, settings)
    size = max(1, len(items) // (workers * 8))
    jobs = [(s, list(items[s : s + size])) for s in range(0, len(items), size)]
    try:
        # Fork, not spawn: workers inherit the loaded tokenizer instead of importing
        # transformers again (seconds each). Data is read before the model, so no torch
        # thread pool exists yet to be broken by the fork.
        with multiprocessing.get_context("fork").Pool(workers) as pool:
            results = pool.map(_encode_chunk, jobs)
    finally:
        _WORKER = None
    return [o for chunk in results for o in chunk]


def encode_cached(
    items: Sequence[tuple[Conversation, str | None]],
    tokenizer: PreTrainedTokenizerBase,
    template: ChatTemplate,
    settings: EncodeSettings,
    cache_dir: Path | None,
    num_proc: int,
) -> list[Outcome]:
    """Outcomes in input order, from the cache where it has them; the cache learns the rest."""
    if cache_dir is None:
        return encode_all(items, tokenizer, template, settings, worker_count(num_proc, len(items)))
    cache = EncodeCache(cache_dir, fingerprint(tokenizer, template, settings))
    keys = [sample_key(conv, text) for conv, text in items]
    outcomes = [cache.get(key) for key in keys]
    missing = [k for k, found in enumerate(outcomes) if found is None]
    try:
        fresh = encode_all([items[k] for k in missing], tokenizer, template, settings,
                           worker_count(num_proc, len(missing)))
    except BadSample as bad:
        raise BadSample(missing[bad.index], bad.message) from None
    for k, outcome in zip(missing, fresh):
        cache.put(keys[k], outcome)
        outcomes[k] = outcome
    cache.save()
    return outcomes  # type: ignore[return-value]  # every None was filled above
