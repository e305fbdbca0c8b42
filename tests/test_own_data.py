"""docs/own-data.md: its config example, its data layout and its main job, at smoke size on a COCO folder."""

from __future__ import annotations

import json
import re
import shlex
import time
from pathlib import Path

import matplotlib
import nbformat
import numpy as np
import pandas as pd
import pytest
import yaml
from PIL import Image

from dynamicdet import paths, pipeline
from dynamicdet.config import load_config
from dynamicdet.data.coco import DatasetError, prepare_dataset

REPO = Path(__file__).resolve().parents[1]
PAGE = REPO / "docs" / "own-data.md"
EXAMPLE = REPO / "dynamicdet" / "configs" / "own_data_example.yaml"
NAME = "own_data_smoke"  # the test's config name: the page runs the main job by name


def _page_yaml() -> str:
    (block,) = re.findall(r"^```yaml\n(.*?)^```", PAGE.read_text(), flags=re.S | re.M)
    return block


def _page_reproduce_args() -> list[str]:
    """The options the page's `make reproduce ... ARGS="..."` line passes to `dynamicdet reproduce`."""
    (line,) = [
        ln for ln in PAGE.read_text().splitlines() if ln.strip().startswith("make reproduce CONFIG=path/to/mydata.yaml")
    ]
    (args,) = [w.removeprefix("ARGS=") for w in shlex.split(line) if w.startswith("ARGS=")]
    return args.split()


def _page_notebooks(args: list[str]) -> list[str]:
    """The notebooks the page's options run (``--notebooks``, else every one the pipeline runs by default)."""
    if "--notebooks" in args:
        return args[args.index("--notebooks") + 1].split(",")
    skip = pipeline.ON_REQUEST + ((pipeline.TWO_STAGE_NOTEBOOK,) if "--no-two-stage" in args else ())
    return [p.stem for p in pipeline.notebook_paths() if p.stem not in skip]


def make_coco_folder(root: Path, n_train: int = 16, n_val: int = 8, size: int = 64, seed: int = 0) -> Path:
    """The page's layout: ``<root>/{train,val}/*.png`` and ``<root>/annotations/{train,val}.json``, each image
    ``size`` px with 1-3 filled rectangles of two categories (a square-ish "box", a tall "bar")."""
    rng = np.random.default_rng(seed)
    categories = [{"id": 1, "name": "box"}, {"id": 2, "name": "bar"}]
    ann_id = 1
    (root / "annotations").mkdir(parents=True)
    for split, n in (("train", n_train), ("val", n_val)):
        (root / split).mkdir()
        images, annotations = [], []
        for i in range(n):
            img = np.full((size, size, 3), 40, np.uint8)
            for _ in range(int(rng.integers(1, 4))):
                cat = int(rng.integers(1, 3))
                w, h = rng.integers(12, 28, 2) if cat == 1 else (rng.integers(6, 10), rng.integers(24, 40))
                w, h = int(w), int(h)
                x, y = int(rng.integers(0, size - w)), int(rng.integers(0, size - h))
                img[y : y + h, x : x + w] = (220, 60, 60) if cat == 1 else (60, 200, 80)
                box = {"id": ann_id, "image_id": i + 1, "category_id": cat, "bbox": [x, y, w, h], "area": w * h}
                annotations.append({**box, "iscrowd": 0})
                ann_id += 1
            name = f"{split}_{i:03d}.png"
            Image.fromarray(img).save(root / split / name)
            images.append({"id": i + 1, "file_name": name, "width": size, "height": size})
        coco = {"images": images, "annotations": annotations, "categories": categories}
        (root / "annotations" / f"{split}.json").write_text(json.dumps(coco))
    return root


def test_the_pages_yaml_is_the_shipped_example_and_loads(tmp_path):
    text = _page_yaml()
    assert text == EXAMPLE.read_text(), "docs/own-data.md's example and dynamicdet/configs/own_data_example.yaml differ"
    (tmp_path / "mydata.yaml").write_text(text)
    cfg = load_config(tmp_path / "mydata.yaml")
    assert cfg.name == "mydata" and cfg.data.source == "coco" and cfg.eval.calibration_images == 0
    assert (cfg.router.target, cfg.router.views, cfg.router.loss) == ("gain", 2, "adaptive_offset")  # router: paper
    assert cfg.model.scale in cfg.eval.static_scales and len(cfg.eval.static_scales) >= 2
    assert load_config("own_data_example").to_dict() == cfg.to_dict() | {"name": "own_data_example"}


def test_the_pages_notebooks_are_all_but_the_two_stage_one():
    stems = _page_notebooks(_page_reproduce_args())
    assert set(stems) <= {p.stem for p in pipeline.notebook_paths()}
    assert "00_dataset" in stems and "07_easy_hard" in stems and "08_two_stage" not in stems


