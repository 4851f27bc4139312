"""Evaluation and prediction: counts that add up, the held-out split a run was tested on,
single images preprocessed as the run records, and one-line errors for bad runs and images."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import torch
from conftest import copy_run
from PIL import Image
from sklearn.datasets import load_digits

from mobilenets.cli import main
from mobilenets.data import Renormalized, eval_transform, load_image
from mobilenets.errors import MobileNetError
from mobilenets.evaluation.evaluate import evaluate
from mobilenets.evaluation.predict import predict
from mobilenets.evaluation.tta import TTA_VIEWS, TestTimeAugmentation
from mobilenets.runs import load_run, read_run_info
from mobilenets.train.metrics import Evaluation, Tally


@pytest.fixture(scope="module")
def run(trained_v2: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A copy of the session's small V2, trained on the digits (16 px) to recognise most of
    them (evaluate writes its figure into the run)."""
    return copy_run(trained_v2, tmp_path_factory.mktemp("evaluate") / "run")


def test_tally_counts_confusion_top5_and_adds_up_over_shards() -> None:
    logits = torch.tensor(
        [[5.0, 1, 0, 0, 0, 0, 0], [0, 5.0, 1, 0, 0, 0, 0], [1, 5.0, 0, 0, 0, 0, 0],
         [4, 3, 0, 2, 1, 0.5, 5.0]]
    )  # fmt: skip
    labels = torch.tensor([0, 1, 0, 2])
    whole = Tally.zeros(7)
    whole.add(logits, labels)
    first, second = Tally.zeros(7), Tally.zeros(7)
    first.add(logits[:2], labels[:2])
    second.add(logits[2:], labels[2:])
    assert torch.equal(first.confusion + second.confusion, whole.confusion)
    names = [f"c{i}" for i in range(7)]
    result = Evaluation.from_tally(whole, names)
    assert result.num_images == 4 and result.top1 == 0.5
    # Image 3 (true 0, predicted 1) has class 0 second; image 4 has class 2 last but one.
    assert result.top5 == 0.75
    assert result.per_class["c0"] == 0.5 and result.per_class["c1"] == 1.0
    assert result.per_class["c2"] == 0.0
    assert result.confusion[0][1] == 1 and result.confusion[2][6] == 1


def test_top5_is_left_out_with_five_classes_or_fewer() -> None:
    tally = Tally.zeros(3)
    tally.add(torch.eye(3), torch.tensor([0, 1, 1]))
    assert Evaluation.from_tally(tally, ["a", "b", "c"]).top5 is None


def test_evaluate_reproduces_the_accuracy_training_measured(run: Path) -> None:
    result = evaluate(run)
    info = read_run_info(run)
    assert result.num_images == 359  # the digits' held-out fifth
    assert result.top1 == pytest.approx(info.metrics["test_top1"], abs=1e-9)
    assert result.top1 > 0.85
    assert result.top5 is not None and result.top5 >= result.top1
    assert sum(map(sum, result.confusion)) == 359
    assert (run / "confusion_matrix.png").read_bytes()[:4] == b"\x89PNG"


def test_evaluate_cli_json_and_table(run: Path, tmp_path: Path, capsys) -> None:
    plot = tmp_path / "cm.png"
    assert main(["evaluate", str(run), "--json", "--plot", str(plot)]) == 0
    data = json.loads(capsys.readouterr().out)
    assert set(data["per_class"]) == {str(d) for d in range(10)}
    assert plot.is_file()
    assert main(["evaluate", str(run)]) == 0
    out = capsys.readouterr().out
    assert "top-1" in out and "top-5" in out and "Per-class accuracy" in out


