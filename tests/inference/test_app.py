"""The App framework: an author's class read into an AppSpec, refused early when malformed;
apps found from CLI specs; and the RequestContext a handler reports through."""

import asyncio
import contextvars
import logging
import sys
import threading
import time
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import pytest
from pydantic import BaseModel

from ferry.inference import (
    App,
    AppLoadError,
    HealthCheck,
    RequestCancelled,
    RequestContext,
    app_id_for,
    describe,
    endpoint,
    load_app,
)
from ferry.inference.context import current_context, using_context


class UpscaleInput(BaseModel):
    image_url: str
    scale: int = 2


class UpscaleOutput(BaseModel):
    url: str


class FrameIn(BaseModel):
    index: int


class FrameOut(BaseModel):
    index: int


class EmptyInput(BaseModel):
    pass


class HealthOutput(BaseModel):
    ok: bool


class Upscaler(App):
    machine_type = "GPU"

    def setup(self) -> None:
        self.ready = True

    @endpoint("/")
    def upscale(self, input: UpscaleInput) -> UpscaleOutput:
        return UpscaleOutput(url=input.image_url)

    @endpoint("/enhance")
    async def enhance(self, input: UpscaleInput, context: RequestContext) -> UpscaleOutput:
        return UpscaleOutput(url=input.image_url)

    @endpoint("/live", realtime=True)
    async def live(self, inputs: AsyncIterator[FrameIn], context: RequestContext) -> AsyncIterator[FrameOut]:
        async for frame in inputs:
            yield FrameOut(index=frame.index)

    @endpoint(
        "/health",
        health_check=HealthCheck(start_period_seconds=5, timeout_seconds=2, failure_threshold=3, interval_seconds=10),
    )
    def health(self, input: EmptyInput) -> HealthOutput:
        return HealthOutput(ok=True)


def recorded_context(request_id: str = "req-1") -> tuple[RequestContext, list[tuple]]:
    """A context whose callbacks append (kind, ...) tuples to a list, as a runner's would queue events."""
    events: list[tuple] = []
    context = RequestContext(
        request_id,
        on_progress=lambda current, total, message: events.append(("progress", current, total, message)),
        on_log=lambda message, level: events.append(("log", message, level)),
        on_partial=lambda output: events.append(("partial", output)),
    )
    return context, events


# -- app ids -------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("class_name", "app_id"),
    [
        ("Upscaler", "upscaler"),
        ("TextToImage", "text-to-image"),
        ("SDXLTurbo", "sdxl-turbo"),
        ("Flux2Dev", "flux2-dev"),
        ("text_to_audio", "text-to-audio"),
    ],
)
def test_the_app_id_is_the_class_name_in_kebab_case(class_name: str, app_id: str) -> None:
    assert app_id_for(type(class_name, (App,), {})) == app_id


def test_an_explicit_app_id_overrides_the_derived_one() -> None:
    class Whatever(App):
        app_id = "upscaler-v2"

    assert app_id_for(Whatever) == "upscaler-v2"


def test_a_subclass_does_not_inherit_its_parents_app_id() -> None:
    class Base(App):
        app_id = "base"

    class FastUpscaler(Base):
        pass

    assert app_id_for(FastUpscaler) == "fast-upscaler"


@pytest.mark.parametrize("bad", ["", "has space", "a/b", "-leading"])
def test_an_app_id_that_cannot_name_an_app_is_refused(bad: str) -> None:
    with pytest.raises(ValueError, match="app_id"):
        app_id_for(type("Named", (App,), {"app_id": bad}))


# -- discovery -----------------------------------------------------------------------


