"""The guide's envelope and every status path of a task."""

from __future__ import annotations

from .emu_helpers import CLASSIC, FLASH, LITE, PNG_SIGNATURE, MakeApi


async def test_create_reply_carries_task_id_status_order_id_and_price(make_api: MakeApi) -> None:
    api = await make_api()
    reply = await api.create()
    assert reply.status == 200
    assert set(reply.body) == {"code", "data", "msg", "request_id"}
    assert reply.body["code"] == 0 and reply.body["msg"] == ""
    assert isinstance(reply.body["request_id"], str) and reply.body["request_id"]
    assert reply.headers["Content-Type"].startswith("application/json")
    data = reply.data
    assert set(data) == {"task_id", "status", "order_id", "price"}
    assert data["status"] == "Processing"
    assert data["price"] == "0.067"
    assert data["task_id"] and data["order_id"]


async def test_each_create_gets_its_own_task_id_and_request_id(make_api: MakeApi) -> None:
    api = await make_api()
    replies = [await api.create() for _ in range(5)]
    assert len({r.data["task_id"] for r in replies}) == 5
    assert len({r.body["request_id"] for r in replies}) == 5


async def test_price_knob_sets_or_omits_the_reported_price(make_api: MakeApi) -> None:
    api = await make_api(prices={LITE: "0.05", "*": "0.1"})
    assert (await api.create()).data["price"] == "0.05"
    assert (await api.create(model=FLASH)).data["price"] == "0.1"
    api.emu.configure(report_price=False)
    assert "price" not in (await api.create()).data


async def test_models_without_a_published_price_report_none(make_api: MakeApi) -> None:
    api = await make_api()
    assert "price" not in (await api.create(model=CLASSIC)).data


async def test_processing_then_success_with_a_png_file_url(make_api: MakeApi) -> None:
    api = await make_api(latency="fixed:30")
    task_id = (await api.create()).data["task_id"]
    early = await api.query(task_id)
    assert early.status == 200 and early.body["code"] == 0
    assert early.data == {"task_id": task_id, "status": "Processing"}
    api.emu.advance(31)
    done = await api.query(task_id)
    assert done.data["status"] == "Success"
    assert done.body["msg"] == ""
    assert done.data["file_url"].startswith(api.emu.origin + "/files/")
    status, body = await api.download(done.data["file_url"])
    assert status == 200 and body.startswith(PNG_SIGNATURE)


async def test_failed_carries_the_reason_in_data_msg_and_msg(make_api: MakeApi) -> None:
    api = await make_api(fail_rate=1.0, fail_reason="content refused")
    data = await api.generate()
    assert data["status"] == "Failed"
    assert data["msg"] == "content refused"
    assert "file_url" not in data
    reply = await api.query(data["task_id"])
    assert reply.body["code"] == 0 and reply.body["msg"] == "content refused"


async def test_cancelled_is_final_and_has_no_image(make_api: MakeApi) -> None:
    api = await make_api(cancel_rate=1.0)
    data = await api.generate()
    assert data["status"] == "Cancelled"
    assert data["msg"]
    assert "file_url" not in data and "output_images" not in data


async def test_final_status_does_not_change_on_later_queries(make_api: MakeApi) -> None:
    api = await make_api()
    data = await api.generate()
    again = await api.query(data["task_id"])
    assert again.data["status"] == "Success"
    assert again.data["file_url"] == data["file_url"]  # URLs that never expire stay the same


async def test_unknown_task_is_a_404_envelope(make_api: MakeApi) -> None:
    api = await make_api()
    reply = await api.query("no-such-task")
    assert reply.status == 404
    assert reply.body["code"] == 404 and reply.body["data"] is None
    assert "no-such-task" in reply.body["msg"]


async def test_query_without_task_id_is_a_400(make_api: MakeApi) -> None:
    api = await make_api()
    async with api.session.get(f"{api.emu.base_url}/query/image-generation", headers=api.headers) as resp:
        body = await resp.json()
    assert resp.status == 400 and body["code"] == 400 and "task_id" in body["msg"]


async def test_errors_under_http_200_keep_their_code(make_api: MakeApi) -> None:
    api = await make_api(errors_http_200=True)
    missing = await api.query("nope")
    assert missing.status == 200 and missing.body["code"] == 404
    invalid = await api.create(model="dall-e")
    assert invalid.status == 200 and invalid.body["code"] == 400
    unauthorised = await api.create(headers={"Authorization": "Bearer wrong"})
    assert unauthorised.status == 200 and unauthorised.body["code"] == 401
