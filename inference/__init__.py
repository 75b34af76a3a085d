"""The App framework and the InferenceService runner.

What a model author imports: `App`, `endpoint`, `HealthCheck`, `RequestContext`
(and `RequestCancelled`, `ui` for explicit playground hints, `Encode` for how
the runner encodes tensors left in media output fields).
"""

from ferry.inference.app import (
    App,
    AppLoadError,
    AppSpec,
    EndpointSpec,
    HealthCheck,
    app_id_for,
    describe,
    endpoint,
    load_app,
)
from ferry.inference.context import RequestCancelled, RequestContext
from ferry.inference.outputs import Encode
from ferry.inference.schema import input_schema, output_schema, ui

__all__ = [
    "App",
    "AppLoadError",
    "AppSpec",
    "Encode",
    "EndpointSpec",
    "HealthCheck",
    "RequestCancelled",
    "RequestContext",
    "app_id_for",
    "describe",
    "endpoint",
    "input_schema",
    "load_app",
    "output_schema",
    "ui",
]
