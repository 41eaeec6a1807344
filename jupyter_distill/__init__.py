"""jupyter-distill: distil a cheap student from a teacher on your own prompts, inside a notebook.

``import jupyter_distill as jd`` is cheap: the heavy parts (torch, llama.cpp, widgets) load only
when a function that needs them is called.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from jupyter_distill import _moved

__version__ = "0.1.0"

# public name -> module that defines it
_LAZY = {
    "distill": "jupyter_distill.api",
    "Run": "jupyter_distill.pipeline.run",
    "estimate": "jupyter_distill.pipeline.estimate",
    "completion": "jupyter_distill.serving.student",
    "Student": "jupyter_distill.serving.student",
    "set_alias": "jupyter_distill.serving.registry",
    "list_aliases": "jupyter_distill.serving.registry",
    "unset_alias": "jupyter_distill.serving.registry",
    "get_alias": "jupyter_distill.serving.registry",
    "promote": "jupyter_distill.pipeline.promote",
    "rollback": "jupyter_distill.pipeline.promote",
    "alias_history": "jupyter_distill.pipeline.promote",
    "audit": "jupyter_distill.pipeline.audit",
    "export_dataset": "jupyter_distill.pipeline.share",
    "push_to_hub": "jupyter_distill.pipeline.share",
    "DistillConfig": "jupyter_distill.core.config",
    "DistillError": "jupyter_distill.core.errors",
}

# modules reachable as attributes (``jd.judges.json_valid()``), imported on first use
_SUBMODULES = {
    "judges": "jupyter_distill.judging",
    "examples": "jupyter_distill.core.examples",
    "models": "jupyter_distill.core.models",
}

_moved.install()  # old flat module paths (``jupyter_distill.store``) still import, with a warning

if TYPE_CHECKING:  # pragma: no cover
    from jupyter_distill.core.config import DistillConfig as DistillConfig
    from jupyter_distill.core.errors import DistillError as DistillError


def __getattr__(name: str) -> Any:
    import importlib

    if name in _SUBMODULES:
        return importlib.import_module(_SUBMODULES[name])
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module 'jupyter_distill' has no attribute {name!r}")
    return getattr(importlib.import_module(module), name)


def __dir__() -> list[str]:
    return sorted([*globals(), *_LAZY, *_SUBMODULES])


def load_ipython_extension(ipython: Any) -> None:
    """``%load_ext jupyter_distill``: register the ``%%distill`` / ``%distill`` magics."""
    from jupyter_distill.notebook.magics import load_ipython_extension as _load

    _load(ipython)


def unload_ipython_extension(ipython: Any) -> None:
    from jupyter_distill.notebook.magics import unload_ipython_extension as _unload

    _unload(ipython)


def _jupyter_server_extension_points() -> list[dict[str, str]]:
    return [{"module": "jupyter_distill.server"}]


def _jupyter_labextension_paths() -> list[dict[str, str]]:
    return [{"src": "labextension", "dest": "jupyter-distill"}]


__all__ = [*_LAZY, *sorted(_SUBMODULES), "__version__", "load_ipython_extension"]
