"""The schema of every experiment key: its default, type, accepted range and meaning.

Keys are flat dotted names (the seed's public interface, e.g. ``training.use_fl``,
``recovery.noise_0.act_inject.sigma``), built section by section in the order
conf/default.yaml lists them. `config` loads and checks values against this schema;
`settings.Experiment` turns a resolved config into typed settings; `generate` writes
conf/default.yaml, pyproject's declarations and docs/configuration.md from it.
"""

from __future__ import annotations

from .schema_ablation import ablation_keys
from .schema_key import Key, converter_bits

CONF_KEY = "conf"  # the run-config key naming the conf YAML file (not a schema key)
DEFAULT_CONF = "conf/default.yaml"
UNSET = ""  # pyproject's declared value of every key: "not given on the command line"
MAX_NOISE_LEVELS = 10
DEVICES = ("PCM", "ReRAM", "ideal")
PROTOCOLS = ("standard", "realistic", "seed")
LR_SCHEDULES = ("constant", "cosine")  # training.schedule; training.scheduled_lr
DATASETS = ("digits", "mnist", "fashionmnist", "cifar10", "cifar100", "svhn", "imagefolder")
MODEL_NAMES = ("lenet", "mlp", "vgg8", "resnet18", "mobilenetv2")
MODEL_IMPORT_PATH = r"[A-Za-z_]\w*(\.[A-Za-z_]\w*)*:[A-Za-z_]\w*"  # model.name of your own
STRATEGY_NAMES = ("msnat", "fedavg", "fedprox", "fedavgm", "fedadam", "fedyogi", "fedadagrad")
# ReRamWan2022NoiseModel's measured times (s): the keys of its `coeff_dic` in aihwkit 1.1.0
# (tests/test_analog.py checks this against the installed aihwkit).
RERAM_DRIFT_TIMES = (1.0, 86400.0, 172800.0)


# Each protocol's defaults, in `_protocol_keys`' field order. `realistic` and `seed` keep
# aihwkit's `InferenceRPUConfig` defaults where they set nothing; `standard` is aihwkit's
# `StandardHWATrainingPreset` (Rasch et al., Nat. Commun. 14:5282, 2023) field for field
# (tests/test_analog.py compares them; its deviations: docs/evaluation.md).
PROTOCOL_DEFAULTS = {
    "standard": dict(weight_scaling_omega=1.0, weight_scaling_columnwise=True, dac_bits=8,
                     adc_bits=8, out_noise=0.04, tile="cpp", n_w=0.0175, w_noise_type="pcm_read",
                     ir_drop=1.0, out_bound=10.0, bound_management="none",
                     noise_management="constant", max_input_size=512, max_output_size=0,
                     input_range_images=1000),
    "realistic": dict(weight_scaling_omega=1.0, weight_scaling_columnwise=False, dac_bits=8,
                      adc_bits=8, out_noise=0.04),
    "seed": dict(weight_scaling_omega=0.0, weight_scaling_columnwise=False, dac_bits=7,
                 adc_bits=0, out_noise=0.06),
}
_AIHWKIT_DEFAULTS = dict(tile=None, n_w=None, w_noise_type="additive", ir_drop=0.0,
                         out_bound=12.0, bound_management="iterative",
                         noise_management="abs_max", max_input_size=512, max_output_size=512,
                         input_range_images=0)


