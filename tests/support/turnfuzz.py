"""The fuzz loop around :class:`turnharness.Harness`: run random cases until one breaks an
invariant, then shrink it and write the report a developer needs to fix the bug.

Shared by ``tests/adversarial/test_turn_sequences.py`` (bounded for CI) and the sequence phase of
``bench/fuzz.py`` (bounded by its ``--sequence-seconds``). The report names the broken invariant
with its evidence (log lines, the exception), the minimal reproduction step by step, the original
case and the seed, so that any failure replays exactly.
"""

from __future__ import annotations

import random
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass

from turnharness import Harness, Outcome
from turnseq import Case, generate, shrink


@dataclass
class FuzzResult:
    """Cases run until the first violation (or the budget ran out)."""

    cases: int
    seconds: float
    steps: int
    answers: Counter[str]
    failing: Case | None = None
    outcome: Outcome | None = None


def fuzz(
    harness: Harness,
    next_case: Callable[[], Case],
    *,
    seconds: float,
    max_cases: int,
) -> FuzzResult:
    """Run cases from ``next_case`` until one breaks an invariant, ``max_cases`` have run or
    ``seconds`` have passed."""
    started = time.monotonic()
    result = FuzzResult(0, 0.0, 0, Counter())
    while result.cases < max_cases and time.monotonic() - started < seconds:
        case = next_case()
        outcome = harness.run(case)
        result.cases += 1
        result.steps += outcome.steps
        result.answers.update(outcome.answers)
        if outcome.violations:
            result.failing, result.outcome = case, outcome
            break
    result.seconds = time.monotonic() - started
    return result


def case_source(rng_seed: str, primary: str, max_steps: int = 14) -> Callable[[], Case]:
    """Cases from ``random.Random(rng_seed)``, the first slot on ``primary``."""
    rng = random.Random(rng_seed)
    return lambda: generate(rng, primary, max_steps=max_steps)


def explain(
    harness: Harness, result: FuzzResult, *, seed: str, label: str, shrink_seconds: float
) -> str:
    """Shrink ``result``'s failing case on ``harness`` (bounded by ``shrink_seconds``) and
    describe the broken invariant, the minimal reproduction and the original case."""
    assert result.failing is not None
    assert result.outcome is not None
    target = result.outcome.violations[0].invariant
    latest = [result.outcome]

    def fails(candidate: Case) -> bool:
        outcome = harness.run(candidate)
        if any(v.invariant == target for v in outcome.violations):
            latest.append(outcome)
            return True
        return False

    head = (
        f"TURN sequence fuzzer ({label}, seed {seed}): invariant '{target}' broken by case "
        f"{result.cases} after {result.seconds:.1f} s ({result.steps} steps in all)"
    )
    original = [f"  {line}" for line in result.failing.describe()]
    if not fails(result.failing):  # on a fresh server: a failure that needs earlier cases?
        return "\n".join(
            [
                head,
                "",
                "What broke:",
                *(f"  {v.describe()}" for v in result.outcome.violations),
                "",
                "The case did NOT break it again when replayed alone on a fresh server (it "
                "depends on timing or on what earlier cases left behind); not shrunk. The case:",
                *original,
            ]
        )
    shrunk = shrink(result.failing, fails, seconds=shrink_seconds)
    exhausted = "" if shrunk.complete else "; shrinking budget exhausted, may not be minimal"
    lines = [
        head,
        "",
        "What broke, on the minimal case:",
        *(f"  {v.describe()}" for v in latest[-1].violations),
        "",
        f"Minimal reproduction: {len(shrunk.case.steps)} of {len(result.failing.steps)} steps "
        f"({shrunk.runs} replays in {shrunk.seconds:.1f} s{exhausted}; the original case broke "
        "it again when replayed alone on a fresh server):",
        *(f"  {line}" for line in shrunk.case.describe()),
        "",
        "Original case:",
        *original,
    ]
    return "\n".join(lines)
