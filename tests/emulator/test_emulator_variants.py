"""The field variant: `message`, `output_images`, a Pending phase and Cancelled."""

from __future__ import annotations

from .emu_helpers import PNG_SIGNATURE, MakeApi


async def test_field_variant_envelope_says_message_not_msg(make_api: MakeApi) -> None:
    api = await make_api(variant="field")
    created = await api.create()
    assert set(created.body) == {"code", "data", "message", "request_id"}
    assert created.data["status"] == "Pending"
    error = await api.query("unknown")
    assert error.status == 404 and "unknown" in error.body["message"] and "msg" not in error.body


async def test_field_variant_goes_pending_processing_success_with_output_images(make_api: MakeApi) -> None:
    api = await make_api(variant="field", latency="fixed:40")
    task_id = (await api.create()).data["task_id"]
    assert (await api.query(task_id)).data["status"] == "Pending"  # first half of the latency
    api.emu.advance(25)
    assert (await api.query(task_id)).data["status"] == "Processing"
    api.emu.advance(20)
    data = (await api.query(task_id)).data
    assert data["status"] == "Success"
    assert "file_url" not in data
    assert isinstance(data["output_images"], list) and len(data["output_images"]) == 1
    status, body = await api.download(data["output_images"][0])
    assert status == 200 and body.startswith(PNG_SIGNATURE)


async def test_field_variant_cancelled_is_final_without_images(make_api: MakeApi) -> None:
    api = await make_api(variant="field", cancel_rate=1.0)
    data = await api.generate()
    assert data["status"] == "Cancelled"
    assert "output_images" not in data and data["msg"]
    assert api.emu.stats.cancels == 1


async def test_field_variant_failure_reason_in_data_msg(make_api: MakeApi) -> None:
    api = await make_api(variant="field", fail_rate=1.0, fail_reason="content refused")
    reply = await api.query((await api.create()).data["task_id"])
    assert reply.data["status"] == "Failed" and reply.data["msg"] == "content refused"
    assert reply.body["message"] == "content refused"


async def test_variant_switches_at_run_time(make_api: MakeApi) -> None:
    api = await make_api()
    task_id = (await api.create()).data["task_id"]
    assert "file_url" in (await api.query(task_id)).data
    api.emu.configure(variant="field")
    assert "output_images" in (await api.query(task_id)).data
