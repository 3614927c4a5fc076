from __future__ import annotations

from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from pipeline.engines.cache import CacheError, StepCache
from pipeline.engines.types import StepRequest, StepResult

FP = "testbed/small@main:float32"


def _request(ids: tuple[int, ...], **kw) -> StepRequest:
    return StepRequest(prompt_token_ids=ids, max_tokens=16, n_logprobs=2, **kw)


def _result(ids: tuple[int, ...]) -> StepResult:
    return StepResult(
        token_ids=ids,
        text="".join(map(str, ids)),
        token_logprobs=tuple(-0.1 * i for i in range(len(ids))),
        top_logprobs=tuple((-0.1, -2.0) for _ in ids),
        finish_reason="stop",
        prompt_tokens=5,
        cached_prompt_tokens=3,
    )


def test_hit_after_put_and_counters() -> None:
    cache = StepCache()
    request = _request((1, 2, 3))
    assert cache.get(FP, request) is None
    cache.put(FP, request, _result((4, 5)))
    assert cache.get(FP, request) == _result((4, 5))
    assert cache.stats()["cache/hits"] == 1 and cache.stats()["cache/misses"] == 1
    assert cache.stats()["cache/hit_rate"] == 0.5


def test_key_separates_engine_sampling_and_prompt() -> None:
    cache = StepCache()
    cache.put(FP, _request((1, 2)), _result((9,)))
    assert cache.get("other-model@main:float32", _request((1, 2))) is None
    assert cache.get(FP, StepRequest((1, 2), max_tokens=17, n_logprobs=2)) is None
    assert cache.get(FP, _request((1, 3))) is None


def test_sampled_requests_are_never_cached() -> None:
    cache = StepCache()
    sampled = _request((1, 2), temperature=0.7, seed=None)
    cache.put(FP, sampled, _result((9,)))
    assert len(cache) == 0 and cache.get(FP, sampled) is None
    seeded = _request((1, 2), temperature=0.7, seed=3)
    cache.put(FP, seeded, _result((9,)))
    assert cache.get(FP, seeded) == _result((9,))


@settings(max_examples=20, deadline=None)
@given(
    prompts=st.lists(st.lists(st.integers(0, 80), min_size=1, max_size=30), min_size=1, max_size=20)
)
def test_entries_survive_a_restart(tmp_path_factory, prompts) -> None:
    folder = tmp_path_factory.mktemp("cache")
    cache = StepCache(folder, flush_every=7)
    for p in prompts:
        cache.put(FP, _request(tuple(p)), _result(tuple(p[:3])))
    cache.flush()
    reloaded = StepCache(folder)
    assert len(reloaded) == len(cache)
    for p in prompts:
        assert reloaded.get(FP, _request(tuple(p))) == _result(tuple(p[:3]))
    assert not list(folder.glob("*.tmp"))


def test_truncated_last_shard_is_skipped_earlier_one_is_an_error(tmp_path: Path) -> None:
    cache = StepCache(tmp_path)
    cache.put(FP, _request((1,)), _result((1,)))
    first = cache.flush()
    cache.put(FP, _request((2,)), _result((2,)))
    last = cache.flush()
    last.write_bytes(last.read_bytes()[:40])  # a crash mid-write on a disk that lied
    reloaded = StepCache(tmp_path)
    assert reloaded.get(FP, _request((1,))) == _result((1,))
    assert reloaded.get(FP, _request((2,))) is None
    first.write_bytes(b"garbage")
    with pytest.raises(CacheError, match="delete the cache folder"):
        StepCache(tmp_path)


def test_missing_folder_is_created_empty(tmp_path: Path) -> None:
    cache = StepCache(tmp_path / "new" / "cache")
    assert len(cache) == 0 and (tmp_path / "new" / "cache").is_dir()


def test_retrained_weights_at_the_same_path_change_the_fingerprint(tmp_path) -> None:
    from pipeline.engines.types import model_fingerprint

    folder = tmp_path / "small"
    folder.mkdir()
    (folder / "model.safetensors").write_bytes(b"old weights")
    before = model_fingerprint(str(folder), None, "float32")
    assert model_fingerprint(str(folder), None, "float32") == before
    (folder / "model.safetensors").write_bytes(b"new weights")
    assert model_fingerprint(str(folder), None, "float32") != before
    assert (
        model_fingerprint("Qwen/Qwen2.5-Math-1.5B", None, "auto")
        == "Qwen/Qwen2.5-Math-1.5B@main:auto"
    )
