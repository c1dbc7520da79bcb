"""Valid values of the loss, sampler, optimizer and schedule options, each stated once.

The config schema (``reid_dhm.config``) and the library's constructors (``DHMLoss``,
``BranchSampler``, ``build_optimizer``, ``build_scheduler``) both check against these
objects, so a range or a choice changes in one place. This module imports no torch:
reading a config must not load the training stack.
"""

from __future__ import annotations

from collections.abc import Sequence

from .branches import MAIN
from .checks import Range

# --------------------------------------------------------------------------- loss
MODES = ("baseline", "dsl", "dhm")
DIRECTIONS = ("bidirectional", "top-down", "bottom-up")
# Which branches may teach: every one (the paper), every one but the shallowest active
# branch (the least informed teacher never teaches), or the main branch alone.
TEACHERS = ("all", "deeper", MAIN)
LABEL_SMOOTH = Range(0, 1, high_open=True)
TEMPERATURE = Range(0, low_open=True)
KL_WEIGHT = Range(0)
TRIPLET_WEIGHT = Range(0)
TRIPLET_MARGIN = Range(0)
# loss.ce_weights: each branch's cross-entropy weight (missing branches weigh 1).
CE_WEIGHT = Range(0)
KL_WARMUP_EPOCHS = Range(0)
# How the KL weight moves during training: the paper's constant mu; a linear ramp over
# ``kl_warmup_epochs``; or, per teacher, mu times a running mean of that teacher's
# training accuracy (a teacher is trusted as far as it is right).
KL_SCHEDULES = ("constant", "warmup", "adaptive")
# The schedule a config without ``kl_schedule`` gets (``kl_warmup_epochs > 0`` implies
# ``warmup``; see ``implied_kl_schedule``).
DEFAULT_KL_SCHEDULE = "constant"
# Decay per iteration of the adaptive schedule's running accuracy.
KL_ADAPTIVE_DECAY = Range(0, 1, high_open=True)
# Per sample: every sample mimics (the paper); only where the teacher's top class is
# the label; or weighted by the teacher's probability of the label.
KL_GATES = ("none", "correct", "confidence")


def implied_kl_schedule(
    schedule: str | None,
    warmup_epochs: int,
    names: tuple[str, str] = ("kl_schedule", "kl_warmup_epochs"),
) -> str:
    """The KL schedule a loss runs: ``schedule``, or when it is None the one implied by
    ``warmup_epochs`` (``warmup`` if > 0, else ``DEFAULT_KL_SCHEDULE``), so that configs
    written before ``kl_schedule`` existed read as they ran.

    Raises:
        ValueError: an unknown schedule, ``warmup`` without warm-up epochs, or warm-up
            epochs with another schedule (they would be ignored); ``names`` are the two
            option names the message uses.
    """
    key, epochs_key = names
    if schedule is None:
        return "warmup" if warmup_epochs > 0 else DEFAULT_KL_SCHEDULE
    if schedule not in KL_SCHEDULES:
        raise ValueError(f"{key} must be one of {list(KL_SCHEDULES)}, got {schedule!r}")
    if schedule == "warmup" and warmup_epochs == 0:
        raise ValueError(f"{key}='warmup' needs {epochs_key} >= 1 (the ramp's length), got 0")
    if schedule != "warmup" and warmup_epochs > 0:
        raise ValueError(
            f"{epochs_key}={warmup_epochs} is only read by {key}='warmup', but {key} is "
            f"{schedule!r}: set {key}=warmup or {epochs_key}=0"
        )
    return schedule


# ----------------------------------------------------------------- branch sampling
POLICIES = ("fixed", "bernoulli")
BRANCH_P = Range(0, 1)

# ---------------------------------------------------------------------- optimizer
OPTIMIZERS = ("amsgrad", "adam", "sgd")
LR = Range(0, low_open=True)
WEIGHT_DECAY = Range(0)
MOMENTUM = Range(0, 1, high_open=True)
BETA = Range(0, 1, high_open=True)

# ---------------------------------------------------------------------- scheduler
SCHEDULERS = ("multi_step", "step", "cosine", "constant")
GAMMA = Range(0, low_open=True)
STEP_SIZE = Range(1)
MILESTONE = Range(1)
WARMUP_EPOCHS = Range(0)
# The lr factor of the first warm-up epoch; null: 1 / (warmup_epochs + 1).
WARMUP_START = Range(0, 1, low_open=True, nullable=True)


