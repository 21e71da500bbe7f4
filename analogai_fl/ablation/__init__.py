"""`analogai-fl ablate`: the ablation behind the seed's headline figure, as a command. Vanilla
training, single-sigma noise injection, MSNAT without fusion injection or feedback loops,
full MSNAT, MSNAT and one model on aihwkit HWA's recipe, and aihwkit's hardware-aware
training (HWA) as the industry baseline.

Every MSNAT-family arm is a real `flwr run` of this project (the same simulation a user runs),
with the same data, seed and round/epoch budget; HWA trains in-process with aihwkit. Every
resulting model is then evaluated by the same code with the same analog configuration:
clean accuracy, PCM accuracy at each drift time and an n_w sweep, under every evaluation
protocol.

The modules, in the order a run uses them:

    arms      what each arm is, its run config, and the plan checked before any work
    train     one (arm, seed) trained: flwr run, aihwkit HWA, or the vanilla model clipped
    evaluate  the one evaluation every arm gets (or, tuning, only the criterion)
    folder    the --out folder: settings, rows, models, run folders; continuing and merging
    report    results.md / .csv, paired differences, plots; the tuning criterion
    primary   the pre-registered primary tests with Holm's correction
    run       run_ablation: all of it, resumable
"""

from ..schema_ablation import ARM_NAMES
from .arms import Arm, ArmRun, arm_run_config, arms, plan, recipe_overrides, same_run_as_msnat
from .evaluate import evaluate
from .run import run_ablation
from .train import Trained, clip_vanilla, train_flwr_arm, train_hwa_arm

__all__ = ["ARM_NAMES", "Arm", "ArmRun", "Trained", "arm_run_config", "arms", "clip_vanilla",
           "evaluate", "plan", "recipe_overrides", "run_ablation", "same_run_as_msnat",
           "train_flwr_arm", "train_hwa_arm"]
