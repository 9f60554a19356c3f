"""Where a run's time goes: wall seconds per phase, and every XLA compilation, counted.

``fit`` reports both in its summary (``"profile"``, ``"compiled_programs"``): the phases are the
wall time of data loading, building (model checks, optimizer, steps), initialisation, training,
evaluation, checkpoints and plots; the compilations come from ``jax.monitoring``'s compile
events (emitted by JAX 0.4.3x through 0.12, each naming the jitted function), so tiny programs
that eager array code compiles behind the user's back are counted too. Programs loaded from the
persistent compilation cache are counted apart (``cache_hits``): they cost a file read, not a
compile.
"""

from __future__ import annotations

import collections
import contextlib
import time
from collections.abc import Iterator

_ACTIVE: list[CompileLog] = []
_INSTALLED = False


def _install() -> None:
    global _INSTALLED
    if _INSTALLED:
        return
    from jax import monitoring

    monitoring.register_event_duration_secs_listener(_on_duration)
    monitoring.register_event_listener(_on_event)
    _INSTALLED = True


def _on_duration(event: str, seconds: float, **kwargs) -> None:
    if event.endswith("/backend_compile_duration"):
        name = str(kwargs.get("fun_name", "?"))
        for log in _ACTIVE:
            log.compiled(name, seconds)


def _on_event(event: str, **kwargs) -> None:
    if event.endswith("/compilation_cache/cache_hits"):
        for log in _ACTIVE:
            log.cache_hits += 1


class CompileLog:
    """XLA compilations made while it is active (``with CompileLog() as log: ...``)."""

    def __init__(self):
        self.programs: dict[str, list] = collections.defaultdict(lambda: [0, 0.0])
        self.cache_hits = 0

    def compiled(self, name: str, seconds: float) -> None:
        entry = self.programs[name]
        entry[0] += 1
        entry[1] += seconds

    @property
    def count(self) -> int:
        return sum(count for count, _ in self.programs.values())

    @property
    def seconds(self) -> float:
        return sum(seconds for _, seconds in self.programs.values())

    def report(self) -> dict:
        """{"count", "seconds", "cache_hits", "by_function": {name: {"count", "seconds"}}}."""
        by_function = {
            name: {"count": count, "seconds": round(seconds, 4)}
            for name, (count, seconds) in sorted(self.programs.items(), key=lambda kv: -kv[1][1])
        }
        return {
            "count": self.count,
            "seconds": round(self.seconds, 4),
            "cache_hits": self.cache_hits,
            "by_function": by_function,
        }

    def __enter__(self) -> CompileLog:
        _install()
        _ACTIVE.append(self)
        return self

    def __exit__(self, *exc) -> None:
        _ACTIVE.remove(self)


class Phases:
    """Wall seconds per named phase: ``with phases("train"): ...`` (re-entering adds up)."""

    def __init__(self):
        self.seconds: dict[str, float] = collections.defaultdict(float)
        self.started = time.perf_counter()  # the run's wall clock starts with its phases

    @contextlib.contextmanager
    def __call__(self, name: str) -> Iterator[None]:
        started = time.perf_counter()
        try:
            yield
        finally:
            self.seconds[name] += time.perf_counter() - started

    def report(self) -> dict[str, float]:
        return {name: round(seconds, 4) for name, seconds in self.seconds.items()}
