"""The exceptions featvis raises: one family, each also a built-in type.

Examples:
    >>> try:
    ...     featvis.visualize_activation(model, "no_such_layer")
    ... except featvis.FeatvisError as err:
    ...     print(err)
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
import difflib
import functools
import inspect
import math
import numbers
from typing import TypeVar

Function = TypeVar("Function", bound=Callable)


class FeatvisError(Exception):
    """Base of every error featvis raises on purpose."""


class FeatvisValueError(FeatvisError, ValueError):
    """An argument has the right type but a value featvis cannot use."""


class FeatvisTypeError(FeatvisError, TypeError):
    """An argument has a type featvis does not accept."""


class LayerNotFoundError(FeatvisValueError, KeyError):
    """A layer name, index or module does not name a layer of the model."""

    def __str__(self) -> str:  # KeyError would quote the message
        return str(self.args[0])


class UnknownNameError(FeatvisValueError, KeyError):
    """A name that a registry (`featvis.registry.Registry`) does not hold: a method, a modifier, a preset."""

    def __str__(self) -> str:  # KeyError would quote the message
        return str(self.args[0])


class NonFiniteError(FeatvisError, FloatingPointError):
    """A loss or gradient became NaN or infinite during an optimization."""


class ModelError(FeatvisError, RuntimeError):
    """The user's model raised while featvis ran it."""


def bad_value(argument: str, given: object, allowed: str) -> FeatvisValueError:
    """Build the standard message: which argument, what was given, what is allowed."""
    return FeatvisValueError(f"{argument}={given!r} is not allowed: expected {allowed}")


def bad_type(argument: str, given: object, allowed: str) -> FeatvisTypeError:
    """Like `bad_value`, for a wrong type."""
    return FeatvisTypeError(f"{argument} has type {type(given).__name__}, expected {allowed}")


def first_line(err: BaseException) -> str:
    """The first line of an exception's message (its type's name when the message is empty)."""
    lines = str(err).strip().splitlines()
    return lines[0] if lines else type(err).__name__


def close_matches(word: str, choices: Iterable[str], limit: int = 5, *, see: str | None = None) -> str:
    """A short 'did you mean' clause for `word` among `choices`. When none are close: '', or with `see`
    (where to find them all, e.g. ``"featvis.layer_names(model)"``) the first 10 choices instead.

    Examples:
        >>> close_matches("zzz", ["conv1", "fc"], see="featvis.layer_names(model)")
        '; no close match among: conv1, fc'
    """
    choices = list(choices)
    matches = difflib.get_close_matches(word, choices, n=limit, cutoff=0.5)
    if not matches:
        matches = [c for c in choices if word.lower() in c.lower()][:limit]
    if matches:
        return f"; close matches: {', '.join(matches)}"
    if see is None or not choices:
        return ""
    if len(choices) <= 10:
        return f"; no close match among: {', '.join(choices)}"
    return f"; no close match; the first 10 of {len(choices)}: {', '.join(choices[:10])}, ... (see {see})"


def known_keywords(function: Function) -> Function:
    """Refuse a keyword argument `function` does not take with featvis's error, naming its close matches
    (Python's own TypeError names no alternative); the signature `help()` shows is the function's.

    Examples:
        >>> @known_keywords
        ... def render(*, max_iter: int = 128): ...
        >>> render(max_iters=3)
        FeatvisTypeError: unexpected keyword argument 'max_iters'; close matches: max_iter
    """
    taken = [
        name
        for name, parameter in inspect.signature(function).parameters.items()
        if parameter.kind in (parameter.POSITIONAL_OR_KEYWORD, parameter.KEYWORD_ONLY)
    ]
    see = f"help({function.__module__}.{function.__qualname__})"

    @functools.wraps(function)
    def checked(*args, **kwargs):
        for name in kwargs:
            if name not in taken:
                raise FeatvisTypeError(
                    f"unexpected keyword argument {name!r}{close_matches(name, taken, see=see)}"
                )
        return function(*args, **kwargs)

    return checked


def choose(argument: str, given: object, table: dict):
    """Look `given` up in `table` of named strategies (None or a callable is returned as it is),
    or raise naming the choices."""
    if given is None or (callable(given) and not isinstance(given, str)):
        return given
    if isinstance(given, str) and given in table:
        return table[given]
    names = sorted(table)
    hint = close_matches(given, names) if isinstance(given, str) else ""
    raise bad_value(argument, given, f"one of {', '.join(names)} or a callable{hint}")


def is_int(value: object) -> bool:
    """Whether `value` is an integer (a Python or numpy int), not a bool."""
    return isinstance(value, numbers.Integral) and not isinstance(value, bool)


def check_int(argument: str, value: object, minimum: int) -> int:
    """An int (not a bool) >= minimum, or the standard error."""
    if isinstance(value, bool) or not isinstance(value, int):
        raise bad_type(argument, value, f"an int >= {minimum}")
    if value < minimum:
        raise bad_value(argument, value, f"an int >= {minimum}")
    return value


def check_number(
    argument: str, value: object, *, minimum: float | None = None, positive: bool = False
) -> float:
    """A finite real number (not a bool), optionally >= minimum or > 0, or the standard error."""
    allowed = "a finite number" + (" > 0" if positive else f" >= {minimum}" if minimum is not None else "")
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        raise bad_type(argument, value, allowed)
    if not math.isfinite(value) or (positive and value <= 0) or (minimum is not None and value < minimum):
        raise bad_value(argument, value, allowed)
    return float(value)


class FeatvisWarning(UserWarning):
    """Something featvis did for you that you may want to know about."""
