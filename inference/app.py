"""The App an author writes: one class, `setup()` once, `@endpoint` methods per path.

`describe(AppClass)` reads such a class into an `AppSpec` — the one place the
framework inspects it — and refuses a malformed app with a `TypeError` or
`ValueError` naming the class, the method and what to change, when the app is
registered rather than on its first request. `@endpoint` checks its own
arguments at import time; the class itself is only checked by `describe`, so an
abstract base App without endpoints stays legal, and annotations may name
models defined further down the module.

`load_app("package.module:ClassName")` or `load_app("path/to/app.py:ClassName")`
finds the class a CLI names.
"""

from __future__ import annotations

import collections.abc
import hashlib
import importlib
import importlib.util
import inspect
import logging
import re
import sys
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar, TypeVar, get_args, get_origin, get_type_hints

from pydantic import BaseModel, ConfigDict, PydanticUserError, create_model

from ferry.inference.context import RequestContext, current_context
from ferry.inference.outputs import check_encode_markers

__all__ = [
    "App",
    "AppLoadError",
    "AppSpec",
    "EndpointSpec",
    "FreeformOutput",
    "HealthCheck",
    "app_id_for",
    "describe",
    "endpoint",
    "load_app",
]

# Set on each decorated function; `describe` reads it back.
_MARK = "__ferry_endpoint__"
_APP_ID = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]*")
_PATH = re.compile(r"/[^\s?#]*")
_IDENTIFIER_GAPS = re.compile(r"\W")
# What a realtime endpoint may be annotated with: an async stream of models.
_STREAM_INPUTS = (collections.abc.AsyncIterator, collections.abc.AsyncIterable)
_STREAM_OUTPUTS = (*_STREAM_INPUTS, collections.abc.AsyncGenerator)

Handler = TypeVar("Handler", bound=Callable[..., Any])


class App:
    """Subclass this: set the class attributes you need, define `setup` and `@endpoint` methods.

    The runner constructs the app with no arguments, awaits or calls `setup()`
    once before the first request, then calls endpoint methods, possibly
    several at a time (`max_concurrency`).
    """

    # None: derived from the class name ("TextToImage" -> "text-to-image"). Not inherited.
    app_id: ClassVar[str | None] = None
    # Informational; also picks the default concurrency.
    machine_type: ClassVar[str] = "CPU"
    # None: 1 on a GPU machine type (one model, one device), else 4.
    max_concurrency: ClassVar[int | None] = None
    # Whether the runner downloads the input's media URL fields before calling a handler.
    download_inputs: ClassVar[bool] = True
    # A request running longer (downloads, handler and encodes) is cancelled: DEADLINE_EXCEEDED. None: no limit.
    request_timeout_seconds: ClassVar[float | None] = None

    def setup(self) -> None:
        """Load models and weights; `def` or `async def`. Runs once per runner, before any request."""

    def progress(self, current: float, total: float = 0, message: str = "") -> None:
        """Report progress on the request being handled; outside one (in `setup`), a log record."""
        context = current_context()
        if context is None:
            progress = f"{current:g}/{total:g}" if total else f"{current:g}"
            self._logger().info("progress %s %s", progress, message)
        else:
            context.progress(current, total, message)

    def log(self, message: str, level: str = "INFO") -> None:
        """Log a line to the request being handled; outside one (in `setup`), to `logging`."""
        context = current_context()
        if context is None:
            self._logger().log(logging.getLevelName(level.upper()), "%s", message)
        else:
            context.log(message, level)

    def _logger(self) -> logging.Logger:
        return logging.getLogger(f"ferry.inference.apps.{app_id_for(type(self))}")


@dataclass(frozen=True)
class HealthCheck:
    """How the platform probes an app's health endpoint (the Docker HEALTHCHECK fields)."""

    start_period_seconds: float = 0.0
    timeout_seconds: float = 5.0
    failure_threshold: int = 3
    interval_seconds: float = 10.0

    def __post_init__(self) -> None:
        if self.start_period_seconds < 0:
            raise ValueError(f"start_period_seconds must be >= 0, got {self.start_period_seconds}")
        for name in ("timeout_seconds", "interval_seconds"):
            if getattr(self, name) <= 0:
                raise ValueError(f"{name} must be > 0, got {getattr(self, name)}")
        if (
            isinstance(self.failure_threshold, bool)
            or not isinstance(self.failure_threshold, int)
            or self.failure_threshold < 1
        ):
            raise ValueError(f"failure_threshold must be an int >= 1, got {self.failure_threshold!r}")


