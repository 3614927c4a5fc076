"""Grading: pull the final answer out of generated text and decide whether it matches the gold.

Extraction, in order of trust:
  1. the last `\\boxed{…}` / `\\fbox{…}` (nested braces handled),
  2. the last `The answer is …` (to the end of its line),
  3. the last `#### …` (GSM8K's own solution format),
  4. GSM8K only, as a documented last resort: the last number in the text.
Correctness is decided by `math-verify` (numbers, LaTeX, fractions vs decimals, sets,
intervals), with an exact match of normalized strings as a fallback for text answers
(names, yes/no) that math-verify cannot parse.
"""

from __future__ import annotations

import re
import threading
from dataclasses import dataclass

__all__ = ["GradeResult", "extract_answer", "grade", "is_equivalent", "normalize_answer"]

_BOX_COMMANDS = ("\\boxed", "\\fbox")
_ANSWER_IS = re.compile(r"the (?:final )?answer is[:\s]*(.+)", re.IGNORECASE)
_HASHES = re.compile(r"####\s*(.+)")
_NUMBER = re.compile(r"-?\d[\d,]*(?:\.\d+)?")
_THOUSANDS = re.compile(r"^-?\d{1,3}(?:,\d{3})+(?:\.\d+)?$")
_UNIT_TEXT = re.compile(r"^(.*?\d)\s*(?:\\(?:text|mbox|mathrm)\{\s*[^{}]*\}\s*)+$")


@dataclass(frozen=True)
class GradeResult:
    correct: bool
    extracted: str | None


def _box_argument(text: str, start: int) -> tuple[str, int] | None:
    """The argument of the box command at `start` and the index just past it."""
    cmd = next(c for c in _BOX_COMMANDS if text.startswith(c, start))
    i = start + len(cmd)
    while i < len(text) and text[i] == " ":
        i += 1
    if i >= len(text):
        return None
    if text[i] != "{":
        # `\boxed 5`: the argument runs to the next space or `$`.
        match = re.match(r"[^\s$]+", text[i:])
        return (match.group(0), i + match.end()) if match else None
    depth = 0
    for j in range(i, len(text)):
        if text[j] == "{":
            depth += 1
        elif text[j] == "}":
            depth -= 1
            if depth == 0:
                return text[i + 1 : j], j + 1
    return None  # unbalanced: the box was cut off


def _last_boxed(text: str) -> str | None:
    """The last top-level box: a box nested inside another belongs to the outer one."""
    pattern = "|".join(re.escape(c) for c in _BOX_COMMANDS)
    last, position = None, 0
    for match in re.finditer(pattern, text):
        if match.start() < position:
            continue  # inside the previous box
        found = _box_argument(text, match.start())
        if found is not None:
            last, position = found
    return last


def extract_answer(text: str, benchmark: str | None = None) -> str | None:
    """The final answer in `text`, or None if there is none."""
    boxed = _last_boxed(text)
    if boxed is not None and boxed.strip():
        return boxed.strip()
    for pattern in (_ANSWER_IS, _HASHES):
        matches = pattern.findall(text)
        if matches:
            answer = matches[-1].strip()
            answer = answer.rstrip(".").strip()
            if answer.startswith("$") and answer.endswith("$") and len(answer) > 1:
                answer = answer[1:-1].strip()
            if answer:
                return answer
    if benchmark == "gsm8k":
        numbers = _NUMBER.findall(text)
        if numbers:
            return numbers[-1].rstrip(",")
    return None


def normalize_answer(answer: str) -> str:
    """Strip presentation that never changes the value: `$`, spacing macros, units, commas."""
    s = answer.strip()
    s = s.strip("$").strip()
    for token in ("\\!", "\\,", "\\;", "\\ ", "\\left", "\\right", "\\displaystyle"):
        s = s.replace(token, "")
    s = s.replace("\\$", "").replace("\\%", "").replace("%", "")
    s = s.replace("^\\circ", "").replace("^{\\circ}", "")
    s = s.replace("dfrac", "frac").replace("tfrac", "frac")
    s = s.rstrip(".").strip()
    unit = _UNIT_TEXT.match(s)
    if unit:
        s = unit.group(1).strip()
    if _THOUSANDS.match(s):
        s = s.replace(",", "")
    return " ".join(s.split())


def _math_verify_equal(gold: str, predicted: str) -> bool:
    from math_verify import ExprExtractionConfig, LatexExtractionConfig, parse, verify

    # math-verify guards parsing with SIGALRM, which only works in the main thread; elsewhere
    # (Ray actor threads, Serve replicas) it runs without the time limit.
    timeout = 5 if threading.current_thread() is threading.main_thread() else None
    configs = [LatexExtractionConfig(), ExprExtractionConfig()]
    try:
        gold_parsed = parse(f"${gold}$", extraction_config=configs, parsing_timeout=timeout)
        pred_parsed = parse(f"${predicted}$", extraction_config=configs, parsing_timeout=timeout)
        if not gold_parsed or not pred_parsed:
            return False
        return bool(verify(gold_parsed, pred_parsed, timeout_seconds=timeout))
    except Exception:  # math-verify raises on exotic LaTeX; treat as "not shown equal"
        return False


_INTEGER = re.compile(r"-?\d+")


def is_equivalent(gold: str, predicted: str) -> bool:
    gold_n, pred_n = normalize_answer(gold), normalize_answer(predicted)
    if gold_n == pred_n and gold_n:
        return True
    if _INTEGER.fullmatch(gold_n) and _INTEGER.fullmatch(pred_n):
        # Two integers (GSM8K, the testbed): equal values or not, without a symbolic parse,
        # which costs milliseconds per answer (a training epoch grades every problem).
        return int(gold_n) == int(pred_n)
    return _math_verify_equal(gold_n, pred_n)


def grade(text: str, gold: str, benchmark: str | None = None) -> GradeResult:
    """Extract the final answer from `text` and check it against `gold`. No gold (a budget
    pool's question, read without its answer) grades nothing correct."""
    extracted = extract_answer(text, benchmark)
    if extracted is None or not gold.strip():
        return GradeResult(correct=False, extracted=extracted)
    return GradeResult(correct=is_equivalent(gold, extracted), extracted=extracted)
