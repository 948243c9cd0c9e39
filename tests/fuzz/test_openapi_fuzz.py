"""Schemathesis over the gateway's OpenAPI (the real `bentoml serve` session, auth on): whatever the
generated input, no 5xx, and every answer conforms to the document — a documented status, content type
and body shape (errors are the one envelope, documented for every route) — and every JSON answer of an
OpenAI-shaped route to OpenAI's own schema (tests/openai_schemas.py).

A short budget runs in `make test` (QWEN_FUZZ_EXAMPLES, default 4 per operation); `make fuzz` runs more."""

from __future__ import annotations

import os

import pytest
import schemathesis
from schemathesis import checks
from hypothesis import HealthCheck, settings

from tests.openai_schemas import check, root_for
from tests.served_session import API_KEY

pytestmark = pytest.mark.served


@pytest.fixture(scope="session")
def api_schema(served):
    import httpx

    spec = httpx.get(served.url + "/docs.json", timeout=30).json()
    return schemathesis.from_dict(spec, base_url=served.url)


schema = schemathesis.from_pytest_fixture("api_schema")
EXAMPLES = int(os.environ.get("QWEN_FUZZ_EXAMPLES", "4"))


@schema.parametrize()
@settings(max_examples=EXAMPLES, deadline=None, suppress_health_check=list(HealthCheck))
def test_no_server_errors(case):
    response = case.call(headers={"X-API-Key": API_KEY}, timeout=120)
    assert response.status_code < 500, f"{case.method} {case.path} -> {response.status_code}: {response.text[:500]}"
    # Zero schema violations: the status is documented, and so are the content type and the body's shape.
    case.validate_response(response, checks=(checks.not_a_server_error, checks.status_code_conformance,
                                             checks.content_type_conformance, checks.response_schema_conformance))
    if response.status_code >= 400 and response.headers.get("content-type", "").startswith("application/json"):
        body = response.json()
        # Every error is the one envelope (BentoML's own routes aside).
        if case.path not in ("/readyz", "/livez", "/healthz", "/metrics"):
            assert set(body) == {"error"} and {"message", "type", "param", "code"} <= set(body["error"]), body
    if response.headers.get("content-type", "").startswith("application/json"):
        body = response.json()
        root = root_for(case.path, response.status_code, body)
        if root is not None:
            check(root, body)
