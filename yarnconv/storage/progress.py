"""Progress bars for long work: tqdm when shown, a no-op when --quiet or --json."""

from __future__ import annotations

from typing import Any


class _NullBar:
    def update(self, n: int) -> None:
        pass

    def __enter__(self) -> _NullBar:
        return self

    def __exit__(self, *exc: object) -> None:
        pass


def progress_bar(total: int, enabled: bool, desc: str, unit: str = "B") -> Any:
    """A tqdm bar counting bytes (or ``unit``), or a no-op one for --quiet / --json."""
    if not enabled:
        return _NullBar()
    from tqdm import tqdm

    return tqdm(total=total, unit=unit, unit_scale=unit == "B", desc=desc, leave=False)
