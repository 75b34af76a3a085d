"""`ferry.Client` and `ferry.AsyncClient`: one connection to a ferry stack, with typed stubs.

As httpx keeps its two clients, `_ClientBase` holds every decision — where
the stack is, what each request says, how a download lands on this machine —
and the twins are thin I/O shells over a `grpc.Channel` and a
`grpc.aio.Channel`, with the same methods and the same signatures (a test
compares them). Every method converts `grpc.RpcError` to `FerryError` in one
place (`ferry.errors.map_rpc_errors`). The generated stubs are exposed as-is
(`client.downloader.Download(...)`) for callers who want the raw contract.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
from collections.abc import AsyncIterator, Iterator, Mapping, Sequence
from pathlib import Path
from types import TracebackType
from typing import Any, Generic, TypeVar, Unpack

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc

from ferry.app_requests import (
    AsyncRequestHandle,
    RequestHandle,
    RunOptions,
    SubmitOptions,
    SubscribeOptions,
    stream_events,
    stream_events_async,
    subscribe,
    subscribe_async,
    upload_local_files,
    upload_local_files_async,
)
from ferry.connection import Connection
from ferry.downloads import (
    DownloadOptions,
    DownloadPlan,
    EventReader,
    WeightsOptions,
    write_read_stream,
    write_read_stream_async,
)
from ferry.errors import map_rpc_errors
from ferry.events import Event
from ferry.keywords import check_keywords
from ferry.realtime_connection import AsyncRealtimeConnection, RealtimeConnection
from ferry.retry import call_with_retries, call_with_retries_async
from ferry.uploads import (
    MULTIPART_THRESHOLD,
    AsyncPartSender,
    EncodeOptions,
    PartSender,
    RequestStream,
    UploadOptions,
    UploadProgress,
    build_encode,
    encode_messages,
    guess_content_type,
    lifecycle,
    upload_messages,
    upload_messages_async,
)
from ferry.v1 import (
    common_pb2,
    downloader_pb2,
    downloader_pb2_grpc,
    encoder_pb2,
    encoder_pb2_grpc,
    inference_pb2,
    inference_pb2_grpc,
)

__all__ = [
    "DOWNLOADER_SERVICE",
    "ENCODER_SERVICE",
    "INFERENCE_SERVICE",
    "SERVICE_NAMES",
    "STORAGE_HEALTH_PREFIX",
    "AsyncClient",
    "Client",
]

# The contract's service names, as its descriptors spell them (health and reflection use them).
DOWNLOADER_SERVICE = downloader_pb2.DESCRIPTOR.services_by_name["DownloaderService"].full_name
ENCODER_SERVICE = encoder_pb2.DESCRIPTOR.services_by_name["EncoderService"].full_name
INFERENCE_SERVICE = inference_pb2.DESCRIPTOR.services_by_name["InferenceService"].full_name
SERVICE_NAMES = (DOWNLOADER_SERVICE, ENCODER_SERVICE, INFERENCE_SERVICE)
# The health name of each storage backend behind the encoder: SERVING, or NOT_SERVING while its circuit is open.
STORAGE_HEALTH_PREFIX = f"{ENCODER_SERVICE}/storage/"
ChannelT = TypeVar("ChannelT", grpc.Channel, grpc.aio.Channel)
_STATUS_NAMES = {value: name for name, value in health_pb2.HealthCheckResponse.ServingStatus.items()}


def _encoder_addresses(given: Sequence[str] | None) -> list[str]:
    if given:
        return list(given)
    return [a.strip() for a in os.environ.get("FERRY_ENCODER_ADDRESSES", "").split(",") if a.strip()]


class _ClientBase(Generic[ChannelT]):
    """What both twins decide alike: where the stack is, and what each request says.

    The twins differ only in the channel they open (`_open`) and in how they wait on it.
    """

    def __init__(
        self,
        address: str | None = None,
        *,
        token: str | None = None,
        ca_file: str | os.PathLike[str] | None = None,
        tls: bool | None = None,
        shared_data_dir: bool | None = None,
        encoder_addresses: Sequence[str] | None = None,
    ) -> None:
        self.connection = Connection.resolve(address, token=token, ca_file=ca_file, tls=tls)
        self.shared_data_dir = shared_data_dir  # None: FERRY_SHARED_DATA_DIR, else detect per download
        # The stubs' types depend on the channel's kind: each twin declares them.
        self.channel: ChannelT = self._open(self.connection)
        self.downloader: Any = downloader_pb2_grpc.DownloaderServiceStub(self.channel)
        self.encoder: Any = encoder_pb2_grpc.EncoderServiceStub(self.channel)
        self.inference: Any = inference_pb2_grpc.InferenceServiceStub(self.channel)
        self._health = health_pb2_grpc.HealthStub(self.channel)
        # Encoder calls fail over across these (FERRY_ENCODER_ADDRESSES), else use the main address.
        self._encoder_channels: list[ChannelT] = [
            self._open(Connection(a, self.connection.token, self.connection.ca_file, self.connection.tls))
            for a in _encoder_addresses(encoder_addresses)
        ]
        self._encoders: list[Any] = [encoder_pb2_grpc.EncoderServiceStub(c) for c in self._encoder_channels] or [
            self.encoder
        ]

    @staticmethod
    def _open(connection: Connection) -> ChannelT:
        raise NotImplementedError

    def _download_plan(
        self, caller: str, url: str, target_dir: str | os.PathLike[str] | None, options: Mapping[str, Any]
    ) -> DownloadPlan:
        model_weights = caller == "download_model_weights"
        check_keywords(caller, options, WeightsOptions if model_weights else DownloadOptions)
        return DownloadPlan.create(url, target_dir, model_weights, options, self.shared_data_dir)

    @staticmethod
    def _bytes_header(
        data: bytes, content_type: str, file_name: str | None, expires_in: int | None
    ) -> encoder_pb2.UploadHeader:
        return encoder_pb2.UploadHeader(
            file_name=file_name or "", content_type=content_type, file_size=len(data), lifecycle=lifecycle(expires_in)
        )

    @staticmethod
    def _file_upload(path: str | os.PathLike[str], options: UploadOptions) -> tuple[Path, encoder_pb2.UploadHeader]:
        """The file and what its upload says; its size decides between one Upload and a multipart one."""
        check_keywords("upload_file", options, UploadOptions)
        path = Path(path)
        if not path.is_file():
            raise IsADirectoryError(f"{path} is a directory, not a file") if path.is_dir() else FileNotFoundError(path)
        name = options.get("file_name") or path.name
        header = encoder_pb2.UploadHeader(
            file_name=name,
            content_type=guess_content_type(name, options.get("content_type")),
            file_size=path.stat().st_size,
            lifecycle=lifecycle(options.get("expires_in")),
        )
        return path, header

    @staticmethod
    def _multipart_request(header: encoder_pb2.UploadHeader) -> encoder_pb2.CreateUploadRequest:
        return encoder_pb2.CreateUploadRequest(
            file_name=header.file_name,
            content_type=header.content_type,
            file_size=header.file_size,
            lifecycle=header.lifecycle,
        )

    @classmethod
    def _submit_request(
        cls, app: str, input_json: str, path: str, options: SubmitOptions
    ) -> inference_pb2.SubmitRequest:
        check_keywords("submit", options, SubmitOptions)
        request: inference_pb2.SubmitRequest = cls._app_request(
            inference_pb2.SubmitRequest, app, input_json, path, options.get("expires_in")
        )
        request.webhook_url = options.get("webhook_url") or ""
        request.idempotency_key = options.get("idempotency_key") or ""
        priority = options.get("priority", "normal")
        if priority not in ("normal", "low"):
            raise ValueError(f"priority is 'normal' or 'low', not {priority!r}")
        if priority == "low":
            request.priority = inference_pb2.REQUEST_PRIORITY_LOW
        request.start_timeout_seconds = options.get("start_timeout") or 0
        return request

    @staticmethod
    def _app_request(kind: type[Any], app: str, input_json: str, path: str, expires_in: int | None) -> Any:
        return kind(app_id=app, path=path, input_json=input_json, lifecycle=lifecycle(expires_in))

    @staticmethod
    def _realtime_opening(app: str, path: str, expires_in: int | None) -> inference_pb2.RealtimeOpen:
        # `sends_end`: the connections end their inputs with `end`, so the server can tell a cancel from a close.
        return inference_pb2.RealtimeOpen(app_id=app, path=path, lifecycle=lifecycle(expires_in), sends_end=True)


class Client(_ClientBase[grpc.Channel]):
    """A synchronous connection to a ferry stack (`FERRY_ADDRESS` unless `address` is given)."""

    downloader: downloader_pb2_grpc.DownloaderServiceStub
    encoder: encoder_pb2_grpc.EncoderServiceStub
    inference: inference_pb2_grpc.InferenceServiceStub
    _encoders: list[encoder_pb2_grpc.EncoderServiceStub]

    @staticmethod
    def _open(connection: Connection) -> grpc.Channel:
        return connection.channel()

    def health(self, service: str = "", *, timeout: float = 5.0) -> str:
        """The serving status ("SERVING", "NOT_SERVING", …) of `service` ("" = the whole server)."""
        with map_rpc_errors():
            # typeshed's HealthStub declares no methods (types-grpcio-health-checking)
            response = self._health.Check(  # type: ignore[attr-defined]
                health_pb2.HealthCheckRequest(service=service), timeout=timeout
            )
        return _STATUS_NAMES[response.status]

    def wait_until_serving(self, timeout: float = 10.0) -> None:
        """Block until the channel is connected (a `grpc.FutureTimeoutError` after `timeout` seconds)."""
        grpc.channel_ready_future(self.channel).result(timeout=timeout)

    # -- downloads -----------------------------------------------------------------------

    def download_file(
        self, url: str, target_dir: str | os.PathLike[str] | None = None, **options: Unpack[DownloadOptions]
    ) -> Path:
        """Download `url` (http, https or data:) and return the local path.

        `target_dir`: None = a fresh folder; relative = under the service's data
        dir; absolute = a folder on this machine (see `ferry.downloads.DownloadPlan`).
        `filesize_limit` is in MB. Raises `FerryError` with the service's status.
        """
        return self._download(self._download_plan("download_file", url, target_dir, options), options)

    def download_model_weights(self, url: str, **options: Unpack[WeightsOptions]) -> Path:
        """Download weights once into the service's weights store; later calls return at once."""
        return self._download(self._download_plan("download_model_weights", url, None, options), options)

    def _download(self, plan: DownloadPlan, options: WeightsOptions) -> Path:
        if plan.held is not None:
            return plan.held
        reader = EventReader(options.get("on_progress"))
        call = self.downloader.Download(plan.request)
        try:
            with map_rpc_errors():
                for response in call:
                    reader.feed(response)
                completed = reader.result()
                if (path := plan.finish(completed)) is not None:
                    return path
                return write_read_stream(
                    self.downloader.Read(plan.read_request(completed)), plan.destination(completed)
                )
        except BaseException:
            call.cancel()  # Ctrl-C or a failing callback: stop the transfer server-side too
            raise

    # -- uploads and encodes -------------------------------------------------------------

    def upload_bytes(
        self, data: bytes, content_type: str, file_name: str | None = None, expires_in: int | None = None
    ) -> common_pb2.File:
        """Store `data` and return its `File` (URL, size, sha256, expiry)."""
        header = self._bytes_header(data, content_type, file_name, expires_in)
        with map_rpc_errors():
            return call_with_retries(
                self._encoders,
                lambda stub: stub.Upload(upload_messages(header, None, data, None)).file,
                idempotent=True,
            )

    def upload_file(self, path: str | os.PathLike[str], **options: Unpack[UploadOptions]) -> common_pb2.File:
        """Store a local file; files over 100 MiB go multipart (10 MiB parts, 10 in parallel).

        `on_progress(bytes_sent, total)` is called as the bytes go.
        """
        path, header = self._file_upload(path, options)
        on_progress = options.get("on_progress")
        if header.file_size > MULTIPART_THRESHOLD:
            return self._upload_multipart(path, header, on_progress)

        def attempt(stub: encoder_pb2_grpc.EncoderServiceStub) -> common_pb2.File:
            counted = _ProgressCounter(header.file_size, on_progress)  # a retried attempt starts over
            messages = RequestStream(upload_messages(header, path, None, counted))
            try:
                return stub.Upload(iter(messages)).file
            except grpc.RpcError:
                messages.raise_cause()
                raise

        with map_rpc_errors():
            return call_with_retries(self._encoders, attempt, idempotent=True)

    def _upload_multipart(
        self, path: Path, header: encoder_pb2.UploadHeader, on_progress: UploadProgress | None
    ) -> common_pb2.File:
        request = self._multipart_request(header)
        with map_rpc_errors():
            created: list[encoder_pb2_grpc.EncoderServiceStub] = []

            def create(stub: encoder_pb2_grpc.EncoderServiceStub) -> str:
                upload_id = stub.CreateUpload(request).upload_id
                created.append(stub)
                return upload_id

            upload_id = call_with_retries(self._encoders, create, idempotent=False)
            stub = created[-1]  # the upload lives where it was created: its parts go there too
            sender = PartSender(stub, upload_id, path, header.file_size, on_progress)
            try:
                parts = sender.send_all()
                complete = encoder_pb2.CompleteUploadRequest(upload_id=upload_id, parts=parts)
                return call_with_retries([stub], lambda s: s.CompleteUpload(complete).file, idempotent=True)
            except BaseException:
                sender.cancel()
                # Nothing half-made stays behind: abort is idempotent and best effort.
                with contextlib.suppress(grpc.RpcError):
                    stub.AbortUpload(encoder_pb2.AbortUploadRequest(upload_id=upload_id), timeout=30)
                raise

    def encode_tensor(self, tensor: Any, format: str, **options: Unpack[EncodeOptions]) -> list[common_pb2.File]:
        """Encode a numpy array or torch tensor (CPU or CUDA) as png/jpeg/webp/gif/mp4/wav and store it."""
        header, payload, audio_payload = build_encode(tensor, format, **options)
        with map_rpc_errors():
            response = call_with_retries(
                self._encoders,
                lambda stub: stub.Encode(encode_messages(header, payload, audio_payload)),
                idempotent=True,
            )
        return list(response.files)

    # -- apps ----------------------------------------------------------------------------

    def _input_json(self, arguments: dict[str, Any]) -> str:
        return json.dumps(upload_local_files(arguments, self))

    def run(
        self, app: str, arguments: dict[str, Any], path: str = "/", **options: Unpack[RunOptions]
    ) -> dict[str, Any]:
        """Run an app endpoint and return its output (local Path arguments are uploaded first).

        Past `timeout` seconds the call fails DEADLINE_EXCEEDED and the request is cancelled.
        """
        check_keywords("run", options, RunOptions)
        input_json = self._input_json(arguments)
        request = self._app_request(inference_pb2.RunRequest, app, input_json, path, options.get("expires_in"))
        with map_rpc_errors():
            return json.loads(self.inference.Run(request, timeout=options.get("timeout")).output_json)  # type: ignore[no-any-return]

    def submit(
        self, app: str, arguments: dict[str, Any], path: str = "/", **options: Unpack[SubmitOptions]
    ) -> RequestHandle:
        """Queue a request and return at once with a handle to it."""
        request = self._submit_request(app, self._input_json(arguments), path, options)
        with map_rpc_errors():
            return RequestHandle(self, self.inference.Submit(request).request_id)

    def stream(
        self, app: str, arguments: dict[str, Any], path: str = "/", expires_in: int | None = None
    ) -> Iterator[Event]:
        """Every event of a request (`ferry.events`).

        Queued, InProgress, PartialOutput, then Completed, Failed or Cancelled. Leaving the loop early cancels the
        request.
        """
        request = self._app_request(inference_pb2.StreamRequest, app, self._input_json(arguments), path, expires_in)
        return stream_events(self, request)

    def subscribe(
        self, app: str, arguments: dict[str, Any], path: str = "/", **options: Unpack[SubscribeOptions]
    ) -> dict[str, Any]:
        """Run and follow a request to its output, as the reference client's `subscribe` (see `SubscribeOptions`)."""
        input_json = self._input_json(arguments)
        request = self._app_request(inference_pb2.StreamRequest, app, input_json, path, options.get("expires_in"))
        return subscribe(self, request, options)

    def realtime(self, app: str, path: str = "/", expires_in: int | None = None) -> RealtimeConnection:
        """Open one call to a realtime endpoint: `send` inputs, `recv` or iterate outputs, over one call.

        Returns once the server accepted the app and path, so an unknown one
        raises `FerryError` (NOT_FOUND) here. Use it in a `with` block: leaving
        it ends the call. See `ferry.realtime_connection` for what `recv` raises.
        """
        return RealtimeConnection(self.inference, self._realtime_opening(app, path, expires_in))

    def close(self) -> None:
        for channel in self._encoder_channels:
            channel.close()
        self.channel.close()

    def __enter__(self) -> Client:
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.close()


