"""One registry type for every set of named things featvis picks from: CAM and saliency methods,
parameterizations, backprop and grad modifiers, learning-rate schedules, quality presets.

A `Registry` maps names to objects. It reads like a dict (``registry["name"]``, ``"name" in
registry``, iteration over the names), adds with `Registry.register` (a call, or a decorator),
refuses a name twice unless ``replace=True``, and a name it does not hold is an error that names
the argument, what was given, the names it holds and the close ones.

Examples:
    >>> shapes = Registry("shape", argument="shape")
    >>> @shapes.register("square")
    ... def square(side):
    ...     return side * side
    >>> shapes["square"](3), "square" in shapes, shapes.names()
    (9, True, ['square'])
    >>> shapes["sqare"]
    Traceback (most recent call last):
    featvis.errors.UnknownNameError: shape='sqare' is not allowed: expected one of square; close matches: square
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Mapping
import inspect
from typing import Generic, TypeVar, overload

from featvis.errors import UnknownNameError, bad_type, bad_value, close_matches

T = TypeVar("T")


class Registry(Mapping[str, T], Generic[T]):
    """Named objects of one kind, in the order they were registered.

    `kind` says what they are (for messages: ``"CAM method"``); `argument` is the argument whose
    value a name is (``"method"``), so a wrong name is reported as the user wrote it. `convert`, when
    given, turns what is registered into what is stored (a plain function into a method object)
    and raises on what cannot be one.

    Examples:
        >>> from featvis.optvis.grad_modifiers import GRAD_MODIFIERS
        >>> GRAD_MODIFIERS.register("double", lambda grads: 2 * grads)
        <function <lambda> at ...>
        >>> featvis.visualize_saliency(model, "fc", 3, image, grad_modifier="double")
    """

    def __init__(
        self,
        kind: str,
        argument: str,
        entries: Mapping[str, T] | None = None,
        *,
        convert: Callable[[object], T] | None = None,
    ):
        self.kind, self.argument, self._convert = kind, argument, convert
        self._entries: dict[str, T] = {}
        for name, obj in (entries or {}).items():
            self.register(name, obj)

    @overload
    def register(self, name: str, obj: None = None, *, replace: bool = False) -> Callable[[T], T]: ...

    @overload
    def register(self, name: str, obj: T, *, replace: bool = False) -> T: ...

    def register(self, name, obj=None, *, replace=False):
        """Add `obj` under `name` and return it; without `obj`, a decorator that does so.

        A name already registered is an error unless ``replace=True``.

        Examples:
            >>> presets = Registry("preset", argument="quality")
            >>> presets.register("tiny", {"max_iter": 8})
            {'max_iter': 8}
            >>> @presets.register("wide")
            ... def wide():
            ...     return {"views": 8}
        """
        if not isinstance(name, str) or not name:
            raise bad_type("name", name, f"a non-empty str naming the {self.kind}")
        if not isinstance(replace, bool):
            raise bad_type("replace", replace, "True or False")
        if name in self._entries and not replace:
            raise bad_value(
                "name",
                name,
                f"a {self.kind} name not registered yet (give replace=True to replace the one registered)",
            )
        if obj is None:
            return lambda decorated: self._add(name, decorated)
        return self._add(name, obj)

    def _add(self, name: str, obj: T) -> T:
        self._entries[name] = obj if self._convert is None else self._convert(obj)
        return obj

    def unregister(self, name: str) -> T:
        """Remove `name` and return what it held (a name not registered is the lookup error).

        Examples:
            >>> presets.unregister("tiny")
            {'max_iter': 8}
        """
        obj = self[name]
        del self._entries[name]
        return obj

    def __getitem__(self, name: str) -> T:
        if isinstance(name, str) and name in self._entries:
            return self._entries[name]
        hint = close_matches(name, self._entries) if isinstance(name, str) else ""
        raise UnknownNameError(
            str(bad_value(self.argument, name, f"one of {', '.join(self._entries) or '(none yet)'}{hint}"))
        )

    def __contains__(self, name: object) -> bool:
        return name in self._entries

    def __iter__(self) -> Iterator[str]:
        return iter(self._entries)

    def __len__(self) -> int:
        return len(self._entries)

    def names(self) -> list[str]:
        """The registered names, in the order they were registered."""
        return list(self._entries)

    def resolve(self, given: str | T | None) -> T | None:
        """What `given` names, or `given` itself when it is None or a callable (a function or object
        passed instead of a name); anything else is the standard error.

        Examples:
            >>> GRAD_MODIFIERS.resolve("absolute") is featvis.grad_modifiers.absolute
            True
        """
        if given is None or (callable(given) and not isinstance(given, str)):
            return given
        if not isinstance(given, str):
            raise bad_value(self.argument, given, f"one of {', '.join(self._entries)} or a callable")
        return self[given]

    def options(self, name: str) -> list[str]:
        """The keyword options the factory registered as `name` takes (its signature's parameters).

        Examples:
            >>> featvis.attention.SALIENCY_METHODS.options("occlusion")
            ['window', 'stride', 'baseline', 'batch_size']
        """
        return list(_parameters(self[name]))

    def create(self, name: str, options: Mapping[str, object] | None = None) -> object:
        """Call the factory registered as `name` with `options`; an option it does not take is an
        error naming the option, the method and the options it takes.

        Examples:
            >>> featvis.attention.SALIENCY_METHODS.create("integrated_gradients", {"steps": 16})
            IntegratedGradients(steps=16, quadrature='gausslegendre', baseline=None, batch_size=None)
        """
        factory = self[name]
        taken = _parameters(factory)
        for option, value in (options or {}).items():
            if option not in taken:
                takes = f"its options: {', '.join(taken)}" if taken else "it takes no option"
                raise bad_value(option, value, f"an option of {self.argument}={name!r} ({takes})")
        return factory(**(options or {}))

    def __repr__(self) -> str:
        return f"Registry({self.kind!r}: {', '.join(self._entries)})"


def _parameters(factory: object) -> dict[str, inspect.Parameter]:
    """The keyword-passable parameters of a callable (none for a value such as a preset dict)."""
    if not callable(factory):
        return {}
    try:
        signature = inspect.signature(factory)
    except (TypeError, ValueError):  # a builtin without a signature takes no options we can name
        return {}
    kinds = (inspect.Parameter.POSITIONAL_OR_KEYWORD, inspect.Parameter.KEYWORD_ONLY)
    return {name: p for name, p in signature.parameters.items() if p.kind in kinds}
