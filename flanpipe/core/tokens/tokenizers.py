"""The tokenizer seam: every stage encodes and decodes text through :class:`Tokenizer`.

:func:`load_tokenizer` opens a SentencePiece ``.model`` file, or a checkpoint folder holding
``tokenizer.json`` (preferred; Hugging Face ``tokenizers``, Rust-parallel batch encoding) or
``tokenizer.model``. Both backends give the same small interface: ``encode`` / ``encode_batch`` (int32
NumPy arrays, no special tokens: the pipeline adds BOS and EOS itself), ``decode``, the special ids,
``add_bos`` (the checkpoint's own convention) and ``save_pretrained`` (files ``transformers`` loads
with ``AutoTokenizer`` that encode exactly as this tokenizer). Only this module knows about
SentencePiece and ``tokenizers``; :func:`train_spm` trains the pipeline's own model for the
``tokenizer`` stage (:mod:`flanpipe.stages.tokenizer`).

Trained models follow Llama's recipe: unigram (or BPE), byte fallback (no ``<unk>`` for unseen
characters), digits split, identity normalisation and whitespace kept, so ``decode(encode(text)) ==
text``; newlines, which FLAN's OPTIONS suffix uses, become byte pieces. Special ids are fixed: pad 0,
eos 1, unk 2, bos 3.
"""

from __future__ import annotations

import io
import json
import logging
import os
import re
import shutil
from pathlib import Path
from typing import Literal

import numpy as np
import sentencepiece as spm

from flanpipe.core.config import TokenizerSource
from flanpipe.core.io import sha256_file
from flanpipe.core.text.keys import derive_seed

log = logging.getLogger(__name__)

SPECIAL_IDS = {"pad_id": 0, "eos_id": 1, "unk_id": 2, "bos_id": 3}
_TOO_HIGH = re.compile(r"Vocabulary size too high \((\d+)\)\. Please set it to a value <= (\d+)")


class TokenizerError(ValueError):
    """The tokenizer cannot be trained or loaded; the message says what to change."""


HF_FILE = "tokenizer.json"
SPM_FILE = "tokenizer.model"
SPECIAL_NAMES = ("pad", "eos", "unk", "bos")


class Tokenizer:
    """The seam's interface, shared by both backends (:class:`SentencePieceTokenizer`,
    :class:`HFTokenizer`); :func:`load_tokenizer` picks one.

    ``vocab_size`` counts every id the model must embed (added tokens included); ``add_bos`` is the
    checkpoint's own convention (does its tokenizer put BOS before a text?). ``encode`` and
    ``encode_batch`` never add special tokens.
    """

    kind: Literal["sentencepiece", "hf"]
    path: Path
    """The file that defines the tokenizer (``.model`` or ``tokenizer.json``)."""
    vocab_size: int
    eos_id: int
    bos_id: int | None
    pad_id: int | None
    unk_id: int | None
    add_bos: bool

    def encode(self, text: str) -> list[int]:
        raise NotImplementedError

    def encode_batch(self, texts: list[str], threads: int = 1) -> list[np.ndarray]:
        raise NotImplementedError

    def decode(self, ids) -> str:
        raise NotImplementedError

    def save_pretrained(self, folder: str | Path) -> None:
        raise NotImplementedError

    def special_ids(self) -> dict[str, int | None]:
        """``{"pad_id", "eos_id", "unk_id", "bos_id"}``, None where the tokenizer has none."""
        return {f"{name}_id": getattr(self, f"{name}_id") for name in SPECIAL_NAMES}

    def describe(self) -> dict:
        """What a manifest records about the tokenizer."""
        return {"kind": self.kind, "path": str(self.path), "sha256": sha256_file(self.path),
                "vocab_size": self.vocab_size, "special_ids": self.special_ids(), "add_bos": self.add_bos}

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.path}, vocab_size={self.vocab_size}, {self.special_ids()})"


