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


def build_tokenizer():
    """A `PreTrainedTokenizerFast` with one token per character and the testbed chat template."""
    from tokenizers import Regex, Tokenizer, decoders, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    vocab = {token: i for i, token in enumerate((*SPECIAL_TOKENS, *CHARACTERS))}
    core = Tokenizer(models.WordLevel(vocab=vocab, unk_token="<unk>"))
    core.pre_tokenizer = pre_tokenizers.Split(Regex(r"[\s\S]"), behavior="isolated")
    core.decoder = decoders.Fuse()  # join characters back without separators
    tokenizer = PreTrainedTokenizerFast(
        tokenizer_object=core,
        pad_token="<pad>",
        eos_token="<eos>",
        unk_token="<unk>",
        model_max_length=512,
        clean_up_tokenization_spaces=False,
    )
    tokenizer.chat_template = CHAT_TEMPLATE
    return tokenizer


def save_tokenizer(folder: str | Path):
    tokenizer = build_tokenizer()
    tokenizer.save_pretrained(str(folder))
    return tokenizer