def test_describe_reads_every_kind_of_endpoint() -> None:
    spec = describe(Upscaler)

    assert (spec.app_class, spec.app_id, spec.machine_type, spec.download_inputs) == (Upscaler, "upscaler", "GPU", True)
    assert list(spec.endpoints) == ["/", "/enhance", "/live", "/health"]

    plain = spec.endpoints["/"]
    assert (plain.handler_name, plain.input_model, plain.output_model) == ("upscale", UpscaleInput, UpscaleOutput)
    assert (plain.is_async, plain.realtime, plain.takes_context, plain.health_check) == (False, False, False, None)

    enhance = spec.endpoints["/enhance"]
    assert (enhance.is_async, enhance.takes_context, enhance.realtime) == (True, True, False)

    live = spec.endpoints["/live"]
    assert (live.input_model, live.output_model) == (FrameIn, FrameOut)
    assert (live.is_async, live.realtime, live.takes_context) == (True, True, True)

    assert spec.health_endpoint is spec.endpoints["/health"]
    assert spec.health_endpoint.health_check == HealthCheck(
        start_period_seconds=5, timeout_seconds=2, failure_threshold=3, interval_seconds=10
    )


def test_endpoint_leaves_the_method_callable_as_written() -> None:
    assert Upscaler().upscale(UpscaleInput(image_url="u")) == UpscaleOutput(url="u")


def test_a_context_parameter_is_found_by_its_name_or_by_its_annotation() -> None:
    class ByName(App):
        @endpoint("/")
        def run(self, input: EmptyInput, context) -> HealthOutput: ...

    class ByAnnotation(App):
        @endpoint("/")
        def run(self, input: EmptyInput, ctx: RequestContext) -> HealthOutput: ...

    assert describe(ByName).endpoints["/"].takes_context
    assert describe(ByAnnotation).endpoints["/"].takes_context


@pytest.mark.parametrize(("machine_type", "default"), [("GPU", 1), ("GPU-H100", 1), ("gpu", 1), ("CPU", 4)])
def test_default_concurrency_is_one_on_a_gpu_and_four_otherwise(machine_type: str, default: int) -> None:
    app_class = type("Sized", (Upscaler,), {"machine_type": machine_type})
    assert describe(app_class).max_concurrency == default


def test_explicit_concurrency_and_download_settings_are_kept() -> None:
    class Tuned(Upscaler):
        max_concurrency = 8
        download_inputs = False

    spec = describe(Tuned)
    assert (spec.max_concurrency, spec.download_inputs) == (8, False)


def test_setup_is_optional_and_may_be_async() -> None:
    class NoSetup(App):
        @endpoint("/")
        def run(self, input: EmptyInput) -> HealthOutput: ...

    class AsyncSetup(NoSetup):
        async def setup(self) -> None: ...

    assert describe(NoSetup).setup_is_async is False
    assert describe(Upscaler).setup_is_async is False
    assert describe(AsyncSetup).setup_is_async is True


def test_a_subclass_inherits_endpoints_and_may_add_more() -> None:
    class Bigger(Upscaler):
        @endpoint("/extra")
        def extra(self, input: EmptyInput) -> HealthOutput: ...

    assert list(describe(Bigger).endpoints) == ["/", "/enhance", "/live", "/health", "/extra"]


# -- refusals ------------------------------------------------------------------------


def test_a_missing_input_annotation_is_refused() -> None:
    class Broken(App):
        @endpoint("/")
        def run(self, input) -> HealthOutput: ...

    with pytest.raises(TypeError, match=r"Broken.run \(endpoint '/'\): annotate parameter 'input'"):
        describe(Broken)


def test_a_missing_return_annotation_is_refused() -> None:
    class Broken(App):
        @endpoint("/")
        def run(self, input: EmptyInput): ...

    with pytest.raises(TypeError, match="annotate the return type"):
        describe(Broken)


def test_an_output_that_is_neither_a_model_nor_a_dict_is_refused() -> None:
    class Broken(App):
        @endpoint("/")
        def run(self, input: EmptyInput) -> str: ...

    with pytest.raises(TypeError, match="return type must be a pydantic BaseModel subclass or dict, got str"):
        describe(Broken)