@dataclass(frozen=True)
class _EndpointMark:
    path: str
    realtime: bool
    health_check: HealthCheck | None


def endpoint(
    path: str, *, realtime: bool = False, health_check: HealthCheck | None = None
) -> Callable[[Handler], Handler]:
    """Serve the decorated method at `path` ("/" is the app's default endpoint).

    `realtime=True`: an `async def` generator taking `AsyncIterator[InputModel]`
    and yielding output models, for one long bidirectional call.
    `health_check=HealthCheck(...)`: this endpoint is the app's health probe (at most one).
    """
    if not isinstance(path, str) or not _PATH.fullmatch(path):
        raise ValueError(f"endpoint path must start with '/' and hold no spaces, '?' or '#', got {path!r}")
    if health_check is not None and not isinstance(health_check, HealthCheck):
        raise TypeError(f"health_check must be a HealthCheck, got {type(health_check).__name__}")
    if health_check is not None and realtime:
        raise ValueError(f"endpoint {path!r}: a health check cannot be a realtime endpoint")
    mark = _EndpointMark(path, realtime, health_check)

    def decorate(function: Handler) -> Handler:
        if not inspect.isfunction(function):
            raise TypeError(f"@endpoint({path!r}) decorates a method (def or async def), got {function!r}")
        if hasattr(function, _MARK):
            raise ValueError(f"{function.__qualname__} is already the endpoint {getattr(function, _MARK).path!r}")
        setattr(function, _MARK, mark)
        return function

    return decorate


@dataclass(frozen=True)
class EndpointSpec:
    """One endpoint as the runner calls it: `getattr(app, handler_name)(*args, **kwargs)` from `arguments`."""

    path: str
    handler_name: str
    # For realtime endpoints: the model of each streamed item.
    input_model: type[BaseModel]
    output_model: type[BaseModel]
    # Call and await (realtime: an async generator to iterate); else call in a worker thread.
    is_async: bool
    realtime: bool
    # Pass the request's RequestContext (as the second argument, or as the keyword `context_name`).
    takes_context: bool
    health_check: HealthCheck | None
    # Plain parameters (`def process(self, video_url: str)`): the input model was built from them and
    # the handler gets its fields as keywords. None: the handler takes the model itself.
    keyword_fields: tuple[str, ...] | None = None
    context_name: str = "context"
    description: str = ""  # the handler's docstring, cleaned (ListEndpoints shows it)

    def arguments(self, input: Any, context: RequestContext) -> tuple[tuple[Any, ...], dict[str, Any]]:
        """What the handler is called with for `input` (a model; for realtime endpoints, the stream of them)."""
        if self.keyword_fields is None:
            return ((input, context) if self.takes_context else (input,)), {}
        keywords = {name: getattr(input, name) for name in self.keyword_fields}
        if self.takes_context:
            keywords[self.context_name] = context
        return (), keywords


class FreeformOutput(BaseModel):
    """The output of an endpoint annotated `-> dict`: any JSON object; toolkit files in it serialise as themselves."""

    model_config = ConfigDict(extra="allow")


@dataclass(frozen=True)
class AppSpec:
    """An App class, checked and read: what the runner needs to host it."""

    app_class: type[App]
    app_id: str
    machine_type: str
    max_concurrency: int
    download_inputs: bool
    request_timeout_seconds: float | None
    setup_is_async: bool
    # By path, in definition order.
    endpoints: dict[str, EndpointSpec]
    health_endpoint: EndpointSpec | None


def app_id_for(app_class: type) -> str:
    """The class's own `app_id`, else its name in kebab case: "TextToImage" -> "text-to-image".

    Only an `app_id` set on the class itself counts: a subclass is another app.
    """
    explicit = vars(app_class).get("app_id")
    if explicit is not None:
        if not isinstance(explicit, str) or not _APP_ID.fullmatch(explicit):
            raise ValueError(
                f"{app_class.__qualname__}.app_id must be letters, digits, '.', '_' or '-', got {explicit!r}"
            )
        return explicit
    name = re.sub(r"([A-Z]+)([A-Z][a-z])", r"\1-\2", app_class.__name__)  # "SDXLTurbo" -> "SDXL-Turbo"
    name = re.sub(r"([a-z0-9])([A-Z])", r"\1-\2", name)  # "TextToImage" -> "Text-To-Image"
    return re.sub(r"[-_]+", "-", name).strip("-").lower()


