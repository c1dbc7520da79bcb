"""Study files: settings x variants x seeds, each trial a resolved training config.

A study file (``configs/studies/*.yaml``)::

    name: dhm-screen
    description: |            # markdown, printed above the tables
      Why this study exists ...
    conclusion: |             # optional markdown, printed after the rule's decision
      ## What the numbers say ...
    seeds: [1, 2, 3]
    reference: [dsl, dhm]     # every variant is compared with each of these
    settings:
      synthreid-12:
        dataset: synthreid     # --dataset of every trial in this setting
        config: null           # optional recipe file, relative to the study file
        overrides: [train.grad_monitor_every=10]
        vars: {quarter: 3}     # fill "{quarter}" in the variants' overrides
        variants: null         # null: every variant; or the names this setting runs
    variants:
      baseline: [loss.mode=baseline]
      dhm-warmup: ["loss.kl_warmup_epochs={quarter}"]
    rule: {candidate: dhm-adaptive, against: [dsl, dhm]}   # optional, see stats.decide
    reuse: [../../docs/studies/dhm_screen/study.json]     # optional, see below

``reuse`` names other studies' ``study.json`` files (relative to the study file): a
trial of this study whose key (setting/variant/seed) has an ``ok`` row there with the
same run config (``Trial.same_run``) is taken from it instead of trained again, so a
confirmation study starts from the seeds its screen already ran.

A trial's config is ``resolve_config(dataset, config, overrides = setting's + variant's
+ [train.seed=SEED])``. Every trial is resolved when the file is read, so a bad key in
any variant is a one-line error naming the study file, setting and variant before
anything trains.
"""

from __future__ import annotations

import os
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from .loading import ConfigError, read_yaml
from .resolve import resolve_config
from .schema import DEFAULTS

_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.+-]*$")  # a folder name on every system


class _Closed(BaseModel):
    model_config = ConfigDict(extra="forbid")


class SettingSpec(_Closed):
    dataset: str | None = None
    config: str | None = None
    overrides: list[str] = Field(default_factory=list)
    vars: dict[str, Any] = Field(default_factory=dict)
    variants: list[str] | None = None


class RuleSpec(_Closed):
    candidate: str
    against: list[str]
    # the lower bound of the candidate's paired difference to each of ``against`` must be
    # above -margin in every setting (metric units: mAP points, points of error)
    margin: dict[str, float] = Field(default_factory=lambda: {"reid": 1.0, "classification": 0.5})


class StudySpec(_Closed):
    name: str
    description: str = ""
    conclusion: str = ""
    seeds: list[int] = Field(min_length=1)
    reference: list[str] = Field(min_length=1)
    settings: dict[str, SettingSpec] = Field(min_length=1)
    variants: dict[str, list[str]] = Field(min_length=1)
    rule: RuleSpec | None = None
    reuse: list[str] = Field(default_factory=list)


@dataclass(frozen=True)
class Trial:
    """One training run of a study: ``(setting, variant, seed)`` and its resolved config."""

    setting: str
    variant: str
    seed: int
    config: dict = field(compare=False, repr=False)

    @property
    def key(self) -> str:
        return f"{self.setting}/{self.variant}/seed{self.seed}"

    def same_run(self, stored: Mapping | None) -> bool:
        """Whether a stored config (a finished row's, a checkpoint's) is this trial's run.

        ``output_dir``, ``data.root`` and the folder of ``model.pretrained`` are where
        things lie, not what the run is, and are not compared; a key the stored config
        lacks (added to the schema later) matches when this trial leaves it at its
        default. Every other value must be equal.
        """
        if not stored:
            return False
        old, new = _flat(stored), _flat(self.config)
        for key, value in new.items():
            if key in ("output_dir", "data.root"):
                continue
            if key == "model.pretrained" and isinstance(value, str):
                if not isinstance(old.get(key), str):
                    return False
                if os.path.basename(old[key]) != os.path.basename(value):
                    return False
                continue
            if key not in old:
                if value != _flat(DEFAULTS).get(key, value):
                    return False
            elif old[key] != value:
                return False
        return True


def _flat(cfg: Mapping, prefix: str = "") -> dict[str, Any]:
    """Dotted key -> value (``model.kwargs`` stays one value: the builder owns it)."""
    out = {}
    for key, value in cfg.items():
        dotted = f"{prefix}{key}"
        if isinstance(value, Mapping) and dotted != "model.kwargs":
            out.update(_flat(value, dotted + "."))
        else:
            out[dotted] = value
    return out


