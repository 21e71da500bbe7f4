"""Experiment configuration: the one home of every key, its default, type and meaning.

Keys are flat dotted names (the seed's public interface, e.g. ``training.use_fl``,
``recovery.noise_0.act_inject.sigma``). A run's effective configuration is built as

    schema defaults  <  the chosen conf YAML file  <  ``flwr run --run-config`` overrides.

Flower only accepts overrides for keys declared in pyproject's ``[tool.flwr.app.config]``,
and fuses them into those declared values before the app sees them. So pyproject declares
every key with the value ``""`` ("not given on the command line"); anything else there is
an override. ``tests/test_config.py`` checks that pyproject, ``conf/default.yaml`` and the
README's key table all agree with ``SCHEMA``.
"""

from __future__ import annotations

import difflib
import math
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

PROJECT_DIR = Path(__file__).resolve().parents[1]
CONF_KEY = "conf"
DEFAULT_CONF = "conf/default.yaml"
UNSET = ""
MAX_NOISE_LEVELS = 10
DEVICES = ("PCM", "ReRAM", "ideal")
PROTOCOLS = ("realistic", "seed")
DATASETS = ("digits", "mnist", "fashionmnist", "cifar10", "cifar100", "svhn")
MODEL_NAMES = ("lenet", "mlp", "vgg8", "resnet18", "mobilenetv2")
STRATEGY_NAMES = ("msnat", "fedavg", "fedprox", "fedavgm", "fedadam", "fedyogi", "fedadagrad")


class ConfigError(ValueError):
    """Bad configuration: the message names the key (and file) and what was expected."""


@dataclass(frozen=True)
class Key:
    default: Any
    doc: str
    choices: tuple[str, ...] = ()
    minimum: float | None = None
    above_minimum: bool = False  # value must be > minimum rather than >=
    nullable: bool = False
    kind: type | None = None  # inferred from the default when None
    maximum: float | None = None  # value must be < maximum
    forbidden: tuple[float, ...] = ()  # values the consumer cannot use
    why: str = ""  # why the range is what it is (shown in the error)

    @property
    def type(self) -> type:
        return self.kind or type(self.default)

    def expectation(self) -> str:
        kind = {bool: "true or false", int: "an integer", float: "a number", str: "a string",
                list: "a list of numbers (YAML list or comma-separated string)"}[self.type]
        if self.choices:
            kind = "one of " + ", ".join(repr(c) for c in self.choices)
        if self.minimum is not None:
            kind += f" {'>' if self.above_minimum else '>='} {self.minimum:g}"
        if self.maximum is not None:
            kind += f"{' and' if self.minimum is not None else ''} < {self.maximum:g}"
        if self.forbidden:
            kind += ", not " + " or ".join(f"{v:g}" for v in self.forbidden)
        if self.why:
            kind += f" ({self.why})"
        return kind + (" (or null)" if self.nullable else "")


CONVERTER_BITS_WHY = ("0 = ideal; else at least 2: aihwkit's converter step is "
                      "1/(2^bits - 2), analog.converter_resolution")


def converter_bits(default: int, doc: str) -> Key:
    """A DAC/ADC resolution key: 0 (ideal) or at least 2 bits."""
    return Key(default, doc, minimum=0, forbidden=(1,), why=CONVERTER_BITS_WHY)


def _protocol_keys(name: str, omega: float, columnwise: bool, dac: int, adc: int,
                   out_noise: float, doc: str) -> dict[str, Key]:
    p = f"inference.protocols.{name}"
    return {
        f"{p}.weight_scaling_omega": Key(omega, f"{doc}: weights scaled so max|W| maps to this "
                                         "conductance fraction (0 = no scaling)", minimum=0.0),
        f"{p}.weight_scaling_columnwise": Key(columnwise, f"{doc}: scale each output column "
                                              "separately"),
        f"{p}.dac_bits": converter_bits(dac, f"{doc}: input DAC resolution in bits (0 = ideal)"),
        f"{p}.adc_bits": converter_bits(adc, f"{doc}: output ADC resolution in bits (0 = ideal)"),
        f"{p}.out_noise": Key(out_noise, f"{doc}: Gaussian output noise std (normalised)",
                              minimum=0.0),
        f"{p}.g_max": Key(25.0, f"{doc}: PCM max conductance in uS", minimum=0.0,
                          above_minimum=True),
        f"{p}.drift_compensation": Key(True, f"{doc}: global drift compensation (GDC)"),
    }


