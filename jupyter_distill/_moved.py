"""Old flat module paths, kept importable for one release after the package was split by domain.

``import jupyter_distill.store`` still works and gives the very module
``jupyter_distill.core.store`` (same object, so monkeypatching either name patches both), with a
``DeprecationWarning`` that names the new path. The table below is the whole list of moves.
"""

from __future__ import annotations

import importlib
import importlib.abc
import importlib.util
import sys
import warnings
from importlib.machinery import ModuleSpec
from types import CodeType, ModuleType

REMOVAL = "0.3"

# old path -> new path
MOVED: dict[str, str] = {
    **{
        f"jupyter_distill.{name}": f"jupyter_distill.core.{name}"
        for name in (
            "config",
            "store",
            "events",
            "policy",
            "models",
            "data",
            "errors",
            "hashing",
            "runtime",
            "loops",
            "quant_types",
            "examples",
            "runfolder",
        )
    },
    "jupyter_distill.judges": "jupyter_distill.judging",
    # modules split into several: the package answers for every name the old module had
    "jupyter_distill.judging.judges": "jupyter_distill.judging",
    "jupyter_distill.export.gguf_export": "jupyter_distill.export",
    "jupyter_distill.schema_score": "jupyter_distill.judging.schema_score",
    "jupyter_distill.scoring": "jupyter_distill.judging.scoring",
    "jupyter_distill.selection": "jupyter_distill.judging.selection",
    "jupyter_distill.review": "jupyter_distill.judging.review",
    "jupyter_distill.evaluate": "jupyter_distill.evaluation.heldout",
    "jupyter_distill.gguf_converter": "jupyter_distill.export.converter",
    "jupyter_distill.gguf_convert_driver": "jupyter_distill.export.convert_driver",
    "jupyter_distill.registry": "jupyter_distill.serving.registry",
    "jupyter_distill.estimate": "jupyter_distill.pipeline.estimate",
    "jupyter_distill.preflight": "jupyter_distill.pipeline.preflight",
}


class _AliasLoader(importlib.abc.Loader):
    """Replace the placeholder module with the moved one; the import system then returns that."""

    def __init__(self, new: str) -> None:
        self.new = new

    def create_module(self, spec: ModuleSpec) -> ModuleType | None:
        return None

    def exec_module(self, module: ModuleType) -> None:
        warnings.warn(
            f"{module.__name__} moved to {self.new}; import it from there "
            f"(the old path goes away in jupyter-distill {REMOVAL})",
            DeprecationWarning,
            stacklevel=2,
        )
        sys.modules[module.__name__] = importlib.import_module(self.new)

    def get_code(self, fullname: str) -> CodeType | None:
        """``python -m jupyter_distill.gguf_converter`` runs the moved module's code as ``__main__``."""
        # FutureWarning, not DeprecationWarning: a command-line user should see it, and Python hides
        # DeprecationWarning outside __main__.
        warnings.warn(f"{fullname} moved to {self.new}; run `python -m {self.new}`", FutureWarning, stacklevel=2)
        spec = importlib.util.find_spec(self.new)
        loader = spec.loader if spec is not None else None
        get_code = getattr(loader, "get_code", None)
        return get_code(self.new) if get_code is not None else None


class MovedModuleFinder(importlib.abc.MetaPathFinder):
    """Find the old paths in :data:`MOVED`; every other import is left to the usual finders."""

    def find_spec(self, fullname: str, path: object = None, target: object = None) -> ModuleSpec | None:
        new = MOVED.get(fullname)
        if new is None:
            return None
        target_spec = importlib.util.find_spec(new)  # its origin is the __file__ `python -m` needs
        origin = target_spec.origin if target_spec is not None else None
        return importlib.util.spec_from_loader(fullname, _AliasLoader(new), origin=origin)


def install() -> None:
    """Put the finder on ``sys.meta_path`` once (a reload of the package does not add a second)."""
    if not any(isinstance(finder, MovedModuleFinder) for finder in sys.meta_path):
        sys.meta_path.append(MovedModuleFinder())
