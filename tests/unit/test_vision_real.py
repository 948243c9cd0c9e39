"""VL and diagram against the real processor and generation settings, without weights.

* Pixel budget (visual tokens per image): the real Qwen2.5-VL preprocessor_config.json (vendored,
  tests/fixtures/real/) and Qwen3-VL's published processor values (tests/real_configs.py; not vendored)
  go into the image processor classes transformers 4.57.6 picks for them (Qwen2VLImageProcessor and its
  fast twin: transformers has no Qwen3-VL image processor of its own). A big photo gives at most the
  service budget of tokens with the engine's processor kwargs, and many more without.
* Sampling: the engine's generate kwargs merged into the real Qwen2.5-VL generation_config the way
  `generate` merges them (`update(**kwargs)` on a copy): what a request asks for is what runs.
* Batching: items with different sampling settings never share a generate call.
"""

from __future__ import annotations

import copy
import warnings

import pytest
import torch
from PIL import Image

from services.runtime.codecs.images import processor_pixel_kwargs
from services.runtime.core.settings import Settings
from services.vl.engine import VisionLanguageEngine, VLItem, sampling_kwargs
from tests import real_configs as real

PHOTO = (4000, 3000)  # a 12 MP phone photo


def qwen25_vl_processor(fast: bool):
    from transformers import Qwen2VLImageProcessor, Qwen2VLImageProcessorFast

    # The vendored file names Qwen2VLImageProcessor; AutoProcessor takes the fast twin when torchvision is
    # installed. Both read the same min_pixels/max_pixels.
    return (Qwen2VLImageProcessorFast if fast else Qwen2VLImageProcessor).from_pretrained(str(real.VL))


def qwen3_vl_processor(fast: bool):
    from transformers import Qwen2VLImageProcessor, Qwen2VLImageProcessorFast

    return (Qwen2VLImageProcessorFast if fast else Qwen2VLImageProcessor)(**copy.deepcopy(real.QWEN3_VL_PROCESSOR))


def visual_tokens(image_processor, size: tuple[int, int], **kwargs) -> int:
    """Tokens the language model sees for one image: grid t*h*w patches, merge x merge of them per token."""
    out = image_processor(images=[Image.new("RGB", size, (200, 200, 200))], return_tensors="pt", **kwargs)
    (grid,) = out["image_grid_thw"].tolist()
    return grid[0] * grid[1] * grid[2] // image_processor.merge_size ** 2


def test_the_processor_classes_are_the_ones_transformers_maps_the_models_to():
    from transformers.models.auto.image_processing_auto import IMAGE_PROCESSOR_MAPPING_NAMES

    for model_type in ("qwen2_5_vl", "qwen3_vl"):
        assert IMAGE_PROCESSOR_MAPPING_NAMES[model_type] == ("Qwen2VLImageProcessor", "Qwen2VLImageProcessorFast")


def test_the_real_checkpoints_allow_16384_tokens_per_image():
    from transformers import AutoImageProcessor

    # torchvision is a pinned dependency, so the fast class is the one that serves.
    assert type(AutoImageProcessor.from_pretrained(str(real.VL))).__name__ == "Qwen2VLImageProcessorFast"
    for fast in (False, True):
        ip = qwen25_vl_processor(fast)
        assert (ip.patch_size, ip.merge_size, ip.size["longest_edge"]) == (14, 2, 12845056)
        assert ip.size["longest_edge"] // (14 * 2) ** 2 == 16384
    ip = qwen3_vl_processor(fast=True)
    assert (ip.patch_size, ip.merge_size, ip.size["longest_edge"]) == (16, 2, 16777216)
    assert ip.size["longest_edge"] // (16 * 2) ** 2 == 16384
    # The slow class (no torchvision) drops a `size` dict in transformers 4.57.6 and keeps its own 1280 x
    # 28x28 px default: Qwen3-VL's published file has only `size`, so there it is capped by accident.
    assert qwen3_vl_processor(fast=False).size["longest_edge"] == 1280 * 28 * 28


def test_the_default_budgets_are_1280_tokens_of_each_models_token_size():
    from transformers import Qwen2_5_VLConfig, Qwen3VLConfig

    s = Settings()
    # px per token from the model configs: the vendored Qwen2.5-VL config, transformers' Qwen3-VL defaults
    # (patch 16, spatial merge 2: what the published Qwen3-VL configs keep).
    vl = Qwen2_5_VLConfig.from_pretrained(str(real.VL)).vision_config
    q3 = Qwen3VLConfig().vision_config
    assert s.vl.image_pixels == 1280 * (vl.patch_size * vl.spatial_merge_size) ** 2 == 1280 * 28 * 28
    assert s.diagram.image_pixels == 1280 * (q3.patch_size * q3.spatial_merge_size) ** 2 == 1280 * 32 * 32
    assert real.QWEN3_VL_PROCESSOR["patch_size"] * real.QWEN3_VL_PROCESSOR["merge_size"] == 32


