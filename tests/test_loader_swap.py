"""studies/loader_swap.py: our step-1 loop fed by ultralytics' persistent train loader (the trainer gap's
data-stream test)."""

from __future__ import annotations


def test_the_swapped_loader_is_one_stream_across_epochs(smoke_cfg):
    from dynamicdet.data.coco import prepare_dataset
    from dynamicdet.data.loaders import build_dataset
    from studies.loader_swap import ultralytics_loader

    ds = build_dataset(prepare_dataset(smoke_cfg).data, "train", smoke_cfg.data.img_size, augment=True, batch=4)
    first = ultralytics_loader(ds, 4, True, seed=0)
    assert ultralytics_loader(ds, 4, True, seed=1) is first  # built once: nothing is reseeded per epoch
    epochs = [[b["im_file"] for b in first] for _ in range(2)]
    files = sorted(f for batch in epochs[0] for f in batch)
    assert len(epochs[0]) == len(first) and files == sorted(set(files)) and len(files) == ds.ni  # one epoch each
    assert epochs[0] != epochs[1]  # the shuffle runs on: the second epoch is another order


def test_the_study_trains_our_loop_on_the_swapped_loader_in_its_own_runs(tmp_path, monkeypatch):
    from studies import loader_swap

    calls = []
    monkeypatch.setenv("DYNAMICDET_HOME", str(tmp_path / "home"))
    monkeypatch.setenv("DYNAMICDET_RESULTS", str(tmp_path / "results"))
    monkeypatch.setattr(loader_swap, "generate_data", lambda cfg: None)

    def fake_baselines(cfg, progress=False):  # what step 1 would use, and where its runs go
        from dynamicdet import paths
        from dynamicdet.engine import step1

        calls.append((step1.make_loader, paths.home_dir(), cfg.train.seed, list(cfg.eval.static_scales)))

    monkeypatch.setattr(loader_swap, "static_baselines", fake_baselines)
    monkeypatch.setattr("dynamicdet.engine.step1.make_loader", "ours")
    monkeypatch.setattr("dynamicdet.engine.step1.reset_mosaic_buffer", "ours")
    loader_swap.main(["--config", "smoke", "--seeds", "0", "1"])
    assert [c[2] for c in calls] == [0, 1] and all(c[3] == ["n"] for c in calls)
    assert all(c[0] is loader_swap.ultralytics_loader and c[1] == tmp_path / "home" / "loader_swap" for c in calls)
    assert (tmp_path / "results" / "trainer_gap" / "smoke-ultralytics_loader.md").exists()
