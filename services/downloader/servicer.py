"""DownloaderService servicer (the engine lands with the downloader issue)."""

from ferry.services.unbuilt import unbuilt_servicer
from ferry.v1 import downloader_pb2, downloader_pb2_grpc

SERVICE = downloader_pb2.DESCRIPTOR.services_by_name["DownloaderService"]


def create_servicer() -> downloader_pb2_grpc.DownloaderServiceServicer:
    return unbuilt_servicer(downloader_pb2_grpc.DownloaderServiceServicer, SERVICE)