# The schema is built section by section, in the order conf/default.yaml lists them.

def _run_keys() -> dict[str, Key]:
    return {"seed": Key(2024, "random seed for data split, partitions, init, noise draws",
                        minimum=0, maximum=2**32,
                        why="numpy's and scikit-learn's seeds are unsigned 32-bit")}


def _data_keys() -> dict[str, Key]:
    return {
        "data.name": Key("digits", "data set: digits (scikit-learn's, offline) or one of "
                         "torchvision's, read from data.root; images are normalised per "
                         "channel with the training split's mean and std", choices=DATASETS),
        "data.root": Key("~/.cache/analogai-fl/data", "folder holding the torchvision data "
                         "sets in torchvision's layout (MNIST/raw, FashionMNIST/raw, "
                         "cifar-10-batches-py, cifar-100-python; SVHN's train_32x32.mat and "
                         "test_32x32.mat directly in it); ~ is expanded"),
        "data.download": Key(True, "download a missing torchvision data set into data.root "
                             "(once, by the server, before any client starts); false: a "
                             "missing set stops the run with an error naming the folder"),
        "data.augment": Key(True, "training-split augmentation: random crop (padding 4 at 32 "
                            "px) for all torchvision sets, plus horizontal flips for CIFAR; "
                            "digits: none; never on validation or test"),
        "data.val_fraction": Key(0.1, "share of the training images held out for validation "
                                 "(model selection; stratified, seeded); digits: share of all "
                                 "images", minimum=0.0, above_minimum=True, maximum=1.0),
        "data.test_fraction": Key(0.2, "digits only: share of all images held out for the "
                                  "test split (the others have an official test split)",
                                  minimum=0.0, above_minimum=True, maximum=1.0),
        "data.image_size": Key(32, "images are resized to this side (digits' 8x8 and MNIST's "
                               "28x28 are upsampled)", minimum=8),
        "data.max_train_examples": Key(0, "keep only N training images, a seeded random "
                                       "choice made after the validation split is carved "
                                       "(0 = all); for quick trials", minimum=0),
        "data.partition": Key("full", "how the training split is shared among the K clients: "
                              "full (each sees all of it: MSNAT), iid shards, or dirichlet "
                              "label skew (Flower Datasets' partitioners, seeded by seed)",
                              choices=("full", "iid", "dirichlet")),
        "data.alpha": Key(0.5, "Dirichlet concentration for data.partition=dirichlet (smaller "
                          "= more skewed)", minimum=0.0, above_minimum=True),
    }


def _model_keys() -> dict[str, Key]:
    return {"model.name": Key("lenet", "network (CIFAR-style stems for 32x32 images)",
                              choices=MODEL_NAMES)}


def _training_keys() -> dict[str, Key]:
    return {
        "training.client_num_in_total": Key(5, "K, the number of noise levels = simulated "
                                            "clients (noise_0 .. noise_{K-1})", minimum=1),
        "training.rounds": Key(15, "communication rounds", minimum=1),
        "training.local_epochs": Key(1, "epochs each client trains per round", minimum=1),
        "training.batch_size": Key(64, "training batch size", minimum=1),
        "training.lr": Key(1e-3, "learning rate", minimum=0.0, above_minimum=True),
        "training.optimizer": Key("adam", "local optimiser (fresh each round)",
                                  choices=("adam", "sgd")),
        "training.momentum": Key(0.9, "SGD momentum", minimum=0.0),
        "training.weight_decay": Key(0.0, "L2 weight decay", minimum=0.0),
        "training.noise_scale_c": Key(1.0, "c in s = c*sigma*max|W| (seed's 8-bit/2-bit-cell "
                                      "value: 0.7776)", minimum=0.0),
        "training.use_fl": Key(True, "fusion injection (FI): average the K client models each "
                               "round; false = K independent models"),
        "training.use_neg": Key(True, "feedback loops (FL): extra noisy passes subtracted from "
                                "the logits, plus the proximal term"),
        "training.proximal_mu": Key(0.01, "mu of mu/2*||w - w_global||^2 (with use_neg, or "
                                    "always with strategy.name=fedprox)", minimum=0.0),
        "training.feedback.offsets": Key([0.05, 0.10, 0.15], "sigma offsets of the feedback "
                                         "passes"),
        "training.feedback.weights": Key([1.0, 0.1, 0.01], "weight w_i of each feedback pass"),
        "training.feedback.beta": Key(0.001, "gain beta in z = z0 - beta*sum_i w_i z_i",
                                      minimum=0.0),
        "training.feedback.temperature": Key(4.0, "loss = CE(z / temperature)", minimum=0.0,
                                             above_minimum=True),
    }


