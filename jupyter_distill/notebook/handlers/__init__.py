"""One small handler per ``%distill`` subcommand, each a function of a :class:`MagicContext` and its command.

:func:`dispatch` picks the handler by the command's ``type``; the magics class only parses and
calls it. The modules group handlers by what they touch: ``run`` (start and resume), ``control``
(stop and wait), ``listing`` (status, runs, aliases), ``review``, ``export`` (estimate and export),
``promotion`` (promote, rollback, history).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from jupyter_distill.notebook.commands import Command, RunCommand
from jupyter_distill.notebook.handlers.context import MagicContext
from jupyter_distill.notebook.handlers.control import ReviewPendingError, handle_stop, handle_wait
from jupyter_distill.notebook.handlers.export import handle_estimate, handle_export
from jupyter_distill.notebook.handlers.listing import handle_aliases, handle_runs, handle_status
from jupyter_distill.notebook.handlers.promotion import (
    PromotionRefused,
    handle_history,
    handle_promote,
    handle_rollback,
)
from jupyter_distill.notebook.handlers.review import handle_review
from jupyter_distill.notebook.handlers.run import RunBusyError, handle_resume, handle_run

#: The line subcommands' handlers by command ``type`` (``run``, the cell magic, also takes the body).
HANDLERS: dict[str, Callable[[MagicContext, Any], Any]] = {
    "status": handle_status,
    "stop": handle_stop,
    "wait": handle_wait,
    "resume": handle_resume,
    "review": handle_review,
    "runs": handle_runs,
    "aliases": handle_aliases,
    "estimate": handle_estimate,
    "export": handle_export,
    "promote": handle_promote,
    "rollback": handle_rollback,
    "history": handle_history,
}


def dispatch(ctx: MagicContext, command: Command, body: str = "") -> Any:
    """Run ``command``'s handler; ``body`` is the ``%%distill`` cell's YAML."""
    if isinstance(command, RunCommand):
        return handle_run(ctx, command, body)
    return HANDLERS[command.type](ctx, command)


__all__ = [
    "HANDLERS",
    "MagicContext",
    "PromotionRefused",
    "ReviewPendingError",
    "RunBusyError",
    "dispatch",
]
