from pathlib import Path

import pytest

from dynamicdet.config import Config, ConfigError, config_from_dict, load_config


@pytest.mark.parametrize("name", ["smoke", "quick", "standard", "coco", "ablation"])
def test_shipped_configs_load(name):
    cfg = load_config(name)
    assert isinstance(cfg, Config)
    assert cfg.name == name
    assert cfg.data.img_size % 32 == 0
    assert config_from_dict(cfg.to_dict()) == Config(**{**cfg.__dict__, "source": ""})


def _write(tmp_path: Path, text: str) -> Path:
    p = tmp_path / "bad.yaml"
    p.write_text(text)
    return p


def test_unknown_key_names_file_and_key(tmp_path):
    p = _write(tmp_path, "train:\n  epocs: 3\n")
    with pytest.raises(ConfigError, match=r"bad\.yaml.*unknown key\(s\) \['epocs'\].*train"):
        load_config(p)


def test_unknown_section(tmp_path):
    with pytest.raises(ConfigError, match=r"unknown key\(s\) \['trian'\]"):
        load_config(_write(tmp_path, "trian: {}\n"))


def test_wrong_type(tmp_path):
    with pytest.raises(ConfigError, match=r"train\.epochs: expected int, got str"):
        load_config(_write(tmp_path, "train:\n  epochs: ten\n"))


def test_bad_choice(tmp_path):
    with pytest.raises(ConfigError, match=r"router\.loss = 'median' is not one of"):
        load_config(_write(tmp_path, "router:\n  loss: median\n"))


def test_missing_and_invalid_yaml(tmp_path):
    with pytest.raises(ConfigError, match="config file not found"):
        load_config("no-such-config")
    with pytest.raises(ConfigError, match="invalid YAML"):
        load_config(_write(tmp_path, "train: [1, 2\n"))


def test_int_accepted_for_float_and_overrides():
    cfg = load_config("smoke", overrides={"train": {"lr0": 1}})
    assert cfg.train.lr0 == 1.0 and isinstance(cfg.train.lr0, float)


def test_hash_changes_with_section():
    a, b = load_config("smoke"), load_config("smoke", overrides={"router": {"lr": 0.5}})
    assert a.section_hash("data", "model", "train") == b.section_hash("data", "model", "train")
    assert a.section_hash("router") != b.section_hash("router")


@pytest.mark.parametrize(
    ("text", "message"),
    [
        (
            "train:\n  clip: per_model\n",
            r"bad\.yaml: train\.clip = 'per_model' is not one of \['joint', 'none', 'per_detector'\]",
        ),
        ("train:\n  detach_links: maybe\n", r"bad\.yaml: train\.detach_links: expected bool, got str"),
    ],
    ids=["clip", "detach_links"],
)
def test_step1_ablation_options_are_validated(tmp_path, text, message):
    with pytest.raises(ConfigError, match=message):
        load_config(_write(tmp_path, text))


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("model:\n  norm: layer\n", r"bad\.yaml: model\.norm = 'layer' is not one of \['bn', 'gn'\]"),
        ("train:\n  val_every: -1\n", r"bad\.yaml: train\.val_every = -1 is outside \[0, inf\]"),
        ("eval:\n  disturbance_passes: 0\n", r"bad\.yaml: eval\.disturbance_passes = 0 is outside \[1, inf\]"),
        ("eval:\n  target_rounds: 0\n", r"bad\.yaml: eval\.target_rounds = 0 is outside \[1, inf\]"),
    ],
    ids=["norm", "val_every", "disturbance_passes", "target_rounds"],
)
def test_recipe_and_schedule_options_are_validated(tmp_path, text, message):
    with pytest.raises(ConfigError, match=message):
        load_config(_write(tmp_path, text))


def test_hash_of_single_fields():
    a, b = load_config("smoke"), load_config("smoke", overrides={"eval": {"sweep": 7}})
    assert a.section_hash("eval.batch") == b.section_hash("eval.batch")
    assert a.section_hash("eval.sweep") != b.section_hash("eval.sweep")
