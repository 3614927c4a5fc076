"""Train the testbed's process reward model (PRM): p(this step is right) at the newline ending it.

The architecture is the one vLLM serves Qwen2.5-Math-PRM with (`Qwen2ForProcessRewardModel`): a
Qwen2 body (`model.*`) and a two-layer head (`score.0`, ReLU, `score.2`) answering
[p(wrong), p(right)] at each step tag. The testbed's step tag is the newline (`STEP_TAG_ID`), and
a step's label sits on the newline that ends it: vLLM's STEP pooling returns a row at every
newline (the prompt's too), and a caller reads the one after the step it asks about.

Read top to bottom: config, the input a step is read from, model, length-bucketed batches, the
loop, the save. Like a real PRM the body starts from a language model that knows the task (the
large testbed model); the head starts fresh. Labels come from the caller (the harness grades
each step). Wrong steps are the rarer class (~11 %); the loss can weigh them up
(`PRMSpec.wrong_step_weight`), though unweighted ranked them as well.
"""

from __future__ import annotations

import json
import logging
import math
import random
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import torch
from pydantic import BaseModel, ConfigDict, Field, model_validator

from pipeline.testbed.tokenizer import save_tokenizer

log = logging.getLogger(__name__)

__all__ = [
    "STEP_TAG_ID",
    "LabelledSequence",
    "PRMSpec",
    "ProcessRewardModel",
    "build_prm",
    "save_prm",
    "step_probabilities",
    "tagged_step",
    "train_prm",
]

STEP_TAG_ID = 66  # "\n" in the testbed tokenizer: every step but the answer ends with two
IGNORE = -100  # cross_entropy's ignore_index: positions without a label


class PRMSpec(BaseModel):
    """Chosen on a held-out slice of the train problems (AUROC of 1 − p(right) for a wrong step,
    324 problems, 202 wrong steps; ±0.01 is noise there), never on test: 8 epochs at lr 1e-3
    gave 0.98; 6 epochs 0.96; 12 epochs peaked at 0.98 around epoch 7-10 and then overfit
    (held-out loss doubled); lr 3e-3 reached 0.92 in 6 epochs."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    init_from: str = "pipeline/testbed/models/large"  # the LM whose body the PRM starts from
    epochs: int = Field(8, ge=1)
    batch_size: int = Field(16, ge=1)  # sequences (one problem's drafts each)
    lr: float = Field(1e-3, gt=0)
    betas: tuple[float, float] = (0.9, 0.98)
    weight_decay: float = 0.01
    warmup_fraction: float = Field(0.05, ge=0, le=1)
    min_lr_fraction: float = Field(0.1, ge=0, le=1)
    # Loss weight of a wrong step relative to a right one; None: right/wrong count (balanced).
    # 1 (unweighted) ranked as well or better than balanced (0.98 vs 0.977 held out), and its
    # p(right) stays a probability, which a threshold rule reads.
    wrong_step_weight: float | None = Field(1.0, gt=0)
    # Also train on the large model's drafts of the same problems (nearly all right steps):
    # held-out AUROC 0.97 instead of 0.98, at twice the training time.
    large_drafts: bool = False
    # Where a step's label comes from. "step_grader": the testbed's grader (a baseline's labels).
    # "monte_carlo": whether the large model still finishes correctly after the draft, on the
    # guided paths of `pipeline.labels` (final answers only: labels any benchmark can produce).
    labels: Literal["step_grader", "monte_carlo"] = "step_grader"
    validation_fraction: float = Field(0.1, ge=0, lt=1)  # train problems held out for tuning
    seed: int = 0
    threads: int = 2

    @model_validator(mode="after")
    def _one_kind_of_label(self) -> PRMSpec:
        if self.large_drafts and self.labels != "step_grader":
            raise ValueError("large_drafts are labelled by the step grader: only with step_grader")
        return self


@dataclass(frozen=True)
class LabelledSequence:
    """One problem's prompt and steps as token ids, with a label at the tag ending each step."""

    input_ids: tuple[int, ...]
    positions: tuple[int, ...]  # index of each step's final tag in input_ids
    right: tuple[bool, ...]  # per step: is it right (the label)


