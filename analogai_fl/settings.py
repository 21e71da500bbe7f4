"""Typed, frozen settings of an experiment, built in one place from a run config.

`load(run_config)` is how every entry point (the ServerApp, each `analogai-fl` command, the
ablation's arms) gets its settings: `config.resolve` loads, type-checks and range-checks the
keys, then `Experiment.from_config(cfg)`, the only code that reads the dotted keys of a
resolved config, builds the settings and runs the cross-key rules. Every other module takes
these objects, so one search from a key (e.g. ``"inference.platform.aihwkit.n_w"``) finds its
one use here, and the field it fills (`Protocol.n_w`) leads to every consumer. The dotted
dict stays the format of files and messages: `config.yaml`, and the train message that
carries the config to the clients.
"""

from __future__ import annotations

import dataclasses
import re
import statistics
from collections.abc import Mapping, Set
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from .chip_noise import ChipNoise
from .config import command_line_overrides, resolve
from .data import DataSettings
from .errors import ConfigError
from .outputs import OutputSettings
from .recovery import Attack, Sam
from .schema import CONF_KEY, DEFAULT_CONF, MAX_NOISE_LEVELS, PROTOCOLS, RERAM_DRIFT_TIMES
from .settings_ablation import AblationSettings, HWASettings, ablation_settings, hwa_settings
from .split_sizes import check_digits_splits
from .training import Feedback, LocalTraining, scheduled_lr


@dataclass(frozen=True)
class Protocol:
    """An evaluation protocol: every setting of the aihwkit inference tile (`analog.rpu_config`)
    and the device model. `record()` is what each result records, with stable field names."""

    name: str
    device: str  # PCM, ReRAM or ideal
    tile: str  # torch or cpp
    n_w: float  # forward.w_noise, normalised units
    weight_scaling_omega: float
    weight_scaling_columnwise: bool
    dac_bits: int  # 0 = ideal
    adc_bits: int  # 0 = ideal
    out_noise: float  # normalised
    g_max: float  # microsiemens
    drift_compensation: bool
    reram_noise_scale: float
    w_noise_type: str = "additive"  # of n_w: additive (ADDITIVE_CONSTANT) or pcm_read
    ir_drop: float = 0.0
    out_bound: float = 12.0  # full-scale products
    bound_management: str = "iterative"  # or none
    noise_management: str = "abs_max"  # or constant
    max_input_size: int = 512  # tile rows at most (0 = one tile)
    max_output_size: int = 512  # tile columns at most (0 = no limit)
    input_range_images: int = 0  # training images the input ranges are calibrated on

    def record(self) -> dict[str, Any]:
        fields = dataclasses.asdict(self)
        if self.device != "ReRAM":
            del fields["reram_noise_scale"]
        return fields

    def with_n_w(self, n_w: float) -> Protocol:
        return dataclasses.replace(self, n_w=n_w)


@dataclass(frozen=True)
class Evaluation:
    """The server's analog evaluation (`inference.*`): the chosen protocol and all named
    protocols (the ablation measures each), drift times in seconds, Monte-Carlo repeats."""

    use: bool
    protocol: Protocol
    protocols: Mapping[str, Protocol]
    drift_times: tuple[float, ...]
    repeats: int
    n_w_sweep: tuple[float, ...]
    every: int
    batch_size: int
    torch_device: str  # auto, cpu, cuda or cuda:N (`analog.torch_device` resolves it)
    one_pass: bool
    clip_sigma: float  # the post-hoc clip before programming, in stds (`clip`; 0 = off)


@dataclass(frozen=True)
class StrategySettings:
    """`strategy.*`: which strategy aggregates the K noise levels, with its parameters."""

    name: str
    weighting: str
    bn_buffers: str
    server_lr: float
    server_momentum: float
    eta: float
    beta_1: float
    beta_2: float
    tau: float


@dataclass(frozen=True)
class FederationSettings:
    """What the ServerApp does about lost or failed clients (`federation.*`)."""

    retries: int  # resends per noise level and round before the round fails
    reply_timeout: float  # seconds per try; 0 = no limit of ours
    inject_failure: tuple[int, int] | None  # (round, noise level) failing on its first try


