"""The typed settings of `analogai-fl ablate` (`ablation.*`) and of its HWA baseline
(`ablation.hwa.*`), built from a resolved config by `settings.Experiment.from_config`; their
keys are declared in `schema_ablation`."""

from __future__ import annotations

import statistics
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from .errors import ConfigError
from .reporting import drift_label
from .schema import PROTOCOLS
from .schema_ablation import ARM_NAMES


@dataclass(frozen=True)
class HWASettings:
    """aihwkit's hardware-aware training, the ablation's baseline (`ablation.hwa.*`)."""

    lr: float
    momentum: float
    batch_size: int
    modifier_std: float  # relative to the tile's max|W|
    out_noise: float
    weight_scaling_omega: float
    weight_scaling_columnwise: bool
    weight_decay: float
    schedule: str  # cosine or constant, over the epochs
    remap: str  # layerwise, channelwise or none (aihwkit WeightRemapType)
    clip_type: str  # gaussian, fixed or none (aihwkit WeightClipType)
    clip_sigma: float  # clip_type gaussian: stds of the layer's weights
    clip: float  # clip_type fixed: +-clip in the tile's mapped units
    dac_bits: int
    adc_bits: int
    tile: str


@dataclass(frozen=True)
class AblationSettings:
    """`analogai-fl ablate`'s own settings (`ablation.*` but the HWA recipe)."""

    single_sigma: float  # the noise-injection arm's sigma
    pretrained: bool  # the training arms fine-tune the vanilla arm's model of their seed
    finetune_lr: float | None  # their flwr arms' training.lr (None: training.lr)
    validation: bool  # also measure the validation split
    n_w_columns: tuple[float, ...]  # n_w values shown as table columns
    reference: str  # the arm every other is compared with, paired by seed
    hwa_chip_lr: float | None  # None: the HWA recipe's lr (HWASettings.lr)
    msnat_hwa_lr: float | None
    tuning: bool  # measure only the criterion (validation, CRITERION_PROTOCOL)
    primary_contrasts: tuple[tuple[str, str], ...]  # (arm, minus arm), pre-registered
    primary_endpoints: tuple[tuple[str, str], ...]  # (protocol, column title)


def ablation_settings(cfg: Mapping[str, Any], n_w_sweep: Sequence[float],
                      sigmas: Sequence[float]) -> AblationSettings:
    """`ablation.*`; ConfigError when an n_w column is not in `n_w_sweep` (the n_w values
    measured). `sigmas`: the MSNAT noise levels (the default single sigma is their median)."""
    n_w_columns = tuple(cfg["ablation.n_w_columns"])
    missing = [v for v in n_w_columns if v not in n_w_sweep]
    if missing:
        raise ConfigError(f"key 'ablation.n_w_columns' lists n_w {missing} that "
                          f"inference.n_w_sweep {list(n_w_sweep)} does not measure")
    if cfg["ablation.finetune_lr"] is not None and not cfg["ablation.pretrained"]:
        raise ConfigError("key 'ablation.finetune_lr' is the learning rate of fine-tuning: "
                          "it needs ablation.pretrained=true (or leave it null)")
    single = cfg["ablation.single_sigma"]
    contrasts = _contrasts(cfg["ablation.primary_contrasts"])
    endpoints = _endpoints(cfg["ablation.primary_endpoints"], cfg["inference.drift_times"],
                           n_w_columns)
    if bool(contrasts) != bool(endpoints):
        raise ConfigError("keys 'ablation.primary_contrasts' and 'ablation.primary_endpoints' "
                          "expect both to be set (each contrast is tested at each endpoint) "
                          "or both ''")
    return AblationSettings(
        single_sigma=single if single is not None else statistics.median(sigmas),
        pretrained=cfg["ablation.pretrained"], finetune_lr=cfg["ablation.finetune_lr"],
        validation=cfg["ablation.validation"],
        n_w_columns=n_w_columns, reference=cfg["ablation.reference"],
        hwa_chip_lr=cfg["ablation.hwa_chip_lr"], msnat_hwa_lr=cfg["ablation.msnat_hwa_lr"],
        tuning=cfg["ablation.tuning"], primary_contrasts=contrasts,
        primary_endpoints=endpoints)


def _contrasts(text: str) -> tuple[tuple[str, str], ...]:
    """'a-b,c-d' as ((a, b), (c, d)); ConfigError naming the key for an unknown arm."""
    out = []
    for item in filter(None, (part.strip() for part in text.split(","))):
        arms = item.split("-")
        if len(arms) != 2 or any(a.strip() not in ARM_NAMES for a in arms) or \
                arms[0].strip() == arms[1].strip():
            raise ConfigError(f"key 'ablation.primary_contrasts': '{item}' is not 'arm-arm' of "
                              f"two different arms among {', '.join(ARM_NAMES)}")
        out.append((arms[0].strip(), arms[1].strip()))
    return tuple(out)


def _endpoints(text: str, drift_times: Sequence[float], n_w_columns: Sequence[float]
               ) -> tuple[tuple[str, str], ...]:
    """'<protocol> <column>, ...' as ((protocol, column), ...), each column one the report
    titles (`ablation.report`): ConfigError naming the key otherwise."""
    first, last = drift_label(drift_times[0]), drift_label(drift_times[-1])
    titles = (["clean"] + [f"PCM {drift_label(t)}" for t in drift_times]
              + [f"n_w {v:g}" for v in n_w_columns]
              + ([f"n_w {v:g} at {last}" for v in n_w_columns] if len(drift_times) > 1 else []))
    out = []
    for item in filter(None, (part.strip() for part in text.split(","))):
        protocol, _, column = item.partition(" ")
        if protocol not in PROTOCOLS or column.strip() not in titles:
            raise ConfigError(
                f"key 'ablation.primary_endpoints': '{item}' is not '<protocol> <column>' with "
                f"a protocol among {', '.join(PROTOCOLS)} and a column among "
                f"{', '.join(titles)} (n_w columns at {first})")
        out.append((protocol, column.strip()))
    return tuple(out)


def hwa_settings(cfg: Mapping[str, Any]) -> HWASettings:
    """`ablation.hwa.*`, as `hwa.train_hwa` takes them."""
    return HWASettings(
        lr=cfg["ablation.hwa.lr"], momentum=cfg["ablation.hwa.momentum"],
        batch_size=cfg["ablation.hwa.batch_size"], modifier_std=cfg["ablation.hwa.modifier_std"],
        out_noise=cfg["ablation.hwa.out_noise"],
        weight_scaling_omega=cfg["ablation.hwa.weight_scaling_omega"],
        weight_scaling_columnwise=cfg["ablation.hwa.weight_scaling_columnwise"],
        weight_decay=cfg["ablation.hwa.weight_decay"], schedule=cfg["ablation.hwa.schedule"],
        remap=cfg["ablation.hwa.remap"], clip_type=cfg["ablation.hwa.clip_type"],
        clip_sigma=cfg["ablation.hwa.clip_sigma"],
        clip=cfg["ablation.hwa.clip"], dac_bits=cfg["ablation.hwa.dac_bits"],
        adc_bits=cfg["ablation.hwa.adc_bits"], tile=cfg["ablation.hwa.tile"])
