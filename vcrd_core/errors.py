"""User-facing errors: one clear line each, no traceback (the CLI prints ``str(error)`` and exits 2)."""

from __future__ import annotations


class VcrdError(Exception):
    """A mistake of the user's (config, input, environment) reported as one line."""


class ConfigError(VcrdError):
    """A configuration error at a dotted YAML path (``objective.teacher_prefix.divergence.params.alpha``).

    ``location`` optionally names the file and line (``run.yaml:12``), filled in by the loader.
    """

    def __init__(self, path: str, message: str, location: str | None = None) -> None:
        self.path = path
        self.message = message
        self.location = location
        super().__init__(self._render())

    def _render(self) -> str:
        where = ", ".join(p for p in (self.location, self.path) if p)
        return f"{where}: {self.message}" if where else self.message

    def with_location(self, location: str | None) -> ConfigError:
        return ConfigError(self.path, self.message, location)


class ParamError(VcrdError):
    """Raised by a component's constructor about one of its own params (the core adds the YAML path)."""

    def __init__(self, field: str, message: str) -> None:
        self.field = field
        self.message = message
        super().__init__(f"{field}: {message}")


class PluginError(VcrdError):
    """A plugin failed to load, declares an incompatible API version, or clashes with another plugin."""


class VcrdWarning(UserWarning):
    """A warning about the user's setup; the ``vcrd`` command prints it as one ``warning:`` line."""


class IgnoredSettingWarning(VcrdWarning):
    """A setting that has no effect in this config (said once, at validation)."""


def last_line(exc: BaseException) -> str:
    """The last line of ``exc``'s message (where libraries put the actual reason), or its type's name."""
    text = str(exc).strip()
    return text.splitlines()[-1] if text else type(exc).__name__
