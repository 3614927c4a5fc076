"""`StepCache`: remembers deterministic steps so repeated epochs over the same problems cost little.

Key = (engine fingerprint: model + revision + dtype; sampling fingerprint; hash of the prompt
token ids). Greedy (or seeded) decoding makes a cached step exact. Entries live in memory and
are persisted as Parquet shards, each written atomically (temp file, fsync, rename), so a crash
never leaves a half-written shard under a real name; loading still skips an unreadable last
shard (a disk that lied) with a warning, and refuses an unreadable earlier one.
"""

from __future__ import annotations

import hashlib
import logging
import os
import uuid
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq

from pipeline.engines.types import StepRequest, StepResult

log = logging.getLogger(__name__)

__all__ = ["CacheError", "StepCache"]

_SCHEMA = pa.schema(
    [
        ("key", pa.string()),
        ("token_ids", pa.list_(pa.int64())),
        ("text", pa.string()),
        ("token_logprobs", pa.list_(pa.float64())),
        ("top_logprobs", pa.list_(pa.list_(pa.float64()))),
        ("finish_reason", pa.string()),
        ("prompt_tokens", pa.int64()),
        ("cached_prompt_tokens", pa.int64()),
        ("prompt_logprobs", pa.list_(pa.float64())),
        ("step_score", pa.float64()),  # absent in shards written before PRMs: read as null
        ("billed_tokens", pa.list_(pa.int64())),  # remote servers' usage; null for our engines
    ]
)


class CacheError(RuntimeError):
    """A cache shard other than the newest is unreadable: the cache folder is damaged."""


class StepCache:
    def __init__(
        self, folder: str | os.PathLike[str] | None = None, flush_every: int = 4096
    ) -> None:
        self.folder = Path(folder) if folder is not None else None
        self.flush_every = flush_every
        self._entries: dict[str, StepResult] = {}
        self._pending: dict[str, StepResult] = {}
        self.hits = 0
        self.misses = 0
        if self.folder is not None:
            self.folder.mkdir(parents=True, exist_ok=True)
            self._load()

    # ---------------------------------------------------------------- keys and lookups

    @staticmethod
    def key(engine_fingerprint: str, request: StepRequest) -> str:
        raw = f"{engine_fingerprint}|{request.sampling_fingerprint()}|{request.prompt_hash()}"
        return hashlib.sha256(raw.encode()).hexdigest()

    def get(self, engine_fingerprint: str, request: StepRequest) -> StepResult | None:
        if not request.deterministic:
            self.misses += 1
            return None
        result = self._entries.get(self.key(engine_fingerprint, request))
        if result is None:
            self.misses += 1
        else:
            self.hits += 1
        return result

    def put(self, engine_fingerprint: str, request: StepRequest, result: StepResult) -> None:
        if not request.deterministic:
            return  # a sampled step is one draw, not the answer to this request
        key = self.key(engine_fingerprint, request)
        if key in self._entries:
            return
        self._entries[key] = result
        self._pending[key] = result
        if self.folder is not None and len(self._pending) >= self.flush_every:
            self.flush()

    def stats(self) -> dict[str, float]:
        lookups = self.hits + self.misses
        return {
            "cache/hits": self.hits,
            "cache/misses": self.misses,
            "cache/entries": len(self._entries),
            "cache/hit_rate": self.hits / lookups if lookups else 0.0,
        }

    def __len__(self) -> int:
        return len(self._entries)

    # ---------------------------------------------------------------- persistence

    def flush(self) -> Path | None:
        """Write pending entries as one new shard, atomically. Returns its path."""
        if self.folder is None or not self._pending:
            return None
        rows = {name: [] for name in _SCHEMA.names}
        for key, r in self._pending.items():
            rows["key"].append(key)
            rows["token_ids"].append(list(r.token_ids))
            rows["text"].append(r.text)
            rows["token_logprobs"].append(list(r.token_logprobs))
            rows["top_logprobs"].append([list(t) for t in r.top_logprobs])
            rows["finish_reason"].append(r.finish_reason)
            rows["prompt_tokens"].append(r.prompt_tokens)
            rows["cached_prompt_tokens"].append(r.cached_prompt_tokens)
            rows["prompt_logprobs"].append(list(r.prompt_logprobs))
            rows["step_score"].append(r.step_score)
            rows["billed_tokens"].append(list(r.billed_tokens) if r.billed_tokens else None)
        table = pa.table(rows, schema=_SCHEMA)
        # Shard names sort by creation: a zero-padded count, then a random suffix so that two
        # writers sharing a folder never collide.
        index = len(self._shards())
        final = self.folder / f"shard-{index:06d}-{uuid.uuid4().hex[:8]}.parquet"
        temp = final.with_suffix(".tmp")
        with open(temp, "wb") as handle:
            pq.write_table(table, handle)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(temp, final)
        self._pending.clear()
        return final

    def _shards(self) -> list[Path]:
        assert self.folder is not None
        return sorted(self.folder.glob("shard-*.parquet"))

    def _load(self) -> None:
        shards = self._shards()
        for position, shard in enumerate(shards):
            try:
                table = pq.read_table(shard, schema=_SCHEMA)
            except (OSError, pa.ArrowInvalid) as exc:
                if position == len(shards) - 1:
                    log.warning("step cache: skipping unreadable last shard %s (%s)", shard, exc)
                    continue
                raise CacheError(
                    f"step cache shard {shard} is unreadable ({exc}); fix: delete the cache "
                    f"folder {self.folder} to rebuild it"
                ) from exc
            for row in table.to_pylist():
                self._entries[row["key"]] = StepResult(
                    token_ids=tuple(row["token_ids"]),
                    text=row["text"],
                    token_logprobs=tuple(row["token_logprobs"]),
                    top_logprobs=tuple(tuple(t) for t in row["top_logprobs"]),
                    finish_reason=row["finish_reason"],
                    prompt_tokens=row["prompt_tokens"],
                    cached_prompt_tokens=row["cached_prompt_tokens"],
                    prompt_logprobs=tuple(row["prompt_logprobs"]),
                    step_score=row["step_score"],
                    billed_tokens=tuple(row["billed_tokens"]) if row["billed_tokens"] else None,
                )
        if shards:
            log.info(
                "step cache: loaded %d entries from %d shard(s)", len(self._entries), len(shards)
            )


