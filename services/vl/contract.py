"""What crosses between the gateway and a vision-language model service (`vl`, and `diagram`, which serves
the same API): one `VisionItem` per generation in; `VisionResults` back from `generate`, JSON lines of
runtime.serving.generation.Delta from `stream`.

Images cross as base64 PNG (runtime.codecs.images.to_wire), in the order of the messages' image parts.
"""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator

from services.runtime.serving.generation import Completion, Constraint


class Part(BaseModel):
    """A chat-template content part: text, or the place of the next image."""

    model_config = ConfigDict(extra="forbid")

    type: Literal["text", "image"]
    text: str | None = None

    @classmethod
    def image(cls) -> "Part":
        return cls(type="image")

    @classmethod
    def of_text(cls, text: str) -> "Part":
        return cls(type="text", text=text)


class Turn(BaseModel):
    model_config = ConfigDict(extra="forbid")

    role: Literal["system", "user", "assistant"]
    content: list[Part]


class VisionItem(BaseModel):
    """One generation: the conversation, its images, the token budget and the decoding."""

    model_config = ConfigDict(extra="forbid")

    messages: list[Turn] = Field(..., min_length=1)
    images: list[str] = Field(default_factory=list)  # base64 PNG, one per image part
    max_new_tokens: int = Field(..., ge=1)
    temperature: float = Field(0.0, ge=0)
    top_p: float | None = None
    top_k: int | None = None  # None, 0 or -1: off
    adapter: str | None = None  # diagram: a LoRA adapter, "base", or None (the default adapter)
    constraint: Constraint | None = None  # structured generation (a table grammar, a JSON schema); None: free text

    @model_validator(mode="after")
    def _one_image_per_image_part(self) -> "VisionItem":
        parts = sum(p.type == "image" for turn in self.messages for p in turn.content)
        if parts != len(self.images):
            raise ValueError(f"{parts} image parts but {len(self.images)} images")
        return self

    @classmethod
    def prompt(cls, text: str, images: list[str], **kw) -> "VisionItem":
        """One user turn: the images, then the text."""
        content = [Part.image() for _ in images] + [Part.of_text(text)]
        return cls(messages=[Turn(role="user", content=content)], images=images, **kw)

    def template_messages(self) -> list[dict]:
        """The messages as the processor's chat template takes them."""
        return [turn.model_dump(exclude_none=True) for turn in self.messages]


class VisionResult(Completion):
    adapter: str | None  # the adapter that ran (None: the base model)
    generate_seconds: float


class VisionResults(BaseModel):
    results: list[VisionResult]
