"""What a magic handler may use of the magics: the :class:`MagicContext` protocol.

Handlers are plain functions ``handle_x(ctx, command)``; ``DistillMagics`` is the one context in
a kernel. Keeping the surface this small is what lets each handler stay a few lines and lets the
state (runs, stores, dashboards of this kernel) live in one place.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any, Protocol

from jupyter_distill.core.config import DistillConfig
from jupyter_distill.core.store import RunStore
from jupyter_distill.notebook.dashboard import RunDashboard


class MagicContext(Protocol):
    """The settings, the kernel's run state and the services the handlers share."""

    workdir: str
    default_student: str
    show_console: bool
    refresh_interval: float
    runs: dict[str, Any]  # name -> pipeline.Run started in this kernel
    configs: dict[str, DistillConfig]  # name -> the config it ran with (kernel objects included)
    dashboards: dict[str, RunDashboard]

    def store(self) -> RunStore:
        """The run store of ``workdir``, opened once."""
        ...

    def store_for(self, name: str) -> RunStore:
        """The store of run ``name``: its own when this kernel runs it, else the workdir's."""
        ...

    def name_or_last(self, name: str | None, what: str) -> str:
        """``name``, or the latest run when none was typed (an ``UnknownRunError`` when there is none)."""
        ...

    def build_config(self, body: str, overrides: dict[str, Any], name: str | None = None) -> DistillConfig:
        """A cell body and flags into a validated config, with the magic's defaults."""
        ...

    def launch(
        self,
        config: DistillConfig,
        *,
        resume: bool,
        wait: bool,
        show: Callable[[RunDashboard], Any] | None = None,
    ) -> Any:
        """Start ``config`` as a background run with its dashboard (in the cell, or where ``show`` puts it)."""
        ...

    def remember(self, name: str, run: Any, config: DistillConfig, dashboard: RunDashboard) -> None:
        """Record a run started in this kernel (it becomes the latest run)."""
        ...

    def share_store(self, workdir: str, store: RunStore) -> None:
        """Let the line magics read ``workdir`` through ``store`` (a run's own) unless one is open already."""
        ...

    def in_kernel(self) -> bool:
        """Whether a notebook front end draws the widgets (else a console renderer reports progress)."""
        ...

    def user_namespace(self) -> Mapping[str, Any]:
        """The kernel's variables, for ``$name`` references."""
        ...


__all__ = ["MagicContext"]
