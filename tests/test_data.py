"""Datasets and transforms on small real data: the bundled digits, image files written with PIL,
and CIFAR batch files in the original pickle format."""

from __future__ import annotations

import pickle
import struct
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import CodeCarrying, raises_one_line, write_digit_png
from PIL import Image

from mobilenets.data import (
    IMAGENET_CROP_PCT,
    IMAGENET_MEAN,
    IMAGENET_STD,
    ImageFolderDataset,
    SkippedImagesWarning,
    eval_transform,
    load_data,
    load_image,
    make_loader,
    stop_workers,
    stratified_split,
)

# --------------------------------------------------------------------------- digits


@pytest.fixture(scope="module")
def digits():
    return load_data()


def test_digits_split_is_stratified_80_20(digits):
    assert digits.name == "digits"
    assert digits.class_names == [str(i) for i in range(10)]
    assert len(digits.train) + len(digits.test) == 1797
    assert (len(digits.train), len(digits.test)) == (1438, 359)
    train_counts = np.bincount(digits.train.labels.numpy(), minlength=10)
    test_counts = np.bincount(digits.test.labels.numpy(), minlength=10)
    for n_train, n_test in zip(train_counts, test_counts, strict=True):
        assert n_test == round((n_train + n_test) * 0.2)


def test_digits_items_have_the_resolution_and_three_channels():
    bundle = load_data("digits", resolution=16)
    assert bundle.input_size == (3, 16, 16)
    x, y = bundle.test[0]
    assert x.shape == (3, 16, 16) and x.dtype == torch.float32 and isinstance(y, int)
    assert torch.equal(x[0], x[1]) and torch.equal(x[1], x[2])
    assert bundle.train[(0, 123)][0].shape == (3, 16, 16)


def test_digits_normalised_with_train_statistics(digits):
    raw = torch.stack([digits.train_raw[i][0] for i in range(len(digits.train_raw))])
    assert torch.allclose(raw.mean(dim=(0, 2, 3)), torch.zeros(3), atol=1e-4)
    assert torch.allclose(raw.std(dim=(0, 2, 3)), torch.ones(3), atol=1e-3)
    assert len(digits.mean) == len(digits.std) == 3 and 0 < digits.mean[0] < 1


def test_digits_split_depends_on_seed_only(digits):
    again, other = load_data(seed=0), load_data(seed=1)
    assert torch.equal(again.test.images, digits.test.images)
    assert torch.equal(again.train.labels, digits.train.labels)
    assert not torch.equal(other.test.images, digits.test.images)


def test_digits_augmentation_is_seeded_and_mild(digits):
    a, b = digits.train[(5, 42)][0], digits.train[(5, 42)][0]
    assert torch.equal(a, b)
    assert not torch.equal(a, digits.train[(5, 43)][0])
    torch.manual_seed(7)
    first = digits.train[5][0]
    torch.manual_seed(7)
    assert torch.equal(first, digits.train[5][0])  # plain index: torch's global RNG
    assert torch.equal(pickle.loads(pickle.dumps(digits.train))[(5, 42)][0], a)  # for workers
    # A small affine move keeps the digit close to the original, unlike a mirror image.
    plain = digits.train_raw[5][0]
    assert (a - plain).abs().mean() < (plain.flip(-1) - plain).abs().mean()


def test_augment_false_gives_train_the_eval_transform():
    bundle = load_data(augment=False)
    assert torch.equal(bundle.train[(3, 1)][0], bundle.train_raw[3][0])


def test_eval_transform_of_a_digit_png_matches_the_test_split(digits, tmp_path):
    from sklearn.datasets import load_digits

    source = load_digits()
    _, test_idx = stratified_split(source.target, 0.2, seed=0)
    first = test_idx[0]
    path = write_digit_png(tmp_path / "digit.png", source.images[first])
    x = eval_transform(digits.mean, digits.std, digits.input_size)(load_image(path))
    expected, label = digits.test[0]
    assert label == source.target[first]
    # The PNG holds 8 bits, the digits 4 (0..16): the only difference is that rounding.
    assert torch.allclose(x, expected, atol=0.5 / 255 / digits.std[0] + 1e-5)


