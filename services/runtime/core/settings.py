"""Every setting of the suite, read once from the environment (pydantic-settings).

Global settings use the `QWEN_` prefix, per-service ones `QWEN_<SERVICE>_<FIELD>`. The names users of the
seed services already know (SOW_QWEN3_*, ...) are accepted as aliases; the README's settings table is
the one place they are all documented. Secrets are `SecretStr`: they never appear in reprs or logs.
"""

from __future__ import annotations

import functools
from typing import Annotated, Literal

from pydantic import AliasChoices, BeforeValidator, Field, SecretStr, field_validator
from pydantic_settings import BaseSettings, NoDecode, SettingsConfigDict

# auto | cpu | mps | cuda | cuda:N (a GPU index: per-service placement on multi-GPU hosts)
Device = Annotated[str, Field(pattern=r"^(auto|cpu|mps|cuda(:\d+)?)$")]
DType = Literal["auto", "float32", "float16", "bfloat16"]

SERVICE_KEYS = ("aligner", "asr", "tts", "captioner", "diagram", "vl")
def _split_list(v):
    if isinstance(v, str):
        return [s.strip() for s in v.split(",") if s.strip()]
    return v


# Comma lists in the environment ("aligner,asr"), not JSON.
CommaList = Annotated[list[str], NoDecode, BeforeValidator(_split_list)]


def env(*names: str) -> AliasChoices:
    """Accept the canonical name first, then documented aliases (seed names)."""
    return AliasChoices(*names)


class _Base(BaseSettings):
    model_config = SettingsConfigDict(extra="ignore", populate_by_name=True, frozen=True)


class ServiceSettings(_Base):
    """Fields every model service has; subclasses set the prefix, the default model and limits."""

    model: str = ""
    revision: str | None = None
    device: Device | None = None  # None: the global QWEN_DEVICE
    dtype: DType | None = None  # None: the global QWEN_DTYPE
    max_concurrency: int = Field(2, ge=1)
    max_queue: int = Field(16, ge=0)
    timeout: float = Field(300.0, gt=0)
    # None: auto — 4 on CUDA, 1 elsewhere (TTS: rows of its decode loop, 16 on CUDA, 8 elsewhere). On CPU
    # the aligner ran faster unbatched (bench/align.py); a real model on CPU is compute-bound.
    max_batch_size: int | None = Field(None, ge=1)
    batch_wait_ms: float = Field(10.0, ge=0)
    # Share of one GPU's memory this service may allocate (torch's per-process cap), for models that
    # share a GPU (the seed ran ASR + TTS on one T4 at 0.45 each). None: no cap. Not set for a vLLM engine
    # (its vllm_gpu_memory_utilization caps it). Co-located shares over 1 on a GPU refuse the start.
    gpu_memory_fraction: float | None = Field(None, gt=0, le=1)
    # Reach this model service at a URL — its own deployment, `bentoml serve services.<svc>.service:<Class>`
    # (Kubernetes/compose per-service pods) — instead of starting it under the gateway. Calls then go as
    # JSON over HTTP (pickle is refused by a standalone server), so keep that port private to the gateway.
    url: str | None = None
    # Requests per window per client (address; IPv6 per /64) to this model, on every route that reaches it
    # (its own routes, chat completions naming it, its task forms), counted across gateway replicas when
    # QWEN_STATE_URL is set. 0: no limit. The window is in seconds (rounded up to a whole second).
    rate_limit: int = Field(0, ge=0)
    rate_window_seconds: float = Field(60.0, gt=0)

    def weights(self) -> list[tuple[str, str, str | None]]:
        """(what, model, revision) of every set of weights the service loads (fetch_models.py fills the cache
        with them): its model, and whatever else its settings name."""
        return [("model", self.model, self.revision)]


