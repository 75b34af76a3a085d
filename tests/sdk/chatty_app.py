"""An app whose setup logs far more than a pipe holds, as a verbose model loader does."""

import logging

from pydantic import BaseModel

from ferry.inference import App, endpoint

log = logging.getLogger("chatty")


class Nothing(BaseModel):
    pass


class Chatty(App):
    def setup(self) -> None:
        for line in range(3000):
            log.warning("loading shard %d of 3000: %s", line, "x" * 100)

    @endpoint("/")
    def run(self, input: Nothing) -> Nothing:
        return Nothing()