def test_an_unresolvable_annotation_is_refused() -> None:
    class Broken(App):
        @endpoint("/")
        def run(self, input: "NoSuchModel") -> HealthOutput: ...  # noqa: F821

    with pytest.raises(TypeError, match="cannot resolve its annotations"):
        describe(Broken)


def test_a_realtime_endpoint_must_stream_models_both_ways() -> None:
    class NotStreamed(App):
        @endpoint("/", realtime=True)
        async def run(self, inputs: FrameIn) -> AsyncIterator[FrameOut]:
            yield FrameOut(index=0)

    class NotGenerator(App):
        @endpoint("/", realtime=True)
        async def run(self, inputs: AsyncIterator[FrameIn]) -> AsyncIterator[FrameOut]: ...

    class NotModels(App):
        @endpoint("/", realtime=True)
        async def run(self, inputs: AsyncIterator[FrameIn]) -> AsyncIterator[str]:
            yield "frame"

    with pytest.raises(TypeError, match=r"realtime parameter 'inputs' must be AsyncIterator\[Model\]"):
        describe(NotStreamed)
    with pytest.raises(TypeError, match="async generator"):
        describe(NotGenerator)
    with pytest.raises(TypeError, match="return type item must be a pydantic BaseModel subclass, got str"):
        describe(NotModels)


def test_only_realtime_endpoints_may_yield() -> None:
    class Broken(App):
        @endpoint("/")
        def run(self, input: EmptyInput) -> HealthOutput:
            yield HealthOutput(ok=True)

    with pytest.raises(TypeError, match="only realtime endpoints yield"):
        describe(Broken)


@pytest.mark.parametrize(
    ("signature", "problem"),
    [
        ("(self, input: EmptyInput, *args)", r"\*args and \*\*kwargs"),
        ("(self, **inputs: int)", r"\*args and \*\*kwargs"),
        ("(self, input: EmptyInput, c, d)", "annotate parameter 'c'"),
        ("(self, context, input: EmptyInput)", r"the signature must be \(self, input\) or \(self, input, context\)"),
    ],
)
def test_a_handler_names_and_annotates_each_parameter(signature: str, problem: str) -> None:
    namespace: dict = {"EmptyInput": EmptyInput, "HealthOutput": HealthOutput}
    exec(f"def run{signature} -> HealthOutput: ...", namespace)
    broken = type("Broken", (App,), {"run": endpoint("/")(namespace["run"])})

    with pytest.raises(TypeError, match=rf"Broken.run \(endpoint '/'\): {problem}"):
        describe(broken)


def test_plain_parameters_become_the_input_model_as_in_the_reference() -> None:
    class Reference(App):
        @endpoint("/")
        def process(self, video_url: str, steps: int = 8, context: RequestContext = None) -> dict:  # type: ignore[assignment]
            return {"output": video_url, "steps": steps}

        @endpoint("/nothing")
        def nothing(self) -> dict:
            return {}

    spec = describe(Reference).endpoints["/"]
    assert spec.keyword_fields == ("video_url", "steps") and spec.takes_context
    assert spec.input_model.__name__ == "ProcessInput"
    assert spec.input_model.model_json_schema()["required"] == ["video_url"]
    parsed = spec.input_model.model_validate({"video_url": "https://example.com/v.mp4"})
    context = RequestContext(
        "r", on_progress=lambda *report: None, on_log=lambda *line: None, on_partial=lambda output: None
    )
    assert spec.arguments(parsed, context) == (
        (),
        {"video_url": "https://example.com/v.mp4", "steps": 8, "context": context},
    )
    assert describe(Reference).endpoints["/nothing"].keyword_fields == ()


def test_a_dict_output_is_any_json_object() -> None:
    class Loose(App):
        @endpoint("/")
        def run(self, input: EmptyInput) -> dict[str, object]: ...

    output_model = describe(Loose).endpoints["/"].output_model
    assert output_model.model_validate({"anything": [1, "two"]}).model_dump() == {"anything": [1, "two"]}