@pytest.mark.parametrize("service,fast", [("vl", False), ("vl", True), ("diagram", True)],
                         ids=["vl-slow", "vl-fast", "diagram-fast"])
def test_a_big_photo_costs_at_most_the_budget(service, fast):
    ip = qwen25_vl_processor(fast) if service == "vl" else qwen3_vl_processor(fast)
    budget = Settings().service(service).image_pixels
    limit = budget // (ip.patch_size * ip.merge_size) ** 2  # 1280
    with_budget = visual_tokens(ip, PHOTO, **processor_pixel_kwargs(ip, budget))
    without = visual_tokens(ip, PHOTO)
    assert limit == 1280
    assert 0.9 * limit <= with_budget <= limit  # resized to fit, not far below
    assert without > 9 * limit  # what the checkpoint alone allows: 15301 (Qwen2.5-VL), 11750 (Qwen3-VL)


def test_processor_pixel_kwargs_keeps_the_checkpoints_own_limits():
    ip = qwen25_vl_processor(fast=False)
    assert processor_pixel_kwargs(ip, 1280 * 784) == {"min_pixels": 3136, "max_pixels": 1280 * 784}
    # off (0/None) or above the checkpoint: the checkpoint's limits
    assert processor_pixel_kwargs(ip, 0) == processor_pixel_kwargs(ip, None) == {"min_pixels": 3136,
                                                                                  "max_pixels": 12845056}
    assert processor_pixel_kwargs(ip, 10**9)["max_pixels"] == 12845056
    # below the checkpoint's minimum: the minimum follows, so the pair stays valid
    assert processor_pixel_kwargs(ip, 2000) == {"min_pixels": 2000, "max_pixels": 2000}


def test_budget_settings_and_the_seed_names(monkeypatch):
    monkeypatch.setenv("QWEN_VL_RESIZE_PIXELS", str(256 * 784))  # the name before the budget applied always
    monkeypatch.setenv("ENABLE_SERVER_IMAGE_RESIZE", "false")
    monkeypatch.setenv("QWEN_DIAGRAM_IMAGE_PIXELS", "0")
    s = Settings()
    assert s.vl.image_pixels == 256 * 784 and s.vl.resize is False  # resize=false: the budget still applies
    assert s.diagram.image_pixels == 0
    monkeypatch.setenv("QWEN_VL_IMAGE_PIXELS", str(512 * 784))  # the canonical name wins
    assert Settings().vl.image_pixels == 512 * 784


# --- the engine without weights: stub tokenizer/model around the real image processor and generation config ---


class StubTokenizer:
    pad_token_id = 0

    def convert_tokens_to_ids(self, token):
        return 2

    def decode(self, ids, skip_special_tokens=True):
        return " ".join(map(str, ids))


class StubProcessor:
    """Records each call; text and images as the real processor gets them."""

    def __init__(self, image_processor):
        self.image_processor = image_processor
        self.tokenizer = StubTokenizer()
        self.calls: list[dict] = []

    def apply_chat_template(self, messages, **kwargs):
        return messages[-1]["content"][-1]["text"]

    def __call__(self, text, images=None, **kwargs):
        from transformers import BatchFeature

        self.calls.append({"texts": list(text), "images": images, **kwargs})
        n = len(text)
        return BatchFeature({"input_ids": torch.ones(n, 3, dtype=torch.long),
                             "attention_mask": torch.ones(n, 3, dtype=torch.long)})


class StubModel:
    """`generate` records its kwargs and the effective config (merged as transformers merges it)."""

    device = "cpu"

    def __init__(self):
        from transformers import GenerationConfig

        self.generation_config = GenerationConfig.from_pretrained(str(real.VL))
        self.calls: list[dict] = []

    def generate(self, input_ids, attention_mask, max_new_tokens, pad_token_id, **kwargs):
        self.calls.append({"kwargs": kwargs, "effective": effective(self.generation_config, kwargs)})
        return torch.cat([input_ids, torch.full((input_ids.shape[0], max_new_tokens), 7)], dim=1)


def effective(generation_config, kwargs: dict):
    """What `generate` decodes with: the model's config, copied, then `update(**kwargs)`
    (GenerationMixin._prepare_generation_config in transformers 4.57.6), validated without warnings."""
    cfg = copy.deepcopy(generation_config)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        cfg.update(**kwargs)
    return cfg


def stub_engine(image_pixels: int | None = None) -> VisionLanguageEngine:
    return VisionLanguageEngine([StubModel()], StubProcessor(qwen25_vl_processor(fast=False)), adapters=[],
                                default_adapter=None, merged=False, image_pixels=image_pixels)


def vl_item(text: str, temperature=0.0, top_p=None, top_k=None, image=True) -> VLItem:
    parts = ([{"type": "image"}] if image else []) + [{"type": "text", "text": text}]
    return VLItem([{"role": "user", "content": parts}], [Image.new("RGB", PHOTO)] if image else [],
                  max_new_tokens=3, temperature=temperature, top_p=top_p, top_k=top_k)


