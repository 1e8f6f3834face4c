"""Kohya sd-scripts dataset configs (``--dataset_config``), checked the way sd-scripts checks them.

sd-scripts validates a dataset config with voluptuous before training (``library/config_util.py``,
``ConfigSanitizer``): an unknown option, a wrong type or a missing required option stops the run.
The same rules are written here from its documentation (``docs/config_README-en.md``), so an
exported ``dataset_config.toml`` is known to load before a GPU is ever rented:

- ``[general]`` takes dataset options and subset options; ``[[datasets]]`` the same plus
  ``[[datasets.subsets]]``; a subset takes subset options only;
- a subset is DreamBooth-style (``image_dir`` required, ``class_tokens``, ``caption_extension``,
  ``is_reg``), fine-tuning (``metadata_file`` required) or ControlNet (``image_dir`` and
  ``conditioning_data_dir`` required), one kind per dataset (a dataset whose subsets mix kinds
  matches none of the three);
- ``resolution`` is one int or two; ``face_crop_aug_range`` two floats;
- on top of the schema, what the documentation states in prose: bucket limits divisible by
  ``bucket_reso_steps``, ``min_bucket_reso <= max_bucket_reso``, ``num_repeats >= 1``.
"""

from __future__ import annotations

import tomllib
from pathlib import Path

from voluptuous import All, Any, ExactSequence, Invalid, MultipleInvalid, Range, Required, Schema

_NUMBER = Any(float, int)

SUBSET_OPTIONS = {
    "color_aug": bool,
    "face_crop_aug_range": ExactSequence([_NUMBER, _NUMBER]),
    "flip_aug": bool,
    "num_repeats": All(int, Range(min=1)),
    "sample_ratio": _NUMBER,
    "random_crop": bool,
    "shuffle_caption": bool,
    "keep_tokens": All(int, Range(min=0)),
    "keep_tokens_separator": str,
    "secondary_separator": str,
    "caption_separator": str,
    "enable_wildcard": bool,
    "token_warmup_min": int,
    "token_warmup_step": _NUMBER,
    "caption_prefix": str,
    "caption_suffix": str,
    "custom_attributes": dict,
    "resize_interpolation": str,
    "alpha_mask": bool,
    "cache_info": bool,
    "caption_dropout_every_n_epochs": int,
    "caption_dropout_rate": _NUMBER,
    "caption_tag_dropout_rate": _NUMBER,
    "caption_extension": str,
    "class_tokens": str,
}
"""Options a subset takes, and ``[[datasets]]`` and ``[general]`` pass down to it."""

DATASET_OPTIONS = {
    "batch_size": All(int, Range(min=1)),
    "bucket_no_upscale": bool,
    "bucket_reso_steps": All(int, Range(min=1)),
    "enable_bucket": bool,
    "max_bucket_reso": All(int, Range(min=1)),
    "min_bucket_reso": All(int, Range(min=1)),
    "resolution": Any(All(int, Range(min=1)), ExactSequence([All(int, Range(min=1)), All(int, Range(min=1))])),
    "network_multiplier": _NUMBER,
    "validation_seed": int,
    "validation_split": _NUMBER,
}
"""Options of a dataset (``[general]`` or ``[[datasets]]``, never a subset)."""

DREAMBOOTH_SUBSET = {**SUBSET_OPTIONS, Required("image_dir"): str, "is_reg": bool}
FINETUNE_SUBSET = {**SUBSET_OPTIONS, Required("metadata_file"): str, "image_dir": str}
CONTROLNET_SUBSET = {**SUBSET_OPTIONS, Required("image_dir"): str, Required("conditioning_data_dir"): str}


def _dataset(subset: dict) -> dict:
    return {**DATASET_OPTIONS, **SUBSET_OPTIONS, "subsets": [subset]}


CONFIG = Schema({
    "general": {**DATASET_OPTIONS, **SUBSET_OPTIONS},
    "datasets": [Any(_dataset(DREAMBOOTH_SUBSET), _dataset(FINETUNE_SUBSET), _dataset(CONTROLNET_SUBSET))],
})
"""A whole dataset config; unknown options are errors, as in sd-scripts."""


class KohyaConfigError(ValueError):
    """A dataset config sd-scripts would refuse; the message names each offending option."""


def validate(config: dict, where: str = "dataset config") -> dict:
    """``config`` (a parsed TOML/JSON dataset config) if sd-scripts would accept it, else
    :class:`KohyaConfigError` listing every problem with its path (``datasets[0].subsets[1].num_repeats``)."""
    try:
        CONFIG(config)
    except MultipleInvalid as exc:
        raise KohyaConfigError(f"{where}: " + "; ".join(_describe(e) for e in exc.errors)) from exc
    problems = []
    general = config.get("general", {})
    for k, dataset in enumerate(config.get("datasets", [])):
        merged = {**general, **dataset}
        step = merged.get("bucket_reso_steps", 64)
        for key in ("min_bucket_reso", "max_bucket_reso"):
            if key in merged and merged[key] % step:
                problems.append(f"datasets[{k}].{key}: {merged[key]} is not divisible by bucket_reso_steps {step}")
        if merged.get("min_bucket_reso", 0) > merged.get("max_bucket_reso", float("inf")):
            problems.append(f"datasets[{k}]: min_bucket_reso {merged['min_bucket_reso']} > max_bucket_reso {merged['max_bucket_reso']}")
    if problems:
        raise KohyaConfigError(f"{where}: " + "; ".join(problems))
    return config


def validate_file(path: str | Path) -> dict:
    """:func:`validate` of a ``.toml`` dataset config file."""
    path = Path(path)
    try:
        config = tomllib.loads(path.read_text(encoding="utf-8"))
    except tomllib.TOMLDecodeError as exc:
        raise KohyaConfigError(f"{path}: not valid TOML ({exc})") from exc
    return validate(config, str(path))


def _describe(error: Invalid) -> str:
    path = "".join(f"[{p}]" if isinstance(p, int) else f".{p}" for p in error.path).lstrip(".") or "(top level)"
    return f"{path}: {error.msg}"
