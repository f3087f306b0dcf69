"""Shapes World v1 (shared WORLD.md): scenes, renderer, caption grammar, sampling and the oracle."""

from lanterna.world.captions import caption_of, parse_caption, try_parse
from lanterna.world.judge import Check, Track, Verdict, judge, judge_batch
from lanterna.world.oracle import DetectedObject, detect, detect_batch
from lanterna.world.render import render, render_video
from lanterna.world.spec import ObjectRequirement, Relation, Requirements, Scene, SceneObject

__all__ = ["caption_of", "parse_caption", "try_parse", "Check", "Track", "Verdict", "judge",
           "judge_batch", "DetectedObject", "detect", "detect_batch", "render", "render_video",
           "ObjectRequirement", "Relation", "Requirements", "Scene", "SceneObject"]
