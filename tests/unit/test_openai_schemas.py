"""The table that picks which of OpenAI's schemas an answer must satisfy (used by the fuzz run)."""

from tests.openai_schemas import root_for, violations


def test_root_for_picks_openais_schema_by_route_and_status():
    assert root_for("/v1/models", 200, {"data": []}) == "ListModelsResponse"
    assert root_for("/v1/models/tts-1", 200, {}) == "Model"
    assert root_for("/v1/chat/completions", 422, {}) == "ErrorResponse"
    assert root_for("/v1/audio/transcriptions", 200, {"text": ""}) == "CreateTranscriptionResponseJson"
    assert root_for("/v1/audio/transcriptions", 200, {"text": "", "duration": 1.0}) == \
        "CreateTranscriptionResponseVerboseJson"
    assert root_for("/v1/audio/voices", 200, {}) is None and root_for("/generate", 400, {}) is None


def test_our_error_envelope_satisfies_openais_error_schema_and_a_wrong_one_does_not():
    ours = {"error": {"message": "m", "type": "invalid_request_error", "param": None, "code": "invalid_value"}}
    assert violations("ErrorResponse", ours) == []
    assert violations("ErrorResponse", {"error": {"message": "m"}})  # type, param, code are required
