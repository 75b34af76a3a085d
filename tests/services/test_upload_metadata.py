"""What an uploader says about a file (content type, name) is checked at the door, because it becomes
HTTP: the content type a Content-Type header, the name a URL segment. And the CDN writes no stored value
into a header unchecked, whoever wrote it.

Through the real server plumbing: the encoder hosted by `Stack` on a gRPC port, local storage behind the
real CDN, every file fetched back over HTTP with aiohttp.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import aiohttp
import grpc
import pytest

import ferry
from ferry.services.config import ServerConfig, StackConfig
from ferry.services.launch import Stack
from ferry.v1 import common_pb2, encoder_pb2
from tests.harness import BackgroundLoop

# Short enough for a status message; the rest of a long input must not be echoed.
MAX_MESSAGE_CHARS = 1024
HOSTILE_CONTENT_TYPES = {
    "CR LF splitting a header": "image/png\r\nX-Injected: 1",
    "a bare LF": "text/plain\n",
    "a NUL": "image/png\x00",
    "1 MiB": "image/" + "x" * (1 << 20),
    "one character over the bound": "application/" + "x" * 244,
    "no subtype": "png",
    "a space inside": "image/ png",
    "a parameter without value": "text/plain; charset",
    "non-ASCII": "imäge/png",
}


class Served:
    def __init__(self, stack: Stack, data_dir: Path) -> None:
        self.address = f"127.0.0.1:{stack.grpc_port}"
        self.data_dir = data_dir
        self.objects = data_dir / ".ferry" / "storage" / "objects"
        self.uploads = data_dir / ".ferry" / "storage" / "uploads"
        self.incoming = data_dir / ".ferry" / "incoming"

    def kept(self) -> list[str]:
        """Everything storage holds or is receiving: objects, multipart uploads, incoming temp files."""
        return sorted(
            str(path.relative_to(self.data_dir))
            for folder in (self.objects, self.uploads, self.incoming)
            if folder.exists()
            for path in folder.iterdir()
        )


@pytest.fixture(scope="module")
def served(background_loop: BackgroundLoop, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Served]:
    data_dir = tmp_path_factory.mktemp("metadata") / "data"
    stack = Stack(
        StackConfig(server=ServerConfig(grpc_port=0, cdn_port=0, data_dir=data_dir, drain_seconds=1)), ["encoder"]
    )
    background_loop.run(stack.start())
    yield Served(stack, data_dir)
    background_loop.run(stack.stop())


@pytest.fixture
def client(served: Served) -> Iterator[ferry.Client]:
    with ferry.Client(served.address) as client:
        yield client


def upload(
    client: ferry.Client, data: bytes, *, content_type: str = "", file_name: str = ""
) -> encoder_pb2.UploadResponse:
    header = encoder_pb2.UploadHeader(file_name=file_name, content_type=content_type, file_size=len(data))
    return client.encoder.Upload(
        iter([encoder_pb2.UploadRequest(header=header), encoder_pb2.UploadRequest(chunk=data)])
    )


def refusal(call) -> ferry.FerryError:
    with pytest.raises(grpc.RpcError) as caught:
        call()
    return ferry.FerryError.from_rpc_error(caught.value)


async def http_get(url: str) -> tuple[int, dict[str, str], bytes]:
    async with aiohttp.ClientSession() as session, session.get(url) as response:
        return response.status, dict(response.headers), await response.read()


def fetch(background_loop: BackgroundLoop, url: str) -> tuple[int, dict[str, str], bytes]:
    return background_loop.run(http_get(url))


# -- content types ------------------------------------------------------------------


@pytest.mark.parametrize("content_type", HOSTILE_CONTENT_TYPES.values(), ids=HOSTILE_CONTENT_TYPES.keys())
def test_an_upload_whose_content_type_is_not_a_bounded_media_type_is_refused_and_nothing_is_kept(
    served: Served, client: ferry.Client, content_type: str
) -> None:
    before = served.kept()

    error = refusal(lambda: upload(client, b"payload", content_type=content_type, file_name="a.png"))

    assert (error.code, error.reason) == (grpc.StatusCode.INVALID_ARGUMENT, "INVALID_CONTENT_TYPE")
    assert len(error.message) < MAX_MESSAGE_CHARS
    assert served.kept() == before


@pytest.mark.parametrize("content_type", HOSTILE_CONTENT_TYPES.values(), ids=HOSTILE_CONTENT_TYPES.keys())
def test_a_multipart_upload_with_such_a_content_type_is_never_created(
    served: Served, client: ferry.Client, content_type: str
) -> None:
    before = served.kept()
    request = encoder_pb2.CreateUploadRequest(file_name="big.bin", content_type=content_type)

    error = refusal(lambda: client.encoder.CreateUpload(request))

    assert (error.code, error.reason) == (grpc.StatusCode.INVALID_ARGUMENT, "INVALID_CONTENT_TYPE")
    assert len(error.message) < MAX_MESSAGE_CHARS
    assert served.kept() == before


@pytest.mark.parametrize(
    "content_type",
    ["image/png", "text/plain; charset=utf-8", 'multipart/mixed; boundary="a b;c"', "application/vnd.api+json"],
)
def test_media_types_with_parameters_are_stored_and_served_as_given(
    background_loop: BackgroundLoop, client: ferry.Client, content_type: str
) -> None:
    stored = upload(client, b"payload", content_type=content_type, file_name="a.bin").file

    status, headers, body = fetch(background_loop, stored.url)

    assert (status, body) == (200, b"payload")
    assert stored.content_type == headers["Content-Type"] == content_type


def test_without_a_content_type_one_is_guessed_from_the_name(
    background_loop: BackgroundLoop, client: ferry.Client
) -> None:
    stored = upload(client, b"x,y\n", file_name="table.csv").file

    assert stored.content_type == "text/csv"
    assert fetch(background_loop, stored.url)[1]["Content-Type"] == "text/csv"


# -- what the CDN serves from metadata it did not check -------------------------------------------


def rewrite_content_type(served: Served, url: str, content_type: object) -> None:
    """Make the object's sidecar say `content_type`, as one written before content types were checked would."""
    object_id = url.split("/files/")[1].split("/")[0]
    sidecar = served.objects / f"{object_id}.json"
    record = json.loads(sidecar.read_text())
    record["content_type"] = content_type
    sidecar.write_text(json.dumps(record))


