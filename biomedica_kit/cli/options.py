"""Option helpers shared by the commands: defaults read from the library, value parsers.

A default is written once, in the library (a config dataclass field such as
``BuildConfig.shard_max_samples``, or a keyword default of the library function a command
calls); the CLI reads it from there through :class:`LazyDefault`, which imports the library
module only when click needs the value (parsing that command, or printing its help), so
``biomedica --help`` stays fast.
"""

from __future__ import annotations

import inspect
from collections.abc import Callable
from typing import Any

import click

__all__ = ["LazyDefault", "field_default", "param_default", "parsed"]


class LazyDefault:
    """A click default computed when needed; ``str()`` gives it for ``--help``.

    A callable object, not a function: click shows ``str(default)`` for those, where it would
    show "(dynamic)" for a function.
    """

    def __init__(self, get: Callable[[], Any]) -> None:
        self._get = get

    def __call__(self) -> Any:
        return self._get()

    def __str__(self) -> str:
        return str(self._get())


def field_default(make: Callable[[], object], path: str) -> LazyDefault:
    """The default of a (nested) field of the config object ``make()`` returns, e.g.
    ``field_default(BuildConfig, "image.max_side")`` (``make`` may import lazily)."""
    def get() -> Any:
        obj = make()
        for name in path.split("."):
            obj = getattr(obj, name)
        return obj

    return LazyDefault(get)


def param_default(function: Callable[[], Callable[..., Any]], name: str) -> LazyDefault:
    """The default of keyword ``name`` of the library function ``function()`` returns."""
    return LazyDefault(lambda: inspect.signature(function()).parameters[name].default)


def parsed(parse: Callable[[str], Any]) -> Callable[[click.Context, click.Parameter, Any], Any]:
    """A click callback that runs ``parse`` on a given value; its ValueError becomes a usage
    error naming the option."""
    def callback(_ctx: click.Context, _param: click.Parameter, value: Any) -> Any:
        if value is None:
            return None
        try:
            return parse(value)
        except ValueError as exc:
            raise click.BadParameter(str(exc)) from None

    return callback
