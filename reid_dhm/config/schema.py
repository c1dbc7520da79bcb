"""The typed schema of a resolved config: one pydantic model per section.

Each key is declared once, with its type, default, range or choices and (for keys only
one task reads) its task. Ranges and choices are the library's own objects
(``reid_dhm.utils.options`` and the owners' constants), so the schema and the
constructors refuse exactly the same values. ``DEFAULTS`` is this schema's defaults.
"""

from __future__ import annotations

import importlib
import re
from collections.abc import Callable, Mapping, Sequence
from typing import Annotated, Any

from pydantic import (
    AllowInfNan,
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    Strict,
    StrictBool,
    StrictStr,
)

from ..data.preprocessing import IMAGENET_MEAN, IMAGENET_STD
from ..utils import options as opt
from ..utils.checks import Range

# A number as people write it: 3e-4, 1E-3, 1e+6, .5, 10. (PyYAML 1.1 reads the
# exponent forms without a dot, such as 3e-4, as strings.)
_NUMBER = re.compile(r"^[+-]?(\d+\.?\d*|\.\d+)([eE][+-]?\d+)?$")


def _number(value: Any) -> Any:
    """A number string as a float; anything else unchanged (the type check decides)."""
    if isinstance(value, str) and _NUMBER.match(value.strip()):
        return float(value)
    return value


def _as_float(value: Any) -> Any:
    value = _number(value)
    return float(value) if isinstance(value, int) and not isinstance(value, bool) else value


def _as_int(value: Any) -> Any:
    # An integral float (1e3, 10.0) is the count it spells; 2.5 stays a float and fails.
    value = _number(value)
    return int(value) if isinstance(value, float) and value.is_integer() else value


# Finite: no key means anything by inf or nan (YAML's .inf / .nan), and an infinite lr
# would only show as a NaN loss once training has begun.
Float = Annotated[float, BeforeValidator(_as_float), Strict(), AllowInfNan(False)]
Int = Annotated[int, BeforeValidator(_as_int), Strict()]
Bool = StrictBool
Str = StrictStr


class _Check:
    """``Annotated`` metadata: an after-validator whose ValueError reads ``must be ...``."""

    def __init__(self, ok: Callable[[Any], bool], what: str | Callable[[], str]):
        self.ok, self._what = ok, what

    @property
    def what(self) -> str:
        return self._what() if callable(self._what) else self._what

    def __get_pydantic_core_schema__(self, source, handler):
        from pydantic_core import core_schema

        def validate(value):
            if not self.ok(value):
                # The resolver adds the dotted key, the value and the source.
                raise ValueError(f"must be {self.what}")
            return value

        return core_schema.no_info_after_validator_function(validate, handler(source))


def one_of(valid: Sequence | Callable[[], Sequence]) -> _Check:
    """Choices, or a function returning them when the owner imports torch (read lazily)."""
    values = valid if callable(valid) else (lambda: valid)
    return _Check(lambda v: v in values(), lambda: f"one of {list(values())}")


def _owned(module: str, name: str) -> Callable[[], Sequence]:
    """The constant ``name`` of ``reid_dhm.<module>``, imported at validation time."""
    return lambda: getattr(importlib.import_module(f"reid_dhm.{module}"), name)


def _numbers(count: int, rng: Range | None = None) -> _Check:
    words = {2: "two", 3: "three"}
    what = f"{words.get(count, count)} numbers" + (f" {rng.describe()}" if rng else "")
    return _Check(lambda v: len(v) == count and (rng is None or all(x in rng for x in v)), what)


def _probability_or_mapping(value: Any) -> bool:
    values = value.values() if isinstance(value, Mapping) else [value]
    return all(v in opt.BRANCH_P for v in values)


class TaskOnly:
    """``Annotated`` marker of a key only ``task`` reads (pydantic ignores it)."""

    def __init__(self, task: str):
        self.task = task


REID, CLASSIFICATION = TaskOnly("reid"), TaskOnly("classification")
NONE_OR_MORE, ONE_OR_MORE = Range(0), Range(1)


class Section(BaseModel):
    """A closed section: an unknown key is an error."""

    model_config = ConfigDict(extra="forbid", validate_assignment=False)


class ModelSection(Section):
    name: Str = "dhm_resnet50"
    branches: Any = None  # None: the model's default (aux1 + aux2)
    pretrained: Any = True  # True: torchvision weights from the torch hub cache; or a path
    # paper: the paper's branch recipes; mirror: each aux branch a fresh copy of the
    # main path's stages after its fork (ResNets, MobileNetV2, CIFAR ResNets)
    branch_style: Annotated[Str, one_of(_owned("models.dhm", "BRANCH_STYLES"))] = "paper"
    # none | bnneck (BatchNorm on each branch's embedding, BoT)
    neck: Annotated[Str, one_of(_owned("models.dhm", "NECKS"))] = "none"
    last_stride: Annotated[Int, one_of((1, 2))] = 2  # ResNets: 1 keeps layer4 at /16 (BoT)
    # timm/<name> models: fork points, 0-based feature_info indices (plain ViTs: block
    # counts); null: the levels of reduction 8 and 16 (ViTs: blocks 2d/3 and 5d/6)
    forks: list[Int] | None = None
    kwargs: dict[str, Any] = Field(default_factory=dict)  # checked by the model builder


