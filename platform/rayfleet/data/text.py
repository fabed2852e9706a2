"""Tokenizer "lower-words-v1", the vocabulary, and token ids padded to a fixed length.

lower-words-v1: lowercase the text, tokens are the matches of `[a-z0-9']+` (anything else
separates tokens). Vectorised with pyarrow.compute: a batch of texts never becomes Python
strings one by one. Vocabulary: index 0 "<pad>", 1 "<unk>", then the train split's tokens by
descending frequency (ties alphabetical), at most vocab_size entries in all.
"""

from __future__ import annotations

from collections import Counter

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from rayfleet.data.layout import PAD, UNK

SEPARATORS = r"[^a-z0-9']+"


def tokenize(texts: pa.Array) -> pa.ListArray:
    """One list of tokens per text (nulls count as empty texts)."""
    lowered = pc.utf8_lower(pc.fill_null(texts.cast(pa.string()), ""))
    pieces = pc.split_pattern_regex(lowered, SEPARATORS)
    # Splitting leaves "" at the ends (and for empty texts); drop them, keeping list lengths.
    flat = pc.list_flatten(pieces)
    parents = pc.list_parent_indices(pieces)
    keep = pc.not_equal(flat, "")
    flat, parents = flat.filter(keep), parents.filter(keep)
    lengths = np.bincount(parents.to_numpy(zero_copy_only=False), minlength=len(texts))
    offsets = np.concatenate([[0], np.cumsum(lengths)]).astype(np.int32)
    return pa.ListArray.from_arrays(pa.array(offsets), flat)


def count_tokens(tokens: pa.ListArray, counter: Counter) -> None:
    flat = pc.list_flatten(tokens)
    if len(flat):
        for item in pc.value_counts(flat).to_pylist():
            counter[item["values"]] += item["counts"]


def build_vocab(counter: Counter, vocab_size: int) -> list[str]:
    ranked = sorted(counter.items(), key=lambda kv: (-kv[1], kv[0]))
    return [PAD, UNK] + [token for token, _ in ranked[: max(0, vocab_size - 2)]]


def encode(tokens: pa.ListArray, vocab: pa.Array, max_length: int) -> np.ndarray:
    """(rows, max_length) int64 ids: unknown tokens 1, truncated or right-padded with 0."""
    rows = len(tokens)
    out = np.zeros((rows, max_length), dtype=np.int64)
    flat = pc.list_flatten(tokens)
    if not len(flat):
        return out
    ids = pc.fill_null(pc.index_in(flat, value_set=vocab), 1).to_numpy().astype(np.int64)
    offsets = tokens.offsets.to_numpy()
    lengths = np.diff(offsets)
    row = np.repeat(np.arange(rows), lengths)
    pos = np.arange(len(ids)) - np.repeat(offsets[:-1] - offsets[0], lengths)
    keep = pos < max_length
    out[row[keep], pos[keep]] = ids[keep]
    return out