def test_make_loader_is_reproducible_and_resumable(digits):
    def epoch_batches(loader):
        return [(x.clone(), y.clone()) for x, y in loader]

    loader = make_loader(digits.train, batch_size=256, shuffle=True, seed=3)
    assert loader.num_workers == 0
    epoch0, epoch1 = epoch_batches(loader), epoch_batches(loader)
    assert sum(len(y) for _, y in epoch0) == len(digits.train)
    assert not torch.equal(epoch0[0][1], epoch1[0][1])  # a new order every epoch

    resumed = make_loader(digits.train, batch_size=256, shuffle=True, seed=3)
    resumed.sampler.set_epoch(1)
    for (x, y), (rx, ry) in zip(epoch1, epoch_batches(resumed), strict=True):
        assert torch.equal(x, rx) and torch.equal(y, ry)

    # An image's augmentation is drawn per index, so sharding (DDP) does not change it.
    full = make_loader(digits.train, batch_size=2000, shuffle=False, seed=3)
    odd = make_loader(digits.train, batch_size=2000, shuffle=False, seed=3, sampler=range(1, 99, 2))
    assert torch.equal(next(iter(full))[0][1:99:2], next(iter(odd))[0])

    ordered = make_loader(digits.test, batch_size=100, shuffle=False, seed=0, drop_last=True)
    labels = torch.cat([y for _, y in ordered])
    assert torch.equal(labels, digits.test.labels[:300])


# --------------------------------------------------------------------------- image folders


def _write_image(path: Path, mode: str, size: tuple[int, int], seed: int) -> Path:
    rng = np.random.default_rng(seed)
    path.parent.mkdir(parents=True, exist_ok=True)
    rgb = rng.integers(0, 256, (size[1], size[0], 3), dtype=np.uint8)
    img = Image.fromarray(rgb, "RGB")
    if mode == "L":
        img = img.convert("L")
    elif mode == "RGBA":
        img = img.convert("RGBA")
        img.putalpha(Image.fromarray(rng.integers(0, 256, (size[1], size[0]), dtype=np.uint8)))
    elif mode == "P":
        img = img.convert("P")
    img.save(path)
    return path


def _make_class(folder: Path, n: int, seed: int) -> None:
    kinds = [("RGB", ".jpg"), ("L", ".png"), ("RGBA", ".png"), ("P", ".gif"), ("RGB", ".bmp")]
    for i in range(n):
        mode, ext = kinds[i % len(kinds)]
        _write_image(folder / f"img{i}{ext}", mode, (40 + 7 * i, 30 + 3 * i), seed * 100 + i)


@pytest.fixture
def folder(tmp_path: Path) -> Path:
    root = tmp_path / "pets"
    _make_class(root / "cat", 6, 1)
    _make_class(root / "dog", 5, 2)
    return root


def test_image_folder_single_folder_split(folder):
    bundle = load_data(folder, resolution=24, seed=0)
    assert bundle.name == "imagefolder" and bundle.class_names == ["cat", "dog"]
    assert (len(bundle.train), len(bundle.test)) == (9, 2)  # one of each class held out
    assert sorted(label for _, label in bundle.test.samples) == [0, 1]
    assert bundle.mean == IMAGENET_MEAN and bundle.std == IMAGENET_STD
    assert bundle.crop_pct == IMAGENET_CROP_PCT and bundle.input_size == (3, 24, 24)
    for dataset in (bundle.train, bundle.test):
        for i in range(len(dataset)):  # JPEG, grayscale, RGBA, palette GIF, BMP
            x, _ = dataset[(i, i)]
            assert x.shape == (3, 24, 24) and torch.isfinite(x).all()
    assert load_data(folder, resolution=24, seed=0).test.samples == bundle.test.samples
    assert load_data(folder, resolution=24, seed=5).test.samples != bundle.test.samples


def test_eval_transform_reproduces_the_test_split(folder):
    bundle = load_data(folder, resolution=24)
    transform = eval_transform(bundle.mean, bundle.std, bundle.input_size, bundle.crop_pct)
    for i, (path, _) in enumerate(bundle.test.samples):
        assert torch.equal(transform(load_image(path)), bundle.test[i][0])


