"""The records engines exchange. Plain dataclasses: they cross Ray and HTTP boundaries."""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Protocol


@dataclass(frozen=True)
class StepRequest:
    """Generate one step after `prompt_token_ids` (the whole context, as token ids)."""

    prompt_token_ids: tuple[int, ...]
    max_tokens: int
    stop: tuple[str, ...] = ("\n\n",)
    n_logprobs: int = 0
    temperature: float = 0.0
    seed: int | None = 0
    include_stop_str_in_output: bool = True
    # Score the last `score_tokens` prompt tokens: the engine returns their logprobs under this
    # model (`StepResult.prompt_logprobs`). A verifier reads a draft this way (SpecReason-like).
    score_tokens: int = 0
    # For chat-protocol endpoints: (the user message, the solution so far), the same context as
    # `prompt_token_ids` in words (`pipeline.engines.openai_protocols`); None elsewhere.
    chat: tuple[str, str] | None = None

    @property
    def deterministic(self) -> bool:
        """Greedy or seeded requests give the same step every time, so they may be cached."""
        return self.temperature == 0.0 or self.seed is not None

    def sampling_fingerprint(self) -> str:
        parts = (
            self.max_tokens,
            self.stop,
            self.n_logprobs,
            self.temperature,
            self.seed,
            self.include_stop_str_in_output,
            self.score_tokens,
        )
        return hashlib.sha256(repr(parts).encode()).hexdigest()[:16]

    def prompt_hash(self) -> str:
        return hashlib.sha256(repr(self.prompt_token_ids).encode()).hexdigest()


@dataclass(frozen=True)
class StepResult:
    token_ids: tuple[int, ...]
    text: str
    token_logprobs: tuple[float, ...]  # logprob of each chosen token
    top_logprobs: tuple[tuple[float, ...], ...] = field(default=())  # top-k logprobs per token
    finish_reason: str = "stop"  # "stop" (separator or eos), "length", "eos"
    prompt_tokens: int = 0
    cached_prompt_tokens: int = 0  # prompt tokens served from the engine's prefix cache
    prompt_logprobs: tuple[float, ...] = ()  # logprobs of the last `score_tokens` prompt tokens
    # A process reward model's answer (it generates nothing): p(the prompt's last step is right).
    step_score: float | None = None
    # What a remote server billed for the call, from its `usage`: (prompt tokens, of them served
    # from its prompt cache, completion tokens). None for engines this project hosts.
    billed_tokens: tuple[int, int, int] | None = None


def model_fingerprint(path: str, revision: str | None, dtype: str) -> str:
    """What identifies a model's outputs (the step cache keys on it): weights + revision + dtype.

    `path` is the name the config gives, so a checkout's location does not change it. A local
    folder adds a digest of its contents (small files hashed, large ones by name and size), so
    retrained weights at the same path never read an older model's cached steps."""
    return f"{path}@{revision or 'main'}:{dtype}{_folder_digest(path)}"


_HASHED_BYTES = 64 * 2**20  # larger files (real checkpoints) are identified by name and size


def _folder_digest(path: str) -> str:
    folder = Path(path)
    if not folder.is_dir():
        return ""  # a hub id: the revision identifies it
    digest = hashlib.sha256()
    for file in sorted(folder.iterdir()):
        if not file.is_file():
            continue
        size = file.stat().st_size
        digest.update(f"{file.name}:{size}".encode())
        if size <= _HASHED_BYTES:
            digest.update(file.read_bytes())
    return "#" + digest.hexdigest()[:12]


class StepEngine(Protocol):
    """What the controller needs from a generator, and what its owner needs to manage it."""

    fingerprint: str  # model + revision + dtype: the step cache keys on it
    max_model_len: int

    async def generate(self, request: StepRequest) -> StepResult: ...

    async def generate_batch(self, requests: list[StepRequest]) -> list[StepResult]: ...

    async def reset_prefix_cache(self) -> None:
        """Forget cached prefixes (a no-op where the engine's cache is not ours to reset)."""
        ...

    async def close(self) -> None:
        """Release what this handle owns: an in-process engine stops, a client closes; a
        handle on a shared actor or deployment releases nothing."""
        ...