@dataclass(frozen=True)
class Experiment:
    """One resolved experiment. `config` is the dotted dict it was built from (for files and
    messages); `noise_levels[k]` is client k's sigma."""

    config: Mapping[str, Any]
    conf: str
    seed: int
    model: str
    model_init: Path | None  # the checkpoint the global model starts from; None: fresh
    data: DataSettings
    noise_levels: tuple[float, ...]
    rounds: int
    local_epochs: int
    fused: bool  # fusion injection (training.use_fl)
    feedback: bool  # feedback loops (training.use_neg)
    proximal_mu: float
    training: LocalTraining  # client 0's setting; `local_training` gives any client's
    lr_schedule: str  # training.schedule: constant or cosine (`training.scheduled_lr`)
    client_validation: bool  # clients measure their noisy validation accuracy each round
    act_sigmas: tuple[float, ...]  # per client, 0 = no activation noise
    strategy: StrategySettings
    evaluation: Evaluation
    hwa: HWASettings
    ablation: AblationSettings
    out_noise_scales: bool  # noise_model=analog: client k's output noise scales with sigma_k
    federation: FederationSettings
    output: OutputSettings

    @property
    def clients(self) -> int:
        return len(self.noise_levels)

    def client_mu(self) -> float:
        """mu of the clients' proximal term: part of the feedback loops, and what FedProx
        is about."""
        return self.proximal_mu if self.feedback or self.strategy.name == "fedprox" else 0.0

    def local_training(self, noise_index: int, proximal_mu: float, server_round: int = 1
                       ) -> LocalTraining:
        """Client `noise_index`'s training setting in round `server_round` (1-based): its
        sigma and activation noise, the round's lr (`training.scheduled_lr`), and with
        `training.analog.out_noise_scales` its output noise out_noise * sigma_k / mean(sigma)
        (unchanged where every sigma is 0). ValueError for a round outside 1..rounds."""
        sigma, chip = self.noise_levels[noise_index], self.training.chip
        mean = statistics.fmean(self.noise_levels)
        if chip is not None and self.out_noise_scales and mean > 0:
            chip = dataclasses.replace(chip, out_noise=chip.out_noise * sigma / mean)
        lr = scheduled_lr(self.training.lr, self.lr_schedule, server_round, self.rounds)
        return dataclasses.replace(self.training, sigma=sigma, proximal_mu=proximal_mu,
                                   act_sigma=self.act_sigmas[noise_index], chip=chip, lr=lr)

    @classmethod
    def from_config(cls, cfg: Mapping[str, Any], typed_keys: Set[str] = frozenset()
                    ) -> Experiment:
        """Build and cross-check; raises ConfigError naming the keys. `typed_keys` are those
        given on the command line (a sigma typed for an unused level is a mistake, while
        conf files may list spare levels)."""
        k_total = cfg["training.client_num_in_total"]
        sigmas = _noise_levels(cfg, k_total, typed_keys)
        seed, feedback = cfg["seed"], cfg["training.use_neg"]
        data = _data(cfg, k_total, seed)
        evaluation = _evaluation(cfg)
        fused, strategy = cfg["training.use_fl"], _strategy(cfg)
        if not fused and strategy.name != "msnat":
            raise ConfigError(f"key 'training.use_fl' is false (K independent models, nothing "
                              f"to aggregate) but strategy.name is '{strategy.name}': FI off "
                              "runs only with strategy.name=msnat")
        training = _training(cfg, sigmas[0], feedback)
        return cls(
            config=dict(cfg), conf=cfg.get(CONF_KEY, DEFAULT_CONF), seed=seed,
            model=cfg["model.name"],
            model_init=Path(cfg["model.init"]).expanduser().resolve() if cfg["model.init"]
            else None,
            data=data, noise_levels=sigmas, rounds=cfg["training.rounds"],
            local_epochs=training.epochs, fused=fused, feedback=feedback,
            proximal_mu=cfg["training.proximal_mu"], training=training,
            lr_schedule=cfg["training.schedule"],
            client_validation=cfg["training.client_validation"],
            act_sigmas=_act_sigmas(cfg, k_total),
            strategy=strategy, evaluation=evaluation, hwa=hwa_settings(cfg),
            ablation=ablation_settings(cfg, evaluation.n_w_sweep, sigmas),
            out_noise_scales=cfg["training.analog.out_noise_scales"],
            federation=_federation(cfg, k_total),
            output=_output(cfg))


