"""Write `MODEL_CARD.md` for the committed testbed pair from the training records and a report."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

from pipeline.testbed.report import ModelReport

__all__ = ["sha256_of", "write_model_card"]


def sha256_of(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def write_model_card(models_dir: Path, reports: dict[str, ModelReport], cost_ratio: float) -> Path:
    records = {
        name: json.loads((models_dir / name / "training.json").read_text()) for name in reports
    }
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
    for name, report in reports.items():
        record, spec = records[name], records[name]["spec"]
        model = spec["model"]
        lines.append(
            f"| {name} | {record['parameters']:,} | {model['num_layers']} × {model['hidden_size']}"
            f" ({model['num_heads']}) | {spec['iterations']} × {spec['batch_size']} | {spec['lr']:g}"
            f" | {record['train_seconds'] / 60:.1f} min | {report.accuracy:.1%} | {report.step_accuracy:.1%}"
            f" | {report.step_error_auroc:.3f} |"
        )
    lines += [
        "",
        f"Per-step cost ratio large/small by parameter count: **{cost_ratio:.2f}×** "
        "(the `flops` cost model charges 2 × parameters per token).",
        "",
        "## Training configuration",
        "",
        "Seeds are explicit. Retraining the small model with the same command, seed and thread count",
        "(`steproute testbed train --model small --threads 2`) reproduced its weight file bit for bit",
        "on the machine that trained it (same sha256 as below); on another CPU, float32 sums may",
        "reorder, so expect close but not identical numbers.",
        "",
        "The small model has a cheaper training budget than the large one in two ways: fewer",
        "parameters, and training problems with only 2-4 operations (`task.max_ops: 4`), while the",
        "benchmark has 2-6. On 5-6 operation problems its later steps fail, often confidently (it",
        "tends to state an answer after four steps), so part of its error is invisible to its own",
        "logprobs while the step index and trajectory features show it: the routing signal the",
        "testbed is built to have. Training times are wall-clock on 2 cores; when other work shared",
        "the cores they are longer than the model alone would take.",
        "",
    ]
    for name in reports:
        lines += [
            f"### {name}",
            "",
            "```json",
            json.dumps(records[name]["spec"], indent=2),
            "```",
            "",
        ]
    lines += ["## Weight files (sha256)", "", "| file | sha256 |", "| --- | --- |"]
    for name in reports:
        for path in sorted((models_dir / name).glob("*.safetensors")):
            lines.append(f"| `{name}/{path.name}` | `{sha256_of(path)}` |")
    lines.append("")
    card = models_dir / "MODEL_CARD.md"
    card.write_text("\n".join(lines))
    return card
