"""server-side-files.md, "Downloading Model Weights": `setup` as written; only the imports and the URL differ.

(The weights URL is the test's own HTTP server, given in WEIGHTS_URL: nothing outside this machine is
reachable from the tests. The example shows no endpoint; one reports what setup loaded.)
"""

import os

import ferry.inference as fal  # was: import fal
from ferry.toolkit import download_model_weights  # was: from fal.toolkit import download_model_weights

WEIGHTS_URL = os.environ["WEIGHTS_URL"]  # was: "https://huggingface.co/org/model/resolve/main/weights.bin"


def load_from_weights(path) -> dict:
    with open(path, "rb") as f:
        return {"path": str(path), "size": len(f.read())}


class MyModel(fal.App):
    def setup(self):
        weights_path = download_model_weights(WEIGHTS_URL)
        self.model = load_from_weights(weights_path)

    @fal.endpoint("/")
    def loaded(self) -> dict:
        return self.model
