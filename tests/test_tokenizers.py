"""Tokenizers: special-token placement, truncation that keeps the end token, offline loading."""

import json
import os
import shutil

import numpy as np
import pytest

from medclip_jax.data import tokenizers
from medclip_jax.errors import UserError


def test_bytes_round_trip_and_specials():
    tok = tokenizers.load_tokenizer("bytes")
    assert tok.vocab_size == 260 and tok.pad_id == 0 and tok.mask_id == 259
    assert tuple(tok.prefix) == (tok.bos_id,) and tuple(tok.suffix) == (tok.eos_id,)
    assert tok.special_ids == {0, 1, 2, 259}
    ids, mask = tok(["héllo", ""], 12)
    assert ids.dtype == np.int32 and mask.dtype == np.int32 and ids.shape == (2, 12)
    n = len("héllo".encode("utf-8"))
    assert ids[0, 0] == tok.bos_id and ids[0, n + 1] == tok.eos_id
    assert mask[0].tolist() == [1] * (n + 2) + [0] * (12 - n - 2)
    assert (ids[0, n + 2:] == tok.pad_id).all()
    assert tok.decode(ids[0]) == "héllo"
    assert ids[1, :2].tolist() == [tok.bos_id, tok.eos_id] and mask[1].sum() == 2


def test_truncation_keeps_end_token():
    tok = tokenizers.load_tokenizer("bytes")
    ids, mask = tok(["a long caption that will not fit"], 8)
    assert mask[0].all()
    assert ids[0, 0] == tok.bos_id and ids[0, -1] == tok.eos_id
    assert tok.decode(ids[0]) == "a long"


def test_max_len_too_short_for_specials():
    with pytest.raises(UserError, match="max_len"):
        tokenizers.load_tokenizer("bytes")(["x"], 1)


def minilm_dir() -> str:
    return tokenizers.minilm_folder()


def test_minilm_matches_reference_bert_tokenizer():
    from transformers import BertTokenizer
    tok = tokenizers.load_tokenizer("minilm")
    assert tok.vocab_size == 30522 and tok.pad_id == 0
    reference = BertTokenizer(vocab=os.path.join(minilm_dir(), "vocab.txt"))
    expected = reference("a chest x-ray")["input_ids"]
    ids, mask = tok(["A chest X-ray"], 16)
    assert ids[0, :len(expected)].tolist() == expected
    assert mask[0].sum() == len(expected)
    ids, _ = tok(["Small left pleural effusion with mild cardiomegaly"], 32)
    assert 100 not in ids[0].tolist()  # [UNK]
    ids, mask = tok(["word " * 50], 10)
    assert ids[0, 0] == 101 and ids[0, -1] == 102 and mask[0].all()


def test_special_ids_and_mask_token():
    tok = tokenizers.load_tokenizer("minilm")
    assert tok.mask_id == 103 and list(tok.prefix) == [101] and list(tok.suffix) == [102]
    assert {0, 100, 101, 102, 103} <= tok.special_ids
    assert tok.backend.id_to_token(tok.mask_id) == "[MASK]"
    assert tokenizers.load_tokenizer("bytes").decode([1, 259, 3 + ord("a"), 2]) == "a"


def test_vocab_txt_only_folder(tmp_path):
    shutil.copy(os.path.join(minilm_dir(), "vocab.txt"), tmp_path / "vocab.txt")
    tok = tokenizers.load_tokenizer(f"hf:{tmp_path}")
    reference = tokenizers.load_tokenizer("minilm")
    assert tok.mask_id == reference.mask_id == 103
    texts = ["A chest X-ray", "Histopathology of a tumour"]
    ids, mask = tok(texts, 16)
    ref_ids, ref_mask = reference(texts, 16)
    np.testing.assert_array_equal(ids, ref_ids)
    np.testing.assert_array_equal(mask, ref_mask)
    assert (ids[mask == 1] != 100).all()


