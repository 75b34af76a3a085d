"""`ferry.Client` and `ferry.AsyncClient`: one connection to a ferry stack, with typed stubs.

Both share `Connection` (address, token, TLS); the sync client wraps a
`grpc.Channel`, the async one a `grpc.aio.Channel`. The generated stubs are
exposed as-is (`client.downloader.Download(...)`) for callers who want the raw
contract; the task-level helpers build on them.
"""

from __future__ import annotations

import asyncio
import json
import os
from collections.abc import AsyncIterator, Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from pathlib import Path
from types import TracebackType
from typing import Any

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc

from ferry.connection import Connection
from ferry.downloads import DownloadPlan, EventReader, already_downloaded, ProgressCallback, write_read_stream, write_read_stream_async
from ferry.errors import FerryError
from ferry.app_requests import (
    AsyncRequestHandle,
    RequestHandle,
    stream_events,
    stream_events_async,
    subscribe,
    subscribe_async,
    upload_local_files,
    upload_local_files_async,
)
from ferry.realtime_connection import AsyncRealtimeConnection, RealtimeConnection
from ferry.retry import call_with_retries, call_with_retries_async
from ferry.uploads import (
    MULTIPART_THRESHOLD,
    PartSender,
    UploadProgress,
    build_encode,
    encode_messages,
    guess_content_type,
    lifecycle,
    upload_messages,
)
from ferry.v1 import common_pb2, downloader_pb2_grpc, encoder_pb2, encoder_pb2_grpc, inference_pb2, inference_pb2_grpc

SERVICE_NAMES = ("ferry.v1.DownloaderService", "ferry.v1.EncoderService", "ferry.v1.InferenceService")

@contextmanager
def _as_ferry_errors() -> Iterator[None]:
    try:
        yield
    except grpc.RpcError as error:
        raise FerryError.from_rpc_error(error) from None


def _encoder_addresses(given: Sequence[str] | None) -> list[str]:
    if given:
        return list(given)
    return [a.strip() for a in os.environ.get("FERRY_ENCODER_ADDRESSES", "").split(",") if a.strip()]


_STATUS_NAMES = {value: name for name, value in health_pb2.HealthCheckResponse.ServingStatus.items()}


def _status_name(response: health_pb2.HealthCheckResponse) -> str:
    return _STATUS_NAMES[response.status]