def test_test_time_views_are_the_mirrors_and_turns_of_the_image() -> None:
    """flips: the image and its three mirror images (a half turn among them); dihedral: those
    and their transposes, the eight symmetries of a square, all different for an image that
    has none. The answer is the log of the mean softmax over the views."""
    image = torch.arange(16.0).reshape(1, 1, 4, 4)
    for name, count in (("flips", 4), ("dihedral", 8)):
        views = [view(image) for view in TTA_VIEWS[name]]
        assert len({tuple(v.flatten().tolist()) for v in views}) == count
        assert any(torch.equal(v, image.rot90(1, (-2, -1))) for v in views) == (count == 8)
    seen: list[torch.Tensor] = []

    def model(x: torch.Tensor) -> torch.Tensor:  # logits that depend on the view
        seen.append(x)
        return torch.stack([x[:, 0, 0, 0], x[:, 0, 0, -1]], dim=1)

    out = TestTimeAugmentation(model, "flips")(image)
    mean = sum(model(v).softmax(-1) for v in seen[:4]) / 4
    assert len(seen) == 8 and torch.allclose(out.exp(), mean)
    assert torch.allclose(out.exp().sum(-1), torch.ones(1))
    with pytest.raises(MobileNetError, match="must be square"):
        TestTimeAugmentation(model, "dihedral")(torch.zeros(1, 1, 4, 6))
    with pytest.raises(MobileNetError, match="unknown test-time views"):
        TestTimeAugmentation(model, "crops")


def test_evaluate_averages_test_time_views(run: Path, capsys) -> None:
    """``--tta`` scores the mean answer over the views, recorded in the JSON; a view the digits
    never trained on (their mirror images) lowers the score, as the help warns."""
    plain = evaluate(run)
    assert main(["evaluate", str(run), "--tta", "flips", "--json"]) == 0
    data = json.loads(capsys.readouterr().out)
    assert data["tta"] == "flips" and data["num_images"] == plain.num_images == 359
    assert data["top1"] < plain.top1
    assert main(["evaluate", str(run), "--tta", "dihedral"]) == 0
    assert "mean over the dihedral test-time views" in capsys.readouterr().out


