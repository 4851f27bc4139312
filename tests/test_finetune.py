"""Fine-tuning on real labels: the elpv solar cells (an optional extra, CC BY-NC-SA 4.0 data
that the `test` extra installs) split as their paper did, and the fine-tuning recipe."""

from __future__ import annotations

import importlib.util
from collections import Counter

import numpy as np
import pytest
import torch
from conftest import raises_one_line

from mobilenets.data import elpv_table, load_data
from mobilenets.data.sources import ELPV_TEST_IMAGES


def test_elpv_split_is_the_papers_protocol() -> None:
    """1,968 cells to train on and 656 to test on (Deitsch et al. 2019), both halves holding
    each (defect probability, cell type) group in the same proportion, the same whatever
    trains; defective means a defect probability of 0.5 or more."""
    table = elpv_table()
    assert len(table.files) == 2624 and all(f.suffix == ".png" for f in table.files[:5])
    train, test = table.split(seed=0)
    assert (len(train), len(test)) == (1968, 656)
    assert ELPV_TEST_IMAGES == 656
    assert not set(train) & set(test)
    groups = [f"{p:.2f}/{t}" for p, t in zip(table.probabilities, table.types, strict=True)]
    everything, held_out = Counter(groups), Counter(groups[i] for i in test)
    for group, n in everything.items():
        assert abs(held_out[group] - n / 4) <= 1, group
    labels = table.labels
    assert labels.sum() == 821 and labels[table.probabilities == 2 / 3].all()
    assert not labels[np.isclose(table.probabilities, 1 / 3)].any()
    assert np.array_equal(table.split(seed=0)[1], test)


@pytest.mark.slow
def test_elpv_loads_grey_cells_as_three_imagenet_normalised_channels() -> None:
    bundle = load_data("elpv", resolution=32)
    assert (len(bundle.train), len(bundle.test)) == (1968, 656)
    assert bundle.class_names == ["functional", "defective"] and bundle.name == "elpv"
    assert bundle.input_size == (3, 32, 32) and bundle.crop_pct == 1.0
    x, label = bundle.test[0]
    assert x.shape == (3, 32, 32) and label in (0, 1)
    # grey: the three channels hold one image, each normalised with ImageNet's statistics
    pixels = x * torch.tensor(bundle.std).view(3, 1, 1) + torch.tensor(bundle.mean).view(3, 1, 1)
    assert torch.allclose(pixels[0], pixels[1], atol=1e-5)
    assert torch.allclose(pixels[1], pixels[2], atol=1e-5)
    a, _ = bundle.train[(0, 7)]
    b, _ = bundle.train[(0, 7)]
    assert torch.equal(a, b)  # augmentation is seeded


def test_elpv_without_its_extra_is_one_line(monkeypatch: pytest.MonkeyPatch) -> None:
    real = importlib.util.find_spec
    monkeypatch.setattr(
        importlib.util,
        "find_spec",
        lambda name, *a: None if name == "elpv_dataset" else real(name, *a),
    )
    with raises_one_line(r'pip install "mobilenets\[elpv\]".*CC BY-NC-SA 4.0'):
        load_data("elpv")