def _strategy_keys() -> dict[str, Key]:
    return {
        "strategy.name": Key("msnat", "aggregation strategy: msnat (fusion of the K noise "
                             "levels) or one of Flower's built-ins", choices=STRATEGY_NAMES),
        "strategy.weighting": Key("uniform", "msnat: client weights when fusing, uniform (1/K) "
                                  "or by example count (Flower's built-ins always weight by "
                                  "examples)", choices=("uniform", "examples")),
        "strategy.bn_buffers": Key("average", "msnat: BatchNorm running stats of the fused "
                                   "model, weighted average or those of the lowest-sigma "
                                   "client", choices=("average", "lowest_sigma")),
        "strategy.server_lr": Key(1.0, "fedavgm: server learning rate", minimum=0.0,
                                  above_minimum=True),
        "strategy.server_momentum": Key(0.9, "fedavgm: server momentum", minimum=0.0,
                                        maximum=1.0, why="momentum >= 1 grows without bound"),
        "strategy.eta": Key(0.01, "fedadam/fedyogi/fedadagrad: server learning rate",
                            minimum=0.0, above_minimum=True),
        "strategy.beta_1": Key(0.9, "fedadam/fedyogi: first-moment decay", minimum=0.0,
                               maximum=1.0, why="Adam's bias correction divides by 1 - beta^t"),
        "strategy.beta_2": Key(0.99, "fedadam/fedyogi: second-moment decay", minimum=0.0,
                               maximum=1.0, why="Adam's bias correction divides by 1 - beta^t"),
        "strategy.tau": Key(1e-3, "fedadam/fedyogi/fedadagrad: adaptivity (epsilon) of the "
                            "server optimiser", minimum=0.0, above_minimum=True),
    }


def _recovery_keys() -> dict[str, Key]:
    s: dict[str, Key] = {}
    seed_sigmas = [0.10, 0.15, 0.20, 0.25, 0.30]
    for k in range(MAX_NOISE_LEVELS):
        p = f"recovery.noise_{k}.act_inject"
        s[f"{p}.sigma"] = Key(seed_sigmas[k] if k < len(seed_sigmas) else None,
                              f"weight-noise sigma of client {k}", minimum=0.0, nullable=True,
                              kind=float)
        s[f"{p}.use"] = Key(False, f"client {k} also multiplies every Conv/Linear output by "
                            "N(1, act_sigma^2) noise while training")
        s[f"{p}.act_sigma"] = Key(0.1, f"activation-noise sigma of client {k}", minimum=0.0)
    sam, fgsm, pgd = "recovery.optimizer", "recovery.adversarial.FGSM", "recovery.adversarial.PGD"
    return s | {
        f"{sam}.sam": Key(False, "sharpness-aware minimisation: each step takes the gradient "
                          "at the worst point within rho (two gradient evaluations)"),
        f"{sam}.adaptive": Key(False, "adaptive SAM (ASAM): the neighbourhood scales with "
                               "|w| (implies sam; ASAM papers use a larger rho, ~0.5)"),
        f"{sam}.rho": Key(0.05, "SAM/ASAM neighbourhood radius", minimum=0.0,
                          above_minimum=True),
        f"{sam}.eta": Key(0.01, "ASAM: eta in the scale |w| + eta", minimum=0.0),
        f"{fgsm}.use": Key(False, "FGSM adversarial training (one signed-gradient step)"),
        f"{fgsm}.epsilon": Key(0.03, "FGSM: L-inf radius in pixel units ([0, 1] images)",
                               minimum=0.0, above_minimum=True),
        f"{fgsm}.step_size": Key(0.03, "FGSM: step size in pixel units (1.25*epsilon with "
                                 "random_start is 'fast FGSM')", minimum=0.0,
                                 above_minimum=True),
        f"{fgsm}.random_start": Key(False, "FGSM: start from a uniform point in the "
                                    "epsilon-ball"),
        f"{fgsm}.weight": Key(0.2, "FGSM: loss = L(x) + weight * L(x_adv)", minimum=0.0),
        f"{pgd}.use": Key(False, "PGD adversarial training (projected signed-gradient steps)"),
        f"{pgd}.epsilon": Key(0.03, "PGD: L-inf radius in pixel units ([0, 1] images)",
                              minimum=0.0, above_minimum=True),
        f"{pgd}.step_size": Key(0.01, "PGD: step size in pixel units", minimum=0.0,
                                above_minimum=True),
        f"{pgd}.steps": Key(10, "PGD: number of steps", minimum=1),
        f"{pgd}.random_start": Key(True, "PGD: start from a uniform point in the epsilon-ball"),
        f"{pgd}.weight": Key(0.05, "PGD: loss = L(x) + weight * L(x_adv)", minimum=0.0),
        "recovery.qat.use": Key(False, "quantisation-aware training: fake-quantised weights "
                                "(per output channel) and layer inputs, straight-through "
                                "gradients; evaluation sees the quantised weights (alias: "
                                "recovery.qat)"),
        "recovery.qat.weight_bits": Key(4, "QAT: weight bits (symmetric, at most 2^b levels "
                                        "per output channel)", minimum=2),
        "recovery.qat.act_bits": Key(8, "QAT: bits of every Conv/Linear input (symmetric, "
                                     "dynamic abs-max range, like the DAC; 0 = off)",
                                     minimum=0, forbidden=(1,),
                                     why="0 = off; else at least 2: a symmetric grid of "
                                     "2^(b-1)-1 steps each side of 0"),
    }


