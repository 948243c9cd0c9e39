"""Where weights come from: tiny, a local folder, or the hub (offline here: only the progress hook and the
refusals are checked, the download itself needs a hub)."""

import pytest

from services.runtime.core.settings import Settings
from services.runtime.serving.sources import progress_class, resolve_model_path


def test_local_folder_is_used_as_is(tmp_path):
    assert resolve_model_path(Settings(), "aligner", str(tmp_path)) == str(tmp_path)


def test_missing_local_path_is_a_clear_error(tmp_path):
    with pytest.raises(FileNotFoundError, match="does not exist"):
        resolve_model_path(Settings(), "aligner", str(tmp_path / "nope"))


def test_offline_hub_id_not_in_cache_fails_loudly(tmp_path, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    import huggingface_hub.constants as c

    monkeypatch.setattr(c, "HF_HUB_OFFLINE", True)
    from huggingface_hub.errors import LocalEntryNotFoundError

    with pytest.raises(LocalEntryNotFoundError):
        resolve_model_path(Settings(model_cache=str(tmp_path)), "aligner", "Qwen/Qwen3-ForcedAligner-0.6B")


def test_download_progress_reaches_the_phase():
    seen = []
    import io

    bar = progress_class(seen.append)(total=3, file=io.StringIO())
    for _ in range(3):
        bar.update(1)
    bar.close()
    assert seen == ["fetching weights: 1/3 files", "fetching weights: 2/3 files", "fetching weights: 3/3 files"]