def test_predict_averages_test_time_views(run: Path, digit_pngs, capsys) -> None:
    """``predict --tta`` gives each image the run's mean probabilities over the views (what
    ``evaluate --tta`` scores), and the JSON and the table say which views."""
    paths = [p for p, _ in digit_pngs[:4]]
    report = predict(run, paths, top_k=10, tta="flips")
    model, info = load_run(run)
    transform = eval_transform(info.mean, info.std, info.input_size, info.crop_pct)
    images = torch.stack([transform(load_image(p)) for p in paths])
    with torch.no_grad():
        expected = TestTimeAugmentation(model.eval(), "flips")(images).exp()
    for row, probabilities in zip(report.predictions, expected, strict=True):
        ranked = probabilities.sort(descending=True)
        assert row.classes == [info.class_names[i] for i in ranked.indices.tolist()]
        assert row.probabilities == pytest.approx(ranked.values.tolist(), abs=1e-5)
    assert report.tta == "flips" and predict(run, paths).tta is None
    assert main(["predict", str(run), *map(str, paths), "--tta", "dihedral", "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["tta"] == "dihedral"
    assert main(["predict", str(run), str(paths[0]), "--tta", "flips"]) == 0
    assert "the mean over the flips test-time views" in capsys.readouterr().out


def test_predict_agrees_with_the_labels_of_digit_pngs(
    run: Path, digit_pngs: list[tuple[Path, int]]
) -> None:
    predictions = predict(run, [p for p, _ in digit_pngs], top_k=3).predictions
    assert [Path(p.image) for p in predictions] == [p for p, _ in digit_pngs]
    for p in predictions:
        assert len(p.classes) == 3 and p.probabilities == sorted(p.probabilities, reverse=True)
        assert 0 < sum(p.probabilities) <= 1 + 1e-6
    correct = sum(
        p.classes[0] == str(label) for p, (_, label) in zip(predictions, digit_pngs, strict=True)
    )
    assert correct >= 0.8 * len(digit_pngs)


def test_predict_cli_table_and_json(run: Path, digit_pngs, capsys) -> None:
    path = digit_pngs[0][0]
    assert main(["predict", str(run), str(path), "--top-k", "2", "--json"]) == 0
    data = json.loads(capsys.readouterr().out)["predictions"]
    assert data[0]["image"] == str(path) and len(data[0]["top"]) == 2
    assert data[0]["error"] is None
    assert main(["predict", str(run), str(path)]) == 0
    assert "probability" in capsys.readouterr().out


def test_bad_images_and_runs_are_one_line_errors(
    run: Path, digit_pngs, tmp_path: Path, capsys
) -> None:
    good = str(digit_pngs[0][0])
    truncated = tmp_path / "truncated.png"
    truncated.write_bytes(Path(good).read_bytes()[:40])
    not_image = tmp_path / "notes.png"
    not_image.write_text("hello")
    incomplete = tmp_path / "incomplete"
    shutil.copytree(run, incomplete)
    (incomplete / "model.safetensors").unlink()
    other_arch = tmp_path / "other"
    shutil.copytree(run, other_arch)
    meta = json.loads((other_arch / "model.json").read_text())
    meta["model"] = "mobilenet_v1"  # the run is a V2
    (other_arch / "model.json").write_text(json.dumps(meta))
    # An image that cannot be read is a row with its error, not the end: exit status 1.
    rows = [
        (["predict", str(run), good, str(truncated)], "cannot read image"),
        (["predict", str(run), str(not_image)], "cannot read image"),
        (["predict", str(run), str(tmp_path / "missing.png")], "image not found"),
    ]
    for argv, message in rows:
        assert main([*argv, "--json"]) == 1
        data = json.loads(capsys.readouterr().out)["predictions"]
        assert message in data[-1]["error"] and data[-1]["top"] == [], (argv, data)
    cases = [
        (["predict", str(incomplete), good], "model.safetensors is missing"),
        (["predict", str(other_arch), good], "do not fit the model"),
        (["evaluate", str(tmp_path / "nothing")], "does not exist"),
        (["evaluate", str(run), "--data", str(tmp_path / "nothing")], "data not found"),
    ]
    for argv, message in cases:
        assert main(argv) == 2
        err = capsys.readouterr().err
        assert message in err and err.count("\n") == 1, (argv, err)


def test_evaluate_refuses_a_dataset_with_other_classes(run: Path, tmp_path: Path) -> None:
    for name in ("cat", "dog"):
        (tmp_path / name).mkdir()
        for i in range(3):
            Image.new("RGB", (16, 16), (i * 40, 0, 0)).save(tmp_path / name / f"{i}.png")
    with pytest.raises(MobileNetError, match="has classes"):
        evaluate(run, data=tmp_path)


def test_renormalized_re_expresses_pixels_in_the_runs_normalisation() -> None:
    pixels = torch.rand(4, 3, 8, 8)
    own, run = ((0.2, 0.3, 0.4), (0.5, 0.6, 0.7)), ((0.485, 0.456, 0.406), (0.229, 0.224, 0.225))

    def normalise(x: torch.Tensor, mean: tuple, std: tuple) -> torch.Tensor:
        return (x - torch.tensor(mean).view(-1, 1, 1)) / torch.tensor(std).view(-1, 1, 1)

    dataset = [(normalise(p, *own), i) for i, p in enumerate(pixels)]
    renormalized = Renormalized(dataset, *own, *run)
    for i, p in enumerate(pixels):
        x, label = renormalized[i]
        assert label == i and torch.allclose(x, normalise(p, *run), atol=1e-6)


def test_evaluate_on_an_image_folder_of_digits(run: Path, tmp_path: Path) -> None:
    digits = load_digits()
    for c in range(10):
        (tmp_path / str(c)).mkdir()
        for i, img in enumerate(digits.images[digits.target == c][:10]):
            pixels = (img * 255 / 16).round().astype("uint8")
            Image.fromarray(pixels, mode="L").save(tmp_path / str(c) / f"{i}.png")
    result = evaluate(run, data=tmp_path, plot=tmp_path / "cm.png")
    assert result.num_images == 20
    assert result.top1 >= 0.8  # 20 PNGs, normalised as the run was, not as the folder is