class Client:
    """A synchronous connection to a ferry stack (`FERRY_ADDRESS` unless `address` is given)."""

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
        self.channel = self.connection.channel()
        self.downloader = downloader_pb2_grpc.DownloaderServiceStub(self.channel)
        self.encoder = encoder_pb2_grpc.EncoderServiceStub(self.channel)
        self.inference = inference_pb2_grpc.InferenceServiceStub(self.channel)
        self._health = health_pb2_grpc.HealthStub(self.channel)
        # Encoder calls fail over across these (FERRY_ENCODER_ADDRESSES), else use the main address.
        self._encoder_channels = [
            Connection(a, self.connection.token, self.connection.ca_file, self.connection.tls).channel()
            for a in _encoder_addresses(encoder_addresses)
        ]
        self._encoders = [encoder_pb2_grpc.EncoderServiceStub(c) for c in self._encoder_channels] or [self.encoder]

    def health(self, service: str = "", *, timeout: float = 5.0) -> str:
        """The serving status ("SERVING", "NOT_SERVING", …) of `service` ("" = the whole server)."""
        response = self._health.Check(health_pb2.HealthCheckRequest(service=service), timeout=timeout)
        return _status_name(response)

    def wait_until_serving(self, timeout: float = 10.0) -> None:
        grpc.channel_ready_future(self.channel).result(timeout=timeout)

    def download_file(
        self,
        url: str,
        target_dir: str | os.PathLike[str] | None = None,
        force: bool = False,
        request_headers: Mapping[str, str] | None = None,
        filesize_limit: float | None = None,
        on_progress: ProgressCallback | None = None,
    ) -> Path:
        """Download `url` (http, https or data:) and return the local path.

        `target_dir` relative paths resolve under the service's data dir;
        `filesize_limit` is in MB. Raises `FerryError` with the service's status.
        """
        return self._download(url, target_dir, force, request_headers, filesize_limit, on_progress, model_weights=False)

    def download_model_weights(
        self,
        url: str,
        force: bool = False,
        request_headers: Mapping[str, str] | None = None,
        on_progress: ProgressCallback | None = None,
    ) -> Path:
        """Download weights once into the service's weights store; later calls return at once."""
        return self._download(url, None, force, request_headers, None, on_progress, model_weights=True)

    def _download(
        self,
        url: str,
        target_dir: str | os.PathLike[str] | None,
        force: bool,
        request_headers: Mapping[str, str] | None,
        filesize_limit: float | None,
        on_progress: ProgressCallback | None,
        model_weights: bool,
    ) -> Path:
        if (path := already_downloaded(url, target_dir, force, model_weights)) is not None:
            return path
        plan = DownloadPlan.create(
            url, target_dir, force, request_headers, filesize_limit, model_weights, self.shared_data_dir
        )
        reader = EventReader(on_progress)
        call = self.downloader.Download(plan.request)
        try:
            for response in call:
                reader.feed(response)
            completed = reader.result()
            if (path := plan.finish(completed)) is not None:
                return path
            return write_read_stream(self.downloader.Read(plan.read_request(completed)), plan.destination(completed))
        except grpc.RpcError as error:
            raise FerryError.from_rpc_error(error) from None
        except BaseException:
            call.cancel()  # Ctrl-C or a failing callback: stop the transfer server-side too
            raise

    # -- uploads and encodes -----------------------------------------------------------

    def upload_bytes(
        self, data: bytes, content_type: str, file_name: str | None = None, expires_in: int | None = None
    ) -> common_pb2.File:
        """Store `data` and return its `File` (URL, size, sha256, expiry)."""
        header = encoder_pb2.UploadHeader(
            file_name=file_name or "", content_type=content_type, file_size=len(data), lifecycle=lifecycle(expires_in)
        )
        with _as_ferry_errors():
            return call_with_retries(
                self._encoders, lambda stub: stub.Upload(upload_messages(header, None, data, None)).file, idempotent=True
            )

    def upload_file(
        self,
        path: str | os.PathLike[str],
        content_type: str | None = None,
        file_name: str | None = None,
        expires_in: int | None = None,
        on_progress: UploadProgress | None = None,
    ) -> common_pb2.File:
        """Store a local file; files over 100 MiB go multipart (10 MiB parts, 10 in parallel)."""
        path = Path(path)
        size = path.stat().st_size
        name = file_name or path.name
        content_type = guess_content_type(name, content_type)
        if size > MULTIPART_THRESHOLD:
            return self._upload_multipart(path, size, name, content_type, expires_in, on_progress)
        header = encoder_pb2.UploadHeader(file_name=name, content_type=content_type, file_size=size, lifecycle=lifecycle(expires_in))

        def attempt(stub: encoder_pb2_grpc.EncoderServiceStub) -> common_pb2.File:
            sent = 0

            def progressed(count: int) -> None:
                nonlocal sent
                sent += count
                if on_progress is not None:
                    on_progress(sent, size)

            return stub.Upload(upload_messages(header, path, None, progressed)).file

        with _as_ferry_errors():
            return call_with_retries(self._encoders, attempt, idempotent=True)

    def _upload_multipart(
        self, path: Path, size: int, name: str, content_type: str, expires_in: int | None, on_progress: UploadProgress | None
    ) -> common_pb2.File:
        request = encoder_pb2.CreateUploadRequest(
            file_name=name, content_type=content_type, file_size=size, lifecycle=lifecycle(expires_in)
        )
        with _as_ferry_errors():
            created: list[encoder_pb2_grpc.EncoderServiceStub] = []

            def create(stub: encoder_pb2_grpc.EncoderServiceStub) -> str:
                upload_id = stub.CreateUpload(request).upload_id
                created.append(stub)
                return upload_id

            upload_id = call_with_retries(self._encoders, create, idempotent=False)
            stub = created[-1]  # the upload lives where it was created: its parts go there too
            sender = PartSender(stub, upload_id, path, size, on_progress)
            try:
                parts = sender.send_all()
                complete = encoder_pb2.CompleteUploadRequest(upload_id=upload_id, parts=parts)
                return call_with_retries([stub], lambda s: s.CompleteUpload(complete).file, idempotent=True)
            except BaseException:
                sender.cancel()
                # Nothing half-made stays behind: abort is idempotent and best effort.
                try:
                    stub.AbortUpload(encoder_pb2.AbortUploadRequest(upload_id=upload_id), timeout=30)
                except grpc.RpcError:
                    pass
                raise

    def encode_tensor(
        self,
        tensor: Any,
        format: str,
        *,
        file_name: str = "",
        expires_in: int | None = None,
        channel_order: str | None = None,
        value_range: str | None = None,
        quality: int | None = None,
        lossless: bool = False,
        png_compress_level: int | None = None,
        animate: bool = False,
        frame_duration_ms: int = 0,
        loop: int = 0,
        fps: float = 0,
        crf: int | None = None,
        preset: str = "",
        allow_gpu: bool = True,
        audio: tuple[Any, int] | None = None,
        sample_rate: int = 0,
        sample_format: str = "pcm16",
    ) -> list[common_pb2.File]:
        """Encode a numpy array or torch tensor (CPU or CUDA) as png/jpeg/webp/gif/mp4/wav and store it."""
        header, payload, audio_payload = build_encode(
            tensor,
            format,
            file_name=file_name,
            expires_in=expires_in,
            channel_order=channel_order,
            value_range=value_range,
            quality=quality,
            lossless=lossless,
            png_compress_level=png_compress_level,
            animate=animate,
            frame_duration_ms=frame_duration_ms,
            loop=loop,
            fps=fps,
            crf=crf,
            preset=preset,
            allow_gpu=allow_gpu,
            audio=audio,
            sample_rate=sample_rate,
            sample_format=sample_format,
        )
        with _as_ferry_errors():
            response = call_with_retries(
                self._encoders, lambda stub: stub.Encode(encode_messages(header, payload, audio_payload)), idempotent=True
            )
        return list(response.files)

    # -- apps ----------------------------------------------------------------------------

    def run(
        self,
        app: str,
        arguments: dict[str, Any],
        path: str = "/",
        expires_in: int | None = None,
        timeout: float | None = None,
    ) -> dict[str, Any]:
        """Run an app endpoint and return its output (local Path arguments are uploaded first).

        Past `timeout` seconds the call fails DEADLINE_EXCEEDED and the request is cancelled.
        """
        request = inference_pb2.RunRequest(
            app_id=app, path=path, input_json=json.dumps(upload_local_files(arguments, self)), lifecycle=lifecycle(expires_in)
        )
        with _as_ferry_errors():
            return json.loads(self.inference.Run(request, timeout=timeout).output_json)

    def submit(self, app: str, arguments: dict[str, Any], path: str = "/", expires_in: int | None = None) -> RequestHandle:
        """Queue a request and return at once with a handle to it."""
        request = inference_pb2.SubmitRequest(
            app_id=app, path=path, input_json=json.dumps(upload_local_files(arguments, self)), lifecycle=lifecycle(expires_in)
        )
        with _as_ferry_errors():
            return RequestHandle(self, self.inference.Submit(request).request_id)

    def _stream_request(self, app: str, arguments: dict[str, Any], path: str, expires_in: int | None) -> inference_pb2.StreamRequest:
        return inference_pb2.StreamRequest(
            app_id=app, path=path, input_json=json.dumps(upload_local_files(arguments, self)), lifecycle=lifecycle(expires_in)
        )

    def stream(
        self, app: str, arguments: dict[str, Any], path: str = "/", expires_in: int | None = None
    ) -> Iterator[inference_pb2.StreamResponse]:
        """Every event of a request: queued, in progress (logs, progress), partial outputs, completed or failed."""
        return stream_events(self, self._stream_request(app, arguments, path, expires_in))

    def subscribe(
        self,
        app: str,
        arguments: dict[str, Any],
        path: str = "/",
        *,
        with_logs: bool = False,
        on_queue_update: Callable[[inference_pb2.StreamResponse], None] | None = None,
        client_timeout: float | None = None,
        expires_in: int | None = None,
    ) -> dict[str, Any]:
        """Run and follow a request to its output; past `client_timeout` seconds it is cancelled."""
        request = self._stream_request(app, arguments, path, expires_in)
        return subscribe(self, request, with_logs=with_logs, on_queue_update=on_queue_update, client_timeout=client_timeout)

    def realtime(self, app: str, path: str = "/", expires_in: int | None = None) -> RealtimeConnection:
        """Open one call to a realtime endpoint: `send` inputs, `recv` or iterate outputs, over one call.

        Returns once the server accepted the app and path, so an unknown one
        raises `FerryError` (NOT_FOUND) here. Use it in a `with` block: leaving
        it ends the call. See `ferry.realtime_connection` for what `recv` raises.
        """
        opening = inference_pb2.RealtimeOpen(app_id=app, path=path, lifecycle=lifecycle(expires_in))
        return RealtimeConnection(self.inference, opening)

    def close(self) -> None:
        for channel in self._encoder_channels:
            channel.close()
        self.channel.close()

    def __enter__(self) -> Client:
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()