def _inference_keys() -> dict[str, Key]:
    return {
        "inference.platform.aihwkit.use": Key(True, "evaluate the global model on simulated "
                                              "analog hardware each round (alias: "
                                              "inference.platform.aihwkit)"),
        "inference.platform.aihwkit.device": Key(
            "PCM", "device noise model: PCM (aihwkit PCMLikeNoiseModel: programming noise, "
            "drift, 1/f read noise), ReRAM (ReRamWan2022NoiseModel: measured programming and "
            "relaxation noise at 1 s, 1 d, 2 d only), ideal (no device noise or drift: only "
            "the protocol's forward settings and n_w)", choices=DEVICES),
        "inference.platform.aihwkit.n_w": Key(0.0, "additive weight noise at every MVM "
                                              "(forward.w_noise, normalised units)", minimum=0.0),
        "inference.tile": Key("torch", "aihwkit tile: torch (TorchInferenceRPUConfig running "
                              "analog.CppMatchingTorchMVM: the C++ tile's per-vector bound "
                              "management and n_w, every draw seeded, faster on large "
                              "layers) or cpp (InferenceRPUConfig, aihwkit's C++ tile)",
                              choices=("torch", "cpp")),
        "inference.protocol": Key("realistic", "evaluation protocol (settings below)",
                                  choices=PROTOCOLS),
        **_protocol_keys("realistic", 1.0, False, 8, 8, 0.04,
                         "realistic (aihwkit HWA setting)"),
        **_protocol_keys("seed", 0.0, False, 7, 0, 0.06, "seed (earlier figure's harsh setting)"),
        "inference.reram.noise_scale": Key(1.0, "ReRAM: scale of ReRamWan2022NoiseModel's "
                                           "fitted conductance noise (g_max fixed at the "
                                           "fit's 40 uS)", minimum=0.0),
        "inference.repeats": Key(3, "Monte-Carlo repeats, fresh programming noise each",
                                 minimum=1),
        "inference.drift_times": Key([1.0, 3600.0, 86400.0, 31536000.0],
                                     "drift times in seconds after programming (ReRAM: a "
                                     "subset of 1, 86400, 172800)", minimum=0.0),
        "inference.n_w_sweep": Key([0.0, 0.05, 0.1, 0.15, 0.2, 0.25, 0.3],
                                   "n_w values of the n_w sweep (analogai-fl infer, ablation)",
                                   minimum=0.0),
        "inference.every": Key(1, "evaluate every N rounds (the last round always)", minimum=1),
        "inference.batch_size": Key(512, "evaluation batch size", minimum=1),
    }


