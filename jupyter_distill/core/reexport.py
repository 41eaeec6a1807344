"""Let a domain package answer for the names of the modules inside it, imported on first use.

``jupyter_distill.export`` was one module before the package was split by domain; code that
wrote ``from jupyter_distill.export import export_gguf`` keeps working because the package looks
the name up in its submodules. Lookups are lazy so importing a package stays as cheap as importing
the smallest module in it (a package that pulled in torch or llama.cpp on import would make
``import jupyter_distill`` slow).
"""

from __future__ import annotations

import importlib
from collections.abc import Callable, Sequence
from typing import Any


def reexport(package: str, submodules: Sequence[str]) -> tuple[Callable[[str], Any], Callable[[], list[str]]]:
    """Return a module ``__getattr__`` and ``__dir__`` that look names up in ``submodules``, in order.

    Only public names are answered; a missing name raises the usual ``AttributeError``.
    """

    def __getattr__(name: str) -> Any:
        if name in submodules:
            # ``from package import submodule`` asks here first; answering with that module alone keeps
            # it from importing the submodules listed before it, which may import it (a cycle).
            return importlib.import_module(f"{package}.{name}")
        if not name.startswith("_"):
            for sub in submodules:
                module = importlib.import_module(f"{package}.{sub}")
                if hasattr(module, name):
                    return getattr(module, name)
        raise AttributeError(f"module {package!r} has no attribute {name!r}")

    def __dir__() -> list[str]:
        names: set[str] = set(submodules)
        for sub in submodules:
            module = importlib.import_module(f"{package}.{sub}")
            names.update(getattr(module, "__all__", [n for n in vars(module) if not n.startswith("_")]))
        return sorted(names)

    return __getattr__, __dir__
