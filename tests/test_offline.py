"""Offline by construction: with every non-loopback connection and DNS lookup blocked
(the autouse ``no_network`` fixture), import, model build, a training step, plotting with
ultralytics' annotator and ultralytics' dataset checks all work."""

import os

import numpy as np
import pytest
import torch


def test_network_is_really_blocked():
    import socket

    from conftest import NetworkBlocked

    with pytest.raises(NetworkBlocked):
        socket.create_connection(("example.com", 80), timeout=1)
    with pytest.raises(NetworkBlocked):
        socket.getaddrinfo("pypi.org", 443)


def test_import_configures_ultralytics_offline():
    from ultralytics.utils import SETTINGS, is_online

    import dynamicdet  # noqa: F401
    from dynamicdet import paths

    assert os.environ["YOLO_OFFLINE"] == "1" and os.environ["YOLO_AUTOINSTALL"] == "False"
    assert is_online() is False
    assert SETTINGS["sync"] is False
    assert (paths.ultralytics_config_dir() / "Arial.ttf").is_file()


@pytest.mark.slow
def test_model_build_and_training_step_offline():
    from dynamicdet.modeling.losses import DetectionLoss
    from dynamicdet.modeling.yolo import DynamicDetector

    model = DynamicDetector("yolo11", "n", nc=3).train()
    opt = torch.optim.SGD([p for group in model.detector_groups().values() for p in group], lr=0.01)
    batch = {
        "batch_idx": torch.tensor([0.0]),
        "cls": torch.tensor([[1.0]]),
        "bboxes": torch.tensor([[0.5, 0.5, 0.3, 0.3]]),
    }
    out = model(torch.rand(2, 3, 64, 64))
    loss = (
        DetectionLoss(model.det1)(out["out1"], batch)[0].sum() + DetectionLoss(model.det2)(out["out2"], batch)[0].sum()
    )
    loss.backward()
    opt.step()
    assert torch.isfinite(loss)


def test_annotator_plotting_offline(tmp_path):
    from ultralytics.utils.plotting import Annotator, colors

    img = np.zeros((64, 64, 3), dtype=np.uint8)
    ann = Annotator(img, line_width=1, font_size=8, pil=True)  # pil=True needs the Arial.ttf font file
    ann.box_label([5, 5, 40, 40], "circle 0.9", color=colors(0, True))
    out = ann.result()
    assert out.shape == (64, 64, 3) and out.any()


def test_dataset_checks_offline(smoke_cfg):
    from ultralytics.data.utils import check_det_dataset

    from dynamicdet.data.coco import prepare_dataset

    info = prepare_dataset(smoke_cfg)
    data = check_det_dataset(str(info.yaml_path), autodownload=False)
    assert data["nc"] == len(smoke_cfg.data.classes)