def _ablation_keys() -> dict[str, Key]:
    h = "ablation.hwa"
    return {
        "ablation.single_sigma": Key(None, "sigma of the single-noise-injection arm (null = "
                                     "the median of the MSNAT levels)", minimum=0.0,
                                     nullable=True, kind=float),
        "ablation.n_w_columns": Key([0.1, 0.2], "n_w values shown as columns of the ablation "
                                    "table (each must be in inference.n_w_sweep)", minimum=0.0),
        f"{h}.lr": Key(0.05, "HWA baseline: AnalogSGD learning rate", minimum=0.0,
                       above_minimum=True),
        f"{h}.momentum": Key(0.9, "HWA baseline: AnalogSGD momentum", minimum=0.0),
        f"{h}.batch_size": Key(64, "HWA baseline: training batch size", minimum=1),
        f"{h}.modifier_std": Key(0.06, "HWA baseline: std of the additive Gaussian weight "
                                 "noise (aihwkit modifier ADD_NORMAL) drawn per batch, "
                                 "relative to the tile's max|W| (0 = none)", minimum=0.0),
        f"{h}.out_noise": Key(0.04, "HWA baseline: Gaussian output noise std while training",
                              minimum=0.0),
        f"{h}.weight_scaling_omega": Key(1.0, "HWA baseline: max|W| maps to this value on the "
                                         "tile (0 = no scaling)", minimum=0.0),
        f"{h}.weight_scaling_columnwise": Key(False, "HWA baseline: scale each output column "
                                              "separately"),
        f"{h}.clip": Key(1.0, "HWA baseline: tile weights clipped to +-clip after every step "
                         "(0 = no clipping)", minimum=0.0),
        f"{h}.dac_bits": converter_bits(8, "HWA baseline: input DAC bits while training (0 = "
                                        "ideal)"),
        f"{h}.adc_bits": converter_bits(8, "HWA baseline: output ADC bits while training (0 = "
                                        "ideal)"),
        f"{h}.tile": Key("cpp", "HWA baseline: tile to train on: cpp (aihwkit's HWA examples; "
                         "CPU only, noise not seedable) or torch (seeded, CPU or GPU)",
                         choices=("cpp", "torch")),
    }


def _output_keys() -> dict[str, Key]:
    return {
        "output.dir": Key("runs", "parent folder of run folders (relative paths: to the "
                          "directory the local SuperLink was started in)"),
        "output.name": Key("", "run folder name prefix (default: the conf file's name)"),
        "output.resume": Key("", "path of a run folder to continue from its last round"),
        "output.keep_checkpoints": Key(0, "keep only the newest N rounds' checkpoints (0 = all)",
                                       minimum=0),
    }


def _build_schema() -> dict[str, Key]:
    return (_run_keys() | _data_keys() | _model_keys() | _training_keys() | _strategy_keys()
            | _recovery_keys() | _inference_keys() | _ablation_keys() | _output_keys())


SCHEMA: dict[str, Key] = _build_schema()
ALIASES = {"inference.platform.aihwkit": "inference.platform.aihwkit.use",
           "recovery.qat": "recovery.qat.use"}


def defaults() -> dict[str, Any]:
    return {k: (list(v.default) if isinstance(v.default, list) else v.default)
            for k, v in SCHEMA.items()}


def declared_run_config_keys() -> set[str]:
    """The keys pyproject must declare so that `--run-config` accepts them."""
    return set(SCHEMA) | set(ALIASES) | {CONF_KEY}


def flatten(tree: Mapping[str, Any], prefix: str = "") -> dict[str, Any]:
    flat: dict[str, Any] = {}
    for key, value in tree.items():
        name = f"{prefix}{key}"
        if isinstance(value, Mapping):
            flat |= flatten(value, name + ".")
        else:
            flat[name] = value
    return flat


def unflatten(flat: Mapping[str, Any]) -> dict[str, Any]:
    tree: dict[str, Any] = {}
    for name, value in flat.items():
        node = tree
        *parents, leaf = name.split(".")
        for part in parents:
            node = node.setdefault(part, {})
        node[leaf] = value
    return tree


def _canonical(name: str, source: str) -> str:
    name = ALIASES.get(name, name)
    if name not in SCHEMA:
        close = difflib.get_close_matches(name, list(SCHEMA) + list(ALIASES), n=1)
        hint = f" (did you mean '{close[0]}'?)" if close else ""
        raise ConfigError(f"{source}: unknown key '{name}'{hint}. The README lists every key.")
    return name