def test_the_pages_layout_is_read_and_bad_input_names_the_file(tmp_path, monkeypatch):
    monkeypatch.setenv("DYNAMICDET_DATA", str(tmp_path / "data"))
    root = make_coco_folder(tmp_path / "mydata", n_train=4, n_val=2)
    cfg = load_config(EXAMPLE, overrides={"data": {"root": str(root)}})
    info = prepare_dataset(cfg)
    assert info.names == ["box", "bar"] and info.reports["train"].images == 4
    assert info.reports["train"].kept == info.reports["train"].annotations > 0

    (root / "val" / "val_001.png").unlink()
    with pytest.raises(DatasetError, match=r"val\.json: image id 2: file not found: .*val_001\.png"):
        prepare_dataset(cfg)


def _run_in_this_process(nb: Path, config: str, progress: bool = True, parameters: dict | None = None):
    """``pipeline.run_notebook`` without a kernel: the notebook's code cells, in order, in this process
    (the test's config is a name only this process knows, see below)."""
    import matplotlib.pyplot as plt  # after matplotlib.use("Agg")

    doc = nbformat.read(nb, as_version=4)
    namespace: dict = {}
    t0 = time.time()
    with matplotlib.rc_context():  # setup_notebook sets the figure style
        for cell in doc.cells:
            if cell.cell_type != "code":
                continue
            source = cell.source
            if "parameters" in cell.metadata.get("tags", []):
                source += f"\nconfig = {config!r}"
            exec(compile(source, str(nb), "exec"), namespace)
    plt.close("all")
    return paths.results_dir(config) / "notebooks" / nb.name, time.time() - t0


@pytest.mark.slow
@pytest.mark.filterwarnings("ignore:.*latency checks failed")  # timings of a busy machine: recorded, not judged
def test_the_pages_main_job_on_a_coco_folder_at_smoke_size(tmp_path, monkeypatch):
    """The page's path: a COCO folder, a config file of your own given by its path, ``make reproduce`` =
    :func:`dynamicdet.pipeline.reproduce` with the page's options (three of its notebooks: 00, 02 and 07). Sized
    as the smoke config."""
    matplotlib.use("Agg")
    monkeypatch.setenv("DYNAMICDET_DATA", str(tmp_path / "data"))
    monkeypatch.setenv("DYNAMICDET_RESULTS", str(tmp_path / "results"))
    root = make_coco_folder(tmp_path / "mydata")
    raw = yaml.safe_load(_page_yaml())
    raw["data"].update(root=str(root), img_size=64)
    raw["train"] = {"nbs": 8, "epochs": 2, "batch": 8, "warmup_epochs": 0.5, "close_mosaic": 1, "workers": 0}
    raw["router"] = {"preset": "paper", "epochs": 3, "batch": 8, "lambdas": [0.0, 0.5]}
    raw["eval"].update(
        static_scales=["n", "ns"], static_epochs=1, sweep=5, batch=4, latency_repeats=5, latency_warmup=1
    )
    config = tmp_path / "configs" / f"{NAME}.yaml"
    config.parent.mkdir()
    config.write_text(yaml.safe_dump(raw, sort_keys=False))
    # the config by its path, as the page says; the notebooks run in this process (faster than a kernel each)
    monkeypatch.setattr(pipeline, "run_notebook", _run_in_this_process)

    cfg = load_config(config)
    assert (cfg.router.target, cfg.router.views, cfg.router.epochs) == ("gain", 2, 3)  # the preset, then our keys
    args = _page_reproduce_args()  # `dynamicdet reproduce`'s options on the page, as cli._cmd_reproduce passes them
    notebooks = [nb for nb in _page_notebooks(args) if nb in ("00_dataset", "02_joint_training", "07_easy_hard")]
    assert len(notebooks) == 3
    pipeline.reproduce(str(config), progress=False, notebooks=notebooks, two_stage="--no-two-stage" not in args)

    out = paths.results_dir(str(config))
    assert out.name == NAME  # results/<the config file's stem>/
    claims = pd.read_csv(out / "claims.csv")
    assert (out / "claims.md").is_file() and len(claims) >= 10
    # notebook 00 on data the generator did not make: counts from the annotations, samples by object count
    stats = pd.read_csv(out / "dataset_stats.csv").set_index("split")
    val = json.loads((root / "annotations" / "val.json").read_text())
    assert stats.loc["val", "n_images"] == 8 and stats.loc["val", "n_annotations"] == len(val["annotations"])
    assert stats.loc["val", "objects_mean"] == pytest.approx(len(val["annotations"]) / 8, abs=1e-3)
    assert pd.isna(stats.loc["val", "difficulty_mean"]) and (out / "dataset_samples.png").is_file()
    assert not (out / "dataset_difficulty.csv").exists()  # no generator difficulty to correlate with
    difficulty = claims[claims["claim"].str.startswith("hard images are")]
    assert len(difficulty) >= 1
    assert (difficulty["verdict"] == "not testable").all()
    assert difficulty["note"].str.contains("no generator difficulty").all(), difficulty["note"].tolist()
    joint = claims[claims["claim"] == "detector 2 beats detector 1"].iloc[0]
    assert joint["verdict"] != "not testable", joint["note"]  # notebook 02's table: testable on any data
    two_stage = claims[claims["claim"].str.startswith("two-stage")]
    assert (two_stage["verdict"] == "not testable").all()
    assert json.loads((out / "provenance.json").read_text())["skipped"] == ["08_two_stage"]
