"""Every setting is in the README's one table (the brief: every setting once, in one table).

Global fields are `QWEN_<FIELD>`. Fields every service has (ServiceSettings) are shown once, for the
aligner or as `QWEN_<SVC>_<FIELD>`. A service's own field is `QWEN_<SVC>_<FIELD>`, or a `_<TAIL>` column
entry in a row of that service (`QWEN_CAPTIONER_TEMPERATURE` / `_TOP_P`)."""

from __future__ import annotations

import re
from pathlib import Path

from services.runtime.core.settings import SERVICE_KEYS, ServiceSettings, Settings, VLLMServerSettings

README = (Path(__file__).resolve().parents[2] / "README.md").read_text()
TABLE = README[README.index("## Settings"):README.index("## Architecture")]
ROWS = [line for line in TABLE.splitlines() if line.startswith("| `")]


def _documented(service: str | None, field: str) -> bool:
    name = f"QWEN_{service.upper()}_{field.upper()}" if service else f"QWEN_{field.upper()}"
    if any(f"`{name}`" in row for row in ROWS):
        return True
    if service is None:
        return False
    parts = field.upper().split("_")
    tails = {"_" + "_".join(parts[i:]) for i in range(len(parts))}
    return any(f"`QWEN_{service.upper()}_" in row and any(f"`{t}`" in row for t in tails) for row in ROWS)


def test_every_setting_has_a_row():
    assert len(ROWS) > 50
    missing = [f"QWEN_{f.upper()}" for f in Settings.model_fields
               if f not in SERVICE_KEYS and not _documented(None, f)]
    shared = set(ServiceSettings.model_fields)
    missing += [f"QWEN_<SVC>_{f.upper()}" for f in shared
                if not (_documented("aligner", f) or any(f"`QWEN_<SVC>_{f.upper()}`" in r for r in ROWS))]
    # Fields every service vLLM can serve has (VLLMServerSettings): once, as QWEN_<SVC>_<FIELD>.
    vllm = set(VLLMServerSettings.model_fields) - shared
    missing += [f"QWEN_<SVC>_{f.upper()}" for f in sorted(vllm) if not _documented("<SVC>", f)]
    for key in SERVICE_KEYS:
        own = set(type(getattr(Settings(), key)).model_fields) - shared - vllm
        missing += [f"QWEN_{key.upper()}_{f.upper()}" for f in sorted(own) if not _documented(key, f)]
    assert missing == [], f"settings missing from README's table: {missing}"


def test_the_check_sees_a_missing_row():
    assert _documented("<SVC>", "vllm_port") and _documented("asr", "max_prompt_tokens")
    assert not _documented("captioner", "vllm_port")  # documented once, for every vLLM service
    assert not _documented("asr", "no_such_field") and not _documented(None, "no_such_field")
    assert not re.search(r"`QWEN_ASR_NO_SUCH_FIELD`", TABLE)
