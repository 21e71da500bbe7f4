"""Run folders (`analogai_fl.outputs`): the reusable config, checkpoints, pruning, rewinding.
The `run` fixture (conftest.py) is a fresh run folder of the default experiment."""

import pytest
import torch
from helpers import named

from analogai_fl import config
from analogai_fl.outputs import RunFolder, server_state_name


def test_run_folder_holds_a_reusable_config(run, cfg, tmp_path):
    assert run.path.name.startswith("t-")
    assert config.load_yaml(run.path / "config.yaml") == named(cfg, tmp_path)


def test_checkpoints_are_plain_state_dicts(run, lenet):
    run.save_checkpoint(1, [lenet.state_dict()], fused=True)
    state = torch.load(run.checkpoints / "round_0001.pt", weights_only=True)
    assert state.keys() == lenet.state_dict().keys()


def test_last_complete_checkpoint_and_pruning(run, lenet):
    states = [lenet.state_dict()] * 2
    for r in (1, 2, 3):
        run.save_checkpoint(r, states, fused=False, keep=2)
    assert sorted(p.name for p in run.checkpoints.iterdir()) == [
        "round_0002_noise_0.pt", "round_0002_noise_1.pt",
        "round_0003_noise_0.pt", "round_0003_noise_1.pt"]
    (run.checkpoints / "round_0003_noise_1.pt").unlink()  # a crash in the middle of saving
    found_round, found = run.last_checkpoint(2, fused=False)
    assert found_round == 2 and len(found) == 2


def test_resume_needs_a_run_folder(tmp_path):
    with pytest.raises(config.ConfigError, match="output.resume.*not a run folder"):
        RunFolder.open(tmp_path)


def test_rewind_drops_the_unfinished_round(run):
    for r in (1, 2, 3):
        run.append_jsonl("metrics.jsonl", {"round": r})
        run.append_jsonl("clients.jsonl", {"round": r, "sigma": 0.1})
    run.rewind(2)
    assert [r["round"] for r in run.read_jsonl("metrics.jsonl")] == [1, 2]
    assert [r["round"] for r in run.read_jsonl("clients.jsonl")] == [1, 2]




