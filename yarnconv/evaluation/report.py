"""Where ``eval`` leaves its results: the JSON report and its figure beside the model, and the model
card refreshed when the model is a yarnconv output that has one."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from yarnconv.evaluation.run import beside


def save(model: Path, report: dict[str, Any], extra: Path | None = None) -> None:
    """Write the report (and ``extra``), draw the figure when matplotlib is installed, refresh the card."""
    from yarnconv.publish import plot
    from yarnconv.publish.card import CARD, write_card
    from yarnconv.storage.files import RECORD
    from yarnconv.verify.run import save_report

    json_path, png_path = beside(model)
    if plot.available():
        report["figure"] = str(plot.eval_figure(report, png_path))
    report["saved"] = str(json_path)
    save_report(json_path, report)
    if extra is not None:
        save_report(extra, report)
    if model.is_dir() and (model / RECORD).is_file() and (model / CARD).is_file():
        report["card"] = str(write_card(model, figure=False))