class DataSection(Section):
    dataset: Str = "market1501"
    root: Any = "reid-data"
    height: Annotated[Int, ONE_OR_MORE] = 256
    width: Annotated[Int, ONE_OR_MORE] = 128
    transforms: list[Annotated[Str, one_of(opt.TRANSFORMS)]] = ["random_flip", "random_crop"]
    norm_mean: Annotated[list[Float], _numbers(3), REID] = list(IMAGENET_MEAN)
    norm_std: Annotated[list[Float], _numbers(3, Range(0, low_open=True)), REID] = list(
        IMAGENET_STD
    )
    batch_size: Annotated[Int, ONE_OR_MORE] = 32
    test_batch_size: Annotated[Int, ONE_OR_MORE] = 100
    workers: Annotated[Int, NONE_OR_MORE] = 4
    # where training augmentation runs: pil (torchreid's transforms in the workers) |
    # tensor (workers decode to uint8, the same augmentation batched on the device) |
    # auto (tensor on CUDA, pil elsewhere)
    augment: Annotated[Str, one_of(_owned("data.device_augment", "AUGMENT_MODES")), REID] = "auto"
    sampler: Annotated[Str, one_of(opt.SAMPLERS), REID] = "random"
    num_instances: Annotated[Int, ONE_OR_MORE, REID] = 4
    combineall: Annotated[Bool, REID] = False
    # leave unreadable / truncated images out, with a warning
    skip_bad_images: Annotated[Bool, REID] = False
    # images with more pixels are bad images (listed at load; default: PIL's limit)
    max_image_pixels: Annotated[Int, opt.MAX_IMAGE_PIXELS, REID] = opt.DEFAULT_MAX_IMAGE_PIXELS
    # use only N training / test images, evenly spaced (0 = all)
    limit: Annotated[Int, NONE_OR_MORE, CLASSIFICATION] = 0
    test_limit: Annotated[Int, NONE_OR_MORE, CLASSIFICATION] = 0


class LossSection(Section):
    mode: Annotated[Str, one_of(opt.MODES)] = "dhm"
    direction: Annotated[Str, one_of(opt.DIRECTIONS)] = "bidirectional"
    label_smooth: Annotated[Float, opt.LABEL_SMOOTH] = 0.1
    temperature: Annotated[Float, opt.TEMPERATURE] = 1.0
    kl_weight: Annotated[Float, opt.KL_WEIGHT] = 1.0
    # constant (the paper) | warmup (linear ramp over kl_warmup_epochs) | adaptive (each
    # teacher's terms weigh kl_weight x its running training accuracy); null: warmup when
    # kl_warmup_epochs > 0, else the default (filled in by resolve_config)
    kl_schedule: Annotated[Str | None, one_of((*opt.KL_SCHEDULES, None))] = None
    # warmup: the KL weight ramps linearly from 0 over the first E epochs
    kl_warmup_epochs: Annotated[Int, opt.KL_WARMUP_EPOCHS] = 0
    # adaptive: decay per iteration of the teachers' running accuracies
    kl_adaptive_decay: Annotated[Float, opt.KL_ADAPTIVE_DECAY] = 0.99
    # none (the paper) | correct (only samples the teacher gets right mimic) |
    # confidence (each sample weighs the teacher's probability of the label)
    kl_gate: Annotated[Str, one_of(opt.KL_GATES)] = "none"
    # all | deeper (all but the shallowest branch) | main
    kl_teachers: Annotated[Str, one_of(opt.TEACHERS)] = "all"
    # batch-hard triplet on every branch's embedding (0 = off)
    triplet_weight: Annotated[Float, opt.TRIPLET_WEIGHT, REID] = 0.0
    triplet_margin: Annotated[Float, opt.TRIPLET_MARGIN, REID] = 0.3
    triplet_soft: Annotated[Bool, REID] = False
    ce_weights: Any = None


class BranchSamplingSection(Section):
    policy: Annotated[Str, one_of(opt.POLICIES)] = "fixed"
    p: Annotated[
        Float | dict[str, Float],
        _Check(_probability_or_mapping, f"{opt.BRANCH_P.describe()} (or a mapping of those)"),
    ] = 0.5
    seed: Int = 0


class OptimSection(Section):
    name: Annotated[Str, one_of(opt.OPTIMIZERS)] = "amsgrad"
    lr: Annotated[Float, opt.LR] = 0.0003
    weight_decay: Annotated[Float, opt.WEIGHT_DECAY] = 0.0005
    betas: Annotated[list[Float], _numbers(2, opt.BETA)] = [0.9, 0.999]
    momentum: Annotated[Float, opt.MOMENTUM] = 0.9
    nesterov: Bool = False