def check_schedule(
    name: str = "multi_step",
    milestones: Sequence[int] = (20, 40),
    gamma: float = 0.1,
    step_size: int = 30,
    max_epoch: int = 60,
    warmup_epochs: int = 0,
    warmup_start: float | None = None,
) -> None:
    """Validate ``build_scheduler``'s arguments; errors name the ``scheduler.*`` key.

    The config resolver runs it on every training config, and ``build_scheduler``
    runs it again for callers of the library, so both refuse exactly the same values.
    Only the keys the chosen schedule reads are checked (``step_size`` for ``step``...).
    """
    if name not in SCHEDULERS:
        raise ValueError(
            f"unknown scheduler.name {name!r}; valid schedulers are {list(SCHEDULERS)}"
        )
    if name == "step":
        STEP_SIZE.check(step_size, "scheduler.step_size")
    if name in ("multi_step", "step") and gamma not in GAMMA:
        raise ValueError(f"scheduler.gamma must be > 0 (the lr is multiplied by it), got {gamma!r}")
    if name == "multi_step" and any(int(m) != m or m not in MILESTONE for m in milestones):
        raise ValueError(f"scheduler.milestones must be epochs >= 1, got {list(milestones)!r}")
    WARMUP_EPOCHS.check(warmup_epochs, "scheduler.warmup_epochs")
    WARMUP_START.check(warmup_start, "scheduler.warmup_start")
    if warmup_epochs and warmup_epochs >= max_epoch >= 1:
        raise ValueError(
            f"scheduler.warmup_epochs={warmup_epochs} must be < train.max_epoch={max_epoch}: "
            "the warm-up would end after training and never reach the peak lr"
        )


def check_identity_batch(batch_size: int, num_instances: int, processes: int = 1) -> None:
    """A P x K batch: ``batch_size`` must be P identities times K=``num_instances`` images.

    With ``processes`` > 1 (``batch_size`` is then the global batch, split evenly), each
    process's share must hold whole identity groups too.
    """
    if batch_size % num_instances:
        near = max(num_instances, batch_size // num_instances * num_instances)
        raise ValueError(
            f"'data.batch_size' {batch_size} is not P identities x K={num_instances} images "
            f"(data.num_instances): make it a multiple of num_instances {num_instances}, "
            f"e.g. {near}"
        )
    per_process = batch_size // processes
    if per_process % num_instances:
        raise ValueError(
            f"the per-process batch {per_process} must be a multiple of num_instances "
            f"{num_instances} so identity groups are not split between processes"
        )


# ----------------------------------------------------------------------- test
# test.ranks default: the Rank-k values reported (CMC at k).
RANKS = (1, 5, 10, 20)
# The rank a training run always reports: its headline number (TensorBoard
# ``test/rank1``, ``results.json``, a study's statistics) is Rank-1.
HEADLINE_RANK = 1


def check_run_ranks(ranks: Sequence[int], name: str = "test.ranks") -> None:
    """A run's ranks must include :data:`HEADLINE_RANK` (a ``ValueError`` otherwise)."""
    if HEADLINE_RANK not in ranks:
        raise ValueError(
            f"{name} must include {HEADLINE_RANK} (Rank-{HEADLINE_RANK} is every run's headline "
            f"metric: test/rank{HEADLINE_RANK}, results.json, studies), got {list(ranks)}: "
            f"add it, e.g. {sorted({HEADLINE_RANK, *ranks})}"
        )


# ----------------------------------------------------------------------- data
# data.sampler: torchreid's RandomSampler, or RandomIdentitySampler (P x K batches).
SAMPLERS = ("random", "identity")
# data.transforms: the names torchreid's build_transforms knows (it silently ignores
# any other name, so a typo would train without the augmentation it meant).
TRANSFORMS = ("random_flip", "random_crop", "random_patch", "color_jitter", "random_erase")
# data.max_image_pixels: an image with more pixels is a bad image (listed at load,
# skippable). The default is PIL's own decompression-bomb limit, 1 GiB / 4 / 3: a
# 40 KB PNG can claim 20000x10000 pixels and take gigabytes to decode.
DEFAULT_MAX_IMAGE_PIXELS = 1024 * 1024 * 1024 // 4 // 3
MAX_IMAGE_PIXELS = Range(1)