def _cut_short(path):
    data = path.read_bytes()
    path.write_bytes(data[:len(data) // 2])  # a partial copy, a full disk


def test_a_damaged_newest_checkpoint_is_named_and_the_round_before_is_used(run, lenet):
    for r in (1, 2):
        run.save_checkpoint(r, [lenet.state_dict()], fused=True)
    _cut_short(run.checkpoints / "round_0002.pt")
    said = []
    found_round, (state,) = run.last_checkpoint(1, fused=True, warn=said.append)
    assert found_round == 1 and state.keys() == lenet.state_dict().keys()
    (message,) = said
    assert str(run.checkpoints / "round_0002.pt") in message and "damaged" in message
    assert "continuing from round 1" in message
    _cut_short(run.checkpoints / "round_0001.pt")
    said.clear()
    assert run.last_checkpoint(1, fused=True, warn=said.append) is None
    assert len(said) == 2 and all("starting again from round 1" in m for m in said)


def test_a_damaged_line_of_metrics_is_named_with_its_file_and_line(run):
    run.append_jsonl("metrics.jsonl", {"round": 1})
    with open(run.path / "metrics.jsonl", "a") as f:
        f.write('{"round": 2, "clean_ac')  # killed while writing
    with pytest.raises(config.ConfigError, match=r"metrics.jsonl' line 2 is damaged"):
        run.read_jsonl("metrics.jsonl")


def test_a_resume_drops_a_last_line_cut_short_and_follows_the_advice_for_any_other(run):
    """The record being written when the run was killed is dropped, with a warning, by the
    rewind a resume does; a damaged line before others is refused naming it, and removing
    that line, as the message says, makes the file read."""
    for r in (1, 2):
        run.append_jsonl("metrics.jsonl", {"round": r})
    with open(run.path / "metrics.jsonl", "a") as f:
        f.write('{"round": 3, "clean_ac')  # killed while writing round 3
    said = []
    run.rewind(2, warn=said.append)
    assert [r["round"] for r in run.read_jsonl("metrics.jsonl")] == [1, 2]
    (message,) = said
    assert "metrics.jsonl' line 3, its last, is damaged" in message and "dropped" in message
    lines = (run.path / "metrics.jsonl").read_text().splitlines()
    (run.path / "metrics.jsonl").write_text("\n".join([lines[0], '{"rou', lines[1]]) + "\n")
    with pytest.raises(config.ConfigError, match=r"line 2 is damaged .*remove that line"):
        run.rewind(2, warn=said.append)
    (run.path / "metrics.jsonl").write_text("\n".join([lines[0], lines[1]]) + "\n")  # removed
    run.rewind(2, warn=said.append)
    assert [r["round"] for r in run.read_jsonl("metrics.jsonl")] == [1, 2]


def test_a_damaged_server_state_skips_its_round_when_the_strategy_keeps_one(run, lenet):
    """FedAvgM and FedOpt resume with their momentum: a round whose server-state file is cut
    short is not complete for them, so the round before is used (and said); a strategy
    without server state does not read the file."""
    momentum = {"momentum_vector.0": torch.ones(3)}
    for r in (1, 2):
        run.save_checkpoint(r, [lenet.state_dict()], fused=True, server_state=momentum)
    state_file = run.checkpoints / server_state_name(2)
    _cut_short(state_file)
    said = []
    found_round, _ = run.last_checkpoint(1, fused=True, warn=said.append, server_state=True)
    assert found_round == 1 and str(state_file) in said[0] and "from round 1" in said[0]
    assert run.last_checkpoint(1, fused=True, warn=said.append)[0] == 2


def _fill_disk_after(limit: int):
    """A stand-in for a full disk: a writer that writes `limit` bytes of what it is given,
    then fails as the file system does (ENOSPC), leaving a file cut short."""
    import errno

    def write(data: bytes):
        def to(tmp):
            tmp.write_bytes(data[:limit])
            raise OSError(errno.ENOSPC, "No space left on device")
        return to
    return write


def test_a_write_cut_short_keeps_the_previous_version_and_leaves_no_temporary_file(tmp_path):
    """atomic_write, under every file the product writes: the previous version stays, no
    temporary file remains, and WriteFailed names the file and the reason; torch.save's
    RuntimeError on a full disk is the same failure."""
    from analogai_fl.errors import WriteFailed
    from analogai_fl.outputs import atomic_text, atomic_write

    path = tmp_path / "curves.png"
    atomic_text(path, "round 1's picture")
    with pytest.raises(WriteFailed, match=f"could not write '{path}': No space left on device"):
        atomic_write(path, _fill_disk_after(4)(b"round 2's picture"))
    assert path.read_text() == "round 1's picture"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["curves.png"]

    def torch_full(tmp):
        tmp.write_bytes(b"PK")
        raise RuntimeError("[enforce fail at inline_container.cc:664] . unexpected pos 2176 "
                           "vs 2088")
    with pytest.raises(WriteFailed, match="unexpected pos 2176 vs 2088"):
        atomic_write(path, torch_full)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["curves.png"]


def test_a_checkpoint_or_record_that_cannot_be_written_names_its_file(run, lenet, monkeypatch):
    """A round's checkpoint on a full disk (torch.save fails part-way): WriteFailed naming
    the file, the previous round's checkpoint intact and readable, no temporary file; an
    appended record that cannot be written names its file too."""
    from analogai_fl.errors import WriteFailed
    from analogai_fl.outputs import read_checkpoint

    run.save_checkpoint(1, [lenet.state_dict()], fused=True)
    real = torch.save

    def full(obj, f, *args, **kwargs):
        real(obj, f, *args, **kwargs)
        with open(f, "r+b") as cut:
            cut.truncate(100)  # what a full disk leaves
        raise RuntimeError("unexpected pos 2176 vs 2088")

    monkeypatch.setattr(torch, "save", full)
    with pytest.raises(WriteFailed, match="round_0002.pt"):
        run.save_checkpoint(2, [lenet.state_dict()], fused=True)
    monkeypatch.undo()
    assert sorted(p.name for p in run.checkpoints.iterdir()) == ["round_0001.pt"]
    assert read_checkpoint(run.checkpoints / "round_0001.pt").keys() == \
        lenet.state_dict().keys()
    (run.path / "metrics.jsonl").mkdir()  # a path that cannot take a line
    with pytest.raises(WriteFailed, match="metrics.jsonl"):
        run.append_jsonl("metrics.jsonl", {"round": 1})


def test_every_output_place_is_probed_before_any_work_in_one_line(run, tmp_path, capsys,
                                                                   monkeypatch):
    """A place that cannot take files (here a file in the way) is refused before any work,
    naming the key or flag: output.dir by check (and so by the ServerApp, which runs the
    same checks), --out by export before converting, infer before evaluating (its default
    folder, or --out), ablate and plot before anything else."""
    from analogai_fl import cli, cli_checkpoints

    blocker = tmp_path / "a-file"
    blocker.write_text("in the way")
    checkpoint = run.checkpoints / "round_0001.pt"
    torch.manual_seed(0)
    from analogai_fl.models import build_model
    torch.save(build_model("lenet", 1, 10, 32).state_dict(), checkpoint)
    monkeypatch.setattr(cli_checkpoints, "evaluate_checkpoint",
                        lambda *a, **k: pytest.fail("evaluated before the output was probed"))
    cases = [
        (["check", "--run-config", f"output.dir='{blocker}/runs'"], "key 'output.dir'"),
        (["export", str(checkpoint), "--out", f"{blocker}/m.pt"], "--out"),
        (["infer", str(checkpoint), "--out", f"{blocker}/infer"], "--out"),
        (["ablate", "--arms", "vanilla", "--out", f"{blocker}/abl"], "--out"),
        (["plot", str(run.path), "--out", f"{blocker}/c.png"], "--out"),
    ]
    run.append_jsonl("metrics.jsonl", {"round": 0, "clean_acc": 0.5, "val_acc": 0.5})
    for argv, named_as in cases:
        assert cli.main(argv) == 2, argv
        said = capsys.readouterr().err.strip().splitlines()
        assert len(said) == 1 and f"{named_as}: cannot write in '{blocker}" in said[0], said
        assert f"('{blocker}' is a file, not a folder)" in said[0]
    (run.path / "infer").write_text("in the way too")  # infer's default place
    assert cli.main(["infer", str(checkpoint)]) == 2
    assert "the run folder's infer/" in capsys.readouterr().err
