"""server-side-files.md, "Compressed Files": as written; only the imports differ."""

import ferry.inference as fal  # was: import fal
from ferry.toolkit import CompressedFile  # was: from fal.toolkit import CompressedFile


class MyApp(fal.App):
    @fal.endpoint("/")
    def process(self, archive_url: str) -> dict:
        archive = CompressedFile(url=archive_url)
        png_files = list(archive.glob("*.png"))
        return {"file_count": len(png_files)}