def _protocol_keys(name: str, doc: str) -> dict[str, Key]:
    p, d = f"inference.protocols.{name}", _AIHWKIT_DEFAULTS | PROTOCOL_DEFAULTS[name]
    return {
        f"{p}.weight_scaling_omega": Key(d["weight_scaling_omega"], f"{doc}: weights scaled "
                                         "so max|W| maps to this conductance fraction (0 = no "
                                         "scaling)", minimum=0.0),
        f"{p}.weight_scaling_columnwise": Key(d["weight_scaling_columnwise"], f"{doc}: scale "
                                              "each output column separately"),
        f"{p}.dac_bits": converter_bits(d["dac_bits"], f"{doc}: input DAC resolution in bits "
                                        "(0 = ideal)"),
        f"{p}.adc_bits": converter_bits(d["adc_bits"], f"{doc}: output ADC resolution in bits "
                                        "(0 = ideal)"),
        f"{p}.out_noise": Key(d["out_noise"], f"{doc}: Gaussian output noise std (normalised)",
                              minimum=0.0),
        f"{p}.g_max": Key(25.0, f"{doc}: PCM max conductance in uS", minimum=0.0,
                          above_minimum=True),
        f"{p}.drift_compensation": Key(True, f"{doc}: global drift compensation (GDC)"),
        f"{p}.tile": Key(d["tile"], f"{doc}: aihwkit tile (null = inference.tile); PCM read "
                         "noise and IR drop need cpp", choices=("torch", "cpp"),
                         nullable=True, kind=str),
        f"{p}.n_w": Key(d["n_w"], f"{doc}: read noise at every MVM (forward.w_noise, of "
                        "w_noise_type; null = inference.platform.aihwkit.n_w); an n_w sweep "
                        "replaces it", minimum=0.0, nullable=True, kind=float),
        f"{p}.w_noise_type": Key(d["w_noise_type"], f"{doc}: kind of n_w (aihwkit "
                                 "WeightNoiseType): additive (ADDITIVE_CONSTANT, normalised "
                                 "units) or pcm_read (PCM_READ: 1/f read noise of each "
                                 "programmed PCM weight)", choices=("additive", "pcm_read")),
        f"{p}.ir_drop": Key(d["ir_drop"], f"{doc}: IR-drop scale along the crossbar's "
                            "columns (forward.ir_drop; 0 = none)", minimum=0.0),
        f"{p}.out_bound": Key(d["out_bound"], f"{doc}: ADC output range in full-scale "
                              "products (forward.out_bound)", minimum=0.0, above_minimum=True),
        f"{p}.bound_management": Key(d["bound_management"], f"{doc}: repeat a clipping MVM "
                                     "with a reduced input scale (forward.bound_management "
                                     "ITERATIVE) or not (NONE)",
                                     choices=("iterative", "none")),
        f"{p}.noise_management": Key(d["noise_management"], f"{doc}: input scaling before the "
                                     "DAC (forward.noise_management): abs_max (ABS_MAX: per "
                                     "input vector) or constant (CONSTANT, nm_thres 1: the "
                                     "calibrated input range alone)",
                                     choices=("abs_max", "constant")),
        f"{p}.max_input_size": Key(d["max_input_size"], f"{doc}: tile rows at most "
                                   "(mapping.max_input_size; larger layers span several tiles; "
                                   "0 = one tile)", minimum=0),
        f"{p}.max_output_size": Key(d["max_output_size"], f"{doc}: tile columns at most "
                                    "(mapping.max_output_size; 0 = no limit)", minimum=0),
        f"{p}.input_range_images": Key(d["input_range_images"], f"{doc}: training images (at "
                                       "most) the DAC input ranges are calibrated on (aihwkit "
                                       "calibrate_input_ranges, CACHE_QUANTILE 0.99995), the "
                                       "same for every model; 0 = no input ranges", minimum=0),
    }


# The schema is built section by section, in the order conf/default.yaml lists them.

def _run_keys() -> dict[str, Key]:
    return {"seed": Key(2024, "random seed for data split, partitions, init, noise draws",
                        minimum=0, maximum=2**32,
                        why="numpy's and scikit-learn's seeds are unsigned 32-bit")}