def describe(app_class: type[App]) -> AppSpec:
    """Check `app_class` and read it into an `AppSpec`; a malformed app raises TypeError or ValueError."""
    if not (isinstance(app_class, type) and issubclass(app_class, App)) or app_class is App:
        raise TypeError(f"expected a subclass of ferry.inference.App, got {app_class!r}")
    name = app_class.__qualname__
    _check_constructible(app_class)
    endpoints: dict[str, EndpointSpec] = {}
    for attribute, function in _marked_methods(app_class):
        spec = _endpoint_spec(app_class, attribute, function, getattr(function, _MARK))
        if spec.path in endpoints:
            first = endpoints[spec.path].handler_name
            raise ValueError(f"{name}: {first} and {attribute} are both at endpoint path {spec.path!r}")
        endpoints[spec.path] = spec
    if not endpoints:
        raise ValueError(f"{name} has no endpoints: decorate a method with @endpoint('/')")
    for spec in endpoints.values():
        check_encode_markers(spec.output_model, f"{name}.{spec.handler_name} (endpoint {spec.path!r})")
    health = [spec for spec in endpoints.values() if spec.health_check is not None]
    if len(health) > 1:
        raise ValueError(
            f"{name} has {len(health)} health-check endpoints ({', '.join(s.path for s in health)}); at most one"
        )
    if health and not _constructible_empty(health[0].input_model):
        raise ValueError(
            f"{name}: the health-check endpoint {health[0].path!r} is called with no input, "
            f"so every field of {health[0].input_model.__qualname__} needs a default"
        )
    setup = app_class.setup
    if len(inspect.signature(setup).parameters) != 1:
        raise TypeError(f"{name}.setup takes no arguments besides self")
    return AppSpec(
        app_class=app_class,
        app_id=app_id_for(app_class),
        machine_type=_machine_type(app_class),
        max_concurrency=_max_concurrency(app_class),
        download_inputs=_download_inputs(app_class),
        request_timeout_seconds=_request_timeout(app_class),
        setup_is_async=inspect.iscoroutinefunction(setup),
        endpoints=endpoints,
        health_endpoint=health[0] if health else None,
    )


def _constructible_empty(model: type[BaseModel]) -> bool:
    return all(not field.is_required() for field in model.model_fields.values())


def _check_constructible(app_class: type[App]) -> None:
    required = [
        p.name
        for p in inspect.signature(app_class).parameters.values()
        if p.default is p.empty and p.kind not in (p.VAR_POSITIONAL, p.VAR_KEYWORD)
    ]
    if required:
        raise TypeError(
            f"{app_class.__qualname__} is constructed with no arguments; __init__ requires {', '.join(required)}"
        )


def _marked_methods(app_class: type) -> list[tuple[str, Callable[..., Any]]]:
    # Walk the MRO base-first so a subclass's definition replaces an inherited one of the same name.
    members: dict[str, Any] = {}
    for klass in reversed(app_class.__mro__):
        members.update(vars(klass))
    return [
        (attribute, value)
        for attribute, value in members.items()
        if inspect.isfunction(value) and hasattr(value, _MARK)
    ]


