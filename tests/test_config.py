import dataclasses
import re
from dataclasses import dataclass
from pathlib import Path

import pytest
from conftest import other_value

from dynamicdet.config import Config, ConfigError, ModelConfig, config_from_dict, load_config
from dynamicdet.data.synthetic import DEFAULT_CLASSES
from dynamicdet.modeling.losses import ROUTER_LOSSES
from dynamicdet.modeling.trunks import NORMS, TRUNKS
from dynamicdet.modeling.two_stage import KINDS
from dynamicdet.modeling.yolo import FAMILIES, SCALES


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


# each model/router choice, and the list that defines it where the model is defined
DEFINED_LISTS = [
    ("model", "kind", ["yolo", *KINDS]),
    ("model", "family", list(FAMILIES)),
    ("model", "scale", list(SCALES)),
    ("model", "backbone", list(TRUNKS)),
    ("model", "norm", list(NORMS)),
    ("router", "loss", list(ROUTER_LOSSES)),
]


@pytest.mark.parametrize(("section", "key", "values"), DEFINED_LISTS, ids=[f"{s}.{k}" for s, k, _ in DEFINED_LISTS])
def test_choices_are_the_lists_of_the_model(section, key, values):
    for value in values:  # every value the model defines is accepted...
        assert getattr(getattr(load_config("smoke", {section: {key: value}}), section), key) == value
    # ... and the error lists exactly those values
    with pytest.raises(ConfigError, match=re.escape(f"{section}.{key} = 'nope' is not one of {sorted(values)}")):
        load_config("smoke", {section: {key: "nope"}})


def test_default_classes_are_the_generators():
    assert Config().data.classes == DEFAULT_CLASSES and Config().data.classes is not DEFAULT_CLASSES


SECTIONS = ("data", "model", "train", "router", "eval")
FIELDS = [(s, f.name) for s in SECTIONS for f in dataclasses.fields(getattr(Config(), s))]


@pytest.mark.parametrize(("section", "name"), FIELDS, ids=[f"{s}.{n}" for s, n in FIELDS])
def test_a_section_hash_counts_every_field_of_the_section_and_nothing_else(section, name):
    # every field counts, whatever the model kind and whatever its value: a YOLO config's key moves with the
    # two-stage fields too, and a field counts at its default as well as elsewhere
    cfg = Config()
    sub = getattr(cfg, section)
    changed = dataclasses.replace(cfg, **{section: dataclasses.replace(sub, **{name: other_value(getattr(sub, name))})})
    assert cfg.section_hash(section) != changed.section_hash(section)
    assert cfg.section_hash(f"{section}.{name}") != changed.section_hash(f"{section}.{name}")
    others = [s for s in SECTIONS if s != section]
    assert cfg.section_hash(*others) == changed.section_hash(*others)


def test_a_new_field_changes_the_keys_of_the_sections_that_hold_it():
    # a field added to the code changes the hash of its section even at its default (the stages that read the
    # section retrain), and leaves the other sections' hashes and the single fields' hashes alone
    @dataclass
    class ModelWithNewField(ModelConfig):
        new_field: int = 0

    cfg = Config()
    grown = dataclasses.replace(cfg, model=ModelWithNewField(**dataclasses.asdict(cfg.model)))
    assert cfg.section_hash("model") != grown.section_hash("model")
    assert cfg.section_hash("data", "train", "model.kind") == grown.section_hash("data", "train", "model.kind")


def test_the_papers_router_is_a_preset_a_config_names():
    from dynamicdet.config import ROUTER_PRESETS

    paper = load_config("smoke", {"router": "paper"})
    assert paper.router.target == "gain" and paper.router.views == 2 and paper.router.loss == "adaptive_offset"
    assert {k: getattr(paper.router, k) for k in ROUTER_PRESETS["paper"]} == ROUTER_PRESETS["paper"]
    # a mapping: the preset, then the section's own keys over it
    tuned = load_config("smoke", {"router": {"preset": "paper", "epochs": 7}})
    assert tuned.router.epochs == 7 and tuned.router.views == 2
    assert load_config("smoke", {"router": "default"}).router == load_config("smoke").router


def test_a_router_preset_in_a_file_and_an_unknown_one(tmp_path):
    good = tmp_path / "mine.yaml"
    good.write_text("router: paper\n")
    assert load_config(good).router.target == "gain"
    bad = tmp_path / "bad.yaml"
    bad.write_text("router:\n  preset: papers\n")
    with pytest.raises(ConfigError, match=r"bad.yaml: router preset 'papers' is not one of \['default', 'paper'\]"):
        load_config(bad)