def load(run_config: Mapping[str, Any]) -> Experiment:
    """The settings of a run: `run_config` (Flower's run config, or a command's conf file
    and `--run-config` overrides, as a flat dict; `CONF_KEY` names the conf file, values of
    `config.UNSET` are not given) resolved by `config.resolve`, built and cross-checked.
    Raises ConfigError naming the key (and file) before any work."""
    return Experiment.from_config(resolve(run_config),
                                  set(command_line_overrides(run_config)))


def _noise_levels(cfg: Mapping[str, Any], k_total: int, typed: Set[str]) -> tuple[float, ...]:
    if k_total > MAX_NOISE_LEVELS:
        raise ConfigError(f"key 'training.client_num_in_total' expects at most "
                          f"{MAX_NOISE_LEVELS} noise levels, got {k_total}")
    sigmas = []
    for k in range(MAX_NOISE_LEVELS):
        name = f"recovery.noise_{k}.act_inject.sigma"
        sigma = cfg[name]
        if k < k_total and sigma is None:
            raise ConfigError(f"key '{name}' is not set but training.client_num_in_total is "
                              f"{k_total}: set a sigma for each of noise_0 .. noise_{k_total - 1}")
        if k >= k_total and name in typed and sigma is not None:
            raise ConfigError(f"key '{name}' is set but training.client_num_in_total is "
                              f"{k_total}, so only noise_0 .. noise_{k_total - 1} are used; "
                              "raise client_num_in_total or remove the key")
        sigmas.append(sigma)
    return tuple(sigmas[:k_total])


def _act_sigmas(cfg: Mapping[str, Any], k_total: int) -> tuple[float, ...]:
    act = [(cfg[f"recovery.noise_{k}.act_inject.use"],
            cfg[f"recovery.noise_{k}.act_inject.act_sigma"]) for k in range(MAX_NOISE_LEVELS)]
    return tuple(sigma if use else 0.0 for use, sigma in act[:k_total])


def _data(cfg: Mapping[str, Any], k_total: int, seed: int) -> DataSettings:
    name, val, test = cfg["data.name"], cfg["data.val_fraction"], cfg["data.test_fraction"]
    if name == "digits" and val + test >= 1.0:
        raise ConfigError("keys 'data.val_fraction' + 'data.test_fraction' expect a sum "
                          "below 1 (the rest is training data)")
    if name == "digits":
        check_digits_splits(val, test)
    return DataSettings(
        name=name, root=Path(cfg["data.root"]).expanduser().resolve(),
        download=cfg["data.download"], augment=cfg["data.augment"], val_fraction=val,
        test_fraction=test, image_size=cfg["data.image_size"],
        max_train_examples=cfg["data.max_train_examples"], partition=cfg["data.partition"],
        alpha=cfg["data.alpha"], seed=seed, clients=k_total)