def _data_keys() -> dict[str, Key]:
    return {
        "data.name": Key("digits", "data set: digits (scikit-learn's, offline), one of "
                         "torchvision's, read from data.root, or imagefolder (your own "
                         "images: data.root/train/<class>/*, optional data.root/test/<class>/*)"
                         "; images are normalised per channel with the training split's mean "
                         "and std", choices=DATASETS),
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
        "data.test_fraction": Key(0.2, "digits, and imagefolder without a test/ folder: share "
                                  "of the images held out for the test split (the others "
                                  "have an official test split)",
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
    return {"model.name": Key("lenet", "network: a built-in one (CIFAR-style stems for 32x32 "
                              "images) or your own, 'package.module:factory' with "
                              "factory(in_channels, num_classes, image_size) -> nn.Module "
                              "(docs/experiments.md, 'Your own model and data')",
                              choices=MODEL_NAMES,
                              or_pattern=(MODEL_IMPORT_PATH, "an import path "
                                          "'package.module:factory'")),
            "model.init": Key("", "checkpoint the global model (and the HWA arm) starts from: "
                              "a run's round_NNNN.pt or any plain state_dict of the "
                              "configured model ('' = a fresh init seeded by seed)")}


def _training_keys() -> dict[str, Key]:
    return {
        "training.client_num_in_total": Key(5, "K, the number of noise levels = simulated "
                                            "clients (noise_0 .. noise_{K-1})", minimum=1),
        "training.rounds": Key(15, "communication rounds", minimum=1),
        "training.local_epochs": Key(1, "epochs each client trains per round", minimum=1),
        "training.batch_size": Key(64, "training batch size", minimum=1),
        "training.lr": Key(1e-3, "learning rate (of round 1 with training.schedule=cosine)",
                           minimum=0.0, above_minimum=True),
        "training.schedule": Key("constant", "lr over the rounds: constant, or cosine (round r "
                                 "of R trains at lr*(1+cos(pi*(r-1)/R))/2, as torch's "
                                 "CosineAnnealingLR stepped per round; aihwkit's HWA recipe)",
                                 choices=LR_SCHEDULES),
        "training.clip_sigma": Key(0.0, "after every optimiser step each Conv/Linear weight "
                                   "is clipped to +-clip_sigma * std(W) of its layer, with any "
                                   "noise model (aihwkit's LAYER_GAUSSIAN clip; HWA recipe: "
                                   "2.5; 0 = off)", minimum=0.0),
        "training.client_validation": Key(True, "after training, each client measures its "
                                          "model on the validation split under its own noise "
                                          "(curves' noisy validation line; about 40% of a "
                                          "round on the chip's forward); false skips it"),
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
        "training.sigma_levels": Key(None, "sigmas a client draws its sigma from, anew for "
                                     "every batch (uniformly, seeded); null = its own level "
                                     "sigma_k. The ablation's multi-scale one-model control "
                                     "sets the K levels with K = 1", minimum=0.0,
                                     nullable=True, kind=list),
        "training.noise_model": Key("weight", "clients train under weight (Gaussian weight "
                                    "noise, std c*sigma_k*max|W|) or analog (the chip's "
                                    "forward: that weight modifier, output noise, DAC/ADC, "
                                    "output range; training.analog.*)",
                                    choices=("weight", "analog")),
        **_analog_training_keys(),
    }


def _analog_training_keys() -> dict[str, Key]:
    a, on = "training.analog", "noise_model=analog:"
    return {
        f"{a}.out_noise": Key(0.04, f"{on} output noise std, in aihwkit's forward.out_noise "
                              "units (default: the realistic protocol's)", minimum=0.0),
        f"{a}.out_noise_scales": Key(False, f"{on} client k's output noise is out_noise * "
                                     "sigma_k / mean(sigma) (false: out_noise for all)"),
        f"{a}.dac_bits": converter_bits(8, f"{on} input DAC bits (default: the realistic "
                                        "protocol's; 0 = ideal)"),
        f"{a}.adc_bits": converter_bits(8, f"{on} output ADC bits (default: the realistic "
                                        "protocol's; 0 = ideal)"),
        f"{a}.out_bound": Key(12.0, f"{on} output range in full-scale products (aihwkit's "
                              "forward.out_bound, as the evaluation tiles; 0 = none)",
                              minimum=0.0),
        f"{a}.weight_scaling_columnwise": Key(False, f"{on} one mapping scale per output row "
                                              "(default: the realistic protocol's)"),
        f"{a}.bound_management": Key(True, f"{on} a sample whose outputs clip is repeated with "
                                     "its input scale halved (aihwkit's ITERATIVE default)"),
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
                              "tiles.CppMatchingTorchMVM: the C++ tile's per-vector bound "
                              "management and n_w, every draw seeded, faster on large "
                              "layers) or cpp (InferenceRPUConfig, aihwkit's C++ tile)",
                              choices=("torch", "cpp")),
        "inference.protocol": Key("realistic", "evaluation protocol (settings below)",
                                  choices=PROTOCOLS),
        **_protocol_keys("standard", "standard (aihwkit's StandardHWATrainingPreset)"),
        **_protocol_keys("realistic", "realistic (aihwkit HWA setting)"),
        **_protocol_keys("seed", "seed (earlier figure's harsh setting)"),
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
        "inference.clip_sigma": Key(0.0, "clip each Conv/Linear weight once to +-clip_sigma "
                                    "* std(W) of its layer before it is programmed (aihwkit's "
                                    "LAYER_GAUSSIAN, applied post hoc to the trained model; "
                                    "ServerApp, infer, export, ablate; 0 = off)", minimum=0.0),
        "inference.every": Key(1, "evaluate every N rounds (the last round always)", minimum=1),
        "inference.batch_size": Key(128, "evaluation batch size (images per forward; with "
                                    "inference.one_pass, images x weight states); 128 was "
                                    "the fastest on a CPU for LeNet and ResNet-18 (measured, "
                                    "docs/evaluation.md); raise it on a GPU", minimum=1),
        "inference.torch_device": Key("auto", "where the analog evaluation runs (ServerApp, "
                                      "infer, ablate): auto (the current CUDA device when "
                                      "torch sees one and inference.tile is torch, else the "
                                      "CPU), cpu, cuda or cuda:N"),
        "inference.one_pass": Key(True, "torch tile: measure all repeats x drift times "
                                  "weight states in one pass over the data (same simulation; "
                                  "per-read noise drawn in another order); false: one pass "
                                  "per state"),
    }


def _federation_keys() -> dict[str, Key]:
    return {
        "federation.retries": Key(
            2, "a noise level whose reply is missing or failed is sent again (to another "
            "connected node where there is one) up to this many times before the round "
            "fails (0 = the first failure fails the round)", minimum=0),
        "federation.reply_timeout": Key(
            0.0, "seconds to wait for one try's reply before sending it again (0 = no limit "
            "of ours: Flower's strategies wait up to 3600 s, and Flower reports a lost "
            "SuperNode after 2 missed 30 s heartbeats)",
            minimum=0.0),
        "federation.inject_failure": Key(
            "off", "fault injection for trying the retry policy: 'R:K' makes noise level K's "
            "ClientApp fail on its first try in round R; 'off' = never"),
    }


def _output_keys() -> dict[str, Key]:
    return {
        "output.dir": Key("runs", "parent folder of run folders (relative paths: to the "
                          "directory the local SuperLink was started in)"),
        "output.name": Key("", "run folder name prefix (default: the conf file's name)"),
        "output.resume": Key("", "path of a run folder to continue from its last round"),
        "output.keep_checkpoints": Key(0, "keep only the newest N rounds' checkpoints (0 = all)",
                                       minimum=0),
        "output.tensorboard": Key(False, "also write each round's accuracies and client "
                                  "metrics, and the resolved config, to <run>/tensorboard/ "
                                  "for TensorBoard (the optional extra: pip install -e "
                                  "\".[tensorboard]\")"),
    }


def _build_schema() -> dict[str, Key]:
    return (_run_keys() | _data_keys() | _model_keys() | _training_keys() | _strategy_keys()
            | _recovery_keys() | _inference_keys() | ablation_keys() | _federation_keys()
            | _output_keys())


SCHEMA: dict[str, Key] = _build_schema()
ALIASES = {"inference.platform.aihwkit": "inference.platform.aihwkit.use",
           "training.analog.clip_sigma": "training.clip_sigma",  # before 0.5
           "recovery.qat": "recovery.qat.use"}