def test_eval_transform_resizes_shorter_side_then_centre_crops():
    # A 64x128 image with a left and right third of different colours: resizing the shorter
    # side to 36 (32 * 256 / 224) and cropping 32 keeps only the middle.
    array = np.zeros((64, 128, 3), dtype=np.uint8)
    array[:, :40] = 255
    array[:, 88:] = 128
    x = eval_transform((0, 0, 0), (1, 1, 1), (3, 32, 32), IMAGENET_CROP_PCT)(Image.fromarray(array))
    assert x.shape == (3, 32, 32)
    assert torch.all(x[:, :, 12:20] == 0)  # centre column is black
    one_channel = eval_transform((0.5,), (0.5,), (1, 16, 16))(Image.fromarray(array))
    assert one_channel.shape == (1, 16, 16)


def test_eval_transform_rejects_inconsistent_settings():
    with raises_one_line("input size must be square, got 32x24"):
        eval_transform(IMAGENET_MEAN, IMAGENET_STD, (3, 32, 24))
    with raises_one_line("mean and std need 3 values"):
        eval_transform((0.5,), (0.5,), (3, 32, 32))
    with raises_one_line(r"crop_pct must be in \(0, 1\]"):
        eval_transform(IMAGENET_MEAN, IMAGENET_STD, (3, 32, 32), crop_pct=1.5)


def test_image_folder_train_val_layout(tmp_path):
    _make_class(tmp_path / "train" / "a", 3, 1)
    _make_class(tmp_path / "train" / "b", 3, 2)
    _make_class(tmp_path / "val" / "b", 2, 3)
    bundle = load_data(tmp_path, resolution=16)
    assert bundle.class_names == ["a", "b"]
    assert (len(bundle.train), len(bundle.test)) == (6, 2)
    assert [label for _, label in bundle.test.samples] == [1, 1]

    _make_class(tmp_path / "val" / "zebra", 1, 4)
    with raises_one_line(r"missing from train/: \['zebra'\]"):
        load_data(tmp_path)