def test_a_model_with_other_parameters_is_one_field_among_them() -> None:
    class Mixed(App):
        @endpoint("/")
        def run(self, input: EmptyInput, extra: int) -> HealthOutput: ...

    spec = describe(Mixed).endpoints["/"]
    assert spec.keyword_fields == ("input", "extra")


def test_a_parameter_named_context_must_be_a_request_context() -> None:
    class Broken(App):
        @endpoint("/")
        def run(self, input: EmptyInput, context: dict) -> HealthOutput: ...

    with pytest.raises(TypeError, match="parameter 'context' is a RequestContext"):
        describe(Broken)


def test_two_endpoints_at_one_path_are_refused() -> None:
    class Broken(App):
        @endpoint("/run")
        def first(self, input: EmptyInput) -> HealthOutput: ...

        @endpoint("/run")
        def second(self, input: EmptyInput) -> HealthOutput: ...

    with pytest.raises(ValueError, match="first and second are both at endpoint path '/run'"):
        describe(Broken)


def test_two_health_checks_are_refused() -> None:
    class Broken(App):
        @endpoint("/health", health_check=HealthCheck())
        def health(self, input: EmptyInput) -> HealthOutput: ...

        @endpoint("/ready", health_check=HealthCheck())
        def ready(self, input: EmptyInput) -> HealthOutput: ...

    with pytest.raises(ValueError, match=r"2 health-check endpoints \(/health, /ready\); at most one"):
        describe(Broken)


@pytest.mark.parametrize("path", ["run", "", "/with space", "/query?x=1"])
def test_a_path_must_start_with_a_slash(path: str) -> None:
    with pytest.raises(ValueError, match="must start with '/'"):
        endpoint(path)


def test_a_health_check_is_not_realtime_and_has_sane_timings() -> None:
    with pytest.raises(ValueError, match="cannot be a realtime endpoint"):
        endpoint("/health", realtime=True, health_check=HealthCheck())
    with pytest.raises(ValueError, match="timeout_seconds must be > 0"):
        HealthCheck(timeout_seconds=0)
    with pytest.raises(ValueError, match="failure_threshold"):
        HealthCheck(failure_threshold=0)


def test_an_app_without_endpoints_is_refused() -> None:
    with pytest.raises(ValueError, match="Empty has no endpoints"):
        describe(type("Empty", (App,), {}))


def test_only_app_subclasses_are_described() -> None:
    with pytest.raises(TypeError, match=r"expected a subclass of ferry\.inference\.App"):
        describe(UpscaleInput)  # type: ignore[arg-type]
    with pytest.raises(TypeError, match="expected a subclass"):
        describe(App)


def test_an_app_the_runner_cannot_construct_is_refused() -> None:
    class NeedsWeights(Upscaler):
        def __init__(self, weights: str) -> None: ...

    with pytest.raises(TypeError, match="requires weights"):
        describe(NeedsWeights)


@pytest.mark.parametrize(
    ("attribute", "value", "error"), [("max_concurrency", 0, ValueError), ("download_inputs", "yes", TypeError)]
)
def test_bad_settings_are_refused(attribute: str, value: object, error: type[Exception]) -> None:
    with pytest.raises(error, match=attribute):
        describe(type("Misconfigured", (Upscaler,), {attribute: value}))


# -- loading -------------------------------------------------------------------------

APP_SOURCE = """
from pydantic import BaseModel
from ferry.inference import App, endpoint

class Echo(BaseModel):
    text: str

class EchoApp(App):
    @endpoint("/")
    def echo(self, input: Echo) -> Echo:
        return input

NOT_AN_APP = 42
"""


# Every module these tests write is named with one of these, so it can be forgotten afterwards.
TEST_MODULE_PREFIXES = ("_ferry_app_", "echo_", "needs_dependency_app")


