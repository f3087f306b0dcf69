"""`lanterna bench geneval|videoeval` on tiny models saved to a folder: JSON out, every task scored."""

from __future__ import annotations

import json

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


def test_geneval_best_of(tiny_weights, capsys):
    assert main(["bench", "geneval", "--prompts-per-task", "1", "--images-per-prompt", "1",
                 "--steps", "1", "--best-of", "2", "--tasks", "colors"]) == 0
    report = json.loads(capsys.readouterr().out)
    assert report["best_of"] == 2 and list(report["tasks"]) == ["colors"]


def test_videoeval_json(tiny_weights, capsys):
    assert main(["bench", "videoeval", "--prompts-per-task", "1", "--images-per-prompt", "1",
                 "--steps", "1"]) == 0
    report = json.loads(capsys.readouterr().out)
    assert {"motion_accuracy", "persistence", "temporal_flicker", "clip_score"} <= set(report)


def test_runs_of_same_prompt_batch_consecutive_pairs():
    runs = bench_cli.runs_of_same_prompt(["a", "a", "b", "a"], [1, 2, 3, 4])
    assert runs == [("a", [1, 2]), ("b", [3]), ("a", [4])]