class SentencePieceTokenizer(Tokenizer):
    """A SentencePiece model (unigram or BPE), from a ``.model`` path or its bytes; batches encode
    on SentencePiece's own thread pool. ``add_bos``: the checkpoint's convention (a bare model has
    none; :func:`load_tokenizer` reads it from a ``tokenizer_config.json`` beside the model)."""

    kind = "sentencepiece"

    def __init__(self, model: str | Path | bytes, add_bos: bool = False):
        self.processor = load_processor(model)
        self.path = Path(model) if not isinstance(model, bytes) else Path("<bytes>")
        self.model_bytes = model if isinstance(model, bytes) else Path(model).read_bytes()
        self.vocab_size = self.processor.get_piece_size()
        ids = special_ids(self.processor)
        if ids["eos_id"] is None:
            raise TokenizerError(f"{self.path}: the model has no EOS piece; packing needs one")
        self.eos_id, self.bos_id = ids["eos_id"], ids["bos_id"]
        self.pad_id, self.unk_id = ids["pad_id"], ids["unk_id"]
        self.add_bos = add_bos and self.bos_id is not None

    def encode(self, text: str) -> list[int]:
        return self.processor.encode(text)

    def encode_batch(self, texts: list[str], threads: int = 1) -> list[np.ndarray]:
        if not texts:
            return []
        return [a.astype(np.int32, copy=False) for a in
                self.processor.encode(list(texts), return_type="numpy", num_threads=max(1, threads))]

    def decode(self, ids) -> str:
        return self.processor.decode([int(i) for i in ids])

    def save_pretrained(self, folder: str | Path) -> None:
        """``tokenizer.model`` (the model itself), ``tokenizer.json`` (:func:`spm_to_tokenizers`,
        which encodes exactly as SentencePiece does) and ``tokenizer_config.json``."""
        folder = Path(folder)
        folder.mkdir(parents=True, exist_ok=True)
        fast = spm_to_tokenizers(self.model_bytes, add_bos=self.add_bos)
        _save_fast(fast, self._special_tokens(), folder, add_bos=self.add_bos)
        (folder / SPM_FILE).write_bytes(self.model_bytes)

    def _special_tokens(self) -> dict[str, str]:
        return {f"{name}_token": self.processor.id_to_piece(i) for name in SPECIAL_NAMES
                if (i := getattr(self, f"{name}_id")) is not None}


class HFTokenizer(Tokenizer):
    """A Hugging Face ``tokenizer.json`` (BPE as in Llama 3, Qwen, SmolLM, OLMo; or any other
    model); batches encode in Rust on rayon's thread pool (``RAYON_NUM_THREADS``).

    The special tokens are the folder's ``tokenizer_config.json`` (or ``special_tokens_map.json``)
    names, else the ids in its ``config.json`` / ``generation_config.json``; ``add_bos`` is whether
    the tokenizer's post-processor puts BOS before a text.
    """

    kind = "hf"

    def __init__(self, path: str | Path):
        from tokenizers import Tokenizer as RustTokenizer

        self.path = Path(path)
        self.folder = self.path.parent
        try:
            self.rust = RustTokenizer.from_file(str(self.path))
        except Exception as err:  # tokenizers raises a bare Exception on a malformed file
            raise TokenizerError(f"{self.path}: not a Hugging Face tokenizer.json ({err})") from None
        vocab = self.rust.get_vocab(with_added_tokens=True)
        self.vocab_size = max(vocab.values()) + 1
        ids = _hf_special_ids(self.folder, self.rust)
        if ids["eos_id"] is None:
            raise TokenizerError(f"{self.folder}: no EOS token named in tokenizer_config.json, "
                                 "special_tokens_map.json or config.json; packing needs one")
        self.eos_id, self.bos_id = ids["eos_id"], ids["bos_id"]
        self.pad_id, self.unk_id = ids["pad_id"], ids["unk_id"]
        probe = "a"
        plain = self.rust.encode(probe, add_special_tokens=False).ids
        full = self.rust.encode(probe, add_special_tokens=True).ids
        self.add_bos = self.bos_id is not None and len(full) > len(plain) and full[0] == self.bos_id

    def encode(self, text: str) -> list[int]:
        return self.rust.encode(text, add_special_tokens=False).ids

    def encode_batch(self, texts: list[str], threads: int = 1) -> list[np.ndarray]:
        if not texts:
            return []
        # rayon sizes its pool once, at the first parallel call; later values are ignored
        os.environ.setdefault("RAYON_NUM_THREADS", str(max(1, threads)))
        encodings = self.rust.encode_batch_fast(list(texts), add_special_tokens=False)
        return [np.asarray(e.ids, np.int32) for e in encodings]

    def decode(self, ids) -> str:
        return self.rust.decode([int(i) for i in ids], skip_special_tokens=False)

    def save_pretrained(self, folder: str | Path) -> None:
        """The checkpoint's tokenizer files, copied byte for byte (``tokenizer.json`` and, where the
        folder has them, its ``tokenizer_config.json``, ``special_tokens_map.json`` and chat
        template); a ``tokenizer_config.json`` naming the special tokens is written where none was."""
        folder = Path(folder)
        folder.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(self.path, folder / HF_FILE)
        for name in HF_SIDE_FILES:
            if (self.folder / name).is_file():
                shutil.copyfile(self.folder / name, folder / name)
        if not (self.folder / "tokenizer_config.json").is_file():
            _save_fast(self.rust, self._special_tokens(), folder, add_bos=self.add_bos)
            shutil.copyfile(self.path, folder / HF_FILE)

    def _special_tokens(self) -> dict[str, str]:
        return {f"{name}_token": self.rust.id_to_token(i) for name in SPECIAL_NAMES
                if (i := getattr(self, f"{name}_id")) is not None}


