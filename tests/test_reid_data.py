"""Re-ID data: synthreid, Market-layout folders through torchreid, early clear errors."""

import json
import warnings

import pytest

from reid_dhm.data.reid_datasets import MarketLayoutDataset, read_image, scan_split
from reid_dhm.data.reid_manager import build_reid_datamanager, check_query_gallery
from reid_dhm.data.synthreid import MARKER, SynthReIDSpec, generate_synthreid


def test_synthreid_layout_and_determinism(tiny_reid, tmp_path):
    for split in ("bounding_box_train", "bounding_box_test", "query"):
        assert any((tiny_reid / split).glob("*.jpg"))
    names = sorted(p.name for p in (tiny_reid / "bounding_box_test").iterdir())
    assert any(n.startswith("0000_") for n in names)  # distractors
    assert any(n.startswith("-1_") for n in names)  # junk
    spec = SynthReIDSpec(**{k: tuple(v) if isinstance(v, list) else v
                            for k, v in json.loads((tiny_reid / MARKER).read_text()).items()
                            if k != "format"})  # fmt: skip
    again = generate_synthreid(tmp_path, spec)
    for split in ("bounding_box_train", "query"):
        a = sorted((tiny_reid / split).iterdir())
        b = sorted((again / split).iterdir())
        assert [p.name for p in a] == [p.name for p in b]
        assert all(x.read_bytes() == y.read_bytes() for x, y in zip(a, b))
    # A second call reuses the finished build instead of redrawing it.
    mtime = (again / MARKER).stat().st_mtime_ns
    assert generate_synthreid(tmp_path, spec) == again
    assert (again / MARKER).stat().st_mtime_ns == mtime


def test_folder_dataset_through_torchreid_manager(tiny_reid):
    manager = build_reid_datamanager(
        "folder", tiny_reid, height=64, width=32, batch_size=4, test_batch_size=8, workers=0
    )
    train = manager.train_loader.dataset
    assert manager.num_train_pids == 6
    assert sorted({pid for _, pid, _, _ in train.train}) == list(range(6))
    batch = next(iter(manager.train_loader))
    assert batch["img"].shape == (4, 3, 64, 32)
    gallery = manager.test_loader["folder"]["gallery"].dataset.data
    assert all(pid != -1 for _, pid, _, _ in gallery)  # junk dropped
    assert any(pid == 0 for _, pid, _, _ in gallery)  # distractors kept


def test_identity_sampler_batches(tiny_reid):
    manager = build_reid_datamanager(
        "folder", tiny_reid, height=64, width=32, batch_size=4, workers=0,
        sampler="identity", num_instances=2,
    )  # fmt: skip
    batch = next(iter(manager.train_loader))
    pids = batch["pid"].tolist()
    assert all(pids.count(p) == 2 for p in set(pids))
    with pytest.raises(ValueError, match="multiple of num_instances"):
        build_reid_datamanager("folder", tiny_reid, batch_size=5, sampler="identity")


def test_missing_datasets_give_one_clear_error(tmp_path):
    with pytest.raises(
        FileNotFoundError, match="market1501 not found.*bounding_box_train.*nothing is downloaded"
    ):
        build_reid_datamanager("market1501", tmp_path)
    with pytest.raises(FileNotFoundError, match="dukemtmc-reid"):
        build_reid_datamanager("dukemtmcreid", tmp_path)
    (tmp_path / "query").mkdir()
    with pytest.raises(FileNotFoundError, match="missing bounding_box_train, bounding_box_test"):
        MarketLayoutDataset(str(tmp_path))
    with pytest.raises(ValueError, match="unknown re-ID dataset"):
        build_reid_datamanager("cuhk99", tmp_path)


def test_bad_files_name_the_file(tiny_reid, tmp_path):
    bad = tmp_path / "0001_c1s1_000001_00.jpg"
    bad.write_bytes(b"\x00 not a jpeg")
    with pytest.raises(ValueError, match="cannot read image .*0001_c1s1_000001_00.jpg"):
        read_image(str(bad))
    folder = tmp_path / "split"
    folder.mkdir()
    (folder / "person_one.jpg").write_bytes(b"")
    with pytest.raises(ValueError, match="person_one.jpg: file name does not follow"):
        scan_split(folder, relabel=False)


