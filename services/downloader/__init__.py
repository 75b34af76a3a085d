"""DownloaderService: URLs and data URIs into files under the data dir."""
