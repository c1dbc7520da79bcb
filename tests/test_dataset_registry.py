"""The data-set registry: one file per data set, and every name list derived from it."""

import json
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from reid_dhm.data import classification, reid_datasets, reid_manager
from reid_dhm.data.registry import TASKS, DatasetSpec, get_dataset, list_datasets

ROOT = Path(__file__).resolve().parents[1]
REID = ("dukemtmcreid", "folder", "market1501", "synthreid")
CLASSIFICATION = ("cifar10", "cifar100", "fashion-mnist", "imagenet")


def _run(code: str) -> dict:
    """Run ``code`` in a fresh interpreter (module-level lists are built at import)."""
    out = subprocess.run(
        [sys.executable, "-c", textwrap.dedent(code)],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert out.returncode == 0, out.stderr[-3000:]
    return json.loads(out.stdout.strip().splitlines()[-1])


def test_built_in_data_sets_by_task():
    assert TASKS == ("reid", "classification")
    assert list_datasets("reid") == REID
    assert list_datasets("classification") == CLASSIFICATION
    assert list_datasets() == tuple(sorted(REID + CLASSIFICATION))
    for name in list_datasets():
        spec = get_dataset(name)
        assert spec.name == name and spec.description and "task" not in spec.preset


def test_every_name_list_is_the_registry():
    from reid_dhm import config

    assert reid_manager.REID_DATASETS == list_datasets("reid") == config.REID_DATASETS
    assert list_datasets("classification") == classification.DATASETS
    assert config.CLASSIFICATION_DATASETS == classification.DATASETS
    assert set(config.PRESETS) == set(list_datasets())
    assert set(reid_datasets.registered_datasets()) == set(list_datasets("reid"))


def test_config_presets_are_the_specs_presets():
    from reid_dhm import config

    for name in list_datasets():
        spec = get_dataset(name)
        expected = dict(spec.preset)
        if spec.task != "reid":
            expected["task"] = spec.task
        assert config.PRESETS[name] == expected
    # The recipes themselves are the paper's (DESIGN 3), moved here unchanged.
    assert config.PRESETS["cifar100"]["scheduler"]["milestones"] == [81, 122]
    assert config.PRESETS["cifar10"] == config.PRESETS["cifar100"]
    assert config.PRESETS["imagenet"]["train"] == {
        "fixbase_epoch": 0,
        "eval_freq": 1,
        "print_freq": 100,
        "max_epoch": 90,
    }
    assert config.PRESETS["market1501"] == {}


def test_unknown_names_are_errors_naming_the_valid_ones():
    with pytest.raises(ValueError, match=r"unknown dataset 'mnist'.*'market1501'"):
        get_dataset("mnist")
    with pytest.raises(ValueError, match="unknown task 'detection'"):
        list_datasets("detection")
    with pytest.raises(ValueError, match=r"unknown re-ID dataset 'cifar10'.*'synthreid'"):
        reid_manager.prepare_reid_dataset("cifar10", "/nonexistent")
    with pytest.raises(ValueError, match="unknown classification dataset 'market1501'"):
        classification.build_classification_datasets("market1501", "/nonexistent")


def test_a_spec_states_what_its_reader_needs():
    with pytest.raises(ValueError, match="unknown task"):
        DatasetSpec("x", "detection", "")
    with pytest.raises(ValueError, match="needs locate"):
        DatasetSpec("x", "reid", "")
    with pytest.raises(ValueError, match="needs read"):
        DatasetSpec("x", "classification", "", transform=lambda train, size: None)
    with pytest.raises(ValueError, match="task="):
        DatasetSpec("x", "reid", "", preset={"task": "reid"}, locate=Path)


def test_register_refuses_a_taken_name():
    from reid_dhm.data.registry import register_dataset

    with pytest.raises(ValueError, match="already registered"):
        register_dataset(DatasetSpec("market1501", "reid", "again", locate=Path))


def test_folder_spec_checks_and_locates(tmp_path):
    spec = get_dataset("folder")
    with pytest.raises(FileNotFoundError, match="does not exist"):
        spec.prepare_folder(tmp_path / "missing")
    assert spec.prepare_folder(tmp_path) == tmp_path
    assert get_dataset("synthreid").locate(tmp_path) == tmp_path / "synthreid"
    with pytest.raises(FileNotFoundError, match="market1501 not found under --root"):
        get_dataset("market1501").prepare_folder(tmp_path)


def test_registry_and_set_files_import_no_torch():
    # The package __init__ imports the models; reading a config only needs the registry.
    result = _run(
        """
        import json, sys, types
        pkg = types.ModuleType("reid_dhm")
        pkg.__path__ = ["reid_dhm"]
        sys.modules["reid_dhm"] = pkg
        from reid_dhm.data.registry import get_dataset, list_datasets
        names = list_datasets()
        presets = {n: get_dataset(n).preset for n in names}
        print(json.dumps({"names": names, "torch": "torch" in sys.modules}))
        """
    )
    assert result == {"names": list(sorted(REID + CLASSIFICATION)), "torch": False}


def test_a_new_data_set_is_one_file(tmp_path):
    (tmp_path / "toyreid.py").write_text(
        textwrap.dedent(
            """
            from pathlib import Path
            from reid_dhm.data.registry import DatasetSpec

            SPECS = (
                DatasetSpec(
                    name="toyreid", task="reid", description="a toy",
                    preset={"data": {"height": 64}}, locate=lambda root: Path(root) / "toy",
                ),
                DatasetSpec(
                    name="toyclass", task="classification", description="a toy",
                    read=lambda root, a, b: (None, None), transform=lambda train, size: None,
                ),
            )
            """
        )
    )
    result = _run(
        f"""
        import json, sys
        import reid_dhm.data.sets as sets
        from reid_dhm.data import registry
        assert "reid_dhm.config" not in sys.modules, "the config was read before the test"
        sets.__path__.append({str(tmp_path)!r})  # as if the file were in the package
        registry._REGISTRY.clear()
        registry._DISCOVERED = False
        from reid_dhm import config
        from reid_dhm.cli import test as test_tool
        from reid_dhm.data import classification, reid_datasets, reid_manager
        choices = [a.choices for a in test_tool.build_parser()._actions if a.dest == "dataset"]
        print(json.dumps({{
            "reid": "toyreid" in reid_manager.REID_DATASETS,
            "config_reid": "toyreid" in config.REID_DATASETS,
            "torchreid": "toyreid" in reid_datasets.registered_datasets(),
            "test_choices": "toyreid" in choices[0],
            "classification": "toyclass" in classification.DATASETS,
            "config_classification": "toyclass" in config.CLASSIFICATION_DATASETS,
            "preset": config.PRESETS["toyreid"],
            "task": config.PRESETS["toyclass"].get("task"),
            "resolved_height": config.resolve_config("toyreid", training=False)["data"]["height"],
        }}))
        """
    )
    assert result == {
        "reid": True,
        "config_reid": True,
        "torchreid": True,
        "test_choices": True,
        "classification": True,
        "config_classification": True,
        "preset": {"data": {"height": 64}},
        "task": "classification",
        "resolved_height": 64,
    }
