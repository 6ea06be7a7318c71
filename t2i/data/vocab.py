"""Vocabulary and caption tokenisation (the original AttnGAN code's ``load_captions`` and
``build_dictionary``; conventions A and B of docs/data.md).

Tokenisation is the originals': replace U+FFFD U+FFFD with a space, lower-case, NLTK ``RegexpTokenizer(r"\\w+")``
(which is ``re.findall`` with that pattern), keep only ASCII characters, drop empty tokens.

Word order of a *built* vocabulary: the originals number words in Python-2 dict iteration order, which cannot be
reproduced; t2i numbers them in order of first occurrence (train captions first, then test). Pretrained encoders
therefore only line up with a shipped ``captions.pickle`` (whose order is kept as is) - hence ``sha256()``, stored
with every checkpoint and checked when weights are loaded.
"""

from __future__ import annotations

import hashlib
import json
import re
from collections.abc import Iterable, Sequence
from typing import Any, Literal

__all__ = ["CONVENTIONS", "Vocabulary", "tokenize"]

Convention = Literal["A", "B"]
# A: AttnGAN / DM-GAN (0 = <end>, doubles as padding). B: thesis MirrorGAN / DMM-GAN (<start> w.. <end>, pad 2).
CONVENTIONS: dict[str, tuple[str, ...]] = {"A": ("<end>",), "B": ("<start>", "<end>", "<pad>")}

_TOKEN_RE = re.compile(r"\w+", re.UNICODE | re.MULTILINE | re.DOTALL)  # flags as in nltk.RegexpTokenizer


def tokenize(text: str) -> list[str]:
    """Split one caption into tokens exactly as the original ``captions.pickle`` builder does."""
    text = text.replace("\ufffd\ufffd", " ").lower()
    tokens = []
    for token in _TOKEN_RE.findall(text):
        ascii_token = token.encode("ascii", "ignore").decode("ascii")
        if ascii_token:
            tokens.append(ascii_token)
    return tokens


class Vocabulary:
    """Word list (index = id) plus the caption convention that fixes the special ids."""

    def __init__(self, words: Sequence[str], convention: Convention = "A") -> None:
        if convention not in CONVENTIONS:
            raise ValueError(f"unknown caption convention {convention!r}; use 'A' or 'B'")
        specials = CONVENTIONS[convention]
        words = list(words)
        if tuple(words[: len(specials)]) != specials:
            raise ValueError(
                f"convention {convention} needs the vocabulary to start with {list(specials)}, got {words[:3]}"
            )
        self.words: list[str] = words
        self.convention: Convention = convention
        self.word_to_id: dict[str, int] = {w: i for i, w in enumerate(words)}
        if len(self.word_to_id) != len(words):
            raise ValueError("vocabulary has duplicate words")

    # -- the convention ---------------------------------------------------------
    @property
    def num_specials(self) -> int:
        return len(CONVENTIONS[self.convention])

    @property
    def pad_id(self) -> int:
        return 0 if self.convention == "A" else 2

    @property
    def start_id(self) -> int | None:
        return None if self.convention == "A" else 0

    @property
    def end_id(self) -> int:
        return 0 if self.convention == "A" else 1

    @property
    def mask_ids(self) -> frozenset[int]:
        """Token ids that attention/memory masks treat as "no word" (docs/data.md, caption conventions)."""
        return frozenset(range(self.num_specials))

    def __len__(self) -> int:
        return len(self.words)

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Vocabulary) and other.words == self.words and other.convention == self.convention

    def __repr__(self) -> str:
        return f"Vocabulary({len(self)} words, convention {self.convention}, sha256 {self.sha256()[:12]})"

    # -- text <-> ids --------------------------------------------------------------
    def encode(self, text: str) -> tuple[list[int], list[str]]:
        """Caption text -> (word ids without specials, words not in the vocabulary, which are dropped)."""
        ids, unknown = [], []
        for token in tokenize(text):
            index = self.word_to_id.get(token)
            if index is None or index < self.num_specials:
                unknown.append(token)
            else:
                ids.append(index)
        return ids, unknown

    def wrap(self, ids: Sequence[int]) -> list[int]:
        """Bare word ids -> the stored sequence of this convention (B: ``<start> w.. <end>``)."""
        return list(ids) if self.convention == "A" else [0, *ids, 1]

    def decode(self, ids: Iterable[int]) -> str:
        """Ids -> text; special tokens are skipped, out-of-range ids shown as ``<unk:ID>``."""
        out = []
        for index in ids:
            index = int(index)
            if index < self.num_specials:
                continue
            out.append(self.words[index] if index < len(self.words) else f"<unk:{index}>")
        return " ".join(out)

    # -- identity and plain-data round trip ------------------------------------
    def sha256(self) -> str:
        """Stable hash of the convention and the word list (order matters: it is the embedding row order)."""
        payload = json.dumps({"convention": self.convention, "words": self.words}, ensure_ascii=True)
        return hashlib.sha256(payload.encode("ascii")).hexdigest()

    def to_dict(self) -> dict[str, Any]:
        return {"convention": self.convention, "words": list(self.words), "sha256": self.sha256()}

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Vocabulary:
        vocab = cls(data["words"], data.get("convention", "A"))
        expected = data.get("sha256")
        if expected and expected != vocab.sha256():
            raise ValueError(f"vocabulary hash mismatch: stored {expected[:12]}, computed {vocab.sha256()[:12]}")
        return vocab

    @classmethod
    def from_ixtoword(cls, ixtoword: dict[int, str], convention: Convention | None = None) -> Vocabulary:
        """From the ``ixtoword`` dict of a shipped ``captions.pickle``: its order is kept exactly."""
        n = len(ixtoword)
        try:
            words = [str(ixtoword[i]) for i in range(n)]
        except KeyError as exc:
            raise ValueError(f"ixtoword is not indexed 0..{n - 1} (missing {exc})") from None
        if convention is None:
            convention = "B" if tuple(words[:3]) == CONVENTIONS["B"] else "A"
        return cls(words, convention)

    @classmethod
    def build(
        cls,
        captions_train: Iterable[Sequence[str]],
        captions_test: Iterable[Sequence[str]] = (),
        convention: Convention = "A",
    ) -> Vocabulary:
        """Build from tokenised captions the original way: every word of train + test, no threshold, no <unk>.

        Words are numbered after the specials in order of first occurrence (train, then test).
        """
        words: dict[str, None] = {w: None for w in CONVENTIONS[convention]}
        for captions in (captions_train, captions_test):
            for caption in captions:
                for token in caption:
                    words.setdefault(token, None)
        return cls(list(words), convention)