def test_query_gallery_checked_before_training():
    query = [("q.jpg", 1, 0), ("q2.jpg", 2, 0)]
    gallery_same_cam = [("g.jpg", 1, 0), ("g2.jpg", 2, 0)]
    with pytest.raises(ValueError, match="no query image has a gallery image"):
        check_query_gallery("custom", query, gallery_same_cam)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        assert check_query_gallery("custom", query, [("g.jpg", 1, 1), ("g2.jpg", 2, 0)]) == 1
    assert "1 of 2 queries" in str(caught[0].message)


def test_a_non_image_file_fails_when_the_folder_is_read(tiny_reid, tmp_path):
    import shutil

    root = tmp_path / "data"
    shutil.copytree(tiny_reid, root)
    # A gallery image: without the header check it would only fail at the final evaluation.
    bad = sorted((root / "bounding_box_test").glob("0*.jpg"))[-1]
    bad.write_bytes(b"")
    with pytest.raises(ValueError, match=f"cannot read image .*{bad.name}"):
        build_reid_datamanager("folder", root, height=64, width=32, workers=0)


def test_registered_dataset_pickles_for_spawned_loader_workers(tiny_reid):
    """DataLoader workers started by spawn (a study's trial processes, macOS) pickle the
    data set; its class is made at run time, so it must pickle through the registry."""
    import pickle

    import torch

    manager = build_reid_datamanager(
        "folder", tiny_reid, height=64, width=32, batch_size=4, test_batch_size=8, workers=0
    )
    gallery = manager.test_loader["folder"]["gallery"].dataset  # no random transforms
    copy = pickle.loads(pickle.dumps(gallery))
    assert type(copy) is type(gallery) and len(copy) == len(gallery)
    assert copy.data == gallery.data
    assert torch.equal(copy[0]["img"], gallery[0]["img"])
    loader = torch.utils.data.DataLoader(
        gallery, batch_size=4, num_workers=1, multiprocessing_context="spawn"
    )
    batch = next(iter(loader))
    assert torch.equal(batch["img"][0], gallery[0]["img"])


def test_synthreid_built_once_when_two_processes_ask_at_the_same_time(tmp_path):
    """Runs started side by side must not build the data twice: the second build would
    delete the folder the first one is reading."""
    import subprocess
    import sys

    code = (
        "import sys; from reid_dhm.data.synthreid import SynthReIDSpec, generate_synthreid;"
        "spec = SynthReIDSpec(num_train_ids=6, num_test_ids=5, num_cameras=3,"
        " images_per_camera=(2, 3), cameras_per_id=(2, 3), num_distractors=3, num_junk=2,"
        " height=64, width=32);"
        "d = generate_synthreid(sys.argv[1], spec); print(sorted(p.name for p in d.iterdir()))"
    )
    procs = [
        subprocess.Popen([sys.executable, "-c", code, str(tmp_path)], stdout=subprocess.PIPE,
                         stderr=subprocess.PIPE, text=True)
        for _ in range(2)
    ]  # fmt: skip
    outs = [p.communicate(timeout=120) for p in procs]
    assert [p.returncode for p in procs] == [0, 0], outs
    listed = [out.splitlines()[-1] for out, _ in outs]
    assert listed[0] == listed[1] and "query" in listed[0]
    assert sum("=> drawing synthreid" in out for out, _ in outs) == 1  # built and said once
    dest = tmp_path / "synthreid"
    assert json.loads((dest / MARKER).read_text())["num_train_ids"] == 6
    # one build: no half-built temporary folder is left, every split is complete
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".synthreid-")]
    counts = [len(list((dest / s).glob("*.jpg"))) for s in ("bounding_box_train", "query")]
    assert all(counts)