def _coerce(name: str, value: Any, source: str) -> Any:
    key = SCHEMA[name]
    bad = ConfigError(f"{source}: key '{name}' expects {key.expectation()}, got {value!r}")
    if value is None:
        if key.nullable:
            return None
        raise bad
    kind = key.type
    if kind is bool:
        if not isinstance(value, bool):
            raise bad
    elif kind is int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise bad
    elif kind is float:
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise bad
        value = float(value)
    elif kind is str:
        if not isinstance(value, str):
            raise bad
    elif kind is list:
        items = value.split(",") if isinstance(value, str) else value
        try:
            value = [float(x) for x in items]
        except (TypeError, ValueError):
            raise bad from None
        if not value:
            raise bad
    if key.choices and value not in key.choices:
        raise bad
    if kind in (int, float, list):
        for x in value if kind is list else [value]:
            if not math.isfinite(x) or x in key.forbidden:
                raise bad
            if key.minimum is not None and (x < key.minimum or (key.above_minimum
                                                               and x == key.minimum)):
                raise bad
            if key.maximum is not None and x >= key.maximum:
                raise bad
    return value


def load_yaml(path: Path) -> dict[str, Any]:
    """Flat, type-checked settings of one conf file."""
    source = str(path)
    if not path.is_file():
        raise ConfigError(f"conf file '{path}' does not exist (expected a YAML file, e.g. "
                          f"{DEFAULT_CONF})")
    try:
        tree = yaml.safe_load(path.read_text()) or {}
    except yaml.YAMLError as err:
        raise ConfigError(f"conf file '{path}' is not valid YAML: {err}") from None
    if not isinstance(tree, Mapping):
        raise ConfigError(f"conf file '{path}' must hold a mapping of keys, got "
                          f"{type(tree).__name__}")
    return {(c := _canonical(k, source)): _coerce(c, v, source) for k, v in flatten(tree).items()}


def _find_conf(name: str) -> Path:
    path = Path(name).expanduser()
    if path.is_absolute():
        return path
    for base in (PROJECT_DIR, Path.cwd()):
        if (base / path).is_file():
            return base / path
    raise ConfigError(f"conf file '{name}' not found (looked in {PROJECT_DIR} and "
                      f"{Path.cwd()}); pass a path relative to the project or an absolute one")


def resolve(run_config: Mapping[str, Any]) -> dict[str, Any]:
    """Effective config of a run.

    `run_config` is Flower's fused run config (pyproject values, `""` = not overridden).
    With `output.resume` set, the resumed run's saved config replaces the conf file.
    """
    overrides = {_canonical(k, "--run-config"): v for k, v in run_config.items()
                 if k != CONF_KEY and v != UNSET}
    overrides = {k: _coerce(k, v, "--run-config") for k, v in overrides.items()}
    if overrides.get("output.resume"):
        conf_path = Path(overrides["output.resume"]).expanduser() / "config.yaml"
    else:
        conf_path = _find_conf(str(run_config.get(CONF_KEY) or DEFAULT_CONF))
    from_file = load_yaml(conf_path)
    cfg = defaults() | from_file | overrides
    cfg["output.name"] = cfg["output.name"] or conf_path.stem
    cfg[CONF_KEY] = str(conf_path)
    validate(cfg, set(overrides))
    return cfg


def parse_run_config(text: str) -> dict[str, Any]:
    """Flat overrides from a `--run-config` string ("key=value key=value", TOML values),
    parsed by Flower's own parser exactly as `flwr run . --run-config` parses it."""
    import re

    import click
    from flwr.common.config import parse_config_args

    pairs = re.compile(r"(\S+?)=(\'[^\']*\'|\"[^\"]*\"|\S+)")  # Flower's pattern, to find
    leftover = pairs.sub("", text).strip()                   # what it would silently skip
    if leftover:
        raise ConfigError(f"--run-config: cannot parse '{leftover}': expected space-separated "
                          "key=value pairs with TOML values, e.g. \"inference.repeats=5 "
                          "inference.platform.aihwkit.device='ReRAM'\"")
    try:
        return parse_config_args([text])
    except (click.ClickException, ValueError) as err:
        message = err.message if isinstance(err, click.ClickException) else str(err)
        raise ConfigError(f"--run-config: {message}") from None


