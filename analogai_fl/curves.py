"""Training curves of a run folder (`curves.png`), and of several overlaid (`analogai-fl plot`).

Everything is read back from the run folder's own records (`outputs.RunFolder`):

- `metrics.jsonl`, one line per evaluated round: clean and validation accuracy of the global
  model (fractions) and, where the analog evaluation ran, its accuracy after each drift time
  (`pcm`: mean and std over the Monte-Carlo repeats, fractions);
- `clients.jsonl`, one line per round and noise level: the training loss (cross-entropy,
  nats, mean over the round's noisy training passes) and the noisy validation accuracy at the
  client's own sigma (`val_acc_noisy`, a fraction).

The figure shows percent, the rounds on x, and names the evaluation protocol in its title.
With one run, colour tells the series apart (drift times, noise levels); with several, colour
tells the runs apart and the line style the series.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from .errors import ConfigError
from .outputs import RunFolder
from .reporting import pyplot, save_png

CURVES_FILE = "curves.png"
# distinct for up to 8 series of one run (K noise levels go up to 10: then they repeat)
LINE_STYLES = ("-", "--", "-.", ":", (0, (6, 1.5)), (0, (3, 1, 1, 1, 1, 1)), (0, (1, 3)),
               (0, (8, 2, 2, 2)))


@dataclass(frozen=True)
class RunCurves:
    """One run's curves: `label` (the legend's name), `metrics` and `clients` (the records
    of metrics.jsonl and clients.jsonl, retries left out) and the protocol's name."""
    label: str
    metrics: list[dict[str, Any]]
    clients: list[dict[str, Any]]
    protocol: str

    @classmethod
    def read(cls, folder: Path, label: str | None = None,
             given_as: str = "run folder") -> RunCurves:
        """The curves of the run folder `folder`; ConfigError naming the folder and
        `given_as` when it is not a run folder, or a damaged file and line."""
        run = RunFolder.open(folder, given_as)
        metrics = run.read_jsonl("metrics.jsonl")
        protocols = {m["protocol"]["name"] for m in metrics if "protocol" in m and "pcm" in m}
        return cls(label or run.path.name, metrics, run.client_replies(),
                   " / ".join(sorted(protocols)) or _configured_protocol(run))

    def drift_labels(self) -> list[str]:
        """The drift times measured (aihwkit's labels: "1s", "1h", ...), in their order."""
        return list(dict.fromkeys(k for m in self.metrics for k in m.get("pcm", {})))

    def sigmas(self) -> list[float]:
        return sorted({c["sigma"] for c in self.clients})


def _configured_protocol(run: RunFolder) -> str:
    """The evaluation protocol the run's config.yaml names (a run with no evaluated round
    yet), or "no analog evaluation" where it evaluates none."""
    from .config import load_yaml

    try:
        cfg = load_yaml(run.path / "config.yaml")
    except ConfigError:
        return "no analog evaluation"
    if not cfg.get("inference.platform.aihwkit.use", True):
        return "no analog evaluation"
    return str(cfg.get("inference.protocol", "realistic"))


def _style(run_index: int, series_index: int, runs: int, colours: Sequence) -> dict[str, Any]:
    """One run: a colour per series; several runs: a colour per run, a line style per
    series."""
    if runs == 1:
        return {"color": colours[series_index % len(colours)], "linestyle": "-"}
    return {"color": colours[run_index % len(colours)],
            "linestyle": LINE_STYLES[series_index % len(LINE_STYLES)]}


def plot_curves(runs: Sequence[RunCurves], path: Path) -> Path:
    """`draw(runs)` saved as the PNG file `path`; returns `path`."""
    plt = pyplot()
    fig = draw(runs)
    path.parent.mkdir(parents=True, exist_ok=True)
    save_png(fig, path, dpi=110)
    plt.close(fig)
    return path


def draw(runs: Sequence[RunCurves]) -> Any:
    """A matplotlib Figure of `runs`, 2 x 2 panels: clean and validation accuracy; analog
    accuracy per drift time, mean with a band of +- one Monte-Carlo std; training loss per
    noise level; noisy validation accuracy per noise level. ValueError for no run."""
    if not runs:
        raise ValueError("the curves need at least one run")
    plt = pyplot()
    colours = plt.rcParams["axes.prop_cycle"].by_key()["color"]
    fig, axes = plt.subplots(2, 2, figsize=(13, 8.5), squeeze=False)
    (digital, analog), (loss, noisy) = axes
    many = len(runs)
    name = (lambda run, what: f"{run.label}: {what}") if many > 1 else (lambda run, what: what)
    for i, run in enumerate(runs):
        rounds = [m["round"] for m in run.metrics]
        for j, (key, what) in enumerate((("clean_acc", "clean (test)"),
                                         ("val_acc", "validation"))):
            digital.plot(rounds, [100 * m[key] for m in run.metrics], marker=".",
                         label=name(run, what), **_style(i, j, many, colours))
        for j, label in enumerate(run.drift_labels()):
            points = [(m["round"], m["pcm"][label]) for m in run.metrics
                      if label in m.get("pcm", {})]
            xs = [r for r, _ in points]
            mean = [100 * e["mean"] for _, e in points]
            std = [100 * e.get("std", 0.0) for _, e in points]
            style = _style(i, j, many, colours)
            analog.plot(xs, mean, marker=".", label=name(run, f"after {label}"), **style)
            analog.fill_between(xs, [m - s for m, s in zip(mean, std, strict=True)],
                                [m + s for m, s in zip(mean, std, strict=True)],
                                color=style["color"], alpha=0.15, linewidth=0)
        for j, sigma in enumerate(run.sigmas()):
            mine = [c for c in run.clients if c["sigma"] == sigma]
            style = _style(i, j, many, colours)
            xs = [c["round"] for c in mine]
            loss.plot(xs, [c["train_loss"] for c in mine], label=name(run, f"sigma {sigma:g}"),
                      **style)
            if all("val_acc_noisy" in c for c in mine):
                noisy.plot(xs, [100 * c["val_acc_noisy"] for c in mine],
                           label=name(run, f"sigma {sigma:g}"), **style)
    titles = ((digital, "Global model, digital", "accuracy (%)"),
              (analog, "Global model on the chip (mean ± Monte-Carlo std)", "accuracy (%)"),
              (loss, "Each noise level's training loss", "cross-entropy (nats)"),
              (noisy, "Each noise level's validation accuracy under its noise",
               "accuracy (%)"))
    for ax, title, ylabel in titles:
        ax.set_title(title, fontsize=10)
        ax.set_xlabel("round")
        ax.set_ylabel(ylabel)
        ax.grid(alpha=0.3)
        if ax.has_data():
            ax.legend(fontsize=7, loc="best")
        else:
            ax.text(0.5, 0.5, "not recorded", ha="center", va="center",
                    transform=ax.transAxes, color="grey")
    protocols = sorted({r.protocol for r in runs})
    fig.suptitle(f"{' vs '.join(r.label for r in runs)}\nevaluation protocol: "
                 f"{', '.join(protocols)}", fontsize=11)
    fig.tight_layout()
    return fig


def write_run_curves(folder: Path) -> Path:
    """`<folder>/curves.png` of one run folder (the ServerApp calls it after every evaluated
    round); returns its path."""
    return plot_curves([RunCurves.read(folder)], Path(folder) / CURVES_FILE)