class SchedulerSection(Section):
    # gamma, step_size and milestones are checked by check_schedule: which of them
    # matters depends on the name.
    name: Annotated[Str, one_of(opt.SCHEDULERS)] = "multi_step"
    milestones: list[Int] = [20, 40]
    gamma: Float = 0.1
    step_size: Int = 30
    warmup_epochs: Annotated[Int, opt.WARMUP_EPOCHS] = 0
    # lr factor of the first warm-up epoch, rising linearly to 1 (BoT: 0.01); null:
    # 1 / (warmup_epochs + 1)
    warmup_start: Annotated[Float | None, opt.WARMUP_START] = None


class TrainSection(Section):
    max_epoch: Int = 60  # >= 1 when training: checked with the run's mode
    fixbase_epoch: Annotated[Int, NONE_OR_MORE] = 10
    seed: Int = 1
    print_freq: Int = 20
    eval_freq: Int = -1
    device: Str = "auto"
    # auto: bf16 on a CUDA device that supports it, none elsewhere
    amp: Annotated[Str, one_of(_owned("engines.amp", "AMP_MODES"))] = "auto"
    # torch.compile the model: none | default | reduce-overhead (CUDA graphs)
    compile: Annotated[Str, one_of(_owned("engines.accel", "COMPILE_MODES"))] = "none"
    # classification under torchrun on CUDA: SyncBatchNorm over all GPUs
    sync_bn: Annotated[Bool, CLASSIFICATION] = False
    # every N iterations: cosine of the branches' gradients on the shared stem (0 = off)
    grad_monitor_every: Annotated[Int, NONE_OR_MORE] = 0
    # a NaN / inf loss: stop at once, or skip the batch (stop after max_skips in a row)
    nonfinite: Annotated[Str, one_of(_owned("engines.guards", "NONFINITE_POLICIES"))] = "stop"
    nonfinite_max_skips: Annotated[Int, ONE_OR_MORE] = 10
    # torch.use_deterministic_algorithms(True): bit-exact reruns and resumes on CPU
    deterministic: Bool = False


class TestSection(Section):
    __test__ = False  # not a pytest class

    metric: Annotated[Str, one_of(_owned("retrieval", "METRICS")), REID] = "euclidean"
    normalize_feature: Annotated[Bool, REID] = False
    rerank: Annotated[Bool, REID] = False
    ranks: Annotated[
        list[Int],
        _Check(lambda v: bool(v) and all(r >= 1 for r in v), "a non-empty list of integers >= 1"),
        REID,
    ] = list(opt.RANKS)
    per_branch: Bool = False
    vis_queries: Annotated[Int, NONE_OR_MORE, REID] = 6
    vis_topk: Annotated[Int, ONE_OR_MORE, REID] = 8
    report: Annotated[Bool, REID] = False  # write the HTML evaluation report into <out>/report
    # with model.neck=bnneck: pre_bn | post_bn (BoT) is evaluated
    feature: Annotated[Str, one_of(_owned("models.dhm", "EVAL_FEATURES")), REID] = "pre_bn"


def _tasks() -> Sequence[str]:
    try:
        from ..data.registry import TASKS
    except ImportError:  # before the data-set registry exists
        return ("reid", "classification")
    return TASKS


class Config(BaseModel):
    """A whole resolved config; ``Config().model_dump()`` is the built-in defaults."""

    model_config = ConfigDict(extra="forbid")

    task: Annotated[Str, one_of(_tasks)] = "reid"
    output_dir: Any = None
    model: ModelSection = Field(default_factory=ModelSection)
    data: DataSection = Field(default_factory=DataSection)
    loss: LossSection = Field(default_factory=LossSection)
    branch_sampling: BranchSamplingSection = Field(default_factory=BranchSamplingSection)
    optim: OptimSection = Field(default_factory=OptimSection)
    scheduler: SchedulerSection = Field(default_factory=SchedulerSection)
    train: TrainSection = Field(default_factory=TrainSection)
    test: TestSection = Field(default_factory=TestSection)


DEFAULTS: dict[str, Any] = Config().model_dump()


def section_of(model: type[BaseModel], key: str) -> type[BaseModel] | None:
    """The schema class of sub-section ``key`` of ``model``, or None for a leaf key."""
    annotation = model.model_fields[key].annotation
    is_section = isinstance(annotation, type) and issubclass(annotation, BaseModel)
    return annotation if is_section else None


def task_only_keys() -> dict[str, tuple[str, ...]]:
    """``{task: dotted keys only that task reads}``, from the schema's TaskOnly markers."""
    found: dict[str, list[str]] = {}
    for section in Config.model_fields:
        sub = section_of(Config, section)
        for key, info in (sub.model_fields if sub else {}).items():
            for mark in info.metadata:
                if isinstance(mark, TaskOnly):
                    found.setdefault(mark.task, []).append(f"{section}.{key}")
    return {task: tuple(keys) for task, keys in found.items()}
