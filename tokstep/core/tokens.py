"""Text <-> token views: a prompt's token ids and an honest display text for each token.

A byte-level BPE token (GPT-2's kind) can hold part of a UTF-8 character: the emoji
"😀" is four bytes F0 9F 98 80 and GPT-2 splits them over two tokens. Decoding such a
token alone gives "\ufffd", which hides what the token is. `TokenTexts` shows the
bytes that do not form a whole character as `\\xf0\\x9f\\x98` instead, so every token
has a display text that says what it holds.
"""

from __future__ import annotations

import re
import threading
from typing import NamedTuple

from tokenizers import decoders
from transformers import PreTrainedTokenizerBase

# SentencePiece "byte fallback" tokens are written <0xF0>.
_BYTE_FALLBACK_TOKEN = re.compile(r"^<0x([0-9A-Fa-f]{2})>$")


class PromptToken(NamedTuple):
    """One row of the notebook's tokenization table."""

    token_id: int
    token: str


def _byte_level_char_to_byte() -> dict[str, int]:
    """Inverse of GPT-2's bytes_to_unicode: byte-level BPE writes every byte as a printable
    character (the space 0x20 as "Ġ", newline 0x0A as "Ċ", ...); this maps them back."""
    printable = (
        list(range(ord("!"), ord("~") + 1)) + list(range(ord("¡"), ord("¬") + 1)) + list(range(ord("®"), ord("ÿ") + 1))
    )
    chars = printable[:]
    shift = 0
    for byte in range(256):
        if byte not in printable:
            printable.append(byte)
            chars.append(256 + shift)
            shift += 1
    return {chr(char): byte for byte, char in zip(printable, chars, strict=True)}


_CHAR_TO_BYTE = _byte_level_char_to_byte()


def _is_byte_level(tokenizer: PreTrainedTokenizerBase) -> bool:
    backend = getattr(tokenizer, "backend_tokenizer", None)
    return backend is not None and isinstance(backend.decoder, decoders.ByteLevel)


class TokenTexts:
    """Display text of token ids for one tokenizer, cached (a vocabulary is fixed)."""

    def __init__(self, tokenizer: PreTrainedTokenizerBase) -> None:
        self.tokenizer = tokenizer
        self._byte_level = _is_byte_level(tokenizer)
        self._special_ids = set(tokenizer.all_special_ids)
        self._cache: dict[int, str] = {}
        self._lock = threading.Lock()

    def token_bytes(self, token_id: int) -> bytes | None:
        """The raw bytes a token stands for, where the tokenizer says so; None otherwise."""
        piece = self.tokenizer.convert_ids_to_tokens(token_id)
        if piece is None or token_id in self._special_ids:
            return None
        match = _BYTE_FALLBACK_TOKEN.match(piece)
        if match:
            return bytes([int(match.group(1), 16)])
        if self._byte_level and all(char in _CHAR_TO_BYTE for char in piece):
            return bytes(_CHAR_TO_BYTE[char] for char in piece)
        return None

    def text(self, token_id: int) -> str:
        """What the token holds: its decoded text, or its bytes where it is part of a character.

        >>> texts.text(286)       # GPT-2
        ' of'
        >>> texts.text(30325)     # the first token of " 😀"
        ' \\\\xf0\\\\x9f\\\\x98'
        """
        cached = self._cache.get(token_id)
        if cached is not None:
            return cached
        decoded = self.tokenizer.decode([token_id])
        if "\ufffd" in decoded:
            raw = self.token_bytes(token_id)
            if raw is not None:
                # Whole characters stay characters; only stray bytes are spelled out.
                decoded = raw.decode("utf-8", errors="backslashreplace")
        with self._lock:
            self._cache[token_id] = decoded
        return decoded

    def decode(self, token_ids: list[int]) -> str:
        """The text of a run of tokens: bytes split across tokens join into characters."""
        return self.tokenizer.decode(token_ids)


def tokenize(tokenizer: PreTrainedTokenizerBase, text: str) -> list[int]:
    """The token ids of `text`, as the notebook's `tokenizer(text)["input_ids"]`.

    Special tokens the tokenizer adds by itself (a BOS for Llama-style models) are kept:
    the model expects them, and `model.generate` on the same input sees them too.
    """
    return list(tokenizer(text)["input_ids"])


def tokenization_table(texts: TokenTexts, token_ids: list[int]) -> list[PromptToken]:
    """The notebook's table: (id, token) for each token of a prompt."""
    return [PromptToken(token_id, texts.text(token_id)) for token_id in token_ids]


# Control characters become their Unicode "control pictures" (NUL -> ␀, ESC -> ␛), and
# spaces and line breaks get visible marks.
_VISIBLE_WHITESPACE = str.maketrans(
    {**{chr(code): chr(0x2400 + code) for code in range(0x20)}, "\x7f": "␡", " ": "␣", "\n": "↵", "\t": "⇥"}
)


def visible_whitespace(token: str) -> str:
    """The token with spaces, line breaks and control characters drawn, so " of" and "of"
    look different and a NUL byte is seen, not swallowed."""
    return token.translate(_VISIBLE_WHITESPACE)