def validate(cfg: Mapping[str, Any], typed_keys: set[str] = frozenset()) -> None:
    """Checks that span several keys; single keys were checked while loading.

    `typed_keys` are those given on the command line: a sigma typed there for a level
    beyond client_num_in_total is a mistake, while conf files may list spare levels.
    """
    k_total = cfg["training.client_num_in_total"]
    if k_total > MAX_NOISE_LEVELS:
        raise ConfigError(f"key 'training.client_num_in_total' expects at most "
                          f"{MAX_NOISE_LEVELS} noise levels, got {k_total}")
    for k in range(MAX_NOISE_LEVELS):
        name = f"recovery.noise_{k}.act_inject.sigma"
        if k < k_total and cfg[name] is None:
            raise ConfigError(f"key '{name}' is not set but training.client_num_in_total is "
                              f"{k_total}: set a sigma for each of noise_0 .. noise_{k_total - 1}")
        if k >= k_total and name in typed_keys and cfg[name] is not None:
            raise ConfigError(f"key '{name}' is set but training.client_num_in_total is "
                              f"{k_total}, so only noise_0 .. noise_{k_total - 1} are used; "
                              "raise client_num_in_total or remove the key")
    if not cfg["training.use_fl"] and cfg["strategy.name"] != "msnat":
        raise ConfigError(f"key 'training.use_fl' is false (K independent models, nothing to "
                          f"aggregate) but strategy.name is '{cfg['strategy.name']}': "
                          "FI off runs only with strategy.name=msnat")
    if cfg["recovery.adversarial.FGSM.use"] and cfg["recovery.adversarial.PGD.use"]:
        raise ConfigError("keys 'recovery.adversarial.FGSM.use' and "
                          "'recovery.adversarial.PGD.use' are both true: choose one attack")
    if len(cfg["training.feedback.offsets"]) != len(cfg["training.feedback.weights"]):
        raise ConfigError("keys 'training.feedback.offsets' and 'training.feedback.weights' "
                          "expect lists of the same length")
    if cfg["data.name"] == "digits" and cfg["data.val_fraction"] + cfg["data.test_fraction"] >= 1:
        raise ConfigError("keys 'data.val_fraction' + 'data.test_fraction' expect a sum "
                          "below 1 (the rest is training data)")
    times = cfg["inference.drift_times"]
    if len(set(times)) != len(times):
        raise ConfigError(f"key 'inference.drift_times' expects distinct times, got "
                          f"{', '.join(f'{t:g}' for t in times)}")
    check_device_drift_times(cfg)
    missing = [v for v in cfg["ablation.n_w_columns"] if v not in cfg["inference.n_w_sweep"]]
    if missing:
        raise ConfigError(f"key 'ablation.n_w_columns' lists n_w {missing} that "
                          f"inference.n_w_sweep {cfg['inference.n_w_sweep']} does not measure")


# ReRamWan2022NoiseModel's measured times (s): the keys of its `coeff_dic` in aihwkit 1.1.0
# (tests/test_infer.py checks this against the installed aihwkit).
RERAM_DRIFT_TIMES = (1.0, 86400.0, 172800.0)


def check_device_drift_times(cfg: Mapping[str, Any]) -> None:
    """ConfigError unless the device model is defined at every `inference.drift_times`."""
    if cfg["inference.platform.aihwkit.device"] != "ReRAM":
        return
    unsupported = [t for t in cfg["inference.drift_times"] if t not in RERAM_DRIFT_TIMES]
    if unsupported:
        raise ConfigError(
            f"key 'inference.drift_times' expects times among "
            f"{', '.join(f'{t:g}' for t in RERAM_DRIFT_TIMES)} s with device ReRAM (its "
            f"noise model is fitted there only), got {', '.join(f'{t:g}' for t in unsupported)}"
            f"; e.g. inference.drift_times='1,86400,172800'")


def noise_levels(cfg: Mapping[str, Any]) -> list[float]:
    """sigma_k of each client, k = 0 .. K-1."""
    return [cfg[f"recovery.noise_{k}.act_inject.sigma"]
            for k in range(cfg["training.client_num_in_total"])]


def protocol(cfg: Mapping[str, Any]) -> dict[str, Any]:
    """The named evaluation protocol with all its settings (recorded with every result):
    forward settings of the named protocol, device model (with its own settings), tile."""
    name = cfg["inference.protocol"]
    prefix = f"inference.protocols.{name}."
    settings = {k[len(prefix):]: v for k, v in cfg.items() if k.startswith(prefix)}
    device = cfg["inference.platform.aihwkit.device"]
    result = {"name": name, "device": device, "tile": cfg["inference.tile"],
              "n_w": cfg["inference.platform.aihwkit.n_w"], **settings}
    if device == "ReRAM":
        check_device_drift_times(cfg)
        result["reram_noise_scale"] = cfg["inference.reram.noise_scale"]
    return result


