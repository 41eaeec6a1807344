"""The domain-package layout: old flat module paths keep working for a release, and warn."""

from __future__ import annotations

import importlib
import subprocess
import sys
import textwrap
import warnings

import pytest

import jupyter_distill as jd
from jupyter_distill._moved import MOVED


@pytest.mark.parametrize("old", sorted(MOVED))
def test_an_old_module_path_is_the_moved_module_and_says_where_it_went(old: str) -> None:
    new = MOVED[old]
    sys.modules.pop(old, None)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        module = importlib.import_module(old)
    assert module is importlib.import_module(new)
    messages = [str(w.message) for w in caught if issubclass(w.category, DeprecationWarning)]
    assert any(new in message and old in message for message in messages), messages


def test_the_old_converter_command_still_runs_as_a_module() -> None:
    old = subprocess.run(
        [sys.executable, "-m", "jupyter_distill.gguf_converter", "where"], capture_output=True, text=True, timeout=120
    )
    new = subprocess.run(
        [sys.executable, "-m", "jupyter_distill.export.converter", "where"], capture_output=True, text=True, timeout=120
    )
    assert (old.returncode, old.stdout) == (new.returncode, new.stdout)
    assert "jupyter_distill.export.converter" in old.stderr  # the deprecation names the new command


def test_packages_answer_for_the_names_of_the_modules_they_replaced() -> None:
    from jupyter_distill.export import export_gguf
    from jupyter_distill.export.gguf import export_gguf as defined
    from jupyter_distill.pipeline import Run, distill
    from jupyter_distill.sampling import sample
    from jupyter_distill.serving import Student, completion, set_alias

    assert export_gguf is defined
    assert Run is jd.Run and distill.__module__ == "jupyter_distill.pipeline.run"
    assert sample.__module__ == "jupyter_distill.sampling.stage"
    assert (Student, completion, set_alias) == (jd.Student, jd.completion, jd.set_alias)
    assert jd.judges.json_valid is importlib.import_module("jupyter_distill.judging").json_valid
    with pytest.raises(AttributeError, match="no attribute 'not_a_name'"):
        importlib.import_module("jupyter_distill.export").not_a_name  # noqa: B018


def test_old_paths_imported_from_eight_threads_at_once_are_all_the_moved_modules() -> None:
    code = textwrap.dedent(
        """
        import importlib, threading, warnings
        warnings.simplefilter("ignore")
        import jupyter_distill
        from jupyter_distill._moved import MOVED
        olds = sorted(MOVED)
        results, errors = [], []
        barrier = threading.Barrier(8)

        def work(offset):
            barrier.wait()
            try:
                for old in olds[offset:] + olds[:offset]:
                    results.append(importlib.import_module(old) is importlib.import_module(MOVED[old]))
            except Exception as exc:
                errors.append(repr(exc))

        threads = [threading.Thread(target=work, args=(i * 3,)) for i in range(8)]
        [t.start() for t in threads]
        [t.join() for t in threads]
        print(len(results), all(results), errors)
        """
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr
    assert out.stdout.split() == [str(8 * len(MOVED)), "True", "[]"]


def test_every_module_imports_when_it_is_the_first_one_imported() -> None:
    """A package's lazy re-export must not pull in a sibling that is importing the module asked for."""
    code = textwrap.dedent(
        """
        import importlib, pkgutil, sys, warnings
        warnings.simplefilter("ignore")
        import jupyter_distill
        names = [m.name for m in pkgutil.walk_packages(jupyter_distill.__path__, "jupyter_distill.")]
        failed = []
        for name in names:
            if name.endswith("__main__"):
                continue
            for loaded in [k for k in sys.modules if k == "jupyter_distill" or k.startswith("jupyter_distill.")]:
                del sys.modules[loaded]
            try:
                importlib.import_module(name)
            except Exception as exc:
                failed.append(f"{name}: {exc!r}")
        print(len(names), failed)
        """
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=600)
    assert out.returncode == 0, out.stderr
    assert out.stdout.split(" ", 1)[1].strip() == "[]", out.stdout
