"""The static frontier is trained by our step-1 loop; ultralytics' trainer gives the reference rows."""

import numpy as np
import pandas as pd
import pytest

from dynamicdet.config import load_config
from dynamicdet.engine import runs
from dynamicdet.experiments.static_models import load_static, static_baselines, static_config
from dynamicdet.experiments.step1_ablation import row_config


def test_a_static_model_is_the_joint_recipe_with_one_detector():
    cfg = load_config("standard")
    s = static_config(cfg, "ns")
    assert s.model.dual is False and s.model.scale == "ns"
    # same data and recipe (optimizer, schedule, warm-up, clip, EMA, augmentation, epochs)
    assert s.data == cfg.data and s.train == cfg.train and s.router == cfg.router
    # the step-1 ablation's "static, our loop" row is the frontier's yolov8n: one cached run
    assert runs.STEP1.path(row_config(cfg, "b")) == runs.STEP1.path(static_config(cfg, "n"))


@pytest.mark.slow
def test_the_frontier_models_train_in_our_loop_and_load_as_plain_ultralytics_models(smoke_cfg):
    import torch

    row = static_baselines(smoke_cfg, progress=False).iloc[0]
    s = static_config(smoke_cfg, "n")
    assert row["trainer"] == "ours" and row["run"] == runs.STEP1.path(s).name and runs.STEP1.done(s)
    assert runs.STATIC_ROW.done(s) and 0 <= row["AP"] <= 1
    metrics = pd.read_csv(runs.STEP1.path(s) / "step1_metrics.csv")  # our loop's log, one row per epoch
    assert len(metrics) == s.train.epochs and "det2_AP" not in metrics
    det = load_static(smoke_cfg, "n")
    out = det(torch.zeros(1, 3, smoke_cfg.data.img_size, smoke_cfg.data.img_size))[0]
    assert out.shape[0] == 1 and np.isfinite(row["GFLOPs"])