def dump_yaml(cfg: Mapping[str, Any]) -> str:
    return yaml.safe_dump(unflatten({k: v for k, v in cfg.items() if k != CONF_KEY}),
                          sort_keys=False)


def markdown_table() -> str:
    """README's key reference, generated from SCHEMA so it cannot drift."""
    rows = ["| key | default | expects | meaning |", "|---|---|---|---|"]
    for name, key in SCHEMA.items():
        default = "null" if key.default is None else yaml.safe_dump(
            key.default, default_flow_style=True).strip().removesuffix("...").strip()
        rows.append(f"| `{name}` | `{default}` | {key.expectation()} | {key.doc} |")
    return "\n".join(rows)


DEFAULT_CONF_HEADER = """\
# The default experiment: LeNet on scikit-learn's digits (offline), K = 5 noise levels,
# fusion injection (FI) and feedback loops (FL) on, PCM evaluation every round.
# Every key of the project is listed here with its default and meaning. This file is
# generated from analogai_fl/config.py (`python -m analogai_fl.config --write`); other conf
# files only need the keys they change. `recovery.noise_k.act_inject.sigma` is the
# WEIGHT-noise sigma of client k (the seed's name, kept for compatibility).
"""


def _yaml_scalar(value: Any) -> str:
    if value is None:
        return "null"
    return yaml.safe_dump(value, default_flow_style=True, width=1000).strip().removesuffix(
        "...").strip()


def render_default_conf() -> str:
    """conf/default.yaml: every key with its default, commented with its meaning."""
    lines = [*DEFAULT_CONF_HEADER.splitlines(), ""]
    opened: list[str] = []
    for name, key in SCHEMA.items():
        *parents, leaf = name.split(".")
        common = 0
        while common < min(len(opened), len(parents)) and opened[common] == parents[common]:
            common += 1
        if common == 0 and opened != parents and lines[-1] != "":
            lines.append("")  # blank line between top-level sections
        for depth in range(common, len(parents)):
            lines.append("  " * depth + parents[depth] + ":")
        opened = parents
        lines.append(f"{'  ' * len(parents)}{leaf}: {_yaml_scalar(key.default)}  # {key.doc}")
    return "\n".join(lines) + "\n"


def render_pyproject_table() -> str:
    """pyproject's [tool.flwr.app.config]: every key declared as "" (= not overridden)."""
    names = [*SCHEMA, *ALIASES]
    return "\n".join(["[tool.flwr.app.config]", f'{CONF_KEY} = "{DEFAULT_CONF}"',
                      *(f'"{n}" = "{UNSET}"' for n in names)]) + "\n"


def _replace_block(text: str, start: str, end_marker: str, new: str) -> str:
    """`text` with the block from the line starting with `start` up to (not including)
    the first following line that starts with `end_marker` (or the end) replaced."""
    lines = text.splitlines(keepends=True)
    first = next(i for i, line in enumerate(lines) if line.startswith(start))
    last = next((i for i in range(first + 1, len(lines)) if lines[i].startswith(end_marker)),
                len(lines))
    return "".join(lines[:first]) + new + "".join(lines[last:])


def generated_files() -> dict[Path, str]:
    """Files whose key lists are generated from SCHEMA, with their up-to-date text."""
    pyproject = PROJECT_DIR / "pyproject.toml"
    readme = PROJECT_DIR / "README.md"
    table = markdown_table() + "\n"
    return {
        PROJECT_DIR / DEFAULT_CONF: render_default_conf(),
        pyproject: _replace_block(pyproject.read_text(), "[tool.flwr.app.config]", "[",
                                  render_pyproject_table()),
        readme: _replace_block(readme.read_text(), "| key | default |", "\n", table),
    }


if __name__ == "__main__":
    import sys

    if sys.argv[1:] == ["--write"]:
        for path, text in generated_files().items():
            if path.read_text() != text:
                path.write_text(text)
                print(f"updated {path.relative_to(PROJECT_DIR)}")
    else:
        print(markdown_table())