def tagged_step(step_ids: Sequence[int]) -> list[int]:
    """A step's ids as the PRM reads them: ending in the step tag, which is where it answers.

    A step the small model ended with its separator already ends in the tag; the answer step
    (which ends with eos) and a step cut at max tokens get one appended, as the controller
    does when it asks the PRM about a draft."""
    ids = list(step_ids)
    return ids if ids and ids[-1] == STEP_TAG_ID else ids + [STEP_TAG_ID]


class ProcessRewardModel(torch.nn.Module):
    """vLLM's `Qwen2ForProcessRewardModel` in plain torch: same parameter names, same head."""

    def __init__(self, body) -> None:
        super().__init__()
        hidden = body.config.hidden_size
        self.model = body  # a transformers Qwen2Model
        self.score = torch.nn.Sequential(
            torch.nn.Linear(hidden, hidden), torch.nn.ReLU(), torch.nn.Linear(hidden, 2)
        )

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        hidden = self.model(input_ids=input_ids, attention_mask=attention_mask).last_hidden_state
        return self.score(hidden)  # [batch, tokens, (wrong, right)] logits


def build_prm(init_from: str | Path) -> ProcessRewardModel:
    """A PRM whose body is the causal LM at `init_from` (its lm_head dropped), head fresh."""
    from transformers import Qwen2ForCausalLM

    lm = Qwen2ForCausalLM.from_pretrained(str(init_from), dtype=torch.float32)
    return ProcessRewardModel(lm.model)


def _padded(chunk: Sequence[LabelledSequence], with_labels: bool = True):
    width = max(len(s.input_ids) for s in chunk)
    input_ids = torch.zeros((len(chunk), width), dtype=torch.long)  # 0 is <pad>
    attention = torch.zeros((len(chunk), width), dtype=torch.long)
    labels = torch.full((len(chunk), width), IGNORE, dtype=torch.long)
    for row, sequence in enumerate(chunk):
        input_ids[row, : len(sequence.input_ids)] = torch.tensor(sequence.input_ids)
        attention[row, : len(sequence.input_ids)] = 1
        if with_labels:
            labels[row, list(sequence.positions)] = torch.tensor(sequence.right, dtype=torch.long)
    return input_ids, attention, labels


def _batches(sequences: Sequence[LabelledSequence], batch_size: int, rng: random.Random):
    """One epoch of batches of similar lengths (little padding), in a shuffled order."""
    order = sorted(sequences, key=lambda s: (len(s.input_ids), rng.random()))
    chunks = [order[i : i + batch_size] for i in range(0, len(order), batch_size)]
    rng.shuffle(chunks)
    return [_padded(chunk) for chunk in chunks]


def _lr_at(step: int, total: int, spec: PRMSpec) -> float:
    warmup = max(1, int(spec.warmup_fraction * total))
    if step < warmup:
        return spec.lr * (step + 1) / warmup
    progress = (step - warmup) / max(1, total - warmup)
    cosine = 0.5 * (1 + math.cos(math.pi * min(1.0, progress)))
    return spec.lr * (spec.min_lr_fraction + (1 - spec.min_lr_fraction) * cosine)


@torch.no_grad()
def step_probabilities(
    model: ProcessRewardModel, sequences: Sequence[LabelledSequence], batch_size: int = 64
) -> list[list[float]]:
    """p(right) at every labelled step of each sequence, from the torch model."""
    model.eval()
    out: list[list[float]] = []
    for start in range(0, len(sequences), batch_size):
        chunk = sequences[start : start + batch_size]
        input_ids, attention, _ = _padded(chunk, with_labels=False)
        p_right = model(input_ids, attention).softmax(-1)[..., 1]
        out += [p_right[row, list(s.positions)].tolist() for row, s in enumerate(chunk)]
    return out


def _class_weights(spec: PRMSpec, sequences: Sequence[LabelledSequence]) -> torch.Tensor:
    right = sum(sum(s.right) for s in sequences)
    wrong = sum(len(s.right) for s in sequences) - right
    weight = spec.wrong_step_weight or right / max(1, wrong)
    return torch.tensor([weight, 1.0])  # label 0 = wrong, 1 = right (vLLM's index 1)


