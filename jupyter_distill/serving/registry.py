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
  ``aliases.json.corrupt-<hash of its content>`` and the error says so, because silently starting
  an empty registry would lose every alias the user had. The copy is named by content so that
  reading the same broken file again (the lab panel polls every few seconds) finds the copy it
  already made instead of writing another one;
- every change of an alias is recorded as a numbered version in the same file (``history``, a
  top-level key that older readers ignore and older writers keep), written in the same atomic
  replace as the change itself, so ``rollback_alias`` can restore the previous target and a
  version can never describe a swap that did not happen;
- an alias never holds a secret: keys go in an environment variable named by ``api_key_env``, so
  key-like fields, key-like values and user-info in a ``base_url`` are refused.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import tempfile
import time
from collections.abc import Callable
from contextlib import contextmanager
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from jupyter_distill.core.errors import AliasError

SCHEMA_VERSION = 1
HISTORY_LIMIT = 100  # versions kept per alias (the oldest are dropped first)
_ENTRY_META = ("backend", "model_path", "base_model", "created_at", "updated_at")
BACKENDS = ("gguf", "peft", "openai-compatible")
_NAME_RE = re.compile(r"^[A-Za-z0-9._-]+$")
_ENV_RE = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")
_LOCK_TIMEOUT_S = 30.0
MAX_ENTRY_BYTES = 64 * 1024  # one alias as JSON: metadata, not data
_MAX_SHOWN = 120  # characters of a bad value quoted in an error
# Extra fields that would hold a secret (``api_key_env`` names a variable, so it is allowed).
_SECRET_FIELD_RE = re.compile(
    r"(^|[_-])(api[_-]?key|key|token|access[_-]?token|secret|password|passwd|pwd|auth|authorization|"
    r"credentials?|bearer|cookie)($|[_-])",
    re.IGNORECASE,
)
_SECRET_VALUE_RE = re.compile(
    r"^\s*(bearer\s+\S+|sk-[A-Za-z0-9_-]{8,}|(sk|gsk|hf|ghp|xai|github_pat)_[A-Za-z0-9_]{8,}|AIza[0-9A-Za-z_-]{20,})",
    re.IGNORECASE,
)