class VLLMServerSettings(ServiceSettings):
    """Fields of a service that vLLM can serve (ASR, captioner, VL, diagram). backend auto: vLLM on CUDA when
    the engine environment (QWEN_ENGINE_HOME) is installed, transformers in this process elsewhere. The
    vLLM server is a child process of the model service (runtime.serving.vllm_server)."""

    backend: Literal["auto", "transformers", "vllm"] = "auto"
    # Empty: the engine environment's `python -m vllm.entrypoints.openai.api_server`. Anything else is
    # run as written (a `vllm` of your own: `vllm serve`, or another interpreter's module).
    vllm_command: str = ""
    vllm_host: str = "127.0.0.1"
    vllm_port: int = Field(0, ge=0, le=65535)  # 0: a free port
    # GPUs of one engine from the service's device on (tensor parallelism); the child sees only those
    # (CUDA_VISIBLE_DEVICES). None: every visible GPU from the device on.
    vllm_tensor_parallel_size: int | None = Field(1, ge=1)
    vllm_gpu_memory_utilization: float = Field(0.9, gt=0, le=1)
    vllm_max_num_seqs: int = Field(16, ge=1)
    vllm_extra_args: str = ""  # appended to the command line as is (shell-split; the last flag wins)
    vllm_start_timeout: float = Field(1800.0, gt=0)  # spawn -> /health 200 (weights load, profiling, graphs)
    vllm_restart_backoff: float = Field(5.0, ge=0)


class AlignerSettings(ServiceSettings):
    model_config = SettingsConfigDict(env_prefix="QWEN_ALIGNER_", extra="ignore", populate_by_name=True, frozen=True)

    model: str = Field(
        "Qwen/Qwen3-ForcedAligner-0.6B", validation_alias=env("QWEN_ALIGNER_MODEL", "SOW_QWEN3_MODEL_PATH")
    )
    device: Device | None = Field(None, validation_alias=env("QWEN_ALIGNER_DEVICE", "SOW_QWEN3_DEVICE"))
    dtype: DType | None = Field(None, validation_alias=env("QWEN_ALIGNER_DTYPE", "SOW_QWEN3_DTYPE"))
    max_concurrency: int = Field(
        2, ge=1, validation_alias=env("QWEN_ALIGNER_MAX_CONCURRENCY", "SOW_QWEN3_MAX_CONCURRENT")
    )
    # Audio per aligner pass (the real head times up to ~400 s: 5000 classes x 80 ms). The audio
    # encoder attends within 8-s windows (runtime/encoder_attention.py), but the language model attends
    # over the whole pass (13 tokens per second of audio + the lyrics): 120 s keeps a 10-minute song
    # near linear in time (bench/align.py).
    window_seconds: float = Field(120.0, gt=5)
    # Songs longer than a window are cut where voice activity (Silero VAD) hears no voice, the quietest
    # such point: a loud accompaniment no longer draws the cut into a sung word. Off: the quietest point.
    vad: bool = True
    # Longest song accepted (decoded duration); longer input is a 413.
    max_audio_seconds: float = Field(1200.0, gt=0)
    max_lyrics_chars: int = Field(20000, gt=0)
    max_lines: int = Field(2000, gt=0)
    default_language: str | None = None
    # A line needs review (services/aligner/review.py) when its words' mean confidence is under
    # review_min_confidence, or it has under review_min_word_seconds / over review_max_word_seconds per word.
    review_min_confidence: float = Field(0.5, ge=0, le=1)
    review_min_word_seconds: float = Field(0.08, ge=0)
    review_max_word_seconds: float = Field(4.0, gt=0)
    # Vocal separation before alignment, asked per request (`separate: true`; services/aligner/separation.py):
    # a Demucs model in the layout of its hub repos (`adefossez/HTDemucs`, `adefossez/HTDemucs-ft`) or a local
    # folder of that layout, loaded with the aligner (downloaded once per deployment into the model cache).
    # Empty: off, and `separate: true` is a 400.
    separator: str = ""
    separator_revision: str | None = None
    # Songs separated at once per aligner worker: each holds its stems on the host (1.4 MB per second of
    # audio for HTDemucs) and, on a GPU, the device beside the aligner.
    separator_concurrency: int = Field(1, ge=1)

    def weights(self) -> list[tuple[str, str, str | None]]:
        extra = [("separator", self.separator, self.separator_revision)] if self.separator else []
        return super().weights() + extra


