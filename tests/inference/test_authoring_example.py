"""The README's example of an app author's test, kept here so it stays true."""

import ferry
import pytest
from ferry.testing import StackProcess

APP = "ferry.inference.apps.text_to_image:TextToImage"   # or "path/to/my_app.py:MyApp"


@pytest.fixture(scope="module")
def stack(tmp_path_factory):
    data = tmp_path_factory.mktemp("stack")
    with StackProcess(["--data-dir", str(data), "--app", APP]) as stack:
        yield stack


def test_a_prompt_becomes_an_image_at_a_url(stack):
    with stack.client() as client:
        output = client.run("text-to-image", {"prompt": "a lighthouse at dusk", "width": 64, "height": 64})
        image = ferry.Image.model_validate(output["image"])
        assert (image.width, image.height) == (64, 64)
        assert image.to_pil().size == (64, 64)           # fetched from the CDN and decoded
        assert client.health("ferry.v1.InferenceService/text-to-image") == "SERVING"