def test_every_processor_call_gets_the_service_budget():
    engine = stub_engine(Settings().vl.image_pixels)
    engine.generate_batch([vl_item("a"), vl_item("b", image=False)])
    engine.generate_batch([vl_item("c", temperature=0.7)])
    calls = engine.processor.calls
    assert len(calls) == 2
    for call in calls:
        assert (call["min_pixels"], call["max_pixels"]) == (3136, 1280 * 28 * 28)


# --- sampling -----------------------------------------------------------------------------------------------

# The "top_k=1" form of the Qwen-VL generation settings the issue describes (and the tiny Qwen2.5-VL wrote
# before it was matched to the published file): "sampling" with top_k 1 / top_p 0.001, greedy in effect.
# The vendored published file has do_sample with temperature 1e-6 and no top_k/top_p (so transformers'
# top_k 50 applies). Both are checked, and Qwen3-VL's published sampling (tests/real_configs.py).
GREEDY_IN_EFFECT = dict(do_sample=True, temperature=0.1, top_p=0.001, top_k=1, repetition_penalty=1.05)


def generation_configs():
    from transformers import GenerationConfig

    vendored = GenerationConfig.from_pretrained(str(real.VL))
    assert (vendored.do_sample, vendored.temperature, vendored.repetition_penalty) == (True, 1e-6, 1.05)
    return {"vendored": vendored, "top_k=1": GenerationConfig(**GREEDY_IN_EFFECT),
            "qwen3-vl": GenerationConfig(**real.QWEN3_VL_GENERATION)}


@pytest.mark.parametrize("which", ["vendored", "top_k=1", "qwen3-vl"])
def test_a_sampling_request_samples_with_exactly_its_own_settings(which):
    gen = generation_configs()[which]
    cfg = effective(gen, sampling_kwargs(0.7, 0.9))
    assert (cfg.do_sample, cfg.temperature, cfg.top_p) == (True, 0.7, 0.9)
    assert cfg.top_k == 0  # off (OpenAI has no top_k): not the checkpoint's 1 or 20, not transformers' 50
    cfg = effective(gen, sampling_kwargs(0.7))  # no top_p: off (OpenAI's 1.0), not the checkpoint's 0.001/0.8
    assert (cfg.do_sample, cfg.temperature, cfg.top_p, cfg.top_k) == (True, 0.7, 1.0, 0)
    cfg = effective(gen, sampling_kwargs(1.2, 0.5, 40))  # the request's top_k (chat's extension)
    assert (cfg.temperature, cfg.top_p, cfg.top_k) == (1.2, 0.5, 40)
    assert effective(gen, sampling_kwargs(0.7, None, -1)).top_k == 0  # -1 (vLLM's "off") is off too
    assert cfg.repetition_penalty == gen.repetition_penalty  # the checkpoint's other settings stay


@pytest.mark.parametrize("which", ["vendored", "top_k=1", "qwen3-vl"])
@pytest.mark.parametrize("temperature", [0.0, None, 1e-300])
def test_a_greedy_request_decodes_greedily(which, temperature):
    cfg = effective(generation_configs()[which], sampling_kwargs(temperature, 0.9, 5))
    assert cfg.do_sample is False and cfg.num_beams == 1
    assert (cfg.temperature, cfg.top_p, cfg.top_k) == (None, None, None)


def test_mixed_sampling_in_one_batch_never_share_a_generate_call():
    engine = stub_engine()
    items = [vl_item("g1"), vl_item("s1", 0.7, 0.9), vl_item("g2", image=False), vl_item("s2", 0.7, 0.9, 5),
             vl_item("s3", 1.0), vl_item("s4", 0.7, 0.9)]
    results = engine.generate_batch(items)
    assert len(results) == len(items) and all(r.usage.completion_tokens == 3 for r in results)
    model = engine._free.get()
    calls = list(zip(engine.processor.calls, model.calls))
    assert len(calls) == 4  # greedy {g1, g2}, {s1, s4}, {s2}, {s3}
    by_text = {it.messages[0]["content"][-1]["text"]: it for it in items}
    seen = []
    for prepared, generated in calls:
        for text in prepared["texts"]:
            it = by_text[text]
            seen.append(text)
            assert generated["kwargs"] == sampling_kwargs(it.temperature, it.top_p, it.top_k)
            cfg = generated["effective"]
            # sampling: the request's values, never the checkpoint's; greedy: no sampling values at all
            want = (True, it.temperature, it.top_p or 1.0, it.top_k or 0) if it.temperature else (False, None, None, None)
            assert (cfg.do_sample, cfg.temperature, cfg.top_p, cfg.top_k) == want
    assert sorted(seen) == sorted(by_text)
    assert sum(1 for _, g in calls if g["effective"].do_sample) == 3
