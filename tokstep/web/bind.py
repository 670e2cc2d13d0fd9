"""`bind(handler, *parts)`: a module-level event handler with its first arguments given, for Gradio.

The page's handlers are plain functions that take the page's components (and what the page
serves) first, then what the event sends. `functools.partial` would bind those, but Gradio reads a
handler's annotations to pass it event data (`gr.SelectData`, `gr.Request`), and it cannot read them
through a partial: it passes None and warns. So `bind` makes a real function with the handler's
name, docstring, annotations and the remaining parameters, and a generator function when the
handler is one (Gradio streams a handler's updates only then).
"""

from __future__ import annotations

import functools
import inspect
from collections.abc import Callable, Iterator
from typing import Any


def bind(handler: Callable[..., Any], *parts: Any) -> Callable[..., Any]:
    """`handler` with its first `len(parts)` arguments set to `parts`, as Gradio can inspect it."""
    signature = inspect.signature(handler)
    if inspect.isgeneratorfunction(handler):

        @functools.wraps(handler)
        def bound(*args: Any, **kwargs: Any) -> Iterator[Any]:
            yield from handler(*parts, *args, **kwargs)

    else:

        @functools.wraps(handler)
        def bound(*args: Any, **kwargs: Any) -> Any:
            return handler(*parts, *args, **kwargs)

    bound.__signature__ = signature.replace(parameters=list(signature.parameters.values())[len(parts) :])  # type: ignore[attr-defined]
    return bound
