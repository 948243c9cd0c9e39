"""/v1/models through the unmodified openai SDK: list, and retrieve by id or alias (ids hold a '/')."""

from __future__ import annotations

import openai
import pytest

pytestmark = pytest.mark.served


@pytest.fixture(scope="module")
def oai(served):
    return served.openai()


def test_every_listed_model_can_be_retrieved_by_id_and_alias(oai, served):
    listed = oai.models.list().data
    assert len(listed) == 6
    with served.client() as c:
        cards = {m["id"]: m for m in c.get("/v1/models").json()["data"]}
    for m in listed:
        assert oai.models.retrieve(m.id).id == m.id  # e.g. Qwen/Qwen2.5-VL-3B-Instruct, slash and all
        for alias in cards[m.id]["aliases"]:
            assert oai.models.retrieve(alias).id == m.id


def test_an_unknown_model_is_a_404_the_sdk_understands(oai):
    with pytest.raises(openai.NotFoundError) as e:
        oai.models.retrieve("gpt-nothing")
    assert e.value.status_code == 404 and e.value.body["code"] == "model_not_found"
