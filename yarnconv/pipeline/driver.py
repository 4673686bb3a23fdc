"""Run a list of steps in order; each adds its part of the command's record."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any


@dataclass
class State:
    """What the steps share: the record ``--json`` prints (each step writes its key), the checks
    run so far (the demo is judged on them) and whether to show progress."""

    progress: bool = True
    record: dict[str, Any] = field(default_factory=dict)
    checks: list[Any] = field(default_factory=list)

    def part(self, key: str | None) -> dict[str, Any]:
        """The record of an earlier step (None: the command's own record)."""
        return self.record if key is None else self.record[key]


@dataclass(frozen=True)
class Step:
    """One unit of work: ``describe`` is what a dry run prints; ``run`` returns the step's record,
    stored under ``key`` (merged into the command's record when ``key`` is None; appended when
    ``append``). A step that is not ``enabled`` is only described (``run --push`` not given)."""

    key: str | None
    describe: str
    run: Callable[[State], Any]
    enabled: bool = True
    append: bool = False


def run_steps(steps: list[Step], state: State) -> State:
    """Each enabled step in order; a step that raises stops the command (what earlier steps wrote stays)."""
    for step in steps:
        if not step.enabled:
            continue
        out = step.run(state)
        if out is None:
            continue
        if step.key is None:
            state.record.update(out)
        elif step.append:  # a list of its own (a recipe's [push] table, say, is replaced by what was pushed)
            earlier = state.record.get(step.key)
            state.record[step.key] = [*earlier, out] if isinstance(earlier, list) else [out]
        else:
            state.record[step.key] = out
    return state


def describe(steps: list[Step]) -> list[str]:
    """The steps in words, as a dry run prints them."""
    return [s.describe for s in steps]
