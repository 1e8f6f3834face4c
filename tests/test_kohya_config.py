"""Kohya dataset configs checked as sd-scripts checks them (trainset.kohya_config)."""

from __future__ import annotations

import tomllib

import pytest

from trainset import kohya_config
from trainset.kohya_config import KohyaConfigError, validate

# Shaped like the configs sd-scripts documents and users write: DreamBooth folders with class
# tokens and repeats, a fine-tuning subset with a metadata file, multi-resolution datasets.
DREAMBOOTH = """
[general]
enable_bucket = true
shuffle_caption = true
keep_tokens = 1
caption_extension = ".txt"

[[datasets]]
resolution = [768, 512]
batch_size = 2
min_bucket_reso = 256
max_bucket_reso = 1024
bucket_reso_steps = 64

  [[datasets.subsets]]
  image_dir = "img/10_darius kawasaki person"
  class_tokens = "darius kawasaki person"
  num_repeats = 10
  flip_aug = true
  face_crop_aug_range = [1.0, 3.0]

  [[datasets.subsets]]
  image_dir = "reg/1_person"
  is_reg = true
  num_repeats = 1
"""

FINETUNE = """
[general]
shuffle_caption = true
caption_dropout_rate = 0.05

[[datasets]]
resolution = 1024
  [[datasets.subsets]]
  image_dir = "train"
  metadata_file = "meta_lat.json"
"""


@pytest.mark.parametrize("text", [DREAMBOOTH, FINETUNE])
def test_real_shaped_configs_pass(text):
    config = tomllib.loads(text)
    assert validate(config) is config


@pytest.mark.parametrize(("edit", "message"), [
    (lambda c: c["datasets"][0]["subsets"][0].update(num_repeat=10), r"datasets\[0\]\.subsets\[0\]"),  # a typo
    (lambda c: c["datasets"][0]["subsets"][0].update(num_repeats="10"), r"datasets\[0\]\.subsets\[0\]"),
    (lambda c: c["datasets"][0]["subsets"][1].pop("image_dir"), r"datasets\[0\]\.subsets\[1\]"),
    (lambda c: c["general"].update(resolution=[512, 512, 512]), r"general\.resolution"),
    (lambda c: c["general"].update(keep_tokens=-1), r"general\.keep_tokens"),
    (lambda c: c["datasets"][0]["subsets"][0].update(batch_size=4), r"datasets\[0\]\.subsets\[0\]"),  # a dataset option in a subset
    (lambda c: c["datasets"][0].update(min_bucket_reso=300), "not divisible by bucket_reso_steps 64"),
    (lambda c: c["datasets"][0].update(min_bucket_reso=2048), "min_bucket_reso 2048 > max_bucket_reso 1024"),
    # one method per dataset: a fine-tuning subset among DreamBooth ones matches neither kind
    (lambda c: c["datasets"][0]["subsets"].append({"metadata_file": "m.json"}), r"datasets\[0\]\.subsets\[2\]"),
    (lambda c: c.update(sample_prompts="p.txt"), "sample_prompts"),
])
def test_what_sd_scripts_refuses_fails_naming_the_option(edit, message):
    config = tomllib.loads(DREAMBOOTH)
    edit(config)
    with pytest.raises(KohyaConfigError, match=message):
        validate(config)


def test_a_file_that_is_not_toml_or_not_a_dataset_config(tmp_path):
    bad = tmp_path / "bad.toml"
    bad.write_text("[general\nx = 1\n")
    with pytest.raises(KohyaConfigError, match="not valid TOML"):
        kohya_config.validate_file(bad)
    prompts = tmp_path / "prompts.toml"  # a prompts file, not a dataset config
    prompts.write_text('[[prompts]]\ntarget = "van gogh"\n')
    with pytest.raises(KohyaConfigError, match="prompts"):
        kohya_config.validate_file(prompts)


def test_the_command_checks_files(tmp_path, capsys):
    from trainset import cli

    good = tmp_path / "dataset.toml"
    good.write_text(DREAMBOOTH)
    bad = tmp_path / "bad.toml"
    bad.write_text(DREAMBOOTH.replace("num_repeats = 10", "num_repeat = 10"))
    assert cli.main(["kohya-check", str(good)]) == 0
    assert "ok (1 datasets, 2 subsets)" in capsys.readouterr().out
    assert cli.main(["kohya-check", str(good), str(bad)]) == 1
    assert "num_repeat: extra keys not allowed" in capsys.readouterr().err
