"""The CLI's core commands: tables, JSON, and one-line errors with exit status 2."""

from __future__ import annotations

import json

import pytest

from mobilenets.cli import main


def test_cost_prints_the_table_with_the_paper_total(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["cost", "mobilenet_v2"]) == 0
    out = capsys.readouterr().out
    assert "300,774,272" in out
    assert "features.3.depthwise.conv" in out
    assert "depthwise" in out and "pointwise" in out


def test_cost_json_and_compare_standard(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["cost", "mobilenet_v1", "--resolution", "160", "--json"]) == 0
    data = json.loads(capsys.readouterr().out)
    assert data["total_macs"] == 290_675_200
    assert len(data["separable_pairs"]) == 13
    assert main(["cost", "mobilenet_v1", "--width-mult", "0.5", "--compare-standard"]) == 0
    out = capsys.readouterr().out
    assert "1/n_c'+1/f^2" in out and "all pairs" in out


@pytest.mark.slow
def test_models_lists_the_registry(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["models", "--json"]) == 0
    rows = {r["model"]: r for r in json.loads(capsys.readouterr().out)["models"]}
    assert rows["mobilenet_v2"]["macs"] == 300_774_272
    assert rows["mobilenet_v1"]["params"] == 4_231_976


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["cost", "resnet50"], "unknown model 'resnet50'"),
        (["cost", "mobilenet_v2", "--width-mult", "0"], "width_mult must be a positive"),
        (["cost", "mobilenet_v2", "--width-mult", "-1"], "width_mult must be a positive"),
        (["cost", "mobilenet_v2", "--resolution", "16"], "too small"),
        (["cost", "mobilenet_v2", "--num-classes", "-3"], "num_classes must be a positive"),
        (["cost", "mobilenet_v2", "--num-classes", "2.5"], "invalid int value"),
    ],
)
def test_bad_input_is_one_line_and_exit_2(
    argv: list[str], message: str, capsys: pytest.CaptureFixture[str]
) -> None:
    try:
        code = main(argv)
    except SystemExit as e:  # argparse's own usage errors
        code = e.code
    assert code == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith("error: ")
    assert message in err
    assert "Traceback" not in err


def test_train_flags_are_generated_from_the_config_fields() -> None:
    """Every TrainConfig field but the test-only stop_after_epoch is a flag; a flag left out
    stays None so the dataclass keeps the defaults; booleans take --x / --no-x."""
    import dataclasses

    from mobilenets.cli import build_parser
    from mobilenets.train.recipe import TrainConfig

    parser = build_parser()
    args = parser.parse_args(["train"])
    fields = {f.name for f in dataclasses.fields(TrainConfig)} - {"stop_after_epoch"}
    assert fields <= set(vars(args)) and all(getattr(args, name) is None for name in fields)
    args = parser.parse_args(
        ["train", "--no-augment", "--workers", "2", "--lr", "0.1", "--optimizer", "rmsprop"]
    )
    assert (args.augment, args.num_workers, args.lr, args.optimizer) == (False, 2, 0.1, "rmsprop")
    assert not hasattr(args, "stop_after_epoch")
