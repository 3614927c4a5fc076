"""A character-level tokenizer for the testbed, saved as a Hugging Face fast tokenizer.

One token per character, so digits are single tokens and a step's token ids map one-to-one to its
text. The chat template renders a question as `Q: <question>\\nA:\\n`, after which the model writes
its steps; vLLM and transformers both load it with `AutoTokenizer.from_pretrained`.
"""

from __future__ import annotations

import string
from pathlib import Path

__all__ = ["CHAT_TEMPLATE", "PROMPT_FORMAT", "build_tokenizer", "save_tokenizer"]

SPECIAL_TOKENS = ("<pad>", "<eos>", "<unk>")
CHARACTERS = string.digits + string.ascii_letters + " \n.,:;?!+-*/=()'"
PROMPT_FORMAT = "Q: {question}\nA:\n"
CHAT_TEMPLATE = (
    "{% for message in messages %}{% if message['role'] == 'user' %}"
    "Q: {{ message['content'] }}\n{% endif %}{% endfor %}"
    "{% if add_generation_prompt %}A:\n{% endif %}"
)


def _bytes_to_unicode() -> dict[int, str]:
    # GPT-2's reversible byte -> printable-character map, which byte-level BPE uses.
    printable = (
        list(range(ord("!"), ord("~") + 1)) + list(range(0xA1, 0xAD)) + list(range(0xAE, 0x100))
    )
    codes = printable[:]
    extra = 0
    for byte in range(256):
        if byte not in printable:
            printable.append(byte)
            codes.append(256 + extra)
            extra += 1
    return {b: chr(c) for b, c in zip(printable, codes, strict=True)}


_BYTES = _bytes_to_unicode()


def build_tokenizer():
    """A Qwen2 (byte-level BPE) tokenizer whose vocabulary is single characters and no merges.

    Why not a plain WordLevel tokenizer: `AutoTokenizer` (and so vLLM) loads any tokenizer of a
    `qwen2` model as `Qwen2Tokenizer`, which rebuilds byte-level BPE around the saved vocabulary.
    Storing the vocabulary in byte-level form with no merges makes that reconstruction exact:
    every character is one token, the same ids everywhere.
    """
    from transformers import Qwen2Tokenizer

    vocab = {token: i for i, token in enumerate(SPECIAL_TOKENS)}
    for char in CHARACTERS:
        vocab[_BYTES[ord(char)]] = len(vocab)
    tokenizer = Qwen2Tokenizer(
        vocab=vocab,
        merges=[],
        unk_token="<unk>",
        eos_token="<eos>",
        pad_token="<pad>",
        model_max_length=512,
        clean_up_tokenization_spaces=False,
    )
    tokenizer.chat_template = CHAT_TEMPLATE
    return tokenizer


def save_tokenizer(folder: str | Path):
    tokenizer = build_tokenizer()
    tokenizer.save_pretrained(str(folder))
    return tokenizer