HF_SIDE_FILES = ("tokenizer_config.json", "special_tokens_map.json", "added_tokens.json",
                 "chat_template.jinja", "chat_template.json")


def tokenizer_file(path: str | Path) -> Path:
    """The file that defines the tokenizer at ``path``: ``path`` itself if it is a file, else the
    folder's ``tokenizer.json`` (preferred) or ``tokenizer.model``."""
    path = Path(path)
    if path.is_file():
        return path
    for name in (HF_FILE, SPM_FILE):
        if (path / name).is_file():
            return path / name
    if path.is_dir():
        raise TokenizerError(f"{path}: no {HF_FILE} or {SPM_FILE} in the folder")
    raise TokenizerError(f"{path}: no such tokenizer file or folder")


def load_tokenizer(path: str | Path) -> Tokenizer:
    """The tokenizer at ``path``: a SentencePiece ``.model`` file, a ``tokenizer.json`` file, or a
    folder holding ``tokenizer.json`` (preferred) or ``tokenizer.model``.

    A SentencePiece model adds BOS only where a ``tokenizer_config.json`` beside it says so
    (``add_bos_token``, as Llama-2's does); a ``tokenizer.json`` where its post-processor does.
    """
    file = tokenizer_file(path)
    if file.suffix == ".json":
        return HFTokenizer(file)
    config = _read_json(file.parent / "tokenizer_config.json")
    return SentencePieceTokenizer(file, add_bos=bool(config.get("add_bos_token", False)))


def _read_json(path: Path) -> dict:
    return json.loads(path.read_text(encoding="utf-8")) if path.is_file() else {}


def _token_content(value) -> str | None:
    """A special token as ``tokenizer_config.json`` writes it: a string or ``{"content": ...}``."""
    if isinstance(value, dict):
        return value.get("content")
    return value if isinstance(value, str) else None


def _hf_special_ids(folder: Path, rust) -> dict[str, int | None]:
    names = {**_read_json(folder / "special_tokens_map.json"), **_read_json(folder / "tokenizer_config.json")}
    configs = [_read_json(folder / "config.json"), _read_json(folder / "generation_config.json")]
    ids: dict[str, int | None] = {}
    for name in SPECIAL_NAMES:
        token = _token_content(names.get(f"{name}_token"))
        found = rust.token_to_id(token) if token is not None else None
        if found is None:
            for config in configs:
                value = config.get(f"{name}_token_id")
                value = value[0] if isinstance(value, list) and value else value
                if isinstance(value, int):
                    found = value
                    break
        ids[f"{name}_id"] = found
    return ids


