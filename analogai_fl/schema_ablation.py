"""The schema's `ablation.*` section: `analogai-fl ablate`'s keys and the HWA baseline's
(`ablation.hwa.*`, aihwkit's hardware-aware training as `analogai_fl.hwa` runs it)."""

from __future__ import annotations

from .schema_key import Key, converter_bits

# the ablation's arms, in training order (`ablation.arms` defines them)
ARM_NAMES = ("vanilla", "vanilla_clipped", "noise_injection", "noise_injection_analog",
             "noise_injection_compute", "multiscale", "msnat_no_fi", "msnat_no_fl", "msnat",
             "msnat_analog", "hwa_chip", "msnat_hwa", "hwa", "hwa_compute")
# the protocol whose validation accuracy at the drift times chooses recipes (ablation.tuning)
CRITERION_PROTOCOL = "standard"


def ablation_keys() -> dict[str, Key]:
    h = "ablation.hwa"
    return {
        "ablation.single_sigma": Key(None, "sigma of the single-noise-injection arm (null = "
                                     "the median of the MSNAT levels)", minimum=0.0,
                                     nullable=True, kind=float),
        "ablation.validation": Key(True, "also measure every arm's clean and analog accuracy "
                                   "(each protocol, each drift time) on the validation split, "
                                   "the split that chooses recipes; test stays for reporting"),
        "ablation.pretrained": Key(False, "every arm but vanilla fine-tunes the vanilla arm's "
                                   "final model of its seed (pre-training counted in its "
                                   "sample passes)"),
        "ablation.finetune_lr": Key(None, "with ablation.pretrained: training.lr of every "
                                    "arm that fine-tunes the vanilla model through flwr run "
                                    "(all but vanilla and HWA, whose lr is ablation.hwa.lr); "
                                    "null = training.lr, the from-scratch rate",
                                    minimum=0.0, above_minimum=True, nullable=True, kind=float),
        "ablation.hwa_chip_lr": Key(None, "lr of arm hwa_chip (HWA's recipe on the chip's "
                                    "forward, one model); null = ablation.hwa.lr",
                                    minimum=0.0, above_minimum=True, nullable=True, kind=float),
        "ablation.msnat_hwa_lr": Key(None, "lr of arm msnat_hwa (MSNAT on HWA's recipe); null "
                                     "= ablation.hwa.lr", minimum=0.0, above_minimum=True,
                                     nullable=True, kind=float),
        "ablation.tuning": Key(False, "a tuning run: measure only what chooses recipes, the "
                               f"validation split under '{CRITERION_PROTOCOL}' at each drift "
                               "time (no test split, no n_w columns); the report gives each "
                               "arm's criterion, the mean over the drift times"),
        "ablation.primary_contrasts": Key("", "pre-registered primary contrasts, 'arm-arm' "
                                          "comma-separated (e.g. 'msnat_hwa-hwa_chip,"
                                          "msnat_hwa-hwa'); '' = none", kind=str),
        "ablation.primary_endpoints": Key("", "pre-registered primary endpoints, '<protocol> "
                                          "<column>' comma-separated, columns as the tables "
                                          "title them (e.g. 'standard PCM 1y,realistic n_w "
                                          "0.1'); each contrast is tested at each endpoint, "
                                          "Holm-corrected over all of them", kind=str),
        "ablation.n_w_columns": Key([0.1, 0.2], "n_w values shown as columns of the ablation "
                                    "table (each must be in inference.n_w_sweep)", minimum=0.0),
        "ablation.reference": Key("hwa", "the arm every other arm is compared with in the "
                                  "report: paired per-seed differences with 95% t-intervals "
                                  "(the strongest baseline: aihwkit's HWA)", choices=ARM_NAMES),
        f"{h}.lr": Key(0.05, "HWA baseline: AnalogSGD lr", minimum=0.0, above_minimum=True),
        f"{h}.momentum": Key(0.9, "HWA baseline: AnalogSGD momentum", minimum=0.0),
        f"{h}.weight_decay": Key(5e-4, "HWA baseline: AnalogSGD weight decay (L2; aihwkit's "
                                 "HWA tutorial and Rasch et al. 2023: 5e-4)", minimum=0.0),
        f"{h}.schedule": Key("cosine", "HWA baseline: lr schedule over its epochs: cosine "
                             "(torch's CosineAnnealingLR, stepped per epoch, to 0 at the "
                             "last; aihwkit's HWA tutorial) or constant",
                             choices=("cosine", "constant")),
        f"{h}.remap": Key("layerwise", "HWA baseline: weight remapping after every step "
                          "(aihwkit WeightRemapType): layerwise (LAYERWISE_SYMMETRIC: the "
                          "mapping scale follows max|W|, so a clip does not cap the weights at "
                          "their initial size), channelwise (CHANNELWISE_SYMMETRIC) or none",
                          choices=("layerwise", "channelwise", "none")),
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
        f"{h}.clip_type": Key("gaussian", "HWA baseline: weight clipping after every step "
                              "(aihwkit WeightClipType): gaussian (LAYER_GAUSSIAN: at "
                              "clip_sigma stds of the layer's weights), fixed (FIXED_VALUE: at "
                              "+-clip, in the tile's mapped units) or none",
                              choices=("gaussian", "fixed", "none")),
        f"{h}.clip_sigma": Key(2.5, "HWA baseline: clip_type=gaussian: the clip in stds of "
                               "the layer's weights (Rasch et al. 2023: 2.0-2.5)", minimum=0.0,
                               above_minimum=True),
        f"{h}.clip": Key(1.0, "HWA baseline: clip_type=fixed: tile weights clipped to +-clip "
                         "(with weight_scaling_omega 1 and no remap this caps |W| at its size "
                         "when converted)", minimum=0.0, above_minimum=True),
        f"{h}.dac_bits": converter_bits(8, "HWA baseline: input DAC bits while training"),
        f"{h}.adc_bits": converter_bits(8, "HWA baseline: output ADC bits while training"),
        f"{h}.tile": Key("cpp", "HWA baseline: tile to train on: cpp (aihwkit's HWA examples; "
                         "CPU only, noise not seedable) or torch (seeded, CPU or GPU)",
                         choices=("cpp", "torch")),
    }