def test_unreadable_images_are_skipped_with_one_counted_warning(folder):
    truncated = folder / "cat" / "truncated.jpg"
    data = (folder / "cat" / "img0.jpg").read_bytes()
    truncated.write_bytes(data[: len(data) // 2])
    (folder / "dog" / "notes.png").write_text("not an image")
    (folder / "dog" / "._img0.png").write_bytes(b"macOS resource fork, ignored")
    with pytest.warns(SkippedImagesWarning, match="skipped 2 unreadable image"):
        bundle = load_data(folder, resolution=16)
    assert len(bundle.skipped) == 2 and any("truncated.jpg" in s for s in bundle.skipped)
    paths = [p for p, _ in bundle.train.samples + bundle.test.samples]
    assert len(paths) == 11 and not any("truncated" in p or "notes" in p for p in paths)


def test_class_folder_without_readable_images_is_an_error(tmp_path):
    _make_class(tmp_path / "a", 3, 1)
    (tmp_path / "b").mkdir()
    (tmp_path / "b" / "readme.txt").write_text("no images here")
    with raises_one_line("class folder has no images: .*b"):
        load_data(tmp_path)
    (tmp_path / "b" / "broken.png").write_bytes(b"\x89PNG broken")
    with raises_one_line(r"no readable images: .*b \(cannot read image .*broken.png"):
        load_data(tmp_path)


def test_bad_data_paths_are_one_line_errors(tmp_path):
    with raises_one_line("data not found: .*nowhere"):
        load_data(tmp_path / "nowhere")
    (tmp_path / "empty").mkdir()
    with raises_one_line("data directory is empty"):
        load_data(tmp_path / "empty")
    (tmp_path / "file.txt").write_text("x")
    with raises_one_line("must be a directory"):
        load_data(tmp_path / "file.txt")
    _write_image(tmp_path / "flat" / "a.png", "RGB", (8, 8), 0)
    with raises_one_line("no class folders in .*flat"):
        load_data(tmp_path / "flat")
    _write_image(tmp_path / "single" / "a" / "a.png", "RGB", (8, 8), 0)
    _write_image(tmp_path / "single" / "b" / "b.png", "RGB", (8, 8), 1)
    with raises_one_line("every class has a single image"):
        load_data(tmp_path / "single")
    with raises_one_line("resolution must be an integer >= 8"):
        load_data(resolution=4)
    with raises_one_line("val_fraction must be between 0 and 1"):
        load_data(val_fraction=1.5)


def test_load_image_names_the_file(tmp_path):
    path = _write_image(tmp_path / "ok.png", "RGBA", (10, 12), 0)
    assert load_image(path).size == (10, 12)
    truncated = tmp_path / "half.png"
    truncated.write_bytes(path.read_bytes()[:60])
    with raises_one_line("cannot read image .*half.png"):
        load_image(truncated)
    with raises_one_line("image not found: .*missing.jpg"):
        load_image(tmp_path / "missing.jpg")


def test_load_image_applies_exif_orientation(tmp_path):
    exif = Image.Exif()
    exif[0x0112] = 6  # "rotate 90 degrees clockwise to display"
    path = tmp_path / "phone.jpg"
    Image.new("RGB", (40, 20), (200, 10, 10)).save(path, exif=exif)
    assert load_image(path).size == (20, 40)


@pytest.mark.slow
def test_image_folder_loader_same_batches_with_and_without_workers(folder):
    bundle = load_data(folder, resolution=16)
    restored = pickle.loads(pickle.dumps(bundle.train))
    assert isinstance(restored, ImageFolderDataset)
    assert torch.equal(restored[(2, 9)][0], bundle.train[(2, 9)][0])

    # a folder this small loads in the training process unless workers are asked for
    assert make_loader(bundle.train, batch_size=4, shuffle=True, seed=1).num_workers == 0
    workers = make_loader(bundle.train, batch_size=4, shuffle=True, seed=1, num_workers=2)
    assert workers.num_workers == 2 and workers.persistent_workers
    single = make_loader(bundle.train, batch_size=4, shuffle=True, seed=1, num_workers=0)
    for (x, y), (sx, sy) in zip(workers, single, strict=True):
        assert torch.equal(x, sx) and torch.equal(y, sy)
    processes = workers._iterator._workers
    stop_workers(workers, single)
    assert workers._iterator is None and not any(p.is_alive() for p in processes)


# --------------------------------------------------------------------------- CIFAR


def _cifar_batch(rng, n: int, num_classes: int, labels_key: bytes) -> dict:
    # Like the originals (Python 2 pickles read with encoding="bytes"): bytes keys.
    return {
        b"batch_label": b"tiny batch",
        b"data": rng.integers(0, 256, (n, 3072), dtype=np.uint8),
        labels_key: rng.integers(0, num_classes, n).tolist(),
        b"filenames": [f"img{i}.png".encode() for i in range(n)],
    }


def _dump(path: Path, obj) -> None:
    path.write_bytes(pickle.dumps(obj, protocol=2))


@pytest.fixture
def cifar10(tmp_path: Path) -> Path:
    rng = np.random.default_rng(0)
    for i in range(1, 6):
        _dump(tmp_path / f"data_batch_{i}", _cifar_batch(rng, 3, 10, b"labels"))
    _dump(tmp_path / "test_batch", _cifar_batch(rng, 4, 10, b"labels"))
    names = [b"airplane", b"automobile", b"bird", b"cat", b"deer"]
    names += [b"dog", b"frog", b"horse", b"ship", b"truck"]
    _dump(tmp_path / "batches.meta", {b"label_names": names, b"num_cases_per_batch": 3})
    return tmp_path


def test_cifar10_from_batch_files(cifar10):
    bundle = load_data(cifar10)
    assert bundle.name == "cifar10" and bundle.class_names[:2] == ["airplane", "automobile"]
    assert (len(bundle.train), len(bundle.test)) == (15, 4)
    assert bundle.input_size == (3, 32, 32) and bundle.crop_pct == 1.0
    train = np.concatenate(
        [pickle.loads((cifar10 / f"data_batch_{i}").read_bytes())[b"data"] for i in range(1, 6)]
    ).reshape(-1, 3, 32, 32)
    assert np.allclose(bundle.mean, train.mean(axis=(0, 2, 3)) / 255, atol=1e-6)
    assert np.allclose(bundle.std, train.std(axis=(0, 2, 3)) / 255, atol=1e-6)

    test = pickle.loads((cifar10 / "test_batch").read_bytes())
    x, y = bundle.test[2]
    assert y == test[b"labels"][2]
    pixels = test[b"data"][2].reshape(3, 32, 32).transpose(1, 2, 0)
    transform = eval_transform(bundle.mean, bundle.std, bundle.input_size, bundle.crop_pct)
    assert torch.equal(transform(Image.fromarray(pixels)), x)

    augmented = bundle.train[(0, 5)][0]
    assert augmented.shape == (3, 32, 32) and torch.equal(augmented, bundle.train[(0, 5)][0])
    assert load_data(cifar10, resolution=40).test[0][0].shape == (3, 40, 40)


def test_cifar100_from_train_test_meta(tmp_path):
    rng = np.random.default_rng(1)
    _dump(tmp_path / "train", _cifar_batch(rng, 6, 100, b"fine_labels"))
    _dump(tmp_path / "test", _cifar_batch(rng, 2, 100, b"fine_labels"))
    fine = [f"class{i}".encode() for i in range(100)]
    _dump(tmp_path / "meta", {b"fine_label_names": fine, b"coarse_label_names": fine[:20]})
    bundle = load_data(tmp_path)
    assert bundle.name == "cifar100" and len(bundle.class_names) == 100
    assert (len(bundle.train), len(bundle.test)) == (6, 2)


def _python2_pickle(data: np.ndarray, labels: list[int]) -> bytes:
    """{'data': uint8 array, 'labels': [...]} as the Python 2 pickler that wrote the original
    CIFAR files emits it (protocol 2, str as BINSTRING, numpy.core paths), opcode by opcode."""

    def string(b: bytes) -> bytes:
        return b"T" + struct.pack("<I", len(b)) + b

    def ints(*values: int) -> bytes:
        return b"".join(b"J" + struct.pack("<i", v) for v in values)

    dtype = b"cnumpy\ndtype\n" + string(b"u1") + ints(0, 1) + b"\x87R"
    dtype += b"(" + ints(3) + string(b"|") + b"NNN" + ints(-1, -1, 0) + b"tb"
    array = b"cnumpy.core.multiarray\n_reconstruct\ncnumpy\nndarray\n"
    array += ints(0) + b"\x85" + string(b"b") + b"\x87R"  # _reconstruct(ndarray, (0,), 'b')
    array += b"(" + ints(1, *data.shape) + b"\x86" + dtype + b"\x89" + string(data.tobytes())
    array += b"tb"  # __setstate__((1, shape, dtype, False, raw bytes))
    label_list = b"](" + ints(*labels) + b"e"
    return b"\x80\x02}(" + string(b"data") + array + string(b"labels") + label_list + b"u."


def test_cifar_reads_the_original_python2_pickles(cifar10):
    rng = np.random.default_rng(3)
    data = rng.integers(0, 256, (2, 3072), dtype=np.uint8)
    (cifar10 / "data_batch_1").write_bytes(_python2_pickle(data, [7, 1]))
    bundle = load_data(cifar10, augment=False)
    assert torch.equal(bundle.train.images[:2], torch.from_numpy(data).view(2, 3, 32, 32))
    assert bundle.train.labels[:2].tolist() == [7, 1] and len(bundle.train) == 14


def test_cifar_pickle_that_names_os_system_is_refused(cifar10, tmp_path):
    marker = tmp_path / "pwned"
    _dump(cifar10 / "data_batch_2", {b"data": CodeCarrying(marker), b"labels": []})
    with raises_one_line(r"data_batch_2: refusing to load global (posix|os|nt)\.system"):
        load_data(cifar10)
    assert not marker.exists()
    # Python 3 pickles bytes as _codecs.encode(text, "latin1"); no other codec is let through.
    (cifar10 / "data_batch_2").write_bytes(b"c_codecs\nencode\n(Vabc\nVrot13\ntR.")
    with raises_one_line("refusing _codecs.encode with 'rot13'"):
        load_data(cifar10)


def test_broken_cifar_files_are_one_line_errors(cifar10):
    good = (cifar10 / "test_batch").read_bytes()
    (cifar10 / "test_batch").write_bytes(good[: len(good) // 3])
    with raises_one_line("cannot read CIFAR file .*test_batch"):
        load_data(cifar10)
    batch = pickle.loads(good)
    _dump(cifar10 / "test_batch", {**batch, b"data": batch[b"data"].astype(np.float32)})
    with raises_one_line("test_batch: 'data' must be a uint8 array of N x 3072 pixels"):
        load_data(cifar10)
    batch[b"labels"][0] = 10
    _dump(cifar10 / "test_batch", batch)
    with raises_one_line(r"test_batch: labels must be in \[0, 10\)"):
        load_data(cifar10)
    (cifar10 / "data_batch_4").unlink()
    with raises_one_line("CIFAR file missing: .*data_batch_4"):
        load_data(cifar10)
