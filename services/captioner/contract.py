"""What crosses between the gateway and the captioner model service: the decoded clip (16 kHz mono float32,
its own `audio: np.ndarray` parameter) and `GenParams` in; runtime.serving.generation.Completion back from
`complete`, JSON lines of its Delta from `stream`."""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict, Field

SAMPLE_RATE = 16000


class GenParams(BaseModel):
    """The decoding of one caption (the gateway fills what the request left out from the settings)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    max_tokens: int = Field(..., ge=1)
    temperature: float = Field(..., ge=0)
    top_p: float
    top_k: int  # 0 or -1: off
    seed: int | None = None
