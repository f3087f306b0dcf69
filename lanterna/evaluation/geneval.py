"""ShapesGenEval: GenEval (Ghosh et al., NeurIPS 2023 Datasets and Benchmarks) on the Shapes World.

Seven tasks (shared WORLD.md), each a fixed set of prompts drawn from a fixed seed, several images
per prompt from fixed seeds. An image passes when the oracle finds EVERY requirement of its
prompt holds (lanterna/world/judge.py); a task's score is the fraction of its images that pass
and the overall score is the mean over tasks. The video variant scores motion, object
persistence, temporal flicker and (given a scorer) per-frame CLIP score.

The model is a callable, `generate(prompts, seeds) -> PIL images` (one image per prompt-seed
pair), so this module knows nothing of engines.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from functools import lru_cache

import numpy as np
from PIL import Image

from lanterna.world.judge import Verdict, judge_batch, judge_video_detections
from lanterna.world.oracle import as_array_batch, detect_batch
from lanterna.world.sampling import IMAGE_TASKS, VIDEO_TASKS, distinct_captions
from lanterna.world.spec import Requirements

TASKS: tuple[str, ...] = IMAGE_TASKS
PROMPT_SEED = 20_240_617  # the prompt sets; never change it, or scores stop being comparable
MAX_PROMPTS = 200  # prompts a task can have (novel has 240 distinct captions)
MAX_IMAGES_PER_PROMPT = 100
BATCH = 16  # prompt-seed pairs per call of the generator

Generate = Callable[[list[str], list[int]], list[Image.Image]]
GenerateVideo = Callable[[list[str], list[int]], list[list[Image.Image]]]
Progress = Callable[[int, int], None]


@dataclass(frozen=True)
class Prompt:
    task: str
    index: int
    text: str
    requirements: Requirements


@lru_cache(maxsize=None)
def task_prompts(task: str) -> tuple[Prompt, ...]:
    """The task's fixed prompts, MAX_PROMPTS of them, all different (the first n are used)."""
    tasks = TASKS + VIDEO_TASKS
    if task not in tasks:
        raise ValueError(f"unknown task {task!r}; tasks: {', '.join(tasks)}")
    rng = np.random.default_rng([PROMPT_SEED, tasks.index(task)])
    drawn = distinct_captions(rng, task, MAX_PROMPTS)
    return tuple(Prompt(task, i, text, req) for i, (text, req) in enumerate(drawn.items()))


def prompt_set(task: str, n: int = 50) -> list[Prompt]:
    if not 1 <= n <= MAX_PROMPTS:
        raise ValueError(f"prompts per task must be 1 to {MAX_PROMPTS}, got {n}")
    return list(task_prompts(task)[:n])


def seeds_for(task: str, prompt_index: int, k: int) -> list[int]:
    """Fixed seeds: image j of prompt i of a task."""
    number = (TASKS + VIDEO_TASKS).index(task) + 1
    return [number * 100_000 + prompt_index * MAX_IMAGES_PER_PROMPT + j for j in range(k)]


def check_counts(prompts_per_task: int, images_per_prompt: int) -> None:
    if not 1 <= prompts_per_task <= MAX_PROMPTS:
        raise ValueError(f"prompts_per_task must be 1 to {MAX_PROMPTS}, got {prompts_per_task}")
    if not 1 <= images_per_prompt <= MAX_IMAGES_PER_PROMPT:
        raise ValueError(f"images_per_prompt must be 1 to {MAX_IMAGES_PER_PROMPT}, got {images_per_prompt}")


def pick_tasks(tasks: Sequence[str] | None, allowed: tuple[str, ...]) -> list[str]:
    chosen = list(tasks) if tasks is not None else list(allowed)
    unknown = [t for t in chosen if t not in allowed]
    if unknown or not chosen:
        raise ValueError(f"tasks must be among {', '.join(allowed)}, got {chosen}")
    return chosen


def jobs(tasks: list[str], prompts_per_task: int, images_per_prompt: int) -> list[tuple[Prompt, int]]:
    """Every (prompt, seed) pair, task by task."""
    return [(prompt, seed)
            for task in tasks for prompt in prompt_set(task, prompts_per_task)
            for seed in seeds_for(task, prompt.index, images_per_prompt)]


def generate_all(generate: Callable, pairs: list[tuple[Prompt, int]], progress: Progress | None,
                 batch: int) -> list:
    out: list = []
    for start in range(0, len(pairs), batch):
        chunk = pairs[start:start + batch]
        made = list(generate([p.text for p, _ in chunk], [s for _, s in chunk]))
        if len(made) != len(chunk):
            raise ValueError(f"the generator returned {len(made)} results for {len(chunk)} prompts")
        out.extend(made)
        if progress is not None:
            progress(len(out), len(pairs))
    return out


def as_uint8(image) -> np.ndarray:
    if isinstance(image, Image.Image):
        return np.asarray(image.convert("RGB"), dtype=np.uint8)
    return np.asarray(image, dtype=np.uint8)


def judge_images(images: list, requirements: list[Requirements]) -> list[Verdict]:
    """Verdicts in order, judging same-size images together."""
    arrays = [as_uint8(im) for im in images]
    verdicts: list[Verdict | None] = [None] * len(arrays)
    for shape in {a.shape for a in arrays}:
        where = [i for i, a in enumerate(arrays) if a.shape == shape]
        for i, v in zip(where, judge_batch(np.stack([arrays[i] for i in where]),
                                           [requirements[i] for i in where])):
            verdicts[i] = v
    return verdicts  # type: ignore[return-value]