class ASRSettings(VLLMServerSettings):
    model_config = SettingsConfigDict(env_prefix="QWEN_ASR_", extra="ignore", populate_by_name=True, frozen=True)

    model: str = "Qwen/Qwen3-ASR-1.7B"
    # Batches running at once on one model instance (the engine makes the thinker's per-call rope_deltas
    # per-thread). With 2, one request's batches take one slot and the other stays free for another
    # request: a short clip runs beside a long file's batch instead of after it.
    max_concurrency: int = Field(2, ge=1)
    max_queue: int = Field(32, ge=0)
    # Tokens one window may write. None: derived from the window (10 tokens per second of audio + 32,
    # 1232 for 120 s; services/asr/budget.py). A value under 5 tokens/s is warned about at load.
    max_new_tokens: int | None = Field(None, ge=2)
    window_seconds: float = Field(120.0, gt=5, le=1200)
    # Voice activity (Silero VAD) plans the windows: cuts fall where nobody speaks, and a window without
    # speech (silence, music, noise: the model invents text on them) is not decoded. A request's OpenAI
    # `chunking_strategy` ("auto" or server_vad with its threshold) turns it on for that request.
    vad: bool = True
    vad_threshold: float = Field(0.5, gt=0, lt=1)
    max_audio_seconds: float = Field(3600.0, gt=0)
    # Longest `prompt` (the model's context), in tokens; longer is a 400. With the vLLM backend every
    # window must fit vllm_max_model_len (template + prompt + audio + output): checked at load.
    max_prompt_tokens: int = Field(1024, ge=0)
    # Realtime transcription (WebSocket /v1/realtime?intent=transcription), per gateway process: sessions
    # open at once (more: 429 at the handshake), a session's length, the longest turn (server VAD commits
    # a turn at this length; a manual buffer cannot grow past it), how fast audio may arrive (times real
    # time, over a burst of realtime_burst_seconds), and turns transcribing at once per session (beyond
    # it the socket is not read: the client's sends wait).
    realtime_max_sessions: int = Field(16, ge=1)
    realtime_max_session_seconds: float = Field(1800.0, gt=0)
    realtime_max_turn_seconds: float = Field(60.0, gt=1)
    realtime_audio_rate: float = Field(4.0, gt=0)
    realtime_burst_seconds: float = Field(30.0, gt=0)
    realtime_max_pending: int = Field(2, ge=1)
    vllm_gpu_memory_utilization: float = Field(0.45, gt=0, le=1)  # the seed shared one T4 with TTS
    vllm_max_model_len: int = Field(4096, ge=512)
    vllm_max_num_seqs: int = Field(32, ge=1)
    aliases: CommaList = Field(default_factory=lambda: ["qwen3-asr", "asr", "whisper-1"])


class TTSSettings(ServiceSettings):
    model_config = SettingsConfigDict(env_prefix="QWEN_TTS_", extra="ignore", populate_by_name=True, frozen=True)

    model: str = "Qwen/Qwen3-TTS-12Hz-1.7B-CustomVoice"
    # Requests generate together in one decode loop (continuous batching): max_batch_size rows at once
    # (None: 16 on CUDA, 8 elsewhere), max_queue more wait for a row. max_concurrency does not apply.
    max_queue: int = Field(16, ge=0)
    # An idle loop waits up to this long for requests that are still building their prompts (~6 ms each,
    # one at a time), so requests arriving together start in one batch; it starts as soon as none is.
    batch_wait_ms: float = Field(100.0, ge=0)
    max_input_chars: int = Field(4096, ge=1)  # OpenAI's limit for `input`
    # Frames are 80 ms; the real model's ceiling is 8191 (~10.9 min). Each request is also capped by its
    # text length (50 + 4 per character): a model that never stops cannot run away.
    max_frames: int = Field(8191, ge=2, le=8191)
    frames_per_char: float = Field(4.0, gt=0)
    stream_chunk_frames: int = Field(6, ge=1)  # streamed audio every ~0.5 s
    stream_first_chunk_frames: int = Field(2, ge=1)  # first audio after ~0.16 s of speech
    # Frames of left context each streamed chunk is re-decoded with. None: the loaded codec's receptive
    # field (580 frames on the real 12 Hz codec, capped by the package's own 325-frame decode window),
    # so streamed audio matches the non-streamed decode; ~30 frames are decoded per streamed frame with
    # 6-frame chunks. Smaller: cheaper, no longer exact.
    stream_context_frames: int | None = Field(None, ge=0)
    # Generation memory budget in tokens x rows: the decode loop's KV cache holds rows x the longest row's
    # prompt + frame cap, 112 KiB per token in float16 for the real 1.7B talker. A request waits until it
    # fits; one request is capped at it (with max_frames). 8191 ~ 0.9 GiB at float16.
    max_batch_frames: int = Field(8191, ge=2)
    aliases: CommaList = Field(default_factory=lambda: ["tts-1", "tts-1-hd", "qwen3-tts", "tts"])


