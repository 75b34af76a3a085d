"""A download cancelled after the service answered: the file made for that call alone goes, nothing else does."""

from __future__ import annotations

from pathlib import Path

from ferry.downloads import DownloadPlan
from ferry.v1 import downloader_pb2


def served_file(folder: Path) -> downloader_pb2.DownloadCompleted:
    folder.mkdir(parents=True)
    (folder / "cat.png").write_bytes(b"pixels")
    return downloader_pb2.DownloadCompleted(path=str(folder / "cat.png"), file_size=6, file_name="cat.png")


def plan(target_dir: str | None = None, model_weights: bool = False) -> DownloadPlan:
    return DownloadPlan.create("https://example.com/cat.png", target_dir, model_weights, {}, shared_data_dir=None)


def test_the_folder_the_service_made_for_a_plain_download_goes(tmp_path: Path) -> None:
    completed = served_file(tmp_path / "downloads" / "fresh")
    plan().abandon(completed)
    assert not (tmp_path / "downloads" / "fresh").exists()
    assert (tmp_path / "downloads").exists(), "only that call's folder"


def test_a_file_in_a_folder_the_caller_named_or_the_weights_cache_stays(tmp_path: Path) -> None:
    for abandoned in (plan(target_dir="mine"), plan(target_dir=str(tmp_path / "elsewhere")), plan(model_weights=True)):
        completed = served_file(tmp_path / "kept" / str(id(abandoned)))
        abandoned.abandon(completed)
        assert Path(completed.path).is_file()