class CachedEngine:
    """A step engine fronted by a `StepCache`: hits are answered here, misses go to the engine.

    Same interface as the engine it wraps (`StepEngine`), so the controller does not know.
    """

    def __init__(self, engine, cache: StepCache) -> None:
        self.engine = engine
        self.cache = cache
        self.fingerprint = engine.fingerprint
        self.max_model_len = engine.max_model_len
        self.name = getattr(engine, "name", self.fingerprint)

    async def generate(self, request: StepRequest) -> StepResult:
        return (await self.generate_batch([request]))[0]

    async def generate_batch(self, requests: list[StepRequest]) -> list[StepResult]:
        results: list[StepResult | None] = [self.cache.get(self.fingerprint, r) for r in requests]
        # A deterministic request that a batch holds twice (two trajectories that reached the
        # same context, e.g. where the large model wrote the very step the draft had) goes to
        # the engine once.
        sent: list[int] = []
        first: dict[str, int] = {}
        copies: list[tuple[int, int]] = []
        for i, result in enumerate(results):
            if result is not None:
                continue
            if requests[i].deterministic:  # a sampled request is a draw of its own each time
                key = self.cache.key(self.fingerprint, requests[i])
                if key in first:
                    copies.append((i, first[key]))
                    continue
                first[key] = i
            sent.append(i)
        if sent:
            fresh = await self.engine.generate_batch([requests[i] for i in sent])
            for i, result in zip(sent, fresh, strict=True):
                self.cache.put(self.fingerprint, requests[i], result)
                results[i] = result
        for i, j in copies:
            results[i] = results[j]
        return results  # type: ignore[return-value]

    async def reset_prefix_cache(self) -> None:
        await self.engine.reset_prefix_cache()

    async def close(self) -> None:
        await self.engine.close()