def _mean_loss(model, batches, weights: torch.Tensor) -> float:
    model.eval()
    with torch.no_grad():
        losses = [
            torch.nn.functional.cross_entropy(
                model(ids, mask).flatten(0, 1), labels.flatten(), weight=weights
            ).item()
            for ids, mask, labels in batches
        ]
    return sum(losses) / max(1, len(losses))


def train_prm(
    spec: PRMSpec,
    train: Sequence[LabelledSequence],
    validation: Sequence[LabelledSequence] = (),
    progress: Callable[[int, int, float, float], None] | None = None,
) -> tuple[ProcessRewardModel, dict]:
    """Fine-tune a PRM on `train`; returns it and its training record. `progress(epoch, epochs,
    train loss, validation loss)` after each epoch (validation loss is nan without `validation`)."""
    torch.manual_seed(spec.seed)
    torch.set_num_threads(spec.threads)
    rng = random.Random(spec.seed)
    model = build_prm(spec.init_from)
    weights = _class_weights(spec, train)
    optimizer = torch.optim.AdamW(
        model.parameters(), lr=spec.lr, betas=spec.betas, weight_decay=spec.weight_decay
    )
    total = spec.epochs * math.ceil(len(train) / spec.batch_size)
    held_out = [_padded(validation[i : i + 64]) for i in range(0, len(validation), 64)]
    log.info("PRM: %d train sequences, wrong-step weight %.2f", len(train), weights[0])
    start, step, history = time.perf_counter(), 0, []
    for epoch in range(spec.epochs):
        model.train()
        losses = []
        for input_ids, attention, labels in _batches(train, spec.batch_size, rng):
            for group in optimizer.param_groups:
                group["lr"] = _lr_at(step, total, spec)
            logits = model(input_ids, attention)
            loss = torch.nn.functional.cross_entropy(
                logits.flatten(0, 1), labels.flatten(), weight=weights
            )
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
            optimizer.step()
            losses.append(loss.item())
            step += 1
        train_loss = sum(losses) / len(losses)
        validation_loss = _mean_loss(model, held_out, weights) if held_out else math.nan
        history.append({"epoch": epoch + 1, "train_loss": train_loss, "val_loss": validation_loss})
        log.info("PRM epoch %d/%d: loss %.4f, validation loss %.4f", epoch + 1, spec.epochs,
                 train_loss, validation_loss)  # fmt: skip
        if progress is not None:
            progress(epoch + 1, spec.epochs, train_loss, validation_loss)
    record = {
        "parameters": sum(p.numel() for p in model.parameters()),
        "train_seconds": round(time.perf_counter() - start, 1),
        "wrong_step_weight": round(float(weights[0]), 4),
        "history": [{k: round(v, 5) for k, v in h.items()} for h in history],
        "spec": spec.model_dump(mode="json"),
    }
    return model, record


def save_prm(model: ProcessRewardModel, output_dir: str | Path) -> Path:
    """A folder vLLM loads with runner="pooling" (STEP pooling at STEP_TAG_ID): config.json naming
    `Qwen2ForProcessRewardModel` with two labels, float32 safetensors and the testbed tokenizer.
    The caller writes the training record beside them (it holds what was measured too)."""
    from safetensors.torch import save_file

    folder = Path(output_dir)
    folder.mkdir(parents=True, exist_ok=True)
    config = model.model.config.to_diff_dict()  # the body's Qwen2 config, defaults left out
    config.pop("_name_or_path", None)
    config.update(
        architectures=["Qwen2ForProcessRewardModel"],
        num_labels=2,
        id2label={"0": "wrong", "1": "right"},
        label2id={"wrong": 0, "right": 1},
        tie_word_embeddings=False,  # no lm_head: the body's embeddings stand alone
        dtype="float32",  # what vLLM runs on CPU; ~4 MB, well inside the 8 MB budget
    )
    (folder / "config.json").write_text(json.dumps(config, indent=2, sort_keys=True) + "\n")
    state = {k: v.detach().contiguous() for k, v in model.state_dict().items()}
    save_file(state, str(folder / "model.safetensors"), metadata={"format": "pt"})
    save_tokenizer(folder)
    return folder
