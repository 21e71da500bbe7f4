"""Training curves (`analogai_fl.curves`) and `analogai-fl plot`: what is drawn comes from the
run folder's records, in percent, with the Monte-Carlo band, the protocol in the title."""

import pytest

from analogai_fl.cli import main
from analogai_fl.curves import CURVES_FILE, RunCurves, draw, write_run_curves
from analogai_fl.reporting import pyplot

SIGMAS = (0.1, 0.2)


def fill(run, rounds=3, offset=0.0):
    """Records as the ServerApp writes them: metrics with `pcm` at 1s and 1y, one client
    line per noise level and round, and a retry record (not a reply) in round 2."""
    for r in range(rounds + 1):
        if r > 0:
            for k, sigma in enumerate(SIGMAS):
                run.append_jsonl("clients.jsonl", {
                    "round": r, "sigma": sigma, "noise-index": k, "train_loss": 2.0 / r + k,
                    "train_acc": 0.5, "val_acc_noisy": 0.5 + 0.1 * r - 0.05 * k})
        if r == 2:
            run.append_jsonl("clients.jsonl", {"round": 2, "retry": {"noise-index": 1}})
        run.append_jsonl("metrics.jsonl", {
            "round": r, "clean_acc": 0.6 + 0.1 * r + offset, "val_acc": 0.55 + 0.1 * r,
            "protocol": {"name": "realistic"},
            "pcm": {"1s": {"mean": 0.5 + 0.1 * r, "std": 0.02, "seconds": 1.0},
                    "1y": {"mean": 0.4 + 0.1 * r, "std": 0.05, "seconds": 31536000.0}}})


def lines(ax):
    return {line.get_label(): list(line.get_ydata()) for line in ax.get_lines()}


def test_the_curves_are_the_records_in_percent_with_the_monte_carlo_band(run):
    fill(run)
    curves = RunCurves.read(run.path)
    assert curves.drift_labels() == ["1s", "1y"] and curves.sigmas() == list(SIGMAS)
    assert len(curves.clients) == 6  # the retry record is not a reply
    fig = draw([curves])
    (digital, analog), (loss, noisy) = fig.axes[0:2], fig.axes[2:4]
    assert lines(digital)["clean (test)"] == pytest.approx([60, 70, 80, 90])
    assert lines(analog)["after 1y"] == pytest.approx([40, 50, 60, 70])
    band = analog.collections[1].get_paths()[0].vertices[:, 1]  # the 1y band: mean +- std
    assert min(band) == pytest.approx(35) and max(band) == pytest.approx(75)
    assert lines(loss)["sigma 0.2"] == pytest.approx([3.0, 2.0, 2.0 / 3 + 1])
    assert lines(noisy)["sigma 0.1"] == pytest.approx([60, 70, 80])
    assert "evaluation protocol: realistic" in fig._suptitle.get_text()
    assert digital.get_xlabel() == "round" and analog.get_ylabel() == "accuracy (%)"
    pyplot().close(fig)


def test_a_run_writes_its_picture_and_plot_overlays_two(run, tmp_path, capsys):
    fill(run)
    path = write_run_curves(run.path)
    assert path == run.path / CURVES_FILE and path.read_bytes()[:4] == b"\x89PNG"
    other = tmp_path / "other"
    other.mkdir()
    (other / "config.yaml").write_text((run.path / "config.yaml").read_text())
    from analogai_fl.outputs import RunFolder
    fill(RunFolder.open(other), offset=0.05)
    out = tmp_path / "both.png"
    assert main(["plot", str(run.path), str(other), "--labels", "FI on,FI off",
                 "--out", str(out)]) == 0
    assert out.read_bytes()[:4] == b"\x89PNG" and str(out) in capsys.readouterr().out
    fig = draw([RunCurves.read(run.path, "FI on"), RunCurves.read(other, "FI off")])
    digital = lines(fig.axes[0])
    assert digital["FI off: clean (test)"] == pytest.approx([65, 75, 85, 95])
    styles = {line.get_label(): (line.get_color(), line.get_linestyle())
              for line in fig.axes[1].get_lines()}
    # several runs: a colour per run, a line style per drift time
    assert styles["FI on: after 1s"][0] == styles["FI on: after 1y"][0]
    assert styles["FI on: after 1s"][0] != styles["FI off: after 1s"][0]
    assert styles["FI on: after 1s"][1] != styles["FI on: after 1y"][1]
    assert "FI on vs FI off" in fig._suptitle.get_text()
    pyplot().close(fig)


def test_plot_refuses_bad_input_in_one_line_before_drawing(run, tmp_path, capsys):
    fill(run)
    assert main(["plot", str(tmp_path / "nowhere")]) == 2
    assert "run folder 1: " in capsys.readouterr().err
    assert main(["plot", str(run.path), "--labels", "a,b"]) == 2
    assert "--labels: 2 label(s) for 1 run folder(s)" in capsys.readouterr().err
    assert main(["plot", str(run.path), "--out", str(tmp_path / "x.pdf")]) == 2
    assert "expected a .png file" in capsys.readouterr().err
    assert not (run.path / CURVES_FILE).exists()


def test_plot_draws_once_given_one_label_per_folder_as_advised(run, tmp_path, capsys):
    """Two labels for one run folder are refused; one label per folder, as the message
    says, draws the picture."""
    fill(run)
    out = tmp_path / "labelled.png"
    assert main(["plot", str(run.path), "--labels", "a,b", "--out", str(out)]) == 2
    assert capsys.readouterr().err.strip().endswith("give one per folder, in the same order")
    assert not out.exists()
    assert main(["plot", str(run.path), "--labels", "a", "--out", str(out)]) == 0
    assert out.read_bytes()[:4] == b"\x89PNG" and str(out) in capsys.readouterr().out


def test_a_run_without_an_evaluated_round_is_named_and_its_protocol_comes_from_its_config(
        run, tmp_path, capsys):
    """No metrics.jsonl yet: the panels name the protocol the run's config evaluates with
    (not "no analog evaluation") and plot warns, naming the folder; with nothing at all to
    draw, one line and exit code 2."""
    assert RunCurves.read(run.path).protocol == "realistic"  # the config's inference.protocol
    assert main(["plot", str(run.path), "--out", str(tmp_path / "none.png")]) == 2
    said = capsys.readouterr().err
    assert "nothing to draw" in said and str(run.path) in said
    assert not (tmp_path / "none.png").exists()
    run.append_jsonl("clients.jsonl", {"round": 1, "sigma": 0.1, "noise-index": 0,
                                       "train_loss": 1.0, "train_acc": 0.5})
    assert main(["plot", str(run.path), "--out", str(tmp_path / "some.png")]) == 0
    said = capsys.readouterr().err
    assert f"run folder {run.path}: no evaluated round yet" in said
    assert (tmp_path / "some.png").read_bytes()[:4] == b"\x89PNG"