class AsyncClient:
    """The asyncio twin of `Client`."""

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
        self.shared_data_dir = shared_data_dir
        self.channel = self.connection.aio_channel()
        self.downloader = downloader_pb2_grpc.DownloaderServiceStub(self.channel)
        self.encoder = encoder_pb2_grpc.EncoderServiceStub(self.channel)
        self.inference = inference_pb2_grpc.InferenceServiceStub(self.channel)
        self._health = health_pb2_grpc.HealthStub(self.channel)
        # As in `Client`: encoder calls fail over across these, else use the main address.
        self._encoder_channels = [
            Connection(a, self.connection.token, self.connection.ca_file, self.connection.tls).aio_channel()
            for a in _encoder_addresses(encoder_addresses)
        ]
        self._encoders = [encoder_pb2_grpc.EncoderServiceStub(c) for c in self._encoder_channels] or [self.encoder]

    async def health(self, service: str = "", *, timeout: float = 5.0) -> str:
        response = await self._health.Check(health_pb2.HealthCheckRequest(service=service), timeout=timeout)
        return _status_name(response)

    async def download_file(
        self,
        url: str,
        target_dir: str | os.PathLike[str] | None = None,
        force: bool = False,
        request_headers: Mapping[str, str] | None = None,
        filesize_limit: float | None = None,
        on_progress: ProgressCallback | None = None,
    ) -> Path:
        """The asyncio twin of `Client.download_file`; cancelling the task cancels the transfer."""
        return await self._download(url, target_dir, force, request_headers, filesize_limit, on_progress, False)

    async def download_model_weights(
        self,
        url: str,
        force: bool = False,
        request_headers: Mapping[str, str] | None = None,
        on_progress: ProgressCallback | None = None,
    ) -> Path:
        return await self._download(url, None, force, request_headers, None, on_progress, True)

    async def _download(
        self,
        url: str,
        target_dir: str | os.PathLike[str] | None,
        force: bool,
        request_headers: Mapping[str, str] | None,
        filesize_limit: float | None,
        on_progress: ProgressCallback | None,
        model_weights: bool,
    ) -> Path:
        if (path := already_downloaded(url, target_dir, force, model_weights)) is not None:
            return path
        plan = DownloadPlan.create(
            url, target_dir, force, request_headers, filesize_limit, model_weights, self.shared_data_dir
        )
        reader = EventReader(on_progress)
        try:
            async for response in self.downloader.Download(plan.request):
                reader.feed(response)
            completed = reader.result()
            if (path := await asyncio.to_thread(plan.finish, completed)) is not None:
                return path
            read = self.downloader.Read(plan.read_request(completed))
            return await write_read_stream_async(read, await asyncio.to_thread(plan.destination, completed))
        except grpc.RpcError as error:
            raise FerryError.from_rpc_error(error) from None

    async def upload_bytes(
        self, data: bytes, content_type: str, file_name: str | None = None, expires_in: int | None = None
    ) -> common_pb2.File:
        """The asyncio twin of `Client.upload_bytes`."""
        header = encoder_pb2.UploadHeader(
            file_name=file_name or "", content_type=content_type, file_size=len(data), lifecycle=lifecycle(expires_in)
        )

        async def attempt(stub: encoder_pb2_grpc.EncoderServiceStub) -> common_pb2.File:
            return (await stub.Upload(upload_messages(header, None, data, None))).file

        with _as_ferry_errors():
            return await call_with_retries_async(self._encoders, attempt, idempotent=True)

    async def upload_file(
        self,
        path: str | os.PathLike[str],
        content_type: str | None = None,
        file_name: str | None = None,
        expires_in: int | None = None,
    ) -> common_pb2.File:
        """The asyncio twin of `Client.upload_file` for files up to 100 MiB (larger: use `Client`)."""
        path = Path(path)
        size = path.stat().st_size
        if size > MULTIPART_THRESHOLD:
            raise ValueError("AsyncClient uploads files up to 100 MiB; use Client.upload_file for multipart")
        name = file_name or path.name
        header = encoder_pb2.UploadHeader(
            file_name=name, content_type=guess_content_type(name, content_type), file_size=size, lifecycle=lifecycle(expires_in)
        )

        async def attempt(stub: encoder_pb2_grpc.EncoderServiceStub) -> common_pb2.File:
            return (await stub.Upload(upload_messages(header, path, None, None))).file

        with _as_ferry_errors():
            return await call_with_retries_async(self._encoders, attempt, idempotent=True)

    async def encode_tensor(self, tensor: Any, format: str, **options: Any) -> list[common_pb2.File]:
        """The asyncio twin of `Client.encode_tensor` (same options)."""
        # Reading the tensor may copy it (off a CUDA device, into C order): not on the event loop.
        header, payload, audio_payload = await asyncio.to_thread(build_encode, tensor, format, **options)

        async def attempt(stub: encoder_pb2_grpc.EncoderServiceStub) -> encoder_pb2.EncodeResponse:
            return await stub.Encode(encode_messages(header, payload, audio_payload))

        with _as_ferry_errors():
            response = await call_with_retries_async(self._encoders, attempt, idempotent=True)
        return list(response.files)

    # -- apps ----------------------------------------------------------------------------

    async def _input_json(self, arguments: dict[str, Any]) -> str:
        return json.dumps(await upload_local_files_async(arguments, self))

    async def run(
        self,
        app: str,
        arguments: dict[str, Any],
        path: str = "/",
        expires_in: int | None = None,
        timeout: float | None = None,
    ) -> dict[str, Any]:
        """The asyncio twin of `Client.run`; cancelling the task cancels the request."""
        request = inference_pb2.RunRequest(
            app_id=app, path=path, input_json=await self._input_json(arguments), lifecycle=lifecycle(expires_in)
        )
        with _as_ferry_errors():
            return json.loads((await self.inference.Run(request, timeout=timeout)).output_json)

    async def submit(self, app: str, arguments: dict[str, Any], path: str = "/", expires_in: int | None = None) -> AsyncRequestHandle:
        """The asyncio twin of `Client.submit`."""
        request = inference_pb2.SubmitRequest(
            app_id=app, path=path, input_json=await self._input_json(arguments), lifecycle=lifecycle(expires_in)
        )
        with _as_ferry_errors():
            return AsyncRequestHandle(self, (await self.inference.Submit(request)).request_id)

    async def _stream_request(self, app: str, arguments: dict[str, Any], path: str, expires_in: int | None) -> inference_pb2.StreamRequest:
        return inference_pb2.StreamRequest(
            app_id=app, path=path, input_json=await self._input_json(arguments), lifecycle=lifecycle(expires_in)
        )

    async def stream(
        self, app: str, arguments: dict[str, Any], path: str = "/", expires_in: int | None = None
    ) -> AsyncIterator[inference_pb2.StreamResponse]:
        """The asyncio twin of `Client.stream`: `async for event in client.stream(...)`; leaving early cancels."""
        async for event in stream_events_async(self, await self._stream_request(app, arguments, path, expires_in)):
            yield event

    async def subscribe(
        self,
        app: str,
        arguments: dict[str, Any],
        path: str = "/",
        *,
        with_logs: bool = False,
        on_queue_update: Callable[[inference_pb2.StreamResponse], None] | None = None,
        client_timeout: float | None = None,
        expires_in: int | None = None,
    ) -> dict[str, Any]:
        """The asyncio twin of `Client.subscribe`."""
        request = await self._stream_request(app, arguments, path, expires_in)
        return await subscribe_async(self, request, with_logs=with_logs, on_queue_update=on_queue_update, client_timeout=client_timeout)

    def realtime(self, app: str, path: str = "/", expires_in: int | None = None) -> AsyncRealtimeConnection:
        """The asyncio twin of `Client.realtime`: `async with client.realtime(app, path) as live:` opens the call.

        (`live = await client.realtime(...)` opens it too; then `live.cancel()` when done.)
        """
        opening = inference_pb2.RealtimeOpen(app_id=app, path=path, lifecycle=lifecycle(expires_in))
        return AsyncRealtimeConnection(self.inference, opening)

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