def _save_fast(rust, special_tokens: dict[str, str], folder: Path, add_bos: bool) -> None:
    """``tokenizer.json`` and ``tokenizer_config.json`` through ``transformers``' fast tokenizer."""
    from transformers import PreTrainedTokenizerFast

    fast = PreTrainedTokenizerFast(tokenizer_object=rust, **special_tokens)
    fast.save_pretrained(str(folder))
    config_path = folder / "tokenizer_config.json"
    config = _read_json(config_path)
    config.update(add_bos_token=add_bos, add_eos_token=False)
    config_path.write_text(json.dumps(config, indent=2, sort_keys=True) + "\n", encoding="utf-8")


def spm_to_tokenizers(model: bytes, add_bos: bool = False):
    """A ``tokenizers`` tokenizer that encodes exactly as the SentencePiece model (unigram or BPE).

    Built from the model's own settings, as ``transformers``' ``SpmConverter`` does: the pieces and
    scores (unigram) or the pieces and merges (BPE: every split of a normal piece into two normal
    pieces, ranked by the merged piece's score, then id), byte fallback, the normaliser (precompiled
    character map, extra-whitespace removal, whitespace as ``▁``, the dummy ``▁`` prefix). Control
    pieces (``<s>``, ``</s>``, ``<pad>``) and ``<unk>`` become special added tokens (so, unlike
    SentencePiece, ``tokenizers`` reads the text ``</s>`` as the EOS id, as every Hugging Face
    tokenizer does); byte and unused pieces are never matched against text.
    """
    from sentencepiece import sentencepiece_model_pb2 as model_pb2
    from tokenizers import AddedToken, Regex, decoders, normalizers, pre_tokenizers, processors
    from tokenizers import Tokenizer as RustTokenizer
    from tokenizers.models import BPE, Unigram

    proto = model_pb2.ModelProto()
    proto.ParseFromString(model)
    pieces = proto.pieces
    normal, unknown, control, user_defined = 1, 2, 3, 4  # SentencePiece's piece types
    byte_fallback = proto.trainer_spec.byte_fallback
    unk_id = next((i for i, p in enumerate(pieces) if p.type == unknown), None)
    if proto.trainer_spec.model_type == model_pb2.TrainerSpec.BPE:
        vocab = {p.piece: i for i, p in enumerate(pieces)}
        scored = {p.piece: (p.score, i) for i, p in enumerate(pieces) if p.type == normal}
        ranked = []
        for piece, (score, i) in scored.items():
            for cut in range(1, len(piece)):
                left, right = piece[:cut], piece[cut:]
                if left in scored and right in scored:
                    ranked.append((-score, i, left, right))
        merges = [(left, right) for _, _, left, right in sorted(ranked)]
        unk = pieces[unk_id].piece if unk_id is not None else None
        rust = RustTokenizer(BPE(vocab=vocab, merges=merges, unk_token=unk, fuse_unk=True,
                                 byte_fallback=byte_fallback, dropout=None))
    elif proto.trainer_spec.model_type == model_pb2.TrainerSpec.UNIGRAM:
        # SentencePiece never matches byte, unused or control pieces against text; here they score so
        # low that any other path wins. (`tokenizers` gives an unknown character the lowest score
        # minus 10, SentencePiece the lowest normal one's minus 10: a constant on every path, as an
        # unknown character has no other piece to take it.)
        never = min((p.score for p in pieces if p.type == normal), default=0.0) - 1e4
        vocab = [(p.piece, p.score if p.type in (normal, user_defined) else never) for p in pieces]
        rust = RustTokenizer(Unigram(vocab, unk_id=unk_id, byte_fallback=byte_fallback))
    else:
        raise TokenizerError("only SentencePiece unigram and BPE models can be exported to tokenizer.json "
                             f"(this one is model type {proto.trainer_spec.model_type})")

    spec = proto.normalizer_spec
    steps = []
    if spec.precompiled_charsmap:
        steps.append(normalizers.Precompiled(spec.precompiled_charsmap))
    if spec.remove_extra_whitespaces:
        steps += [normalizers.Replace(Regex(r"\A +| +\z"), ""), normalizers.Replace(Regex(" {2,}"), " ")]
    if spec.add_dummy_prefix:
        steps.append(normalizers.Prepend(" "))
    if spec.escape_whitespaces:
        steps.append(normalizers.Replace(" ", "\u2581"))
    rust.normalizer = normalizers.Sequence(steps)
    users = [p.piece for p in pieces if p.type == user_defined]
    if users:  # SentencePiece emits user-defined pieces whole and never merges across them
        pattern = "|".join(re.escape(u) for u in sorted(users, key=len, reverse=True))
        rust.pre_tokenizer = pre_tokenizers.Split(Regex(pattern), behavior="isolated")
    steps = [decoders.Replace("\u2581", " ")]
    if byte_fallback:
        steps.append(decoders.ByteFallback())
    steps.append(decoders.Fuse())
    if spec.add_dummy_prefix:
        steps.append(decoders.Strip(" ", 1, 0))
    rust.decoder = decoders.Sequence(steps)
    rust.add_special_tokens([AddedToken(p.piece, special=True, normalized=False)
                             for p in pieces if p.type in (control, unknown)])
    bos_id = proto.trainer_spec.bos_id
    if add_bos and bos_id >= 0:
        bos = pieces[bos_id].piece
        rust.post_processor = processors.TemplateProcessing(single=f"{bos} $A", pair=f"{bos} $A {bos} $B",
                                                            special_tokens=[(bos, bos_id)])
    return rust


