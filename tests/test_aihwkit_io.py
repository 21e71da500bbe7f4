"""Models in and out of aihwkit (`analogai_fl.aihwkit_io`, `analogai-fl export`): an exported
model that stock aihwkit loads and evaluates as `infer` does, and an aihwkit analog state_dict
that `infer` and `model.init` take like a checkpoint."""

import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from helpers import experiment

from analogai_fl.checks import model_state
from analogai_fl.cli import main
from analogai_fl.cli_checkpoints import Checkpoint, evaluate_checkpoint
from analogai_fl.errors import ConfigError
from analogai_fl.models import build_model
from analogai_fl.schema import DEFAULT_CONF

IDEAL = {"inference.platform.aihwkit.device": "ideal", "inference.tile": "cpp",
         "inference.protocols.realistic.out_noise": 0.0, "inference.drift_times": [1.0, 86400.0],
         "inference.repeats": 1}
PCM = {"inference.drift_times": [1.0, 86400.0], "inference.repeats": 3}

# Run in a fresh interpreter: only torch and aihwkit are used; unpickling the module imports
# the model's class (analogai_fl.models), and nothing of the project converts or evaluates.
FRESH = """
import json, sys, torch
model = torch.load(sys.argv[1], weights_only=False).eval()
images, labels = torch.load(sys.argv[2])
accuracies = []
for repeat in range(int(sys.argv[3])):
    torch.manual_seed(1000 + repeat)
    model.program_analog_weights()
    model.drift_analog_weights(86400.0)
    with torch.no_grad():
        accuracies.append((model(images).argmax(1) == labels).float().mean().item())
used = sorted(m for m in sys.modules if m.startswith("analogai_fl"))
print(json.dumps({"accuracies": accuracies, "project_modules": used}))
"""


def toml(changes):
    def value(v):
        if isinstance(v, list):
            return "'" + ",".join(f"{x:g}" for x in v) + "'"
        return f"'{v}'" if isinstance(v, str) else str(v)
    return " ".join(f"{k}={value(v)}" for k, v in changes.items())


@pytest.fixture(scope="module")
def files(trained, digits, tmp_path_factory):
    folder = tmp_path_factory.mktemp("export")
    torch.save(trained.state_dict(), folder / "model.pt")
    torch.save(digits.test.tensors, folder / "test.pt")
    return folder


def export_and_run_fresh(files, changes, name, repeats):
    out = files / f"{name}.pt"
    assert main(["export", str(files / "model.pt"), "--out", str(out), "--conf", DEFAULT_CONF,
                 "--run-config", toml(changes)]) == 0
    done = subprocess.run([sys.executable, "-c", FRESH, str(out), str(files / "test.pt"),
                           str(repeats)], capture_output=True, text=True, check=True,
                          cwd=files)
    return out, json.loads(done.stdout.splitlines()[-1])


def infer_1d(files, changes, digits):
    exp = experiment(**changes)
    result = evaluate_checkpoint(Checkpoint(files / "model.pt", "global"), exp, digits,
                                 sweep=False)
    return result["drift"]["1d"]


def test_an_exported_model_on_the_ideal_device_gives_infers_accuracy_exactly(files, digits):
    out, fresh = export_and_run_fresh(files, IDEAL, "ideal", repeats=1)
    # the same images right (float32 there, float64 here: far below one image, 1/360)
    assert fresh["accuracies"] == [pytest.approx(infer_1d(files, IDEAL, digits)["mean"],
                                                 abs=1e-6)]
    assert fresh["accuracies"][0] > 0.8
    assert "analogai_fl.aihwkit_io" not in fresh["project_modules"]
    assert "analogai_fl.analog" not in fresh["project_modules"]
    assert {p.name for p in files.glob("ideal*")} == {"ideal.pt", "ideal.state_dict.pt",
                                                      "ideal.txt"}
    howto = (files / "ideal.txt").read_text()
    assert "protocol 'realistic'" in howto and "device: ideal" in howto
    assert 'torch.load("ideal.pt", weights_only=False)' in howto


