"""endpoints.md, "A Basic Endpoint" with its second endpoint: as written; only the import differs.

(`load_model` is the example's own placeholder: here it reverses the prompt.)
"""

from pydantic import BaseModel

import ferry.inference as fal  # was: import fal


def load_model():
    return lambda prompt: prompt[::-1]


class Input(BaseModel):
    prompt: str


class Output(BaseModel):
    text: str


class MyApp(fal.App):
    machine_type = "GPU-A100"

    def setup(self):
        self.model = load_model()

    @fal.endpoint("/")
    def generate(self, input: Input) -> Output:
        result = self.model(input.prompt)
        return Output(text=result)

    @fal.endpoint("/enhance")
    def enhance(self, input: Input) -> Output:
        return Output(text=input.prompt.upper())
