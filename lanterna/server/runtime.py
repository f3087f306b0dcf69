"""What every tool works with: settings, the model registry, the output store, the job queues."""

from __future__ import annotations

import logging
import threading
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass, field

import anyio
from PIL import Image

from lanterna.config import Settings
from lanterna.engines.base import Scorer
from lanterna.engines.registry import ModelRegistry
from lanterna.server.inputs import InputRules
from lanterna.server.jobs import JobManager, QueueFull
from lanterna.server.previews import PreviewBudget
from lanterna.server.store import OutputStore

log = logging.getLogger("lanterna.server")


@dataclass
class Turns:
    """Calls that take turns, one at a time, with at most `waiting` more in line (beyond: busy).

    For work outside the engine queues that still costs memory and CPU in proportion to its
    inputs (evaluate decodes up to a few hundred megapixels), so that many clients at once
    cannot add it up.
    """

    what: str
    waiting: int
    _in_line: int = 0
    _lock: anyio.Lock = field(default_factory=anyio.Lock)

    @asynccontextmanager
    async def turn(self) -> AsyncIterator[None]:
        if self._in_line > self.waiting:  # one running and `waiting` waiting
            raise QueueFull(f"busy: {self._in_line - 1} {self.what} calls are already waiting (the limit); "
                            f"try again in a little while")
        self._in_line += 1
        try:
            async with self._lock:
                yield
        finally:
            self._in_line -= 1


@dataclass
class Runtime:
    settings: Settings
    registry: ModelRegistry
    store: OutputStore
    jobs: JobManager
    rules: InputRules
    budget: PreviewBudget
    evaluations: Turns
    # Scorers are shared by every engine's worker; torch modules are not guaranteed re-entrant.
    scorer_lock: threading.RLock = field(default_factory=threading.RLock)

    @classmethod
    def create(cls, settings: Settings, registry: ModelRegistry) -> Runtime:
        return cls(
            settings=settings,
            registry=registry,
            store=OutputStore(settings.output_dir, settings.output_cap_bytes),
            jobs=JobManager(settings.queue_size, settings.finished_jobs_kept),
            rules=InputRules(tuple(settings.allow_dirs), settings.max_input_bytes, settings.max_input_pixels),
            budget=PreviewBudget(settings.preview_max_side, settings.preview_min_side,
                                 settings.preview_budget_chars),
            evaluations=Turns("evaluate", settings.queue_size),
        )

    def scorer(self) -> Scorer | None:
        return self.registry.scorer()

    def clip_scores(self, images: list[Image.Image], prompt: str) -> list[float] | None:
        """CLIP score of each image against `prompt` (None when no scorer is installed)."""
        scorer = self.scorer()
        if scorer is None or not images:
            return None
        with self.scorer_lock:
            scores = scorer.clip_scores(images, [prompt] * len(images))
        return [float(s) for s in scores]

    def close(self) -> None:
        self.jobs.close()