def group_details(pairs: list[tuple[Prompt, int]], rows: list[dict]) -> list[dict]:
    """One entry per prompt: its seeds and each result's fields as lists."""
    details: dict[tuple[str, int], dict] = {}
    for (prompt, seed), row in zip(pairs, rows):
        entry = details.setdefault((prompt.task, prompt.index),
                                   {"task": prompt.task, "prompt": prompt.text, "seeds": []})
        entry["seeds"].append(seed)
        for key, value in row.items():
            entry.setdefault(key, []).append(value)
    return list(details.values())


def task_scores(pairs: list[tuple[Prompt, int]], passed: list[bool], tasks: list[str]) -> tuple[dict, dict]:
    counts = {t: {"passed": 0, "images": 0} for t in tasks}
    for (prompt, _), ok in zip(pairs, passed):
        counts[prompt.task]["images"] += 1
        counts[prompt.task]["passed"] += int(ok)
    return {t: c["passed"] / c["images"] for t, c in counts.items()}, counts


def run_geneval(generate: Generate, prompts_per_task: int = 50, images_per_prompt: int = 4,
                tasks: Sequence[str] | None = None, progress: Progress | None = None,
                batch: int = BATCH) -> dict:
    """ShapesGenEval of an image generator.

    Returns {"overall": mean of the task scores, "tasks": {task: score}, "counts": {task:
    {"passed", "images"}}, "details": one entry per prompt (task, prompt, seeds, passed,
    failures)}.
    """
    check_counts(prompts_per_task, images_per_prompt)
    chosen = pick_tasks(tasks, TASKS)
    pairs = jobs(chosen, prompts_per_task, images_per_prompt)
    images = generate_all(generate, pairs, progress, batch)
    verdicts = judge_images(images, [p.requirements for p, _ in pairs])
    passed = [v.passed for v in verdicts]
    scores, counts = task_scores(pairs, passed, chosen)
    details = group_details(pairs, [{"passed": v.passed, "failures": v.failures} for v in verdicts])
    return {"overall": float(np.mean(list(scores.values()))), "tasks": scores, "counts": counts,
            "details": details}


# ---------------------------------------------------------------- video

def temporal_flicker(frames: np.ndarray) -> float:
    """VBench (Huang et al. 2024): (255 - mean |frame[t+1] - frame[t]|) / 255, on uint8 frames."""
    x = frames.astype(np.float64)
    return float((255.0 - np.abs(x[1:] - x[:-1]).mean()) / 255.0)


def clip_scorer(scorer) -> Callable[[list[Image.Image], list[str]], list[float]] | None:
    """A Scorer (with .clip_scores) or a plain callable(images, prompts) -> scores."""
    if scorer is None:
        return None
    return scorer.clip_scores if hasattr(scorer, "clip_scores") else scorer


def video_outcome(verdict: Verdict) -> dict[str, bool]:
    """A video's verdict as videoeval counts it: passed, motions all held, objects persisted."""
    return {"passed": verdict.passed,
            "motion": all(c.passed for c in verdict.checks if c.kind == "motion"),
            "persistence": all(c.passed for c in verdict.checks if c.kind == "count")}


def run_videoeval(generate_video: GenerateVideo, prompts_per_task: int = 50,
                  images_per_prompt: int = 4, tasks: Sequence[str] | None = None,
                  progress: Progress | None = None, scorer=None, batch: int = 4) -> dict:
    """ShapesGenEval's video variant; `images_per_prompt` videos for each prompt.

    Returns the fractions of videos that pass every requirement (`passed`), whose asked motions
    all hold (`motion_accuracy`) and whose asked objects are found in at least 90 % of frames
    (`persistence`); the mean VBench `temporal_flicker`; with a scorer, the mean per-frame
    `clip_score`; plus "counts" and per-prompt "details".
    """
    check_counts(prompts_per_task, images_per_prompt)
    chosen = pick_tasks(tasks, VIDEO_TASKS)
    pairs = jobs(chosen, prompts_per_task, images_per_prompt)
    videos = generate_all(generate_video, pairs, progress, batch)
    score_clip = clip_scorer(scorer)
    rows = []
    for (prompt, _), video in zip(pairs, videos):
        frames = as_array_batch([as_uint8(f) for f in video])
        verdict = judge_video_detections(detect_batch(frames), prompt.requirements)
        row = {**video_outcome(verdict), "temporal_flicker": temporal_flicker(frames),
               "failures": verdict.failures}
        if score_clip is not None:
            pil = [f if isinstance(f, Image.Image) else Image.fromarray(f) for f in video]
            row["clip_score"] = float(np.mean(score_clip(pil, [prompt.text] * len(pil))))
        rows.append(row)
    result = {
        "passed": float(np.mean([r["passed"] for r in rows])),
        "motion_accuracy": float(np.mean([r["motion"] for r in rows])),
        "persistence": float(np.mean([r["persistence"] for r in rows])),
        "temporal_flicker": float(np.mean([r["temporal_flicker"] for r in rows])),
        "counts": {"videos": len(rows), "passed": sum(r["passed"] for r in rows),
                   "motion": sum(r["motion"] for r in rows),
                   "persistence": sum(r["persistence"] for r in rows)},
    }
    if score_clip is not None:
        result["clip_score"] = float(np.mean([r["clip_score"] for r in rows]))
    result["details"] = group_details(pairs, rows)
    return result
