from __future__ import annotations

from pathlib import Path

from transformers import AutoTokenizer

from pipeline.testbed.tasks import ArithmeticTaskConfig, generate_samples
from pipeline.testbed.tokenizer import PROMPT_FORMAT, save_tokenizer


def test_one_token_per_character_and_exact_roundtrip(tmp_path: Path) -> None:
    save_tokenizer(tmp_path)
    tokenizer = AutoTokenizer.from_pretrained(tmp_path)
    for sample in generate_samples(ArithmeticTaskConfig(num_problems=20)):
        text = PROMPT_FORMAT.format(question=sample.question) + sample.solution
        ids = tokenizer.encode(text)
        assert len(ids) == len(text)
        assert tokenizer.decode(ids) == text
    assert tokenizer.unk_token_id not in tokenizer.encode(PROMPT_FORMAT.format(question="x"))


def test_chat_template_renders_the_prompt_format(tmp_path: Path) -> None:
    save_tokenizer(tmp_path)
    tokenizer = AutoTokenizer.from_pretrained(tmp_path)
    rendered = tokenizer.apply_chat_template(
        [{"role": "user", "content": "Sam has 3 coins, then +4. How many?"}],
        add_generation_prompt=True,
        tokenize=False,
    )
    assert rendered == PROMPT_FORMAT.format(question="Sam has 3 coins, then +4. How many?")
    assert tokenizer.eos_token == "<eos>" and tokenizer.pad_token == "<pad>"
