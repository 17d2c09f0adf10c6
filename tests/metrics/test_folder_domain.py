"""The dataset-trained domain classifier (horse2zebra's judge): learns, caches, reports test
accuracy, and scores a folder through ``evaluate --domain-data``."""

import functools

import pytest

from patchcontrast.data import write_generated_dataset
from patchcontrast.evaluate import evaluate_folders
from patchcontrast.metrics import folder_domain


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    root = tmp_path_factory.mktemp("fd")
    write_generated_dataset(root, n_train=24, n_test=8, size=(32, 32), progress=False)
    return root


@pytest.fixture(autouse=True)
def cache(tmp_path, monkeypatch):
    monkeypatch.setenv("PATCHCONTRAST_CACHE", str(tmp_path / "cache"))


def test_learns_the_domains_and_caches(data, tmp_path):
    model, info = folder_domain.folder_classifier(data, size=32, steps=60)
    assert info["testA_accuracy"] >= 0.9 and info["testB_accuracy"] >= 0.9
    assert list((tmp_path / "cache/folder_classifier").glob("*.pt"))
    again, info_again = folder_domain.folder_classifier(data, size=32, steps=60)
    assert info_again == info
    for a, b in zip(model.state_dict().values(), again.state_dict().values()):
        assert a.equal(b)


def test_evaluate_scores_a_folder_with_it(data, monkeypatch):
    monkeypatch.setattr(
        folder_domain,
        "folder_classifier",
        functools.partial(folder_domain.folder_classifier, steps=60),
    )
    result = {
        name: evaluate_folders(
            None, data / name, metrics=("domain",), domain_data=data, swd_size=32, progress=False
        )
        for name in ("testA", "testB")
    }
    assert result["testA"]["metrics"]["domain_b"] <= 0.1
    assert result["testB"]["metrics"]["domain_b"] >= 0.9
    settings = result["testB"]["settings"]["domain"]
    assert settings["size"] == 32 and settings["testB_accuracy"] >= 0.9


def test_missing_train_split_is_a_clear_error(tmp_path):
    with pytest.raises(ValueError, match="trainA"):
        folder_domain.folder_classifier(tmp_path)
