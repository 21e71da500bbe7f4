"""Your own model and data: `model.name='package.module:factory'` (`user_model`) and
`data.name='imagefolder'` (`image_folder`), each refusal checked before any work."""

import re
import subprocess
import sys

import numpy as np
import pytest
from PIL import Image

from analogai_fl import cli

USER = "tests.user_models"


def write_image_folder(root, classes=("cat", "dog", "fox"), train=12, test=4, size=(20, 24)):
    """A tiny ImageFolder of generated PNGs: each class a brightness band, learnable."""
    rng = np.random.default_rng(0)
    for split, count in (("train", train), ("test", test)):
        for c, name in enumerate(classes):
            folder = root / split / name
            folder.mkdir(parents=True, exist_ok=True)
            for i in range(count):
                pixels = (rng.random((*size, 3)) * 60 + 90 * c).astype(np.uint8)
                Image.fromarray(pixels).save(folder / f"{i}.png")
    return root


def check(capsys, tmp_path, run_config: str) -> tuple[int, str]:
    """`analogai-fl check` with `run_config` and output.dir in tmp_path: (exit code, the
    error line)."""
    code = cli.main(["check", "--run-config",
                     f"{run_config} output.dir='{tmp_path / 'runs'}'"])
    return code, " ".join(capsys.readouterr().err.split())


@pytest.mark.parametrize("factory, expected", [
    ("nowhere_module:f", "cannot import 'nowhere_module' (ModuleNotFoundError: No module named "
                         "'nowhere_module')"),
    (f"{USER}:missing", "has no attribute 'missing'"),
    (f"{USER}:nn", "'nn' is not a function or class defined in 'tests.user_models'"),
    ("os:chown", "'os' is part of Python's standard library"),
    (f"{USER}:not_a_module", "the factory returned a int, expected a torch.nn.Module"),
    (f"{USER}:subclassed", "layer '0' (ScaledConv) is a subclass of nn.Conv2d, which aihwkit's "
                           "convert_to_analog leaves digital"),
    (f"{USER}:parametrized", "layer '1' (ParametrizedLinear) is a parametrized layer"),
    (f"{USER}:transposed", "layer '0' (ConvTranspose2d) has weights that aihwkit's "
                           "convert_to_analog leaves digital"),
    (f"{USER}:functional", "a functional torch.nn.functional.conv2d call in the forward of the "
                           "model itself (_Functional)"),
    (f"{USER}:no_analog_layer", "no nn.Linear or nn.Conv1d/2d/3d layer"),
    (f"{USER}:wrong_shape", "its forward fails on one batch of the configured data (input "
                            "shape (2, 1, 32, 32)): RuntimeError: mat1 and mat2"),
])
def test_a_model_of_your_own_is_refused_in_one_line_before_any_work(capsys, tmp_path, factory,
                                                                     expected):
    code, said = check(capsys, tmp_path, f"model.name='{factory}'")
    assert code == 2 and said.startswith("analogai-fl check: error: key 'model.name'")
    assert expected in said, said
    assert not (tmp_path / "runs").exists()


@pytest.mark.parametrize("damage, expected", [
    ("no train", "no folder '{root}/train'"),
    ("empty class", "class folder '{root}/train/dog' holds no image"),
    ("classes differ", "the classes of '{root}/test' differ from those of '{root}/train' (only "
                       "in train: ['fox']; only in test: ['wolf'])"),
    ("unreadable", "cannot read image '{root}/train/cat/broken.png'"),
    ("too few", "cannot give each of the 5 clients (training.client_num_in_total) an "
                 "example: the training split has only 2"),
])
def test_your_own_images_are_refused_in_one_line_before_any_work(capsys, tmp_path, damage,
                                                                  expected):
    root = write_image_folder(tmp_path / "images", train=1 if damage == "too few" else 3, test=1)
    if damage == "no train":
        root = tmp_path / "elsewhere"
    elif damage == "empty class":
        for png in (root / "train" / "dog").iterdir():
            png.unlink()
    elif damage == "classes differ":
        (root / "test" / "fox").rename(root / "test" / "wolf")
    elif damage == "unreadable":
        (root / "train" / "cat" / "broken.png").write_bytes(b"not a png")
    clients = "data.partition='iid'" if damage == "too few" else ""
    code, said = check(capsys, tmp_path, f"data.name='imagefolder' data.root='{root}' {clients}")
    assert code == 2 and expected.format(root=root) in said, said
    assert not (tmp_path / "runs").exists()


def test_an_image_folder_is_split_and_normalised_like_the_other_data_sets(tmp_path):
    """RGB at data.image_size, classes by folder name, validation carved from train/, the
    test split from test/ or (without it) data.test_fraction of train/, stratified."""
    import dataclasses

    from analogai_fl.data import load_data
    from analogai_fl.settings import load

    root = write_image_folder(tmp_path / "images", train=10, test=4)
    exp = load({"data.name": "imagefolder", "data.root": str(root), "data.image_size": 16})
    splits = load_data(exp.data)
    assert (splits.in_channels, splits.num_classes, splits.image_size) == (3, 3, 16)
    assert len(splits.train) + len(splits.val) == 30 and len(splits.test) == 12
    x, y = splits.test[0]
    assert x.shape == (3, 16, 16) and int(y) == 0
    assert splits.train[0][0].mean().abs() < 3  # normalised with the training statistics
    for png in (root / "test").rglob("*.png"):
        png.unlink()
    for folder in (root / "test").iterdir():
        folder.rmdir()
    (root / "test").rmdir()
    held = load_data(dataclasses.replace(exp.data, test_fraction=0.2, seed=1))
    assert len(held.test) == 6 and sorted(int(t[1]) for t in held.test) == [0, 0, 1, 1, 2, 2]


@pytest.mark.e2e
def test_your_own_model_on_your_own_images_trains_infers_and_exports(tmp_path):
    """A factory of a test module, on an ImageFolder of generated PNGs, through `flwr run`
    (one round, two noise levels); infer and export on its checkpoint."""
    from analogai_fl.flwr_cli import completed_run, flwr_env, stop_local_superlink

    root = write_image_folder(tmp_path / "images")
    home = tmp_path / "flwr_home"
    settings = (f"model.name='{USER}:small_cnn' data.name='imagefolder' data.root='{root}' "
                "training.client_num_in_total=2 training.rounds=1 inference.repeats=1 "
                "inference.drift_times='1,86400' data.image_size=16")
    try:
        completed_run(f"{settings} output.dir='{tmp_path / 'runs'}'",
                      flwr_env({"FLWR_HOME": str(home)}))
    finally:
        stop_local_superlink(home)
    (run,) = (tmp_path / "runs").iterdir()
    assert (run / "summary.json").exists()
    checkpoint = run / "checkpoints" / "round_0001.pt"
    printed = []
    for command in (["infer", str(checkpoint), "--no-sweep"],
                    ["export", str(checkpoint), "--out", str(tmp_path / "analog.pt")]):
        done = subprocess.run([sys.executable, "-m", "analogai_fl.cli", *command],
                              capture_output=True, text=True, timeout=600)
        assert done.returncode == 0, done.stderr
        printed.append(" ".join(done.stdout.split()))
    assert "max|W|/rms(W)" in printed[0]  # the layers as programmed: 6 x 3 x 3 x 3 weights
    assert re.search(r"\b0\W+Conv2d\W+162\b", printed[0]) and "Linear" in printed[0]
    assert (tmp_path / "analog.pt").exists() and "Wrote" in printed[1]
