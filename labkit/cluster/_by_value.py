"""App factories that travel to cluster workers by value, for apps defined in a notebook.

A spawned worker starts a fresh interpreter, which cannot import a notebook's ``__main__``. So
:class:`labkit.Cluster` pickles a factory object with cloudpickle (which copies functions and
classes defined in ``__main__`` by value, as :class:`labkit.WorkerPool` does for tasks), and the
worker builds its app through :func:`app_by_value`, an ordinary import string.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from ..errors import ConfigurationError

__all__ = ["BY_VALUE", "pickled_app", "app_by_value", "factory_name"]

#: The import string every worker of a by-value app loads.
BY_VALUE = "labkit.cluster._by_value:app_by_value"

# The option that carries the pickled factory; no app factory takes an argument of this name.
_PAYLOAD = "_labkit_factory"


def factory_name(factory: Callable[..., Any]) -> str:
    """``"module:qualname"`` of ``factory``, for messages and stats."""
    module = getattr(factory, "__module__", None) or "?"
    return f"{module}:{getattr(factory, '__qualname__', type(factory).__name__)}"


def pickled_app(factory: Callable[..., Any], options: dict) -> tuple[str, dict]:
    """Prepare ``factory`` to travel to the workers: returns (import string, options with its bytes)."""
    import cloudpickle

    if _PAYLOAD in options:
        raise ConfigurationError(f"options may not contain {_PAYLOAD!r}: labkit uses that name to send the factory")
    try:
        payload = cloudpickle.dumps(factory)
    except Exception as exc:  # cloudpickle raises several kinds; all mean the same to the user
        raise ConfigurationError(
            f"cannot send the app factory {factory_name(factory)} to the workers ({type(exc).__name__}: {exc}). "
            "It, and what it uses, must be picklable: build sockets, pools and locks inside the app "
            "(in labkit_start), not outside it.") from exc
    return BY_VALUE, {**options, _PAYLOAD: payload}


def app_by_value(_labkit_factory: bytes, **options: Any) -> Any:
    """Rebuild a factory sent by :func:`pickled_app` and call it with the remaining options."""
    import cloudpickle

    factory = cloudpickle.loads(_labkit_factory)
    return factory(**options)
