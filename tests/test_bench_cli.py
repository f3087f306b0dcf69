"""`lanterna bench geneval|videoeval` on tiny models saved to a folder: JSON out, every task scored."""

from __future__ import annotations

import json
from types import SimpleNamespace

import pytest

from lanterna import bench_cli
from lanterna.cli import main
from tests.tiny_models import save_tiny_bundle


@pytest.fixture(scope="module")
def tiny_weights(tmp_path_factory):
    directory = save_tiny_bundle(tmp_path_factory.mktemp("weights"))
    mp = pytest.MonkeyPatch()
    mp.setenv("LANTERNA_WEIGHTS_DIR", str(directory))
    yield directory
    mp.undo()


def test_geneval_json(tiny_weights, capsys):
    assert main(["bench", "geneval", "--prompts-per-task", "1", "--images-per-prompt", "2",
                 "--steps", "2"]) == 0
    report = json.loads(capsys.readouterr().out)
    assert set(report["tasks"]) == {"single_object", "two_objects", "counting", "colors",
                                    "position", "color_attr", "novel"}
    assert 0 <= report["overall"] <= 1 and report["model"] == "shapes-dit" and report["steps"] == 2


def test_shift_overrides_the_cards_and_is_reported(tiny_weights, capsys):
    args = ["bench", "geneval", "--prompts-per-task", "1", "--images-per-prompt", "1", "--steps", "2",
            "--tasks", "colors"]
    assert main(args) == 0 and main(args + ["--shift", "3"]) == 0
    printed = [json.loads(chunk) for chunk in capsys.readouterr().out.replace("}\n{", "}\0{").split("\0")]
    assert [p["shift"] for p in printed] == [1.0, 3.0]  # the tiny card sets none: 1
    with pytest.raises(SystemExit, match="not a bundled-format model"):  # a diffusers folder's, say
        bench_cli.loaded_pipeline(SimpleNamespace(name="sd15", pipeline=object(), load=lambda: None), "--shift")


def test_composition_overrides_the_cards_and_is_reported(tiny_weights, capsys):
    args = ["bench", "geneval", "--prompts-per-task", "2", "--images-per-prompt", "1", "--steps", "2",
            "--tasks", "color_attr"]
    assert main(args) == 0 and main(args + ["--composition", "1.5", "0.6"]) == 0
    assert main(args + ["--composition", "0", "0.6"]) == 0
    printed = [json.loads(chunk) for chunk in capsys.readouterr().out.replace("}\n{", "}\0{").split("\0")]
    assert [p["composition"] for p in printed] == [None, {"weight": 1.5, "from_t": 0.6}, None]
    with pytest.raises(SystemExit, match="--composition: .*from_t"):
        main(args + ["--composition", "1", "2"])


def test_geneval_best_of(tiny_weights, capsys):
    assert main(["bench", "geneval", "--prompts-per-task", "1", "--images-per-prompt", "1",
                 "--steps", "1", "--best-of", "2", "--tasks", "colors"]) == 0
    report = json.loads(capsys.readouterr().out)
    assert report["best_of"] == 2 and list(report["tasks"]) == ["colors"]


def test_record_appends_the_result_to_the_model_card(tiny_weights, capsys):
    from lanterna.engines import weights

    args = ["bench", "geneval", "--prompts-per-task", "1", "--images-per-prompt", "1", "--steps", "1",
            "--tasks", "colors", "--record"]
    assert main(args) == 0 and main(args[:-1] + ["--best-of", "2", "--record"]) == 0
    printed = [json.loads(chunk) for chunk in capsys.readouterr().out.replace("}\n{", "}\0{").split("\0")]
    entries = weights.read_card("shapes-dit", tiny_weights)["benchmarks"][-2:]
    assert [e["best_of"] for e in entries] == [1, 2]
    assert [e["overall"] for e in entries] == [p["overall"] for p in printed]
    assert entries[0]["bench"] == "geneval" and entries[0]["prompts_per_task"] == 1


def test_videoeval_json(tiny_weights, capsys):
    assert main(["bench", "videoeval", "--prompts-per-task", "1", "--images-per-prompt", "1",
                 "--steps", "1"]) == 0
    report = json.loads(capsys.readouterr().out)
    assert {"motion_accuracy", "persistence", "temporal_flicker", "clip_score"} <= set(report)


def test_runs_of_same_prompt_batch_consecutive_pairs():
    runs = bench_cli.runs_of_same_prompt(["a", "a", "b", "a"], [1, 2, 3, 4])
    assert runs == [("a", [1, 2]), ("b", [3]), ("a", [4])]


def test_layout_empty_gives_a_grounded_model_the_empty_map_and_is_reported(tmp_path, monkeypatch, capsys):
    from lanterna.world.grounding import LAYOUT_CHANNELS

    directory = save_tiny_bundle(tmp_path, kinds=("unet",), layout_channels=LAYOUT_CHANNELS)
    monkeypatch.setenv("LANTERNA_WEIGHTS_DIR", str(directory))
    args = ["bench", "geneval", "--model", "shapes-unet", "--prompts-per-task", "1",
            "--images-per-prompt", "1", "--steps", "1", "--tasks", "counting"]
    assert main(args) == 0 and main(args + ["--layout", "empty"]) == 0
    printed = [json.loads(chunk) for chunk in capsys.readouterr().out.replace("}\n{", "}\0{").split("\0")]
    assert [p["layout"] for p in printed] == ["planned", "empty"]
    parsed = SimpleNamespace(model="shapes-unet", threads=None, shift=None, composition=None, layout="empty")
    engine, _ = bench_cli.load(parsed, "t2i")
    maps = engine.pipeline.layout_maps("two red circles", [0, 1], (4, 16, 16))
    assert maps.shape[1] == LAYOUT_CHANNELS and not maps.any()
    monkeypatch.setenv("LANTERNA_WEIGHTS_DIR", str(save_tiny_bundle(tmp_path / "plain", kinds=("unet",))))
    with pytest.raises(SystemExit, match="--layout: shapes-unet is not a grounded model"):
        bench_cli.load(parsed, "t2i")
