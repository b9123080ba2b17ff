"""An eval folder's report: report.md with its plots (seeds.png too over several seeds).

Apart from report.py and seeds.py, which it uses both of, so that neither imports the other's
caller: seeds.py builds on report.py's helpers, and this module on both.
"""

from __future__ import annotations

from pathlib import Path

from .report import markdown, plot_accuracy, plot_frechet
from .seeds import plot_seeds


def write_report(results: dict, out: Path, command: str) -> Path:
    """report.md with accuracy.png and frechet.png (and seeds.png over several seeds) beside it;
    returns the report's path."""
    plots = ["accuracy.png", "frechet.png"]
    plot_accuracy(results, out / "accuracy.png")
    plot_frechet(results, out / "frechet.png")
    if "seeds" in results["settings"]:
        plot_seeds(results, out / "seeds.png")
        plots.insert(0, "seeds.png")
    path = out / "report.md"
    path.write_text(markdown(results, command, plots))
    return path