def train_spm(sentences: list[str], cfg: TokenizerSource, seed: int, threads: int = 1) -> tuple[bytes, int]:
    """Train a SentencePiece model on ``sentences``; returns (serialized model, vocabulary size).

    A corpus too small for ``cfg.vocab_size`` gets the largest vocabulary it supports, with a
    warning that states both sizes.
    """
    if not sentences:
        raise TokenizerError("no text to train the tokenizer on (the mixture is empty)")
    size = cfg.vocab_size
    for _ in range(4):
        try:
            return _train_once(sentences, cfg, size, seed, threads), size
        except RuntimeError as err:
            m = _TOO_HIGH.search(str(err))
            if m is None:
                raise TokenizerError(f"SentencePiece could not train a {size}-piece {cfg.model_type} "
                                     f"model on {len(sentences)} sentences: {err}. Check "
                                     "tokenize.tokenizer.vocab_size and character_coverage") from None
            supported = int(m.group(2))
            log.warning("tokenize.tokenizer.vocab_size asks for %d pieces, but the %d sampled "
                        "sentences support at most %d: training a %d-piece model instead",
                        cfg.vocab_size, len(sentences), supported, supported)
            size = supported
    raise TokenizerError(f"SentencePiece kept refusing vocabulary sizes down to {size}")


def _train_once(sentences: list[str], cfg: TokenizerSource, size: int, seed: int, threads: int) -> bytes:
    spm.set_random_generator_seed(derive_seed(seed, "tokenizer/train"))
    out = io.BytesIO()
    spm.SentencePieceTrainer.train(
        sentence_iterator=iter(sentences), model_writer=out,
        model_type=cfg.model_type, vocab_size=size, byte_fallback=cfg.byte_fallback,
        character_coverage=cfg.character_coverage, split_digits=True,
        normalization_rule_name="identity", remove_extra_whitespaces=False,
        allow_whitespace_only_pieces=True, max_sentence_length=4 * cfg.max_sentence_chars,
        input_sentence_size=0, shuffle_input_sentence=False, num_threads=max(1, threads),
        minloglevel=1, **SPECIAL_IDS)
    return out.getvalue()


def load_processor(model: str | Path | bytes) -> spm.SentencePieceProcessor:
    """A SentencePiece processor from a ``.model`` path or its bytes (clear error if it is not one)."""
    try:
        if isinstance(model, bytes):
            return spm.SentencePieceProcessor(model_proto=model)
        return spm.SentencePieceProcessor(model_file=str(model))
    except (OSError, RuntimeError) as err:
        raise TokenizerError(f"{model if not isinstance(model, bytes) else 'model bytes'}: not a "
                             f"SentencePiece model ({err})") from None


def special_ids(sp: spm.SentencePieceProcessor) -> dict[str, int | None]:
    """The model's special ids (None where it has none, as Llama's has no pad)."""
    ids = {"pad_id": sp.pad_id(), "eos_id": sp.eos_id(), "unk_id": sp.unk_id(), "bos_id": sp.bos_id()}
    return {k: (v if v >= 0 else None) for k, v in ids.items()}