class CaptionerSettings(VLLMServerSettings):
    model_config = SettingsConfigDict(env_prefix="QWEN_CAPTIONER_", extra="ignore", populate_by_name=True,
                                      frozen=True)

    model: str = "Qwen/Qwen3-Omni-30B-A3B-Captioner"
    # The model card is the authority: detail perception is best up to 30 s. Longer audio is a 413
    # unless the request asks for truncation explicitly (`truncate_audio: true`).
    max_audio_seconds: float = Field(30.0, gt=0)
    # Longer audio when the request asks for a timeline (`caption_windows: true`): cut into windows of at
    # most max_audio_seconds at quiet points, one caption each, up to this length in all; at most
    # window_concurrency windows of one request are captioned at once (others' requests interleave).
    max_windowed_seconds: float = Field(600.0, gt=0)
    window_concurrency: int = Field(2, ge=1)
    # The seed's request defaults; max_tokens is also capped by the context left after the prompt.
    temperature: float = Field(0.6, ge=0, le=2)
    top_p: float = Field(0.95, gt=0, le=1)
    top_k: int = Field(20, ge=-1)
    max_tokens: int = Field(16384, ge=1)
    max_model_len: int = Field(32768, ge=256)
    # The transformers backend runs one generation at a time (the thinker keeps per-call state on the
    # module). vLLM takes max_num_seqs at once.
    max_concurrency: int = Field(1, ge=1)
    max_queue: int = Field(16, ge=0)
    # vLLM (the seed's knobs): every visible GPU from the captioner's device on (the 30B MoE needs two
    # 80 GB GPUs); its context is max_model_len above, for both backends.
    vllm_tensor_parallel_size: int | None = Field(None, ge=1)
    vllm_gpu_memory_utilization: float = Field(0.95, gt=0, le=1)
    vllm_max_num_seqs: int = Field(8, ge=1)
    aliases: CommaList = Field(default_factory=lambda: ["captioner", "qwen3-omni-captioner"])


class VLSettings(VLLMServerSettings):
    model_config = SettingsConfigDict(env_prefix="QWEN_VL_", extra="ignore", populate_by_name=True, frozen=True)

    model: str = Field("Qwen/Qwen2.5-VL-3B-Instruct", validation_alias=env("QWEN_VL_MODEL", "MODEL_NAME"))
    # Generations at once. The model keeps per-call state on the module (rope_deltas), so each
    # concurrent generation gets its own model replica in the process (the seed ran 2 threads on one
    # model, which is unsafe); batching is the cheap way to more throughput.
    max_concurrency: int = Field(2, ge=1, validation_alias=env("QWEN_VL_MAX_CONCURRENCY", "MAX_CONCURRENT_GENERATIONS"))
    max_queue: int = Field(32, ge=0, validation_alias=env("QWEN_VL_MAX_QUEUE", "MAX_INFERENCE_QUEUE_SIZE"))
    max_batch_size: int | None = Field(4, ge=1, validation_alias=env("QWEN_VL_MAX_BATCH_SIZE", "MAX_INFERENCE_BATCH_SIZE"))
    batch_wait_ms: float = Field(20.0, ge=0)
    max_image_bytes: int = Field(10 * 1024 * 1024, gt=0, validation_alias=env("QWEN_VL_MAX_IMAGE_BYTES", "MAX_IMAGE_SIZE"))
    allow_image_url: bool = Field(False, validation_alias=env("QWEN_VL_ALLOW_IMAGE_URL", "ENABLE_SERVER_IMAGE_DOWNLOAD"))
    # Pixel budget per image, passed to the processor as max_pixels on every call: 1280 visual tokens of
    # 28x28 px (the checkpoint's own limit is 12845056 px = 16384 tokens). 0: the checkpoint's limit.
    image_pixels: int = Field(1280 * 28 * 28, ge=0,
                              validation_alias=env("QWEN_VL_IMAGE_PIXELS", "QWEN_VL_RESIZE_PIXELS"))
    # Also shrink images to that budget in the gateway, before the hop to the model service (less to send).
    # The budget applies either way: false only leaves the resizing to the processor.
    resize: bool = Field(False, validation_alias=env("QWEN_VL_RESIZE", "ENABLE_SERVER_IMAGE_RESIZE"))
    max_pixels: int = Field(40_000_000, gt=0)  # hard cap, resize or not (decompression bombs)
    max_new_tokens: int = Field(512, ge=1)
    max_new_tokens_limit: int = Field(2048, ge=1)
    max_prompt_chars: int = Field(8000, ge=1)
    rate_limit: int = Field(10, ge=0)  # the seed's 10 per minute per client on /generate, now on every VL route
    # vLLM backend: its context (prompt with every image's tokens + output) and images per prompt (vLLM
    # profiles its memory for that many at the pixel budget).
    vllm_max_model_len: int = Field(8192, ge=256)
    vllm_max_images: int = Field(4, ge=1)
    aliases: CommaList = Field(default_factory=lambda: ["qwen2.5-vl", "vl"])


