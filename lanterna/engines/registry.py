"""Model registry: model name -> engine, loaded lazily and only once."""

from __future__ import annotations

import threading
from dataclasses import dataclass, field
from typing import Callable

from lanterna.engines.base import Engine, Scorer

EngineFactory = Callable[[], Engine]
ScorerFactory = Callable[[], Scorer]


class UnknownModel(ValueError):
    pass


@dataclass
class ModelRegistry:
    """Holds factories; the first `get` of a name builds and loads its engine, later ones reuse it."""

    engines: dict[str, EngineFactory] = field(default_factory=dict)
    scorers: dict[str, ScorerFactory] = field(default_factory=dict)
    default_image_model: str | None = None
    default_video_model: str | None = None
    default_scorer: str | None = None
    _built: dict[str, Engine] = field(default_factory=dict, repr=False)
    _loaded: dict[str, Engine] = field(default_factory=dict, repr=False)
    _loaded_scorers: dict[str, Scorer] = field(default_factory=dict, repr=False)
    _lock: threading.Lock = field(default_factory=threading.Lock, repr=False)

    def add_engine(self, name: str, factory: EngineFactory) -> None:
        self.engines[name] = factory
        self._built.pop(name, None)
        self._loaded.pop(name, None)

    def add_scorer(self, name: str, factory: ScorerFactory) -> None:
        self.scorers[name] = factory
        self._loaded_scorers.pop(name, None)

    def names(self) -> list[str]:
        return list(self.engines)

    def engine(self, name: str | None, capability: str = "t2i") -> Engine:
        """The engine object (built once, cheap: weights are not loaded yet)."""
        name = name or self._default_for(capability)
        if name not in self.engines:
            allowed = ", ".join(sorted(self.engines)) or "(none registered)"
            raise UnknownModel(f"model: unknown model {name!r}; available: {allowed}")
        with self._lock:
            if name not in self._built:
                self._built[name] = self.engines[name]()
            return self._built[name]

    def get(self, name: str | None, capability: str = "t2i") -> Engine:
        """The engine with its weights loaded (loading happens once, on first use)."""
        name = name or self._default_for(capability)
        engine = self.engine(name, capability)
        with self._lock:
            if name not in self._loaded:
                engine.load()
                self._loaded[name] = engine
        return engine

    def scorer(self, name: str | None = None) -> Scorer | None:
        name = name or self.default_scorer
        if name is None:
            return None
        if name not in self.scorers:
            allowed = ", ".join(sorted(self.scorers)) or "(none registered)"
            raise UnknownModel(f"scorer: unknown scorer {name!r}; available: {allowed}")
        with self._lock:
            if name not in self._loaded_scorers:
                self._loaded_scorers[name] = self.scorers[name]()
            return self._loaded_scorers[name]

    def is_loaded(self, name: str) -> bool:
        return name in self._loaded

    def _default_for(self, capability: str) -> str:
        default = self.default_video_model if capability == "t2v" else self.default_image_model
        if default is None:
            raise UnknownModel(f"model: no default model for {capability!r}; pass `model`")
        return default