def _training(cfg: Mapping[str, Any], sigma: float, feedback_on: bool) -> LocalTraining:
    offsets, weights = cfg["training.feedback.offsets"], cfg["training.feedback.weights"]
    if len(offsets) != len(weights):
        raise ConfigError("keys 'training.feedback.offsets' and 'training.feedback.weights' "
                          "expect lists of the same length")
    feedback = Feedback(tuple(offsets), tuple(weights), cfg["training.feedback.beta"],
                        cfg["training.feedback.temperature"]) if feedback_on else None
    use_sam, adaptive = cfg["recovery.optimizer.sam"], cfg["recovery.optimizer.adaptive"]
    use_fgsm, use_pgd = cfg["recovery.adversarial.FGSM.use"], cfg["recovery.adversarial.PGD.use"]
    if use_fgsm and use_pgd:
        raise ConfigError("keys 'recovery.adversarial.FGSM.use' and "
                          "'recovery.adversarial.PGD.use' are both true: choose one attack")
    attack = None
    if use_fgsm:
        attack = Attack("FGSM", cfg["recovery.adversarial.FGSM.epsilon"],
                        cfg["recovery.adversarial.FGSM.step_size"], 1,
                        cfg["recovery.adversarial.FGSM.random_start"],
                        cfg["recovery.adversarial.FGSM.weight"])
    if use_pgd:
        attack = Attack("PGD", cfg["recovery.adversarial.PGD.epsilon"],
                        cfg["recovery.adversarial.PGD.step_size"],
                        cfg["recovery.adversarial.PGD.steps"],
                        cfg["recovery.adversarial.PGD.random_start"],
                        cfg["recovery.adversarial.PGD.weight"])
    qat, a = cfg["recovery.qat.use"], "training.analog."
    chip = ChipNoise(out_noise=cfg[a + "out_noise"], dac_bits=cfg[a + "dac_bits"],
                     adc_bits=cfg[a + "adc_bits"], out_bound=cfg[a + "out_bound"],
                     columnwise=cfg[a + "weight_scaling_columnwise"],
                     bound_management=cfg[a + "bound_management"]
                     ) if cfg["training.noise_model"] == "analog" else None
    return LocalTraining(
        sigma=sigma, noise_c=cfg["training.noise_scale_c"], epochs=cfg["training.local_epochs"],
        batch_size=cfg["training.batch_size"], lr=cfg["training.lr"],
        optimizer=cfg["training.optimizer"], momentum=cfg["training.momentum"],
        weight_decay=cfg["training.weight_decay"], feedback=feedback, proximal_mu=0.0,
        weight_bits=cfg["recovery.qat.weight_bits"] if qat else 0,
        input_bits=cfg["recovery.qat.act_bits"] if qat else 0,
        sam=Sam(cfg["recovery.optimizer.rho"], adaptive, cfg["recovery.optimizer.eta"])
        if use_sam or adaptive else None,
        attack=attack, chip=chip,
        clip_sigma=cfg["training.clip_sigma"],
        sigma_levels=tuple(cfg["training.sigma_levels"] or ()))


def _protocol(cfg: Mapping[str, Any], name: str) -> Protocol:
    p = f"inference.protocols.{name}."
    tile = cfg[p + "tile"] or cfg["inference.tile"]
    needs_cpp = [k for k, on in (("w_noise_type", cfg[p + "w_noise_type"] == "pcm_read"),
                                 ("ir_drop", cfg[p + "ir_drop"] > 0)) if on]
    if tile == "torch" and needs_cpp:
        raise ConfigError(f"key '{p}tile' (or inference.tile) is torch, but {p}{needs_cpp[0]} "
                          "needs aihwkit's C++ tile: set it to cpp")
    n_w = cfg[p + "n_w"]
    return Protocol(
        name=name, device=cfg["inference.platform.aihwkit.device"], tile=tile,
        n_w=cfg["inference.platform.aihwkit.n_w"] if n_w is None else n_w,
        weight_scaling_omega=cfg[p + "weight_scaling_omega"],
        weight_scaling_columnwise=cfg[p + "weight_scaling_columnwise"],
        dac_bits=cfg[p + "dac_bits"], adc_bits=cfg[p + "adc_bits"],
        out_noise=cfg[p + "out_noise"], g_max=cfg[p + "g_max"],
        drift_compensation=cfg[p + "drift_compensation"],
        reram_noise_scale=cfg["inference.reram.noise_scale"],
        **{k: cfg[p + k] for k in ("w_noise_type", "ir_drop", "out_bound", "bound_management",
                                   "noise_management", "max_input_size", "max_output_size",
                                   "input_range_images")})