@pytest.fixture
def isolated_imports(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    """What a test puts on sys.path, and the modules it writes and imports, are forgotten afterwards."""
    monkeypatch.setattr(sys, "path", list(sys.path))
    yield
    for name in [name for name in sys.modules if name.startswith(TEST_MODULE_PREFIXES)]:
        del sys.modules[name]


def test_load_app_imports_a_module_path(tmp_path: Path, isolated_imports: None) -> None:
    package = tmp_path / "echo_pkg_module"
    package.mkdir()
    (package / "__init__.py").write_text("")
    (package / "apps.py").write_text(APP_SOURCE)
    sys.path.insert(0, str(tmp_path))

    app_class = load_app("echo_pkg_module.apps:EchoApp")

    assert app_class.__name__ == "EchoApp"
    assert describe(app_class).app_id == "echo-app"


def test_load_app_imports_a_file_path_whose_siblings_are_importable(tmp_path: Path, isolated_imports: None) -> None:
    (tmp_path / "echo_helpers_file.py").write_text("GREETING = 'hi'\n")
    app_file = tmp_path / "my app.py"
    app_file.write_text("import echo_helpers_file\n" + APP_SOURCE)

    app_class = load_app(f"{app_file}:EchoApp")

    assert sys.modules[app_class.__module__].echo_helpers_file.GREETING == "hi"
    assert describe(app_class).endpoints["/"].handler_name == "echo"
    assert load_app(f"{app_file}:EchoApp") is app_class


@pytest.mark.parametrize(
    ("spec", "message"),
    [
        ("no_colon_here", "should be 'package.module:ClassName'"),
        ("no_such_module_xyz:App", "no module named 'no_such_module_xyz'"),
        ("missing/app.py:App", "no such app file"),
        ("{file}:Missing", "has no 'Missing'"),
        ("{file}:NOT_AN_APP", "is not a subclass of ferry.inference.App"),
        ("{file}:Echo", "is not a subclass of ferry.inference.App"),
    ],
)
def test_load_app_says_what_is_wrong(spec: str, message: str, tmp_path: Path, isolated_imports: None) -> None:
    app_file = tmp_path / "echo_app_errors.py"
    app_file.write_text(APP_SOURCE)

    with pytest.raises(AppLoadError, match=message):
        load_app(spec.format(file=app_file))


def test_an_apps_own_missing_dependency_is_not_reported_as_a_missing_app(
    tmp_path: Path, isolated_imports: None
) -> None:
    (tmp_path / "needs_dependency_app.py").write_text("import some_dependency_not_installed\n")
    sys.path.insert(0, str(tmp_path))

    with pytest.raises(ModuleNotFoundError) as raised:
        load_app("needs_dependency_app:App")
    assert not isinstance(raised.value, AppLoadError)
    assert raised.value.name == "some_dependency_not_installed"


# -- request context ------------------------------------------------------------------


def test_the_context_forwards_progress_logs_and_partials_to_its_callbacks() -> None:
    context, events = recorded_context()

    context.progress(3, 10, "denoising")
    context.progress(1)
    context.log("loaded", level="warning")
    context.partial(UpscaleOutput(url="u"))
    context.partial({"url": "v"})

    assert context.request_id == "req-1"
    assert events == [
        ("progress", 3.0, 10.0, "denoising"),
        ("progress", 1.0, 0.0, ""),
        ("log", "loaded", "WARNING"),
        ("partial", {"url": "u"}),
        ("partial", {"url": "v"}),
    ]


def test_the_context_refuses_nonsense_reports() -> None:
    context, events = recorded_context()

    with pytest.raises(ValueError, match="current"):
        context.progress(-1)
    with pytest.raises(ValueError, match="total"):
        context.progress(1, float("nan"))
    with pytest.raises(ValueError, match="log level"):
        context.log("x", level="LOUD")
    with pytest.raises(TypeError, match="pydantic model or a dict"):
        context.partial(["not", "a", "document"])  # type: ignore[arg-type]
    assert events == []


def test_callbacks_never_run_concurrently_when_four_threads_report() -> None:
    inside = threading.Event()
    overlaps: list[int] = []
    seen: list[tuple[float, str]] = []

    def on_progress(current: float, total: float, message: str) -> None:
        if inside.is_set():
            overlaps.append(1)
        inside.set()
        time.sleep(0)  # give another thread the chance to barge in
        seen.append((current, message))
        inside.clear()

    context = RequestContext(
        "req", on_progress=on_progress, on_log=lambda message, level: None, on_partial=lambda output: None
    )
    start = threading.Barrier(4)

    def report(worker: int) -> None:
        start.wait()
        for step in range(250):
            context.progress(step, 250, f"worker {worker}")

    threads = [threading.Thread(target=report, args=(worker,)) for worker in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()

    assert overlaps == []
    assert len(seen) == 1000
    for worker in range(4):  # each thread's reports arrive in the order it made them
        assert [current for current, message in seen if message == f"worker {worker}"] == list(range(250))


def test_cancellation_is_a_flag_sync_handlers_poll() -> None:
    context, _ = recorded_context()
    assert context.cancelled is False
    context.raise_if_cancelled()

    context.cancel()

    assert context.cancelled is True
    with pytest.raises(RequestCancelled, match="request req-1 was cancelled"):
        context.raise_if_cancelled()


def test_a_worker_thread_stops_when_its_runner_owned_flag_is_set() -> None:
    flag = threading.Event()
    context = RequestContext("req", lambda *a: None, lambda *a: None, lambda o: None, cancelled=flag)
    outcome: list[str] = []

    def handler() -> None:
        try:
            while True:
                context.raise_if_cancelled()
                time.sleep(0.005)
        except RequestCancelled:
            outcome.append("stopped")

    worker = threading.Thread(target=handler)
    worker.start()
    flag.set()
    worker.join(timeout=2)

    assert outcome == ["stopped"]


def test_a_closed_context_drops_what_a_leftover_thread_still_reports() -> None:
    context, events = recorded_context()
    context.close()

    context.progress(1, 2)
    context.log("late")
    context.partial({"late": True})

    assert events == []


# -- App.progress / App.log through the current context -------------------------------


def test_app_progress_and_log_reach_the_current_request() -> None:
    app = Upscaler()
    context, events = recorded_context()

    assert current_context() is None
    with using_context(context):
        assert current_context() is context
        app.progress(1, 4, "tile")
        app.log("tile done", level="DEBUG")
    assert current_context() is None

    assert events == [("progress", 1.0, 4.0, "tile"), ("log", "tile done", "DEBUG")]


def test_app_progress_reaches_the_request_from_a_thread_started_with_copy_context() -> None:
    app = Upscaler()
    context, events = recorded_context()

    with using_context(context):
        copied = contextvars.copy_context()
    worker = threading.Thread(target=copied.run, args=(app.progress, 2, 2, "from a worker"))
    worker.start()
    worker.join()

    assert events == [("progress", 2.0, 2.0, "from a worker")]


async def test_concurrent_async_handlers_each_report_to_their_own_request() -> None:
    app = Upscaler()
    first, first_events = recorded_context("first")
    second, second_events = recorded_context("second")

    async def handle(context: RequestContext, label: str) -> None:
        with using_context(context):
            for step in range(3):
                await asyncio.sleep(0)
                app.progress(step, 3, label)

    await asyncio.gather(handle(first, "a"), handle(second, "b"))

    assert [event[3] for event in first_events] == ["a"] * 3
    assert [event[3] for event in second_events] == ["b"] * 3


def test_outside_a_request_app_progress_and_log_go_to_logging(caplog: pytest.LogCaptureFixture) -> None:
    app = Upscaler()

    with caplog.at_level(logging.DEBUG, logger="ferry.inference.apps.upscaler"):
        app.log("loading weights", level="warning")
        app.progress(3, 10, "shards")

    assert [(r.name, r.levelname, r.getMessage()) for r in caplog.records] == [
        ("ferry.inference.apps.upscaler", "WARNING", "loading weights"),
        ("ferry.inference.apps.upscaler", "INFO", "progress 3/10 shards"),
    ]
