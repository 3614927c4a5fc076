"""Write `MODEL_CARD.md` for the committed testbed models from their training records and a report."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

from pipeline.testbed_report import TestbedReport

__all__ = ["prm_lines", "sha256_of", "write_model_card"]


def sha256_of(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


# How the pair was designed and how to reproduce it: fixed prose between the measured numbers
# and the per-model training configurations.
HOW_THE_PAIR_IS_BUILT = [
    "## How the pair is built",
    "",
    "Both models see the whole task (3-6 operations, values up to 99). The small one is",
    "weak per step in two ways. It has little capacity and training, so it slips on single",
    "steps, and those slips show in its own confidence. And its training labels hold one",
    "systematic misconception (`zero_borrow`: it subtracts digit by digit, smaller from",
    "larger, when the first number ends in 0, `50-27=37`), so on that class of steps it is",
    "wrong with conviction, which its confidence does not show. Both kinds of error are",
    "local: every later step continues from the value the trajectory reached, so when the",
    "large model writes the wrong step, the small model carries on correctly. The benchmark",
    "itself never contains the misconception.",
    "",
    "## Training configuration",
    "",
    "Seeds are explicit: `steproute testbed train --model small --threads 2` (and `--model",
    "large`) retrains with the preset, seed and thread count recorded below. Torch on the same",
    "kind of machine reproduces the weight files bit for bit: retraining each model gave",
    "the sha256 below again (a test checks a few iterations). On another CPU float32 sums",
    "may reorder, so expect close but not identical numbers. Training times are wall-clock",
    "on 2 cores, each model trained alone.",
    "",
]


def _measured_lines(report: TestbedReport, records: dict[str, dict]) -> list[str]:
    """The title, the per-model table, the cost ratio and the repair / oracle numbers."""
    reports = report.models
    lines = [
        "# Testbed models (TESTBED: synthetic arithmetic, not GSM8K or MATH)",
        "",
        "Two Qwen2-architecture causal LMs trained by `steproute testbed train` on the",
        "synthetic multi-step arithmetic task of `pipeline/testbed/tasks.py`, with the",
        "character-level tokenizer of `pipeline/testbed/tokenizer.py`. Weights are bf16",
        "safetensors; vLLM runs them as float32 on CPU. Numbers below were measured by",
        "`steproute testbed report` (greedy, one step at a time through real vLLM, held-out",
        f"problems: {next(iter(reports.values())).problems}).",
        "",
        "| model | parameters | layers × hidden (heads) | iterations × batch | lr | train time | problem accuracy | step accuracy | step-error AUROC (−mean logprob) |",
        "| --- | ---: | --- | --- | ---: | ---: | ---: | ---: | ---: |",
    ]
    for name, measured in reports.items():
        record, spec = records[name], records[name]["spec"]
        model = spec["model"]
        lines.append(
            f"| {name} | {record['parameters']:,} | {model['num_layers']} × {model['hidden_size']}"
            f" ({model['num_heads']}) | {spec['iterations']} × {spec['batch_size']} | {spec['lr']:g}"
            f" | {record['train_seconds'] / 60:.1f} min | {measured.accuracy:.1%}"
            f" | {measured.step_accuracy:.1%} | {measured.step_error_auroc:.3f} |"
        )
    oracle = ", ".join(f"`{k}` {v:.3f}" for k, v in report.oracle_cost_at_large.items())
    return lines + [
        "",
        f"Per-step cost ratio large/small by parameter count: **{report.cost_ratio:.2f}×** "
        "(the `flops` cost model charges 2 × parameters per processed token).",
        "",
        f"Repair rate: escalating only the small model's first wrong step makes "
        f"**{report.repair_rate:.1%}** of its {report.repairable} failures correct. The oracle "
        f"(every wrong draft escalated) reaches {report.oracle_accuracy:.1%}; its normalized "
        f"cost at the large model's accuracy minus one point: {oracle}.",
        "",
    ]


def prm_lines(models_dir: Path) -> list[str]:
    """The process reward model's section, from `<models_dir>/prm/training.json` (what
    `steproute testbed train-prm` measured); none when there is no PRM."""
    path = models_dir / "prm" / "training.json"
    if not path.is_file():
        return []
    record = json.loads(path.read_text())
    spec, m = record["spec"], record["measured"]
    return [
        "## Process reward model (`prm/`)",
        "",
        "A `Qwen2ForProcessRewardModel`, the architecture vLLM serves Qwen2.5-Math-PRM with,",
        "trained by `steproute testbed train-prm`: the large model's transformer body and a fresh",
        "two-layer head answering (p wrong, p right) at the newline that ends a step (vLLM STEP",
        "pooling, `step_tag_id` 66). Its training data are the small model's greedy drafts of",
        f"{m['train_problems']} TRAIN-split problems ({m['train_steps']} steps, "
        f"{m['train_wrong_steps']} wrong), each step labelled by",
        "`tasks.grade_step`; a further slice of "
        f"{m['validation_problems']} train problems was held out to choose the",
        "hyper-parameters. No test problem was trained or tuned on. Float32 safetensors.",
        "",
        "| parameters | epochs | train time | step-error AUROC, held-out train | step-error AUROC, test (torch) | test (vLLM) | the small model's −mean logprob, same test steps |",
        "| ---: | ---: | ---: | ---: | ---: | ---: | ---: |",
        f"| {record['parameters']:,} | {spec['epochs']} | {record['train_seconds'] / 60:.1f} min"
        f" | {m['validation_auroc']:.3f} | {m['test_auroc']:.3f} | {m['vllm_test_auroc']:.3f}"
        f" | {m['confidence_auroc']:.3f} |",
        "",
        f"Test: {m['test_steps']} steps of the small model's greedy drafts of "
        f"{m['test_problems']} test-split problems,",
        f"{m['test_wrong_steps']} of them wrong. The AUROC is of 1 − p(right) for 'the step is "
        "wrong'; torch",
        f"and vLLM p(right) differ by at most {m['vllm_max_difference']:.1e}. The train time is "
        "wall-clock on 2 cores.",
        "",
        "To score a draft, give vLLM the small model's context ids (prompt and kept steps), then",
        "the draft's ids with a newline (66) appended when the draft does not end in one, and",
        "read p(right) from the last row it returns (one row per newline, the prompt's too).",
        "",
        "```json",
        json.dumps(spec, indent=2),
        "```",
        "",
    ]


def write_model_card(models_dir: Path, report: TestbedReport) -> Path:
    """Write `<models_dir>/MODEL_CARD.md`: `report`'s numbers, how the pair is built, each
    model's training configuration (its `training.json`), the process reward model's section
    when `<models_dir>/prm` holds one, and the sha256 of every weight file."""
    records = {
        name: json.loads((models_dir / name / "training.json").read_text())
        for name in report.models
    }
    lines = _measured_lines(report, records) + HOW_THE_PAIR_IS_BUILT
    for name in report.models:
        lines += [
            f"### {name}",
            "",
            "```json",
            json.dumps(records[name]["spec"], indent=2),
            "```",
            "",
        ]
    lines += prm_lines(models_dir)
    lines += ["## Weight files (sha256)", "", "| file | sha256 |", "| --- | --- |"]
    for name in [*report.models, *(["prm"] if prm_lines(models_dir) else [])]:
        for path in sorted((models_dir / name).glob("*.safetensors")):
            lines.append(f"| `{name}/{path.name}` | `{sha256_of(path)}` |")
    lines.append("")
    card = models_dir / "MODEL_CARD.md"
    card.write_text("\n".join(lines))
    return card