@dataclass
class Study:
    """A study file read and every trial resolved."""

    path: Path
    spec: StudySpec
    trials: list[Trial]
    tasks: dict[str, str]  # setting -> task ('reid' / 'classification')

    @property
    def name(self) -> str:
        return self.spec.name

    @property
    def reuse_paths(self) -> list[Path]:
        """The ``reuse`` files, resolved against the study file's folder."""
        return [self.path.parent / p for p in self.spec.reuse]


def load_study(
    path: str | os.PathLike,
    settings: Sequence[str] | None = None,
    variants: Sequence[str] | None = None,
    seeds: Sequence[int] | None = None,
) -> Study:
    """Read a study file and resolve every trial (optionally only some of them).

    Raises:
        ConfigError: one line naming the file (and setting / variant) at fault.
    """
    path = Path(path)
    raw = read_yaml(path)
    try:
        spec = StudySpec.model_validate(raw)
    except ValidationError as err:
        first = err.errors()[0]
        where = ".".join(str(p) for p in first["loc"]) or "the file"
        raise ConfigError(f"{path}: {where}: {first['msg']}") from None
    _check_names(path, spec)
    chosen = _chosen(path, "setting", settings, list(spec.settings))
    wanted_variants = _chosen(path, "variant", variants, list(spec.variants))
    wanted_seeds = list(seeds) if seeds else list(spec.seeds)
    trials, tasks = [], {}
    for setting in chosen:
        sspec = spec.settings[setting]
        names = [v for v in (sspec.variants or list(spec.variants)) if v in wanted_variants]
        for variant in names:
            for seed in wanted_seeds:
                cfg = _trial_config(path, spec, setting, variant, seed)
                tasks[setting] = cfg["task"]
                trials.append(Trial(setting, variant, seed, cfg))
    return Study(path, spec, trials, tasks)


def _check_names(path: Path, spec: StudySpec) -> None:
    for kind, names in (("setting", spec.settings), ("variant", spec.variants)):
        for name in names:
            if not _NAME.match(name):
                raise ConfigError(
                    f"{path}: {kind} name {name!r} must be letters, digits, '.', '_', '+' "
                    "or '-' (it names a folder)"
                )
    for name, sspec in spec.settings.items():
        for variant in sspec.variants or ():
            if variant not in spec.variants:
                raise ConfigError(
                    f"{path}: settings.{name}.variants names {variant!r}, which is not "
                    f"a variant; variants are {list(spec.variants)}"
                )
    others = list(spec.reference) + ([spec.rule.candidate, *spec.rule.against] if spec.rule else [])
    for name in others:
        if name not in spec.variants:
            raise ConfigError(
                f"{path}: {name!r} (reference / rule) is not a variant; variants are "
                f"{list(spec.variants)}"
            )


def _chosen(path: Path, kind: str, wanted: Sequence[str] | None, valid: list[str]) -> list[str]:
    if not wanted:
        return valid
    for name in wanted:
        if name not in valid:
            raise ConfigError(f"{path} has no {kind} {name!r}; its {kind}s are {valid}")
    return [v for v in valid if v in wanted]


def _trial_config(path: Path, spec: StudySpec, setting: str, variant: str, seed: int) -> dict:
    sspec = spec.settings[setting]
    where = f"{path}: setting {setting!r}, variant {variant!r}"
    try:
        extra = [o.format_map(sspec.vars) for o in spec.variants[variant]]
    except (KeyError, ValueError, IndexError) as err:
        raise ConfigError(
            f"{where}: cannot fill {err} in its overrides; this setting's vars are "
            f"{sorted(sspec.vars)}"
        ) from None
    recipe = (path.parent / sspec.config) if sspec.config else None
    try:
        return resolve_config(
            sspec.dataset, recipe, [*sspec.overrides, *extra, f"train.seed={seed}"]
        )
    except ConfigError as err:
        raise ConfigError(f"{where}: {err}") from None


def trial_overrides(study: Study, trial: Trial) -> list[str]:
    """The overrides that make ``trial`` from its setting's dataset and recipe."""
    sspec = study.spec.settings[trial.setting]
    variant = [o.format_map(sspec.vars) for o in study.spec.variants[trial.variant]]
    return [*sspec.overrides, *variant, f"train.seed={trial.seed}"]


def spec_summary(study: Study) -> Mapping:
    """The study file as plain data (kept in ``study.json``)."""
    return study.spec.model_dump()


__all__ = [
    "RuleSpec",
    "SettingSpec",
    "Study",
    "StudySpec",
    "Trial",
    "load_study",
    "trial_overrides",
]