def _endpoint_spec(app_class: type, attribute: str, function: Callable[..., Any], mark: _EndpointMark) -> EndpointSpec:
    where = f"{app_class.__qualname__}.{attribute} (endpoint {mark.path!r})"
    try:
        hints = get_type_hints(function)
    except Exception as error:  # NameError for an unresolvable string annotation, TypeError for a bad one
        raise TypeError(f"{where}: cannot resolve its annotations: {error}") from error
    parameters = list(inspect.signature(function).parameters.values())[1:]  # after self
    if any(p.kind in (p.VAR_POSITIONAL, p.VAR_KEYWORD) for p in parameters):
        raise TypeError(f"{where}: *args and **kwargs cannot be described as inputs: name each parameter")
    context = next((p for p in parameters if _is_context_parameter(where, p, hints)), None)
    inputs = [p for p in parameters if p is not context]
    for parameter in inputs:
        if parameter.name not in hints:
            raise TypeError(
                f"{where}: annotate parameter {parameter.name!r} with its type "
                "(a pydantic BaseModel for the whole input)"
            )
    if "return" not in hints:
        raise TypeError(f"{where}: annotate the return type with its output model (a pydantic BaseModel, or dict)")
    takes_model = len(inputs) == 1 and inputs[0].kind != inputs[0].KEYWORD_ONLY and _is_model(hints[inputs[0].name])
    if takes_model and context is not None and parameters.index(context) != 1:
        raise TypeError(f"{where}: the signature must be (self, input) or (self, input, context)")
    if mark.realtime:
        if not inspect.isasyncgenfunction(function):
            raise TypeError(f"{where}: a realtime endpoint is an async generator (`async def` that yields outputs)")
        if len(inputs) != 1:
            raise TypeError(f"{where}: a realtime endpoint takes one stream of inputs (and optionally a context)")
        input_model = _streamed_model(where, f"parameter {inputs[0].name!r}", hints[inputs[0].name], _STREAM_INPUTS)
        output_model = _streamed_model(where, "return type", hints["return"], _STREAM_OUTPUTS)
        keyword_fields = None
    else:
        if inspect.isgeneratorfunction(function) or inspect.isasyncgenfunction(function):
            raise TypeError(f"{where}: only realtime endpoints yield; return one output or use realtime=True")
        if takes_model:
            input_model, keyword_fields = hints[inputs[0].name], None
        else:
            input_model, keyword_fields = (
                _keyword_model(where, function.__name__, inputs, hints),
                tuple(p.name for p in inputs),
            )
        output_model = _output_model(where, hints["return"])
    return EndpointSpec(
        path=mark.path,
        handler_name=attribute,
        input_model=input_model,
        output_model=output_model,
        is_async=inspect.iscoroutinefunction(function) or inspect.isasyncgenfunction(function),
        realtime=mark.realtime,
        takes_context=context is not None,
        health_check=mark.health_check,
        keyword_fields=keyword_fields,
        context_name=context.name if context is not None else "context",
        description=inspect.getdoc(function) or "",
    )


def _is_model(annotation: Any) -> bool:
    return isinstance(annotation, type) and issubclass(annotation, BaseModel)


def _keyword_model(where: str, name: str, inputs: list[inspect.Parameter], hints: dict[str, Any]) -> type[BaseModel]:
    """The input model plain parameters describe: `def process(self, video_url: str, steps: int = 8)`."""
    fields: dict[str, Any] = {p.name: (hints[p.name], ... if p.default is p.empty else p.default) for p in inputs}
    title = "".join(part.title() for part in name.split("_")) + "Input"
    try:
        return create_model(title, **fields)
    except (TypeError, ValueError, PydanticUserError) as error:  # a name pydantic reserves, a type it cannot describe
        raise TypeError(f"{where}: its parameters cannot form an input model: {error}") from error


def _output_model(where: str, annotation: Any) -> type[BaseModel]:
    if _is_model(annotation):
        return annotation  # type: ignore[no-any-return]
    if annotation in (dict, Mapping) or get_origin(annotation) in (dict, Mapping, collections.abc.Mapping):
        return FreeformOutput
    raise TypeError(f"{where}: return type must be a pydantic BaseModel subclass or dict, got {_show(annotation)}")


def _is_context_parameter(where: str, parameter: inspect.Parameter, hints: dict[str, Any]) -> bool:
    annotation = hints.get(parameter.name)
    is_context_type = isinstance(annotation, type) and issubclass(annotation, RequestContext)
    if parameter.name == "context" and annotation is not None and not is_context_type:
        raise TypeError(f"{where}: parameter 'context' is a RequestContext; annotate it so or leave it bare")
    return parameter.name == "context" or is_context_type


def _model(where: str, what: str, annotation: Any) -> type[BaseModel]:
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        return annotation
    raise TypeError(f"{where}: {what} must be a pydantic BaseModel subclass, got {_show(annotation)}")


def _streamed_model(where: str, what: str, annotation: Any, streams: tuple[type, ...]) -> type[BaseModel]:
    arguments = get_args(annotation)
    if get_origin(annotation) not in streams or not arguments:
        raise TypeError(f"{where}: a realtime {what} must be AsyncIterator[Model], got {_show(annotation)}")
    return _model(where, what + " item", arguments[0])