def _evaluation(cfg: Mapping[str, Any]) -> Evaluation:
    times = tuple(cfg["inference.drift_times"])
    if len(set(times)) != len(times):
        raise ConfigError(f"key 'inference.drift_times' expects distinct times, got "
                          f"{', '.join(f'{t:g}' for t in times)}")
    protocols = {name: _protocol(cfg, name) for name in PROTOCOLS}
    chosen = protocols[cfg["inference.protocol"]]
    unsupported = [t for t in times if t not in RERAM_DRIFT_TIMES]
    if chosen.device == "ReRAM" and unsupported:
        raise ConfigError(
            f"key 'inference.drift_times' expects times among "
            f"{', '.join(f'{t:g}' for t in RERAM_DRIFT_TIMES)} s with device ReRAM (its "
            f"noise model is fitted there only), got {', '.join(f'{t:g}' for t in unsupported)}"
            f"; e.g. inference.drift_times='1,86400,172800'")
    return Evaluation(
        use=cfg["inference.platform.aihwkit.use"], protocol=chosen, protocols=protocols,
        drift_times=times, repeats=cfg["inference.repeats"],
        n_w_sweep=tuple(cfg["inference.n_w_sweep"]), every=cfg["inference.every"],
        batch_size=cfg["inference.batch_size"], torch_device=_torch_device(cfg, chosen.tile),
        one_pass=cfg["inference.one_pass"], clip_sigma=cfg["inference.clip_sigma"])


def _torch_device(cfg: Mapping[str, Any], tile: str) -> str:
    """`inference.torch_device`, checked against the chosen protocol's `tile` (the ablation
    runs a protocol on the C++ tile on the CPU, `analog.torch_device`)."""
    device = cfg["inference.torch_device"]
    if not re.fullmatch(r"auto|cpu|cuda(:\d+)?", device):
        raise ConfigError(f"key 'inference.torch_device' expects auto, cpu, cuda or cuda:N, "
                          f"got '{device}'")
    if device.startswith("cuda") and tile != "torch":
        raise ConfigError(f"key 'inference.torch_device' = '{device}' needs the torch tile "
                          f"(inference.tile, or the protocol's tile key; aihwkit's PyPI wheel "
                          f"has no CUDA C++ tiles), got '{tile}' for protocol "
                          f"'{cfg['inference.protocol']}'")
    return device


def _strategy(cfg: Mapping[str, Any]) -> StrategySettings:
    return StrategySettings(
        name=cfg["strategy.name"], weighting=cfg["strategy.weighting"],
        bn_buffers=cfg["strategy.bn_buffers"],
        server_lr=cfg["strategy.server_lr"], server_momentum=cfg["strategy.server_momentum"],
        eta=cfg["strategy.eta"], beta_1=cfg["strategy.beta_1"], beta_2=cfg["strategy.beta_2"],
        tau=cfg["strategy.tau"])


def _federation(cfg: Mapping[str, Any], k_total: int) -> FederationSettings:
    text = cfg["federation.inject_failure"].strip()
    injected = None
    if text != "off":
        parts = text.split(":")
        if (len(parts) != 2 or not all(p.strip().isdigit() for p in parts)
                or int(parts[0]) < 1 or int(parts[1]) >= k_total):
            raise ConfigError(f"key 'federation.inject_failure' expects 'ROUND:LEVEL' with "
                              f"ROUND >= 1 and LEVEL in 0..{k_total - 1}, or 'off', got '{text}'")
        injected = (int(parts[0]), int(parts[1]))
    return FederationSettings(retries=cfg["federation.retries"],
                              reply_timeout=cfg["federation.reply_timeout"],
                              inject_failure=injected)


def _output(cfg: Mapping[str, Any]) -> OutputSettings:
    return OutputSettings(dir=Path(cfg["output.dir"]).expanduser(),
                          name=cfg["output.name"] or Path(cfg.get(CONF_KEY, DEFAULT_CONF)).stem,
                          resume=cfg["output.resume"],
                          keep_checkpoints=cfg["output.keep_checkpoints"],
                          tensorboard=cfg["output.tensorboard"])
