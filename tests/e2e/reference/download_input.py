"""server-side-files.md, "Downloading Input Files": the endpoint as written; only the imports differ.

(`self.model` is the example's own placeholder: `setup` gives it one, as endpoints.md's example does.)
"""

import ferry.inference as fal  # was: import fal
from ferry.toolkit import download_file  # was: from fal.toolkit import download_file


class Model:
    def process(self, path: str) -> dict:
        with open(path, "rb") as f:
            return {"path": path, "size": len(f.read())}


def load_model() -> Model:
    return Model()


# -- the reference's example, verbatim (with the setup it leaves out) ---------------------------------


class MyModel(fal.App):
    machine_type = "GPU-A100"

    def setup(self):
        self.model = load_model()

    @fal.endpoint("/")
    def process(self, video_url: str) -> dict:
        local_path = download_file(video_url, target_dir="/tmp/inputs")
        result = self.model.process(str(local_path))
        return {"output": result}
