"""Every error a user can cause derives from :class:`DistillError`.

Messages name the field, the value and the fix, so a notebook user can act on them without
reading a traceback. Front ends catch ``DistillError`` and show only its message.
"""

from __future__ import annotations


class DistillError(Exception):
    """Base class of all user-facing errors of jupyter-distill."""

    def __init__(self, message: str, *, field: str | None = None, value: object = None, fix: str | None = None):
        self.field = field
        self.value = value
        self.fix = fix
        super().__init__(message)


class ConfigError(DistillError, ValueError):
    """A configuration value (argument, YAML key, flag) is invalid."""


class DatasetError(DistillError, ValueError):
    """The dataset cannot be read or a row is malformed."""


class PolicyError(DistillError):
    """The teacher's terms do not allow distillation (or the route refused it)."""


class TeacherError(DistillError):
    """A teacher cannot be built or called (bad spec, missing key, garbage answers, budget)."""


class BudgetExceeded(TeacherError):
    """The next teacher request would exceed ``max_cost``."""


class JudgeError(DistillError):
    """A judge cannot be built or its output cannot be used."""


class TrainingError(DistillError):
    """Training cannot start or cannot continue."""


class ExportError(DistillError):
    """A model cannot be exported, converted, quantized or loaded back."""


class AliasError(DistillError):
    """An alias name is invalid, unknown, or the registry is unreadable."""


class ReviewError(DistillError, ValueError):
    """A review action names a prompt or candidate that does not exist."""


__all__ = [
    "AliasError",
    "BudgetExceeded",
    "ConfigError",
    "DatasetError",
    "DistillError",
    "ExportError",
    "JudgeError",
    "PolicyError",
    "ReviewError",
    "TeacherError",
    "TrainingError",
]