def test_tokenizer_json_folder(tmp_path):
    shutil.copy(os.path.join(minilm_dir(), "tokenizer.json"), tmp_path / "tokenizer.json")
    tok = tokenizers.load_tokenizer(f"hf:{tmp_path}")
    assert tok.mask_id == 103
    ids, _ = tok(["a chest x-ray"], 8)
    assert ids[0].tolist() == [101, 1037, 3108, 1060, 1011, 4097, 102, 0]


def bytes_to_unicode() -> dict[int, str]:
    """GPT-2/CLIP's reversible byte -> printable character table."""
    printable = (list(range(ord("!"), ord("~") + 1)) + list(range(ord("¡"), ord("¬") + 1))
                 + list(range(ord("®"), ord("ÿ") + 1)))
    chars = printable[:]
    extra = 0
    for b in range(256):
        if b not in printable:
            printable.append(b)
            chars.append(256 + extra)
            extra += 1
    return dict(zip(printable, map(chr, chars)))


def write_clip_bpe_folder(folder) -> None:
    """A tiny CLIP-layout BPE tokenizer: vocab.json + merges.txt + tokenizer_config.json."""
    chars = list(bytes_to_unicode().values())
    merges = ["c h", "ch e", "che s", "ches t</w>", "r a", "ra y</w>"]
    vocab = chars + [c + "</w>" for c in chars] + [m.replace(" ", "") for m in merges]
    vocab += ["<|startoftext|>", "<|endoftext|>"]
    (folder / "vocab.json").write_text(json.dumps({t: i for i, t in enumerate(vocab)}))
    (folder / "merges.txt").write_text("#version: 0.2\n" + "\n".join(merges) + "\n")
    (folder / "tokenizer_config.json").write_text(json.dumps({
        "tokenizer_class": "CLIPTokenizer", "bos_token": "<|startoftext|>",
        "eos_token": "<|endoftext|>", "pad_token": "<|endoftext|>",
        "unk_token": "<|endoftext|>"}))


def test_clip_bpe_folder(tmp_path):
    write_clip_bpe_folder(tmp_path)
    vocab = json.loads((tmp_path / "vocab.json").read_text())
    tok = tokenizers.load_tokenizer(f"hf:{tmp_path}")
    ids, mask = tok(["A Chest"], 6)
    assert ids[0].tolist() == [vocab["<|startoftext|>"], vocab["a</w>"], vocab["chest</w>"],
                               vocab["<|endoftext|>"], tok.pad_id, tok.pad_id]
    assert mask[0].tolist() == [1, 1, 1, 1, 0, 0]
    assert tok.mask_id is None  # CLIP's BPE has no mask token: MLM is unavailable


def test_missing_folder_and_unknown_spec():
    with pytest.raises(UserError, match="/no/such/tokenizer"):
        tokenizers.load_tokenizer("hf:/no/such/tokenizer")
    with pytest.raises(UserError, match="config.data.tokenizer"):
        tokenizers.load_tokenizer("sentencepiece")


def test_tokenizer_pickles():
    import pickle
    tok = tokenizers.load_tokenizer("minilm")
    clone = pickle.loads(pickle.dumps(tok))
    np.testing.assert_array_equal(clone(["a chest"], 6)[0], tok(["a chest"], 6)[0])


def test_a_tokenizer_without_mask_token_gets_one_new_id_for_mlm():
    class NoMask(tokenizers.ByteTokenizer):
        mask_id = None
        vocab_size = 259
        special_ids = frozenset({0, 1, 2})

    base = NoMask()
    wrapped = tokenizers.with_mask_token(base)
    assert wrapped.mask_id == 259 and wrapped.vocab_size == 260
    assert wrapped.special_ids == {0, 1, 2, 259}
    assert wrapped.prefix == base.prefix and wrapped.suffix == base.suffix
    for got, want in zip(wrapped(["a tumour"], 12), base(["a tumour"], 12)):
        np.testing.assert_array_equal(got, want)
    bytes_tokenizer = tokenizers.load_tokenizer("bytes")
    assert tokenizers.with_mask_token(bytes_tokenizer) is bytes_tokenizer
