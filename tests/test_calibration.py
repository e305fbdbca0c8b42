"""Router thresholds are set on a calibration split; AP and the achieved hard fraction are measured on val."""

import numpy as np
import pandas as pd
import pytest

from dynamicdet.config import load_config
from dynamicdet.engine import runs
from dynamicdet.experiments.tradeoffs import calibration_config, calibration_logits, tradeoff
from dynamicdet.experiments.trained import trained
from dynamicdet.modeling import routing


def test_the_calibration_split_is_drawn_like_val_but_other_images():
    cfg = load_config("standard")
    c = calibration_config(cfg)
    assert c.data.n_val == cfg.eval.calibration_images > 0 and c.data.n_train == 0
    assert c.data.seed != cfg.data.seed and c.dataset_name != cfg.dataset_name
    assert (c.data.img_size, c.data.classes, c.data.max_objects) == (cfg.data.img_size, cfg.data.classes, 40)
    with pytest.raises(ValueError, match="data.source is 'coco'; set it to 0"):
        calibration_config(load_config("coco"))


@pytest.mark.slow
def test_thresholds_come_from_the_calibration_split(smoke_cfg):
    assert smoke_cfg.eval.calibration_images > 0
    t = trained(smoke_cfg, progress=False)
    res = tradeoff(t, progress=False)
    z_cal = calibration_logits(t, progress=False)
    assert z_cal.shape == (smoke_cfg.eval.calibration_images,) and runs.CALIBRATION.done(smoke_cfg)
    assert np.allclose(pd.read_csv(runs.CALIBRATION.path(smoke_cfg))["logit"], z_cal)
    for row in res.table.itertuples():
        assert row.tau == routing.threshold_for_fraction(z_cal, row.k)
        # the achieved fraction is measured on val, where tau was not set
        z_val = t.val_scores["logit"].to_numpy()
        assert row.k_measured == pytest.approx(float((z_val >= row.tau).mean()))
    off = load_config("smoke", {"eval": {"calibration_images": 0}})
    assert calibration_logits(trained(off, progress=False), progress=False) is None