class DiagramSettings(VLLMServerSettings):
    model_config = SettingsConfigDict(env_prefix="QWEN_DIAGRAM_", extra="ignore", populate_by_name=True,
                                      frozen=True)

    model: str = "Qwen/Qwen3-VL-2B-Instruct"
    # LoRA adapters: comma list of folders; each is an adapter (adapter_config.json +
    # adapter_model.safetensors) or a folder of adapters. Missing: a loud warning and a degraded health.
    adapters: CommaList = Field(default_factory=list, validation_alias=env("QWEN_DIAGRAM_ADAPTERS", "ADAPTER_PATH"))
    default_adapter: str | None = None  # None: the first loaded adapter
    merge_single_adapter: bool = False  # merge_and_unload when exactly one adapter is loaded (faster)
    max_concurrency: int = Field(1, ge=1)
    max_queue: int = Field(16, ge=0)
    max_batch_size: int | None = Field(4, ge=1)
    batch_wait_ms: float = Field(20.0, ge=0)
    max_new_tokens: int = Field(384, ge=1, validation_alias=env("QWEN_DIAGRAM_MAX_NEW_TOKENS", "MAX_NEW_TOKENS"))
    max_new_tokens_limit: int = Field(2048, ge=1)
    max_image_bytes: int = Field(20 * 1024 * 1024, gt=0)
    max_pixels: int = Field(40_000_000, gt=0)  # hard cap (decompression bombs)
    # Pixel budget per image, passed to the processor as max_pixels on every call: 1280 visual tokens of
    # 32x32 px (the checkpoint's own limit is 16777216 px = 16384 tokens). 0: the checkpoint's limit.
    image_pixels: int = Field(1280 * 32 * 32, ge=0)
    prompt: str = ("Recognise the process diagram in the image. Return only a markdown table of its steps in "
                   "order, with the columns: № | Step | Role.")
    # /infer answers a markdown table with these columns by default (decoding held to its grammar, so the
    # answer always parses); a request's `columns` replaces them, `format=text` asks for free text.
    table_columns: CommaList = Field(default_factory=lambda: ["№", "Step", "Role"])
    vllm_max_model_len: int = Field(8192, ge=256)
    vllm_max_images: int = Field(4, ge=1)
    aliases: CommaList = Field(default_factory=lambda: ["diagram", "qwen3-vl"])