@pytest.mark.parametrize(
    "content_type",
    ["image/png\r\nSet-Cookie: stolen=1", "image/" + "x" * (1 << 20), "not a type", 42, None],
    ids=["CR LF", "1 MiB", "no grammar", "a number", "null"],
)
def test_a_stored_content_type_that_is_no_media_type_is_served_as_octet_stream(
    served: Served, background_loop: BackgroundLoop, client: ferry.Client, content_type: object
) -> None:
    stored = upload(client, b"old bytes", content_type="image/png", file_name="old.png").file
    rewrite_content_type(served, stored.url, content_type)

    status, headers, body = fetch(background_loop, stored.url)

    assert (status, body) == (200, b"old bytes")
    assert headers["Content-Type"] == "application/octet-stream"
    assert "Set-Cookie" not in headers
    assert fetch(background_loop, stored.url)[0] == 200, "the CDN keeps serving"


# -- file names ------------------------------------------------------------------------


@pytest.mark.parametrize(
    "file_name", ["evil\r\nname.png", "nul\x00.png", "..", ".", "a/", "..hidden.png", "folder/\n.png"]
)
def test_an_upload_whose_file_name_is_not_a_safe_basename_is_refused(
    served: Served, client: ferry.Client, file_name: str
) -> None:
    before = served.kept()

    error = refusal(lambda: upload(client, b"payload", content_type="image/png", file_name=file_name))

    assert (error.code, error.reason) == (grpc.StatusCode.INVALID_ARGUMENT, "BAD_FILE_NAME")
    assert served.kept() == before


def test_a_1_mib_file_name_is_refused_with_a_short_message(served: Served, client: ferry.Client) -> None:
    before = served.kept()

    error = refusal(lambda: upload(client, b"payload", content_type="image/png", file_name="\n" + "a" * (1 << 20)))

    assert (error.code, error.reason) == (grpc.StatusCode.INVALID_ARGUMENT, "BAD_FILE_NAME")
    assert len(error.message) < MAX_MESSAGE_CHARS
    assert served.kept() == before


def test_a_name_longer_than_a_file_system_allows_is_cut_keeping_its_extension(
    background_loop: BackgroundLoop, client: ferry.Client
) -> None:
    stored = upload(client, b"payload", content_type="image/png", file_name="n" * 300 + ".png").file

    assert stored.file_name == "n" * 251 + ".png"
    assert fetch(background_loop, stored.url)[2] == b"payload"


def encode_request(file_name: str) -> Iterator[encoder_pb2.EncodeRequest]:
    tensor = common_pb2.TensorHeader(dtype=common_pb2.DATA_TYPE_UINT8, shape=[2, 2, 3])
    header = encoder_pb2.EncodeHeader(tensor=tensor, format=encoder_pb2.MEDIA_FORMAT_PNG, file_name=file_name)
    yield encoder_pb2.EncodeRequest(header=header)
    yield encoder_pb2.EncodeRequest(chunk=bytes(12))


def test_an_encode_whose_file_name_is_not_safe_is_refused_before_encoding(served: Served, client: ferry.Client) -> None:
    before = served.kept()

    error = refusal(lambda: client.encoder.Encode(encode_request("out\r\n.png")))

    assert (error.code, error.reason) == (grpc.StatusCode.INVALID_ARGUMENT, "BAD_FILE_NAME")
    assert served.kept() == before


def test_an_encode_name_at_the_length_limit_still_fits_its_index_and_extension(
    background_loop: BackgroundLoop, client: ferry.Client
) -> None:
    [stored] = client.encoder.Encode(encode_request("é" * 200)).files

    assert stored.file_name.endswith(".png") and len(stored.file_name.encode()) <= 255
    assert fetch(background_loop, stored.url)[0] == 200


def test_the_server_keeps_serving_after_hostile_metadata(client: ferry.Client) -> None:
    for content_type in HOSTILE_CONTENT_TYPES.values():
        refusal(lambda content_type=content_type: upload(client, b"x", content_type=content_type))
    assert upload(client, b"still here", content_type="text/plain").file.file_size == len(b"still here")
