"""Live training progress: a rich progress bar on a terminal, a plain line every few seconds otherwise."""

from __future__ import annotations

import math
import time
from types import TracebackType

from rich import get_console
from rich.console import Console
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    TaskID,
    TextColumn,
    TimeElapsedColumn,
    TimeRemainingColumn,
)

LINE_INTERVAL_S = 5.0


class TrainProgress:
    """Shows env steps, steps/s and the recent episodic return while an agent trains.

    Use as a context manager around ``learn``; call :meth:`update` from the training callback and
    :meth:`note` for messages such as evaluation results. On a terminal this is a rich bar (notes are
    printed above it); when stdout is not a terminal, a plain line every ``line_interval_s`` seconds and
    at the end. Nothing is shown when ``enabled`` is false.
    """

    def __init__(
        self,
        total_steps: int,
        description: str,
        enabled: bool = True,
        console: Console | None = None,
        line_interval_s: float = LINE_INTERVAL_S,
    ) -> None:
        self.total_steps = total_steps
        self.description = description
        self.enabled = enabled
        self.console = console or get_console()  # the logging handler's: log lines print above the bar
        self.line_interval_s = line_interval_s
        self._bar: Progress | None = None
        self._task: TaskID | None = None
        self._start = time.monotonic()
        self._last_line = -math.inf

    def __enter__(self) -> TrainProgress:
        self._start = time.monotonic()
        if self.enabled and self.console.is_terminal:
            self._bar = Progress(
                TextColumn("[bold]{task.description}"),
                BarColumn(bar_width=None),  # takes the width the other columns leave
                MofNCompleteColumn(),
                TextColumn("{task.fields[sps]:>6.0f} steps/s"),
                TextColumn("return {task.fields[ret]}"),
                TimeElapsedColumn(),
                TimeRemainingColumn(),
                console=self.console,
                expand=True,
            )
            self._task = self._bar.add_task(self.description, total=self.total_steps, sps=0.0, ret="-")
            self._bar.start()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        if self._bar is not None:
            self._bar.stop()
            self._bar = None

    def update(self, step: int, sps: float, recent_return: float | None) -> None:
        """Show ``step`` env steps done at ``sps`` steps/s; ``recent_return`` is None before any episode."""
        ret = "-" if recent_return is None else f"{recent_return:.1f}"
        if self._bar is not None and self._task is not None:
            self._bar.update(self._task, completed=min(step, self.total_steps), sps=sps, ret=ret)
            return
        now = time.monotonic()
        if self.enabled and (now - self._last_line >= self.line_interval_s or step >= self.total_steps):
            self._last_line = now
            percent = 100.0 * min(step, self.total_steps) / self.total_steps
            self.note(
                f"{self.description}: {step}/{self.total_steps} steps ({percent:.0f}%), {sps:.0f} steps/s, "
                f"return {ret}, {now - self._start:.0f} s"
            )

    def note(self, message: str) -> None:
        """Print one line (above the bar on a terminal)."""
        if self.enabled:
            self.console.print(message, markup=False, highlight=False)