class Settings(_Base):
    model_config = SettingsConfigDict(env_prefix="QWEN_", extra="ignore", populate_by_name=True, frozen=True)

    api_key: SecretStr | None = Field(None, validation_alias=env("QWEN_API_KEY", "SOW_QWEN3_API_KEY"))
    device: Device = "auto"
    dtype: DType = "auto"
    services: CommaList | None = None  # None: every service this build has
    models: Literal["hub", "tiny"] = "hub"
    tiny_dir: str | None = None
    # The engine environment (vLLM, engines/install.sh). None: /opt/qwen-engine (the CUDA image's), else
    # .venv-engine in the project (`make engine-env`), whichever exists first.
    engine_home: str | None = None
    model_cache: str | None = None  # HF cache dir; None: huggingface_hub's default (HF_HOME)
    torch_threads: int | None = Field(None, ge=1)  # None: torch's default (all cores)
    docs_public: bool = True  # /docs and /docs.json without the API key
    playground: bool = True  # the web page at /playground (and / redirecting to it); false: no page
    log_level: str = "INFO"
    log_json: bool = True

    # Media fetching (audio_url / image_url)
    fetch_timeout: float = Field(60.0, gt=0)  # the whole fetch: every hop and the body
    fetch_max_bytes: int = Field(100 * 1024 * 1024, gt=0)
    fetch_max_redirects: int = Field(5, ge=0)
    # Hosts or CIDRs that may be fetched although they are loopback/private (tests, in-cluster storage).
    fetch_private_allowlist: CommaList = Field(default_factory=list)
    upload_max_bytes: int = Field(100 * 1024 * 1024, gt=0)
    # At the edge, before any route runs: a declared Content-Length over this is a 413 before a byte is
    # read (None: the largest body a route can accept, an upload in base64 plus 1 MiB of fields); a body
    # that stops arriving for this many seconds is a 408; a client (address as rate limits see it) may have
    # this many requests open at once (a stream holds one for its duration), 429 past that.
    max_body_bytes: int | None = Field(None, gt=0)
    body_read_timeout: float = Field(30.0, gt=0)
    max_client_requests: int = Field(64, ge=1)
    # Tasks (submit/status/result of every task route): results kept this long, at most this many at once.
    # The QWEN_ALIGNER_* names are the older ones (tasks were the aligner's first), still accepted.
    task_ttl_seconds: float = Field(3600.0, gt=0,
                                    validation_alias=env("QWEN_TASK_TTL_SECONDS", "QWEN_ALIGNER_TASK_TTL_SECONDS"))
    max_tasks: int = Field(64, ge=1, validation_alias=env("QWEN_MAX_TASKS", "QWEN_ALIGNER_MAX_TASKS"))
    # Largest task result kept (bytes of the rendered response); a larger one ends the task failed, saying so.
    task_max_result_bytes: int = Field(32 * 1024 * 1024, ge=1024)

    # s3://bucket/key (Cloudflare R2 or any S3-protocol store)
    s3_endpoint_url: str | None = Field(
        None, validation_alias=env("QWEN_S3_ENDPOINT_URL", "SOW_QWEN3_R2_ENDPOINT_URL")
    )
    s3_access_key_id: str | None = Field(
        None, validation_alias=env("QWEN_S3_ACCESS_KEY_ID", "SOW_QWEN3_R2_ACCESS_KEY_ID")
    )
    s3_secret_access_key: SecretStr | None = Field(
        None, validation_alias=env("QWEN_S3_SECRET_ACCESS_KEY", "SOW_QWEN3_R2_SECRET_ACCESS_KEY")
    )
    s3_region: str = "auto"
    s3_bucket: str | None = Field(None, validation_alias=env("QWEN_S3_BUCKET", "SOW_QWEN3_R2_BUCKET"))

    aligner: AlignerSettings = Field(default_factory=AlignerSettings)
    asr: ASRSettings = Field(default_factory=ASRSettings)
    tts: TTSSettings = Field(default_factory=TTSSettings)
    captioner: CaptionerSettings = Field(default_factory=CaptionerSettings)
    vl: VLSettings = Field(default_factory=VLSettings)
    diagram: DiagramSettings = Field(default_factory=DiagramSettings)
    # Peers whose X-Forwarded-For is believed (IPs or CIDRs of your proxies/LBs), by our limits and by
    # uvicorn's proxy-header handling alike (runtime.edge.ratelimit.trust_proxies). Empty: nobody's.
    trusted_proxies: CommaList = Field(default_factory=list)
    # Shared state (tasks, results, rate-limit windows): unset keeps it in this process (one gateway
    # process); redis://[:password@]host:port/db or rediss:// (TLS) for several gateway replicas.
    state_url: SecretStr | None = None
    state_timeout: float = Field(2.0, gt=0)  # seconds per Redis command (connect included)
    # Redis unreachable: let rate-limited requests through (true, logged) or refuse them with 503 (false).
    rate_limit_fail_open: bool = True

    @field_validator("services")
    @classmethod
    def _known_services(cls, v: list[str] | None) -> list[str] | None:
        if v is None:
            return v
        unknown = [s for s in v if s not in SERVICE_KEYS]
        if unknown:
            raise ValueError(f"unknown service(s) {unknown}; known: {', '.join(SERVICE_KEYS)}")
        return v

    def body_cap(self) -> int:
        """QWEN_MAX_BODY_BYTES, or the largest body a route accepts: an upload in base64 (JSON routes carry
        audio and images that way) plus 1 MiB for the other fields."""
        return self.max_body_bytes or (self.upload_max_bytes * 4 // 3 + (1 << 20))

    def service(self, key: str) -> ServiceSettings:
        return getattr(self, key)

    def batch_size_for(self, key: str, device: str) -> int:
        return self.service(key).max_batch_size or (4 if device.startswith("cuda") else 1)

    def device_for(self, key: str) -> str:
        return self.service(key).device or self.device

    def dtype_for(self, key: str) -> str:
        return self.service(key).dtype or self.dtype


@functools.lru_cache(maxsize=1)
def get_settings() -> Settings:
    return Settings()
