import pytest
from pydantic import ValidationError

from services.runtime.core.settings import Settings


def test_seed_aliases_are_accepted(monkeypatch):
    monkeypatch.setenv("SOW_QWEN3_MODEL_PATH", "/models/qwen3-forced-aligner")
    monkeypatch.setenv("SOW_QWEN3_MAX_CONCURRENT", "3")
    monkeypatch.setenv("SOW_QWEN3_API_KEY", "s3cret")
    monkeypatch.setenv("SOW_QWEN3_DEVICE", "cpu")
    monkeypatch.setenv("SOW_QWEN3_R2_ENDPOINT_URL", "https://acct.r2.cloudflarestorage.com")
    monkeypatch.setenv("SOW_QWEN3_R2_SECRET_ACCESS_KEY", "r2secret")
    s = Settings()
    assert s.aligner.model == "/models/qwen3-forced-aligner"
    assert s.aligner.max_concurrency == 3
    assert s.api_key.get_secret_value() == "s3cret"
    assert s.device_for("aligner") == "cpu"
    assert s.s3_endpoint_url.startswith("https://acct")
    assert "s3cret" not in repr(s) and "r2secret" not in repr(s)


def test_canonical_names_win_over_aliases(monkeypatch):
    monkeypatch.setenv("QWEN_ALIGNER_MAX_CONCURRENCY", "5")
    monkeypatch.setenv("SOW_QWEN3_MAX_CONCURRENT", "3")
    assert Settings().aligner.max_concurrency == 5


def test_services_comma_list_and_unknown_service(monkeypatch):
    monkeypatch.setenv("QWEN_SERVICES", "aligner, asr")
    assert Settings().services == ["aligner", "asr"]
    monkeypatch.setenv("QWEN_SERVICES", "aligner,ocr")
    with pytest.raises(ValidationError, match="ocr"):
        Settings()


def test_global_device_and_dtype_apply_unless_overridden(monkeypatch):
    monkeypatch.setenv("QWEN_DEVICE", "cpu")
    monkeypatch.setenv("QWEN_DTYPE", "bfloat16")
    monkeypatch.setenv("QWEN_ALIGNER_DTYPE", "float16")
    s = Settings()
    assert s.device_for("aligner") == "cpu" and s.dtype_for("aligner") == "float16"


def test_invalid_values_are_refused(monkeypatch):
    monkeypatch.setenv("QWEN_DEVICE", "tpu")
    with pytest.raises(ValidationError):
        Settings()
