"""A check's verdict: passed, failed or skipped, with what was measured and the bounds it met."""

from __future__ import annotations

import operator
from dataclasses import dataclass, field
from typing import Any, Literal

Status = Literal["passed", "failed", "skipped", "info"]  # info: reported, never gated
_OPS = {"<=": operator.le, ">=": operator.ge, "==": operator.eq}


@dataclass(frozen=True)
class Bound:
    """``measured[key] op limit`` must hold for a pass."""

    key: str
    op: Literal["<=", ">=", "=="]
    limit: float | bool

    def holds(self, measured: dict[str, Any]) -> bool:
        return self.key in measured and bool(_OPS[self.op](measured[self.key], self.limit))

    def __str__(self) -> str:
        return f"{self.key} {self.op} {self.limit:g}" if not isinstance(self.limit, bool) else f"{self.key} {self.op} {self.limit}"


@dataclass(frozen=True)
class Check:
    """One verdict. A skipped check (a runtime missing) is never a pass."""

    name: str
    status: Status
    measured: dict[str, Any] = field(default_factory=dict)
    bounds: tuple[Bound, ...] = ()
    reason: str = ""

    @property
    def passed(self) -> bool:
        return self.status == "passed"

    def to_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {"name": self.name, "status": self.status, "measured": self.measured, "bounds": [str(b) for b in self.bounds]}
        if self.reason:
            out["reason"] = self.reason
        return out


def judge(name: str, measured: dict[str, Any], bounds: tuple[Bound, ...]) -> Check:
    """Pass when every bound holds; the reason names the first that does not."""
    broken = [b for b in bounds if not b.holds(measured)]
    if broken:
        return Check(name, "failed", measured, bounds, f"{broken[0]} does not hold ({broken[0].key} = {measured.get(broken[0].key)})")
    return Check(name, "passed", measured, bounds)


def skipped(name: str, reason: str, bounds: tuple[Bound, ...] = ()) -> Check:
    return Check(name, "skipped", {}, bounds, reason)


def within_noise(bounds: tuple[Bound, ...], noise: dict[str, Any], margin: float) -> tuple[Bound, ...]:
    """``bounds`` loosened to ``margin`` times the noise measured on the model itself in the engine's
    arithmetic (KL limits raised, agreement lowered by 0.1 below the noise's), never tightened."""
    out = []
    for b in bounds:
        if b.key not in noise or isinstance(b.limit, bool):
            out.append(b)
        elif b.op == "<=":
            out.append(Bound(b.key, b.op, max(b.limit, margin * noise[b.key])))
        else:
            out.append(Bound(b.key, b.op, min(b.limit, noise[b.key] - 0.1)))
    return tuple(out)


def demo_ok(checks: list[Check]) -> bool:
    """Every check ran and passed (a skipped check is not a pass)."""
    return bool(checks) and all(c.passed for c in checks)