class AsyncClient(_ClientBase[grpc.aio.Channel]):
    """The asyncio twin of `Client`: the same methods, to `await`; cancelling a task cancels its call."""

    downloader: downloader_pb2_grpc.DownloaderServiceAsyncStub
    encoder: encoder_pb2_grpc.EncoderServiceAsyncStub
    inference: inference_pb2_grpc.InferenceServiceAsyncStub
    _encoders: list[encoder_pb2_grpc.EncoderServiceAsyncStub]

    @staticmethod
    def _open(connection: Connection) -> grpc.aio.Channel:
        return connection.aio_channel()

    async def health(self, service: str = "", *, timeout: float = 5.0) -> str:
        with map_rpc_errors():
            # typeshed's HealthStub declares no methods (types-grpcio-health-checking)
            response = await self._health.Check(  # type: ignore[attr-defined]
                health_pb2.HealthCheckRequest(service=service), timeout=timeout
            )
        return _STATUS_NAMES[response.status]

    async def wait_until_serving(self, timeout: float = 10.0) -> None:
        """Wait until the channel is connected (`TimeoutError` after `timeout` seconds)."""
        async with asyncio.timeout(timeout):
            await self.channel.channel_ready()

    # -- downloads -----------------------------------------------------------------------

    async def download_file(
        self, url: str, target_dir: str | os.PathLike[str] | None = None, **options: Unpack[DownloadOptions]
    ) -> Path:
        """The asyncio twin of `Client.download_file`; cancelling the task cancels the transfer."""
        return await self._download(self._download_plan("download_file", url, target_dir, options), options)

    async def download_model_weights(self, url: str, **options: Unpack[WeightsOptions]) -> Path:
        return await self._download(self._download_plan("download_model_weights", url, None, options), options)

    async def _download(self, plan: DownloadPlan, options: WeightsOptions) -> Path:
        if plan.held is not None:
            return plan.held
        reader = EventReader(options.get("on_progress"))
        try:
            with map_rpc_errors():
                async for response in self.downloader.Download(plan.request):
                    reader.feed(response)
                completed = reader.result()
                # Placing the file may copy it across filesystems: in a thread, off the event loop.
                if (path := await asyncio.to_thread(plan.finish, completed)) is not None:
                    return path
                read = self.downloader.Read(plan.read_request(completed))
                return await write_read_stream_async(read, await asyncio.to_thread(plan.destination, completed))
        except asyncio.CancelledError:
            # Cancelled after the service answered (a dropped prefetch of the runner's did): its file is lost
            # to the caller, so it goes now rather than staying in the data dir.
            if reader.completed is not None:
                plan.abandon(reader.completed)
            raise

    # -- uploads and encodes -------------------------------------------------------------

    async def upload_bytes(
        self, data: bytes, content_type: str, file_name: str | None = None, expires_in: int | None = None
    ) -> common_pb2.File:
        header = self._bytes_header(data, content_type, file_name, expires_in)

        async def attempt(stub: encoder_pb2_grpc.EncoderServiceAsyncStub) -> common_pb2.File:
            return (await stub.Upload(upload_messages(header, None, data, None))).file

        with map_rpc_errors():
            return await call_with_retries_async(self._encoders, attempt, idempotent=True)

    async def upload_file(self, path: str | os.PathLike[str], **options: Unpack[UploadOptions]) -> common_pb2.File:
        """The asyncio twin of `Client.upload_file`: multipart past 100 MiB, the file read off the event loop."""
        local, header = await asyncio.to_thread(self._file_upload, path, options)
        on_progress = options.get("on_progress")
        if header.file_size > MULTIPART_THRESHOLD:
            return await self._upload_multipart(local, header, on_progress)

        async def attempt(stub: encoder_pb2_grpc.EncoderServiceAsyncStub) -> common_pb2.File:
            counted = _ProgressCounter(header.file_size, on_progress)
            messages = RequestStream(upload_messages_async(header, local, None, counted))
            try:
                return (await stub.Upload(aiter(messages))).file
            except (grpc.RpcError, asyncio.CancelledError):
                messages.raise_cause()
                raise

        with map_rpc_errors():
            return await call_with_retries_async(self._encoders, attempt, idempotent=True)

    async def _upload_multipart(
        self, path: Path, header: encoder_pb2.UploadHeader, on_progress: UploadProgress | None
    ) -> common_pb2.File:
        request = self._multipart_request(header)
        with map_rpc_errors():
            created: list[encoder_pb2_grpc.EncoderServiceAsyncStub] = []

            async def create(stub: encoder_pb2_grpc.EncoderServiceAsyncStub) -> str:
                upload_id = (await stub.CreateUpload(request)).upload_id
                created.append(stub)
                return upload_id

            upload_id = await call_with_retries_async(self._encoders, create, idempotent=False)
            stub = created[-1]
            sender = AsyncPartSender(stub, upload_id, path, header.file_size, on_progress)
            try:
                parts = await sender.send_all()
                complete = encoder_pb2.CompleteUploadRequest(upload_id=upload_id, parts=parts)

                async def finish(s: encoder_pb2_grpc.EncoderServiceAsyncStub) -> common_pb2.File:
                    return (await s.CompleteUpload(complete)).file

                return await call_with_retries_async([stub], finish, idempotent=True)
            except BaseException:
                # Shielded: a cancelled caller still leaves no half-made upload behind.
                await asyncio.shield(_abort_upload(stub, upload_id))
                raise

    async def encode_tensor(self, tensor: Any, format: str, **options: Unpack[EncodeOptions]) -> list[common_pb2.File]:
        # Reading the tensor may copy it (off a CUDA device, into C order): not on the event loop.
        header, payload, audio_payload = await asyncio.to_thread(lambda: build_encode(tensor, format, **options))

        async def attempt(stub: encoder_pb2_grpc.EncoderServiceAsyncStub) -> encoder_pb2.EncodeResponse:
            return await stub.Encode(encode_messages(header, payload, audio_payload))

        with map_rpc_errors():
            response = await call_with_retries_async(self._encoders, attempt, idempotent=True)
        return list(response.files)

    # -- apps ----------------------------------------------------------------------------

    async def _input_json(self, arguments: dict[str, Any]) -> str:
        return json.dumps(await upload_local_files_async(arguments, self))

    async def run(
        self, app: str, arguments: dict[str, Any], path: str = "/", **options: Unpack[RunOptions]
    ) -> dict[str, Any]:
        """The asyncio twin of `Client.run`; cancelling the task cancels the request."""
        check_keywords("run", options, RunOptions)
        input_json = await self._input_json(arguments)
        request = self._app_request(inference_pb2.RunRequest, app, input_json, path, options.get("expires_in"))
        with map_rpc_errors():
            return json.loads((await self.inference.Run(request, timeout=options.get("timeout"))).output_json)  # type: ignore[no-any-return]

    async def submit(
        self, app: str, arguments: dict[str, Any], path: str = "/", **options: Unpack[SubmitOptions]
    ) -> AsyncRequestHandle:
        request = self._submit_request(app, await self._input_json(arguments), path, options)
        with map_rpc_errors():
            return AsyncRequestHandle(self, (await self.inference.Submit(request)).request_id)

    async def stream(
        self, app: str, arguments: dict[str, Any], path: str = "/", expires_in: int | None = None
    ) -> AsyncIterator[Event]:
        """The asyncio twin of `Client.stream`: `async for event in client.stream(...)`; leaving early cancels."""
        request = self._app_request(
            inference_pb2.StreamRequest, app, await self._input_json(arguments), path, expires_in
        )
        async for event in stream_events_async(self, request):
            yield event

    async def subscribe(
        self, app: str, arguments: dict[str, Any], path: str = "/", **options: Unpack[SubscribeOptions]
    ) -> dict[str, Any]:
        input_json = await self._input_json(arguments)
        request = self._app_request(inference_pb2.StreamRequest, app, input_json, path, options.get("expires_in"))
        return await subscribe_async(self, request, options)

    def realtime(self, app: str, path: str = "/", expires_in: int | None = None) -> AsyncRealtimeConnection:
        """The asyncio twin of `Client.realtime`: `async with client.realtime(app, path) as live:` opens the call.

        (`live = await client.realtime(...)` opens it too; then `live.cancel()` when done.)
        """
        return AsyncRealtimeConnection(self.inference, self._realtime_opening(app, path, expires_in))

    async def close(self) -> None:
        for channel in self._encoder_channels:
            await channel.close()
        await self.channel.close()

    async def __aenter__(self) -> AsyncClient:
        return self

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        await self.close()


class _ProgressCounter:
    """`on_progress(sent, total)` fed one count at a time."""

    def __init__(self, total: int, on_progress: UploadProgress | None) -> None:
        self.total, self.on_progress, self.sent = total, on_progress, 0

    def __call__(self, count: int) -> None:
        self.sent += count
        if self.on_progress is not None:
            self.on_progress(self.sent, self.total)


async def _abort_upload(stub: encoder_pb2_grpc.EncoderServiceAsyncStub, upload_id: str) -> None:
    """Abort is idempotent and best effort."""
    with contextlib.suppress(grpc.RpcError):
        await stub.AbortUpload(encoder_pb2.AbortUploadRequest(upload_id=upload_id), timeout=30)