def test_an_exported_pcm_model_agrees_with_infer_within_the_monte_carlo_spread(files, digits):
    _, fresh = export_and_run_fresh(files, PCM, "pcm", repeats=3)
    mine = torch.tensor(fresh["accuracies"])
    theirs = infer_1d(files, PCM, digits)
    spread = 3 * ((mine.std() ** 2 + theirs["std"] ** 2) / 3) ** 0.5 + 0.01
    assert abs(mine.mean().item() - theirs["mean"]) <= spread


def test_an_aihwkit_state_dict_is_read_back_as_the_digital_model(files, trained):
    export_and_run_fresh(files, IDEAL, "back", repeats=1)
    exp = experiment()
    state = model_state(files / "back.state_dict.pt", exp, "key 'model.init'")
    for name, tensor in trained.state_dict().items():
        assert torch.allclose(state[name], tensor, atol=1e-6), name
    other = build_model("mlp", 1, 10, 32)
    from aihwkit.nn.conversion import convert_to_analog
    from aihwkit.simulator.configs import InferenceRPUConfig
    torch.save(convert_to_analog(other, InferenceRPUConfig()).state_dict(), files / "mlp.pt")
    with pytest.raises(ConfigError, match=r"key 'model.init': '.*mlp.pt': an aihwkit analog "
                                          r"state_dict, but not of the configured model lenet"):
        model_state(files / "mlp.pt", exp, "key 'model.init'")


def test_export_refuses_bad_input_in_one_line_before_any_work(files, tmp_path, capsys):
    assert main(["export", str(tmp_path), "--out", str(tmp_path / "a.pt")]) == 2
    assert "expected a checkpoint file" in capsys.readouterr().err
    assert main(["export", str(files / "model.pt"), "--out", str(tmp_path / "a.onnx"),
                 "--conf", DEFAULT_CONF]) == 2
    assert "expected a .pt file" in capsys.readouterr().err
    assert not list(Path(tmp_path).glob("a*"))


def scripts_of(text: str) -> list[str]:
    """The indented code blocks of an export's .txt, as scripts."""
    blocks, current = [], []
    for line in text.splitlines():
        if line.startswith("    ") or (current and not line):
            current.append(line[4:])
        elif current:
            blocks.append("\n".join(current).strip())
            current = []
    if current:
        blocks.append("\n".join(current).strip())
    return blocks


@pytest.mark.parametrize("changes", [{}, {"inference.protocol": "standard"}],
                         ids=["realistic", "standard"])
def test_every_snippet_the_export_text_shows_runs_as_written_in_a_fresh_interpreter(
        files, changes):
    """Both loading routes of the .txt, run in a fresh interpreter in the export's folder:
    the whole module, and the state_dict into an analog model built with stock aihwkit's
    InferenceRPUConfig and the mapping the text gives (aihwkit's default mapping refuses the
    file's mapping_scales)."""
    name = f"text-{changes.get('inference.protocol', 'realistic')}"
    out = files / f"{name}.pt"
    assert main(["export", str(files / "model.pt"), "--out", str(out), "--conf", DEFAULT_CONF,
                 "--run-config", toml(PCM | changes)]) == 0
    text = out.with_suffix(".txt").read_text()
    scripts = scripts_of(text)
    assert len(scripts) == 2 and "weight_scaling_omega = 1.0" in scripts[1]
    for script in scripts:
        done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True,
                              cwd=files, timeout=300)
        assert done.returncode == 0, f"{script}\n{done.stderr[-2000:]}"
        assert done.stdout.strip().splitlines()[-1] == "torch.Size([2, 10])"
    stock = scripts[1].replace("rpu_config.mapping.weight_scaling_omega = 1.0\n", "")
    done = subprocess.run([sys.executable, "-c", stock], capture_output=True, text=True,
                          cwd=files, timeout=300)  # what the text warns of
    assert done.returncode != 0 and "mapping_scales" in done.stderr
