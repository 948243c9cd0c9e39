"""The TTS service's admission in front of its decode loop (the service's own method, without BentoML)."""

from types import SimpleNamespace

import pytest

from services.runtime.core.errors import TooManyRequests
from services.runtime.core.settings import TTSSettings
from services.tts.service import TTS


def _svc(inflight: int, ewma: float = 2.0):
    return SimpleNamespace(key="tts", cfg=TTSSettings(max_queue=3), _inflight=inflight, _ewma_seconds=ewma)


def _engine(rows: int = 8):
    return SimpleNamespace(loop=SimpleNamespace(max_batch_size=rows))


def test_rows_then_the_queue_are_admitted_then_429():
    for inflight in range(8 + 3):
        TTS.inner._admit(_svc(inflight), _engine())  # 8 rows generate, 3 wait
    with pytest.raises(TooManyRequests) as err:
        TTS.inner._admit(_svc(11), _engine())
    assert err.value.status == 429 and int(err.value.headers()["Retry-After"]) >= 1


def test_retry_after_grows_with_the_queue_and_the_request_time():
    def retry(inflight, ewma):
        with pytest.raises(TooManyRequests) as err:
            TTS.inner._admit(SimpleNamespace(key="tts", cfg=TTSSettings(max_queue=0), _inflight=inflight,
                                             _ewma_seconds=ewma), _engine(rows=2))
        return err.value.retry_after

    assert retry(2, 4.0) < retry(6, 4.0)  # more waiting ahead
    assert retry(4, 2.0) < retry(4, 8.0)  # slower requests lately