def _show(annotation: Any) -> str:
    return annotation.__qualname__ if isinstance(annotation, type) else repr(annotation)


def _machine_type(app_class: type[App]) -> str:
    machine_type = app_class.machine_type
    if not isinstance(machine_type, str) or not machine_type:
        raise TypeError(f"{app_class.__qualname__}.machine_type must be a non-empty string, got {machine_type!r}")
    return machine_type


def _max_concurrency(app_class: type[App]) -> int:
    limit = app_class.max_concurrency
    if limit is None:
        # A GPU holds one model's working set at a time; CPU apps overlap I/O with compute.
        return 1 if app_class.machine_type.upper().startswith("GPU") else 4
    if isinstance(limit, bool) or not isinstance(limit, int) or limit < 1:
        raise ValueError(f"{app_class.__qualname__}.max_concurrency must be an int >= 1, got {limit!r}")
    return limit


def _request_timeout(app_class: type[App]) -> float | None:
    limit = app_class.request_timeout_seconds
    if limit is None:
        return None
    if isinstance(limit, bool) or not isinstance(limit, (int, float)) or not limit > 0:
        raise ValueError(
            f"{app_class.__qualname__}.request_timeout_seconds must be a number > 0 or None, got {limit!r}"
        )
    return float(limit)


def _download_inputs(app_class: type[App]) -> bool:
    if not isinstance(app_class.download_inputs, bool):
        raise TypeError(
            f"{app_class.__qualname__}.download_inputs must be True or False, got {app_class.download_inputs!r}"
        )
    return app_class.download_inputs


# -- loading ---------------------------------------------------------------------------


class AppLoadError(ImportError):
    """A CLI app spec that names no loadable App class: bad form, missing module, file or class."""


def load_app(spec: str) -> type[App]:
    """The App class named by `"package.module:ClassName"` or `"path/to/file.py:ClassName"`.

    A file is imported under a private module name derived from its absolute
    path (loading it twice returns the same class), with its folder put first
    on `sys.path` as `python path/to/file.py` would, so it can import its
    siblings. Errors raised by the module's own code propagate unchanged.
    """
    target, _, class_name = spec.rpartition(":")
    if not target or not class_name.isidentifier():
        raise AppLoadError(f"app spec {spec!r} should be 'package.module:ClassName' or 'path/to/file.py:ClassName'")
    is_file = target.endswith(".py") or "/" in target or "\\" in target
    module = _import_file(Path(target)) if is_file else _import_module(target)
    app_class = getattr(module, class_name, None)
    if app_class is None:
        raise AppLoadError(f"{target} has no {class_name!r}")
    if not (isinstance(app_class, type) and issubclass(app_class, App)):
        raise AppLoadError(f"{target}:{class_name} is not a subclass of ferry.inference.App (it is {app_class!r})")
    return app_class


def _import_module(name: str) -> Any:
    try:
        return importlib.import_module(name)
    except ModuleNotFoundError as error:
        # Only the module named by the spec (or a parent package) is "missing"; the app's own
        # missing dependency is a different error and passes through as it is.
        if error.name is not None and (name == error.name or name.startswith(error.name + ".")):
            raise AppLoadError(f"no module named {name!r} (is its package on sys.path?)") from error
        raise


def _import_file(path: Path) -> Any:
    path = path.resolve()
    if not path.is_file():
        raise AppLoadError(f"no such app file: {path}")
    digest = hashlib.sha256(str(path).encode()).hexdigest()[:12]
    module_name = f"_ferry_app_{_IDENTIFIER_GAPS.sub('_', path.stem)}_{digest}"
    if module_name in sys.modules:
        return sys.modules[module_name]
    module_spec = importlib.util.spec_from_file_location(module_name, path)
    if module_spec is None or module_spec.loader is None:
        raise AppLoadError(f"cannot import {path} as a Python module")
    module = importlib.util.module_from_spec(module_spec)
    if str(path.parent) not in sys.path:
        sys.path.insert(0, str(path.parent))
    # Registered before it runs: pydantic and dataclasses look their module up in sys.modules.
    sys.modules[module_name] = module
    try:
        module_spec.loader.exec_module(module)
    except BaseException:
        del sys.modules[module_name]
        raise
    return module
