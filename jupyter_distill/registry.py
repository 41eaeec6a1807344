"""Model aliases: a stable name (``ticket-classifier``) for a model that an app calls by name.

``completion(model="ticket-classifier")`` looks the name up here, so a new student can be
deployed under the same alias without touching the app. The registry is one JSON file,
``aliases.json`` under ``jupyter_data_dir()/distill`` (override with ``JUPYTER_DISTILL_HOME``),
shared by every kernel and process of the user. Hence:

- every read-modify-write holds a cross-process file lock, so two kernels deploying at once
  both keep their alias;
- every write goes to a temp file that is fsynced and renamed over the old one, so a crash
  leaves either the old or the new file, never half of one;
- a file that is not valid JSON or not our schema is never overwritten: it is copied to
  ``aliases.json.corrupt-<timestamp>`` and the error says so, because silently starting an empty
  registry would lose every alias the user had.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import tempfile
import time
from collections.abc import Callable
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from jupyter_distill.errors import AliasError

SCHEMA_VERSION = 1
BACKENDS = ("gguf", "peft", "openai-compatible")
_NAME_RE = re.compile(r"^[A-Za-z0-9._-]+$")
_ENV_RE = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")
_LOCK_TIMEOUT_S = 30.0


def registry_dir() -> Path:
    """``$JUPYTER_DISTILL_HOME`` or ``jupyter_data_dir()/distill`` (read each call: tests override it)."""
    override = os.environ.get("JUPYTER_DISTILL_HOME")
    if override:
        return Path(override).expanduser()
    from jupyter_core.paths import jupyter_data_dir

    return Path(jupyter_data_dir()) / "distill"


def registry_path() -> Path:
    """The ``aliases.json`` file in use."""
    return registry_dir() / "aliases.json"


def validate_name(name: Any) -> str:
    """An alias name is a plain file-name-like token: it may become a folder or URL segment."""
    if not isinstance(name, str) or not _NAME_RE.match(name) or name in (".", "..") or len(name) > 128:
        raise AliasError(
            f"invalid alias name {name!r}: use 1-128 letters, digits, '.', '_' or '-' (no spaces or path "
            "separators, not '.' or '..'). Fix: e.g. 'ticket-classifier-v1'.",
            field="name",
            value=name,
        )
    return name


@contextmanager
def _locked() -> Any:
    from filelock import FileLock, Timeout

    folder = registry_dir()
    folder.mkdir(parents=True, exist_ok=True)
    lock = FileLock(str(folder / "aliases.json.lock"), timeout=_LOCK_TIMEOUT_S)
    try:
        with lock:
            yield
    except Timeout:
        raise AliasError(
            f"could not lock {str(folder / 'aliases.json.lock')!r} within {_LOCK_TIMEOUT_S:.0f} s: another process "
            "holds it. Fix: wait for the other kernel to finish deploying, or delete the lock file if none runs.",
            field="registry",
            value=str(folder),
        ) from None


def _backup_and_raise(path: Path, problem: str) -> None:
    backup = path.with_name(f"{path.name}.corrupt-{time.strftime('%Y%m%dT%H%M%S')}-{os.getpid()}")
    shutil.copy2(path, backup)
    raise AliasError(
        f"the alias registry {str(path)!r} is unreadable ({problem}). It was NOT overwritten; a copy was saved "
        f"as {str(backup)!r}. Fix: repair or delete {str(path)!r} (the backup keeps its content), then retry.",
        field="registry",
        value=str(path),
    )


def _read() -> dict[str, Any]:
    """The registry document; an empty one when the file does not exist yet. Call under the lock."""
    path = registry_path()
    if not path.exists():
        return {"schema_version": SCHEMA_VERSION, "aliases": {}}
    try:
        doc = json.loads(path.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        _backup_and_raise(path, f"not valid JSON: {exc}")
    if not isinstance(doc, dict) or not isinstance(doc.get("aliases"), dict):
        _backup_and_raise(path, "no 'aliases' object")
    version = doc.get("schema_version")
    if not isinstance(version, int):
        _backup_and_raise(path, f"schema_version {version!r} is not an integer")
    if version > SCHEMA_VERSION:
        raise AliasError(
            f"the alias registry {str(path)!r} has schema version {version}, newer than this jupyter-distill "
            f"understands ({SCHEMA_VERSION}). Fix: upgrade jupyter-distill (pip install -U jupyter-distill).",
            field="schema_version",
            value=version,
        )
    return doc


def _write(doc: dict[str, Any]) -> None:
    """Atomic replace: temp file in the same folder, fsync, ``os.replace``. Call under the lock."""
    path = registry_path()
    fd, tmp = tempfile.mkstemp(prefix=".aliases.", suffix=".tmp", dir=str(path.parent))
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as handle:
            json.dump(doc, handle, indent=2, sort_keys=True)
            handle.write("\n")
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def _update(change: Callable[[dict[str, Any]], Any]) -> Any:
    with _locked():
        doc = _read()
        result = change(doc["aliases"])
        doc["schema_version"] = SCHEMA_VERSION
        _write(doc)
        return result


def _existing(path: Any, field: str, what: str, check: Callable[[Path], bool]) -> str:
    resolved = Path(str(path)).expanduser().resolve()
    if not check(resolved):
        raise AliasError(
            f"{field} {str(resolved)!r} is not {what}. Fix: pass the path of an existing {what}.",
            field=field,
            value=str(path),
        )
    return str(resolved)


def _is_gguf(path: Path) -> bool:
    if not path.is_file():
        return False
    with open(path, "rb") as handle:
        return handle.read(4) == b"GGUF"


def _check_entry(name: str, backend: str, model_path: Any, base_model: Any, extra: dict[str, Any]) -> dict[str, Any]:
    """Validate and normalise one alias entry; paths are resolved and must exist now."""
    if backend not in BACKENDS:
        raise AliasError(
            f"unknown backend {backend!r} for alias {name!r}. Valid: {', '.join(BACKENDS)}.",
            field="backend",
            value=backend,
        )
    if "api_key" in extra or "key" in extra:
        raise AliasError(
            "an alias never stores an API key. Fix: put the key in an environment variable and pass its name, "
            "e.g. set_alias(..., api_key_env='OPENAI_API_KEY').",
            field="api_key",
            value="<redacted>",
        )
    entry: dict[str, Any] = {"backend": backend}
    if backend == "gguf":
        if model_path is None:
            raise AliasError(
                f"alias {name!r}: backend 'gguf' needs model_path=<file.gguf>.", field="model_path", value=None
            )
        entry["model_path"] = _existing(model_path, "model_path", "a GGUF file", _is_gguf)
    elif backend == "peft":
        if model_path is None:
            raise AliasError(
                f"alias {name!r}: backend 'peft' needs model_path=<adapter folder or HF model folder>.",
                field="model_path",
                value=None,
            )
        folder = Path(str(model_path)).expanduser().resolve()
        if (folder / "adapter_config.json").is_file():
            entry["model_path"] = str(folder)
            if base_model is None:
                cfg = json.loads((folder / "adapter_config.json").read_text())
                base_model = cfg.get("base_model_name_or_path")
            entry["base_model"] = _existing(
                base_model, "base_model", "an HF model folder (config.json)", lambda p: (p / "config.json").is_file()
            )
        else:
            entry["model_path"] = _existing(
                folder, "model_path", "a PEFT adapter or HF model folder", lambda p: (p / "config.json").is_file()
            )
    else:  # openai-compatible
        base_url = extra.get("base_url")
        if not isinstance(base_url, str) or not re.match(r"^https?://", base_url):
            raise AliasError(
                f"alias {name!r}: backend 'openai-compatible' needs base_url='http(s)://host/v1', got {base_url!r}.",
                field="base_url",
                value=base_url,
            )
        remote = extra.get("model") or model_path
        if not remote:
            raise AliasError(
                f"alias {name!r}: backend 'openai-compatible' needs model=<the server's model name>.",
                field="model",
                value=None,
            )
        entry["model"] = str(remote)
        entry["base_url"] = base_url.rstrip("/")
        env = extra.get("api_key_env")
        if env is not None and (not isinstance(env, str) or not _ENV_RE.match(env)):
            raise AliasError(
                "api_key_env must be the NAME of an environment variable (e.g. 'OPENAI_API_KEY'); the value given "
                "is not a valid variable name (not shown: it may be a key). Fix: never pass the key itself.",
                field="api_key_env",
                value="<redacted>",
            )
        if base_model is not None:
            entry["base_model"] = str(base_model)
    for key, value in extra.items():
        if key in ("base_url", "model") and backend == "openai-compatible":
            continue
        try:
            json.dumps(value)
        except (TypeError, ValueError):
            raise AliasError(
                f"alias {name!r}: extra field {key!r} has a value of type {type(value).__name__}, which cannot be "
                "stored in JSON. Fix: pass strings, numbers, lists or dicts.",
                field=key,
                value=repr(value)[:80],
            ) from None
        entry.setdefault(key, value)
    return entry


def set_alias(
    name: str,
    backend: str = "gguf",
    model_path: str | os.PathLike[str] | None = None,
    base_model: str | os.PathLike[str] | None = None,
    **extra: Any,
) -> dict[str, Any]:
    """Create or replace an alias; returns the stored entry.

    ``gguf``: ``model_path`` is a .gguf file. ``peft``: ``model_path`` is an adapter folder (its base
    is ``base_model`` or the one it names) or a full HF model folder. ``openai-compatible``:
    ``base_url=``, ``model=`` (the server's model name) and optionally ``api_key_env=`` (the name of
    the environment variable holding the key). Any other keyword is stored as metadata.
    """
    validate_name(name)
    entry = _check_entry(name, backend, model_path, base_model, extra)

    def change(aliases: dict[str, Any]) -> dict[str, Any]:
        now = time.time()
        previous = aliases.get(name) or {}
        entry["created_at"] = previous.get("created_at", now)
        entry["updated_at"] = now
        aliases[name] = entry
        return dict(entry)

    return _update(change)


def unset_alias(name: str) -> bool:
    """Remove an alias; returns False when it did not exist (removing twice is not an error)."""
    validate_name(name)
    return bool(_update(lambda aliases: aliases.pop(name, None) is not None))


def list_aliases() -> dict[str, dict[str, Any]]:
    """All aliases, sorted by name: ``{name: entry}``."""
    # No lock for reads: writes are atomic renames, so a reader sees the old or the new file.
    aliases = _read()["aliases"]
    return {name: dict(aliases[name]) for name in sorted(aliases)}


def get_alias(name: str) -> dict[str, Any]:
    """One alias entry; ``AliasError`` listing the known names when it does not exist."""
    validate_name(name)
    aliases = list_aliases()
    if name not in aliases:
        known = ", ".join(aliases) or "(none yet)"
        raise AliasError(
            f"unknown alias {name!r}. Known aliases: {known}. Fix: deploy one with student.deploy({name!r}) or "
            f"set_alias({name!r}, backend='gguf', model_path='model.gguf'). Registry: {str(registry_path())!r}.",
            field="model",
            value=name,
        )
    return {**aliases[name], "name": name}


__all__ = [
    "BACKENDS",
    "SCHEMA_VERSION",
    "get_alias",
    "list_aliases",
    "registry_dir",
    "registry_path",
    "set_alias",
    "unset_alias",
    "validate_name",
]