def _shown(value: Any, limit: int = _MAX_SHOWN) -> str:
    """A bounded repr for error messages: a 10,000-character path must not make a 10 kB error."""
    try:
        text = repr(value)
    except RecursionError:
        text = f"<deeply nested {type(value).__name__}>"
    return text if len(text) <= limit else text[: limit - 1] + "…"


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
    if not isinstance(name, str) or not _NAME_RE.fullmatch(name) or name in (".", "..") or len(name) > 128:
        raise AliasError(
            f"invalid alias name {_shown(name, 400)}: use 1-128 letters, digits, '.', '_' or '-' (no spaces or path "
            "separators, not '.' or '..'). Fix: e.g. 'ticket-classifier-v1'.",
            field="name",
            value=name if isinstance(name, str) and len(name) <= 400 else _shown(name, 400),
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


def _backup(path: Path, content: bytes) -> Path:
    """Copy a broken registry beside itself once per distinct content; returns the copy."""
    backup = path.with_name(f"{path.name}.corrupt-{hashlib.sha256(content).hexdigest()[:16]}")
    if not backup.exists():
        fd, tmp = tempfile.mkstemp(prefix=".aliases.", suffix=".corrupt.tmp", dir=str(path.parent))
        try:
            with os.fdopen(fd, "wb") as handle:
                handle.write(content)
            os.replace(tmp, backup)  # two readers making the same copy at once both land the same bytes
        except BaseException:
            Path(tmp).unlink(missing_ok=True)
            raise
    return backup


def _backup_and_raise(path: Path, content: bytes, problem: str) -> None:
    backup = _backup(path, content)
    raise AliasError(
        f"the alias registry {str(path)!r} is unreadable ({problem}). It was NOT overwritten; its content is kept "
        f"in {str(backup)!r}. Fix: repair or delete {str(path)!r} (the backup keeps its content), then retry.",
        field="registry",
        value=str(path),
    )


def _entry_problem(name: str, entry: Any) -> str | None:
    if not isinstance(entry, dict):
        return f"alias {_shown(name)} is a {type(entry).__name__}, not an object"
    if entry.get("backend") not in BACKENDS:
        return f"alias {_shown(name)} has backend {_shown(entry.get('backend'))}"
    return None


def _read() -> dict[str, Any]:
    """The registry document; an empty one when the file does not exist yet. Call under the lock."""
    path = registry_path()
    if not path.exists():
        return {"schema_version": SCHEMA_VERSION, "aliases": {}}
    try:
        content = path.read_bytes()
    except OSError as exc:
        raise AliasError(
            f"the alias registry {str(path)!r} cannot be read ({type(exc).__name__}: {exc.strerror}). Fix: make it a "
            "readable file, or move it away to start an empty registry.",
            field="registry",
            value=str(path),
        ) from None
    try:
        doc = json.loads(content.decode("utf-8"))
    except (ValueError, RecursionError) as exc:  # JSONDecodeError and UnicodeDecodeError are ValueErrors
        _backup_and_raise(path, content, f"not valid JSON: {_shown(str(exc))}")
    if not isinstance(doc, dict) or not isinstance(doc.get("aliases"), dict):
        _backup_and_raise(path, content, "no 'aliases' object")
    version = doc.get("schema_version")
    if not isinstance(version, int) or isinstance(version, bool):
        _backup_and_raise(path, content, f"schema_version {_shown(version)} is not an integer")
    if version > SCHEMA_VERSION:
        raise AliasError(
            f"the alias registry {str(path)!r} has schema version {version}, newer than this jupyter-distill "
            f"understands ({SCHEMA_VERSION}). Fix: upgrade jupyter-distill (pip install -U jupyter-distill).",
            field="schema_version",
            value=version,
        )
    for name, entry in doc["aliases"].items():
        problem = _entry_problem(name, entry)
        if problem:
            _backup_and_raise(path, content, problem)
    history = doc.get("history", {})
    if not isinstance(history, dict) or not all(isinstance(v, list) for v in history.values()):
        _backup_and_raise(path, content, "'history' is not an object of version lists")
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
    return _update_doc(lambda doc: change(doc["aliases"]))


def _update_doc(change: Callable[[dict[str, Any]], Any]) -> Any:
    """Read, change and atomically write the whole document under the lock; ``change`` may raise
    to leave the file untouched."""
    with _locked():
        doc = _read()
        result = change(doc)
        doc["schema_version"] = SCHEMA_VERSION
        _write(doc)
        return result


# ---------------------------------------------------------------------------------------- versions
def _versions(doc: dict[str, Any], name: str) -> list[dict[str, Any]]:
    """The alias's versions, first brought in step with its entry: a change made without a version
    (an older jupyter-distill, a hand edit, an alias older than versions) becomes one now."""
    versions = doc.setdefault("history", {}).setdefault(name, [])
    current = doc["aliases"].get(name)
    last = versions[-1] if versions else None
    if (last["entry"] if last else None) != current:
        _append(versions, "existing" if last is None else "observed", current)
    return versions


def _append(versions: list[dict[str, Any]], action: str, entry: dict[str, Any] | None, **info: Any) -> dict[str, Any]:
    last = versions[-1] if versions else None
    previous = info.pop("previous", last["version"] if last and last["entry"] is not None else None)
    version = {
        "version": (last["version"] + 1) if last else 1,
        "action": action,
        "at": time.time(),
        "entry": None if entry is None else dict(entry),
        "previous": previous,
        **info,
    }
    versions.append(version)
    del versions[:-HISTORY_LIMIT]
    return version


def _swap(doc: dict[str, Any], name: str, entry: dict[str, Any] | None, action: str, **info: Any) -> dict[str, Any]:
    """Point ``name`` at ``entry`` (None removes it) and record the version; returns the version."""
    versions = _versions(doc, name)
    aliases = doc["aliases"]
    if entry is None:
        aliases.pop(name, None)
    else:
        now = time.time()
        entry = {**entry, "created_at": (aliases.get(name) or {}).get("created_at", now), "updated_at": now}
        aliases[name] = entry
    return dict(_append(versions, action, entry, **info))


def alias_history(name: str) -> list[dict[str, Any]]:
    """Every recorded version of ``name``, oldest first: ``version``, ``action`` (``existing``,
    ``set``, ``promote``, ``rollback``, ``unset``, ``observed``), ``at``, ``entry`` (None when the
    alias was removed), ``previous`` (the version a rollback returns to) and what the action added."""
    validate_name(name)
    doc = _read()
    return [dict(v) for v in _versions(doc, name)]


def promote_alias(name: str, target: dict[str, Any], *, expected: dict[str, Any] | None, **info: Any) -> dict[str, Any]:
    """Swap ``name`` to ``target`` (``backend``, ``model_path``/``base_model`` or ``base_url``/``model``,
    extras) only if the alias still holds ``expected`` (its entry when the caller compared against it;
    None: no alias then). Returns the new version. A changed alias raises ``AliasError`` and nothing
    is written: the comparison that justified the swap was made against another model."""
    validate_name(name)
    extra = {k: v for k, v in target.items() if k not in _ENTRY_META}
    entry = _check_entry(name, target["backend"], target.get("model_path"), target.get("base_model"), extra)

    def change(doc: dict[str, Any]) -> dict[str, Any]:
        if doc["aliases"].get(name) != expected:
            raise AliasError(
                f"alias {name!r} changed while the promotion compared against it (now "
                f"{_shown(doc['aliases'].get(name))}). Nothing was swapped. Fix: run the promotion again.",
                field="alias",
                value=name,
            )
        return _swap(doc, name, entry, "promote", **info)

    return _update_doc(change)


def rollback_alias(name: str) -> dict[str, Any]:
    """Point ``name`` back at the target before its current version; returns the new version.

    Rolling back twice walks back two versions (a rollback's own ``previous`` is the restored
    version's). The restored target is checked again (its file may have been deleted since), and
    an alias with no earlier target is an ``AliasError`` that changes nothing.
    """
    validate_name(name)

    def change(doc: dict[str, Any]) -> dict[str, Any]:
        versions = _versions(doc, name)
        current = versions[-1] if versions else None
        by_number = {v["version"]: v for v in versions}
        target = by_number.get(current["previous"]) if current and current["previous"] is not None else None
        if target is None or target["entry"] is None:
            raise AliasError(
                f"alias {name!r} has no earlier target to roll back to (versions: "
                f"{[v['version'] for v in versions] or 'none'}). Fix: set it with set_alias() or jd.promote().",
                field="alias",
                value=name,
            )
        old = target["entry"]
        extra = {k: v for k, v in old.items() if k not in _ENTRY_META}
        entry = _check_entry(name, old["backend"], old.get("model_path"), old.get("base_model"), extra)
        return _swap(
            doc, name, entry, "rollback", previous=target["previous"], restores=target["version"],
            replaces=current["version"] if current else None,
        )  # fmt: skip

    return _update_doc(change)


def _resolve(path: Any, field: str) -> Path:
    """``path`` made absolute; a path the OS cannot even name (NUL byte, too long) is an ``AliasError``."""
    if not isinstance(path, str | os.PathLike):
        raise AliasError(
            f"{field} must be a path string, got {type(path).__name__}. Fix: pass e.g. 'model.gguf'.",
            field=field,
            value=_shown(path),
        )
    try:
        return Path(path).expanduser().resolve()
    except (OSError, ValueError, RuntimeError) as exc:
        raise AliasError(
            f"{field} {_shown(os.fspath(path))} is not a usable path ({type(exc).__name__}). Fix: pass the path of "
            "an existing file or folder, without NUL characters and shorter than the system's limit.",
            field=field,
            value=_shown(os.fspath(path)),
        ) from None


def _existing(path: Any, field: str, what: str, check: Callable[[Path], bool]) -> str:
    resolved = _resolve(path, field)
    try:
        ok = check(resolved)
    except (OSError, ValueError):
        ok = False
    if not ok:
        raise AliasError(
            f"{field} {_shown(str(resolved))} is not {what}. Fix: pass the path of an existing {what}.",
            field=field,
            value=_shown(str(path)),
        )
    return str(resolved)


def _is_file(path: Path) -> bool:
    """``path.is_file()``, False for a name the OS refuses (too long) instead of an ``OSError``."""
    try:
        return path.is_file()
    except (OSError, ValueError):
        return False


def _is_gguf(path: Path) -> bool:
    if not path.is_file():
        return False
    with open(path, "rb") as handle:
        return handle.read(4) == b"GGUF"


def _gguf_header(path: str) -> dict[str, Any]:
    """The string and number keys of a GGUF header (``general.type``, ``general.architecture``...)."""
    from gguf import GGUFReader, GGUFValueType

    reader = GGUFReader(path)
    out: dict[str, Any] = {}
    for key, field in reader.fields.items():
        if field.types and field.types[0] != GGUFValueType.ARRAY:
            out[key] = field.contents()
    return out


def _check_lora(name: str, base_path: str, lora_path: Any, scale: Any) -> dict[str, Any]:
    """``lora_path`` is a llama.cpp LoRA GGUF of the base file's architecture; ``lora_scale`` a number."""
    path = _existing(lora_path, "lora_path", "a GGUF file", _is_gguf)
    if isinstance(scale, bool) or not isinstance(scale, int | float) or not (-100.0 <= float(scale) <= 100.0):
        raise AliasError(
            f"alias {name!r}: lora_scale must be a number (1.0 applies the adapter as trained), got {_shown(scale)}.",
            field="lora_scale",
            value=_shown(scale),
        )
    try:
        lora, base = _gguf_header(path), _gguf_header(base_path)
    except (OSError, ValueError) as exc:
        raise AliasError(
            f"alias {name!r}: the GGUF header of {path!r} or {base_path!r} cannot be read ({type(exc).__name__}). "
            "Fix: re-export the model.",
            field="lora_path",
            value=path,
        ) from None
    if lora.get("general.type") != "adapter" or lora.get("adapter.type") != "lora":
        raise AliasError(
            f"alias {name!r}: lora_path {path!r} is not a LoRA GGUF (general.type {lora.get('general.type')!r}). "
            "Fix: pass the .lora.gguf an export with export='adapter' wrote, and its base GGUF as model_path.",
            field="lora_path",
            value=path,
        )
    if lora.get("general.architecture") != base.get("general.architecture"):
        raise AliasError(
            f"alias {name!r}: the LoRA GGUF {path!r} is for architecture {lora.get('general.architecture')!r}, the "
            f"base GGUF {base_path!r} is {base.get('general.architecture')!r}. Fix: pass the base GGUF the adapter "
            "was exported with as model_path.",
            field="lora_path",
            value=path,
        )
    return {"lora_path": path, "lora_scale": float(scale)}


def adapter_base_model(folder: Path) -> Any:
    """The base model an adapter folder's ``adapter_config.json`` names (``None`` when it names none)."""
    config_path = folder / "adapter_config.json"
    try:
        config = json.loads(config_path.read_text(encoding="utf-8"))
    except (OSError, ValueError, RecursionError) as exc:
        raise AliasError(
            f"{str(config_path)!r} is not a readable JSON file ({type(exc).__name__}). Fix: re-save the adapter "
            "(model.save_pretrained), or pass base_model= explicitly.",
            field="model_path",
            value=str(folder),
        ) from None
    if not isinstance(config, dict):
        raise AliasError(
            f"{str(config_path)!r} holds a {type(config).__name__}, not an object. Fix: re-save the adapter.",
            field="model_path",
            value=str(folder),
        )
    return config.get("base_model_name_or_path")


def _check_base_url(name: str, base_url: Any) -> str:
    """An http(s) URL with a host, no spaces and no user-info (a key there would be stored in clear)."""
    problem = None
    parts = None
    if not isinstance(base_url, str) or not re.match(r"^https?://", base_url):
        problem = "it is not an http(s) URL"
    elif any(ch.isspace() or ord(ch) < 32 or ord(ch) == 127 for ch in base_url):
        problem = "it contains spaces or control characters"
    else:
        try:
            parts = urlsplit(base_url)
            port_ok = parts.port is None or 0 < parts.port < 65536
        except ValueError:
            parts, port_ok = None, False
        if parts is None or not port_ok:
            problem = "its host or port is not valid"
        elif "@" in parts.netloc:
            raise AliasError(
                f"alias {name!r}: base_url carries user-info ('user:key@host'), which would be stored in clear in "
                "aliases.json (not shown: it may hold a key). Fix: give the key in an environment variable and pass "
                "its name as api_key_env=.",
                field="base_url",
                value="<redacted>",
            )
        elif not parts.hostname:
            problem = "it names no host"
    if problem:
        raise AliasError(
            f"alias {name!r}: backend 'openai-compatible' needs base_url='http(s)://host/v1', got "
            f"{_shown(base_url)}: {problem}.",
            field="base_url",
            value=_shown(base_url),
        )
    return str(base_url)


def _refuse_secrets(name: str, extra: dict[str, Any]) -> None:
    for key, value in extra.items():
        secret_key = key != "api_key_env" and _SECRET_FIELD_RE.search(key)
        secret_value = isinstance(value, str) and _SECRET_VALUE_RE.match(value)
        if secret_key or secret_value:
            raise AliasError(
                f"alias {name!r}: an alias never stores an API key or other secret (field {key!r}; value not shown). "
                "Fix: put the key in an environment variable and pass its name, e.g. "
                "set_alias(..., api_key_env='OPENAI_API_KEY').",
                field=key,
                value="<redacted>",
            )


def _check_entry(name: str, backend: str, model_path: Any, base_model: Any, extra: dict[str, Any]) -> dict[str, Any]:
    """Validate and normalise one alias entry; paths are resolved and must exist now."""
    if backend not in BACKENDS:
        raise AliasError(
            f"unknown backend {backend!r} for alias {name!r}. Valid: {', '.join(BACKENDS)}.",
            field="backend",
            value=backend,
        )
    _refuse_secrets(name, extra)
    if backend != "gguf" and any(extra.get(k) is not None for k in ("lora_path", "lora_scale")):
        raise AliasError(
            f"alias {name!r}: lora_path/lora_scale name a LoRA GGUF over a base GGUF and need backend 'gguf' "
            f"(got {backend!r}). Fix: set_alias({name!r}, backend='gguf', model_path=<base.gguf>, "
            "lora_path=<adapter.lora.gguf>), or give backend 'peft' the adapter folder as model_path.",
            field="lora_path",
            value=_shown(extra.get("lora_path")),
        )
    entry: dict[str, Any] = {"backend": backend}
    if backend == "gguf":
        if model_path is None:
            raise AliasError(
                f"alias {name!r}: backend 'gguf' needs model_path=<file.gguf>.", field="model_path", value=None
            )
        entry["model_path"] = _existing(model_path, "model_path", "a GGUF file", _is_gguf)
        if extra.get("lora_path") is not None:
            entry.update(_check_lora(name, entry["model_path"], extra["lora_path"], extra.get("lora_scale", 1.0)))
    elif backend == "peft":
        if model_path is None:
            raise AliasError(
                f"alias {name!r}: backend 'peft' needs model_path=<adapter folder or HF model folder>.",
                field="model_path",
                value=None,
            )
        folder = _resolve(model_path, "model_path")
        if _is_file(folder / "adapter_config.json"):
            entry["model_path"] = str(folder)
            if base_model is None:
                base_model = adapter_base_model(folder)
            entry["base_model"] = _existing(
                base_model, "base_model", "an HF model folder (config.json)", lambda p: (p / "config.json").is_file()
            )
        else:
            entry["model_path"] = _existing(
                folder, "model_path", "a PEFT adapter or HF model folder", lambda p: (p / "config.json").is_file()
            )
    else:  # openai-compatible
        base_url = _check_base_url(name, extra.get("base_url"))
        remote = extra.get("model") or model_path
        if not remote:
            raise AliasError(
                f"alias {name!r}: backend 'openai-compatible' needs model=<the server's model name>.",
                field="model",
                value=None,
            )
        if not isinstance(remote, str | os.PathLike):
            raise AliasError(
                f"alias {name!r}: model must be the server's model name, got {type(remote).__name__}.",
                field="model",
                value=_shown(remote),
            )
        entry["model"] = os.fspath(remote)
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
        if key in ("lora_path", "lora_scale") and "lora_path" in entry:  # checked and normalised above
            continue
        try:
            json.dumps(value, allow_nan=False)
        except (TypeError, ValueError, RecursionError) as exc:
            why = "is nested too deeply" if isinstance(exc, RecursionError) else "cannot be stored in JSON"
            raise AliasError(
                f"alias {name!r}: extra field {key!r} has a value of type {type(value).__name__}, which {why}. "
                "Fix: pass strings, numbers, lists or dicts of modest depth.",
                field=key,
                value=type(value).__name__,
            ) from None
        entry.setdefault(key, value)
    size = len(json.dumps(entry))
    if size > MAX_ENTRY_BYTES:
        raise AliasError(
            f"alias {name!r}: the entry is {size} bytes as JSON, over the {MAX_ENTRY_BYTES} byte limit. "
            "Fix: keep large data in files and store their paths.",
            field="extra",
            value=size,
        )
    return entry


def set_alias(
    name: str,
    backend: str = "gguf",
    model_path: str | os.PathLike[str] | None = None,
    base_model: str | os.PathLike[str] | None = None,
    **extra: Any,
) -> dict[str, Any]:
    """Create or replace an alias; returns the stored entry.

    ``gguf``: ``model_path`` is a .gguf file; ``lora_path=`` (optional) a LoRA GGUF applied over it
    (``lora_scale=``, default 1.0), and every alias over the same base file shares one loaded base.
    ``peft``: ``model_path`` is an adapter folder (its base is ``base_model`` or the one it names) or
    a full HF model folder. ``openai-compatible``:
    ``base_url=``, ``model=`` (the server's model name) and optionally ``api_key_env=`` (the name of
    the environment variable holding the key). Any other keyword is stored as metadata.
    """
    validate_name(name)
    entry = _check_entry(name, backend, model_path, base_model, extra)

    def change(doc: dict[str, Any]) -> dict[str, Any]:
        return dict(_swap(doc, name, entry, "set")["entry"])

    return _update_doc(change)


def unset_alias(name: str) -> bool:
    """Remove an alias; returns False when it did not exist (removing twice is not an error)."""
    validate_name(name)

    def change(doc: dict[str, Any]) -> bool:
        if name not in doc["aliases"]:
            return False
        _swap(doc, name, None, "unset")
        return True

    return bool(_update_doc(change))


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
    "HISTORY_LIMIT",
    "SCHEMA_VERSION",
    "alias_history",
    "get_alias",
    "list_aliases",
    "promote_alias",
    "registry_dir",
    "registry_path",
    "rollback_alias",
    "set_alias",
    "unset_alias",
    "validate_name",
]
