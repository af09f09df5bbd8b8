"""MES-requested replay: the running agent answers `…/_agent/{id}/replay` by re-sending a range from
its buffer with the same ids and content (only `sent_at` differs), without touching its cursors;
a bad request is logged and ignored, the agent goes on. Real Mosquitto, real simulator, real agent."""

from __future__ import annotations

from types import SimpleNamespace

import orjson
import paho.mqtt.client as mqtt
import pytest
from agent_helpers import AGENT_ID, line_config, modbus_device, payloads, running_agent
from structlog.testing import capture_logs

from linetap.agent.replay_server import parse_request, replay_topic
from linetap.simulators import ModbusStationServer, StationModel


@pytest.mark.parametrize("payload, reason", [
    (b"please resend", "not JSON"), (b"[1, 2]", "not a JSON object"),
    (b'{"stream": "alarms", "from_seq": 1}', "stream 'alarms'"),
    (b'{"stream": "units", "from_seq": 0}', "from_seq 0"),
    (b'{"stream": "units", "from_seq": 5, "to_seq": 4}', "to_seq 4"),
    (b'{"stream": "units", "from_seq": true}', "from_seq True"),
    (b'{"stream": "events", "from_seq": 1, "requested_by": 7}', "requested_by"),
])
def test_bad_requests_say_what_is_wrong(payload, reason) -> None:
    with pytest.raises(ValueError, match=reason):
        parse_request(payload)


def test_a_good_request() -> None:
    r = parse_request(b'{"stream": "telemetry", "from_seq": 3, "to_seq": 900, "requested_by": "mes-sink-1"}')
    assert (r.stream, r.from_seq, r.to_seq, r.requested_by) == ("telemetry", 3, 900, "mes-sink-1")
    assert parse_request(b'{"stream": "units", "from_seq": 2}').to_seq is None


def ask(broker, topic: str, request: bytes) -> None:
    c = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id="mes-sink-replay-asker")
    c.connect(broker.host, broker.port)
    c.loop_start()
    try:
        c.publish(topic, request, qos=1).wait_for_publish(5)
    finally:
        c.disconnect()
        c.loop_stop()


def by_id(docs: list[dict]) -> dict[str, dict]:
    return {d["id"]: {**d, "sent_at": 0} for d in docs}


@pytest.mark.timeout(90)
async def test_the_agent_resends_what_the_mes_asks_for(tmp_path, broker, capture) -> None:
    model = StationModel(seed=11)
    async with ModbusStationServer(model, port=0, speed=4.0) as sim:
        cfg = line_config(tmp_path, broker, [modbus_device(sim.port, poll_interval="50ms")],
                          mqtt={"telemetry_batch": 50})
        topic = replay_topic(cfg.topic_root, AGENT_ID)
        with capture_logs() as logs:
            async with running_agent(cfg) as agent:
                first = await capture.until(lambda m: sum(d["count"] for d in payloads(m, "/telemetry")) >= 400
                                            and len(payloads(m, "/events")) >= 1, timeout=30)
                sent = by_id(payloads(first, "/telemetry"))
                events = by_id(payloads(first, "/events"))
                # from the middle of a message: the reply must still be that whole message, as first sent
                middle = next(d for d in sorted(sent.values(), key=lambda d: d["seq"])
                              if d["seq"] > 60 and d["count"] >= 3)
                from_seq = middle["seq"] + 1
                cursors_before = {s: await agent.buffer.cursor("mqtt", s) for s in ("telemetry", "events")}
                capture.clear()
                ask(broker, topic, b"not a request")
                ask(broker, topic, orjson.dumps({"stream": "telemetry", "from_seq": from_seq, "to_seq": 260,
                                                 "requested_by": "mes-sink-1"}))
                ask(broker, topic, orjson.dumps({"stream": "events", "from_seq": 1, "to_seq": 1}))
                await capture.until(lambda m: agent.forwarder.replays.served >= 2, timeout=20)
                again = capture.messages
                cursors_after = {s: await agent.buffer.cursor("mqtt", s) for s in ("telemetry", "events")}
    replayed = [d for d in payloads(again, "/telemetry") if d["id"] in sent]
    ids = {d["id"] for d in replayed}
    wanted = {i for i, d in sent.items() if d["seq_last"] >= from_seq and d["seq"] <= 260}
    assert middle["id"] in wanted
    assert wanted and wanted <= ids, sorted(wanted - ids)
    for d in replayed:
        assert {**d, "sent_at": 0} == sent[d["id"]], d["id"]
    replayed_events = [d for d in payloads(again, "/events") if d["seq"] == 1]
    assert replayed_events and {**replayed_events[0], "sent_at": 0} == events[f"{AGENT_ID}/events/1"]
    assert all(cursors_after[s] >= cursors_before[s] for s in cursors_before)
    ignored = [e for e in logs if e["event"] == "replay request ignored"]
    assert ignored and ignored[0]["reason"] == "not JSON"
    served = [e for e in logs if e["event"] == "replay served"]
    assert {(e["stream"], e.get("requested_by")) for e in served} == {("telemetry", "mes-sink-1"), ("events", None)}


async def test_purged_records_are_named_and_ranges_bounded(tmp_path, monkeypatch) -> None:
    """Against a real buffer: what retention purged is logged as not available; a request beyond the
    bound is served up to it (the MES asks again for the rest)."""
    from linetap.agent import replay_server
    from linetap.agent.encoders import encoder_for
    from linetap.buffers import AsyncBuffer
    from linetap.buffers.records import Event

    no_broker = SimpleNamespace(host="127.0.0.1", port=1883)  # never connected to: the server is driven directly
    cfg = line_config(tmp_path, no_broker, [modbus_device(5020)],
                      buffer={"path": str(tmp_path / "line 1" / "sealer-buffer.duckdb")})
    (tmp_path / "line 1").mkdir()
    buf = await AsyncBuffer.open(cfg.buffer.path, AGENT_ID)
    sent: list[tuple[str, bytes]] = []
    try:
        await buf.append(events=[Event("alarm", i, data={"n": i}) for i in range(1, 9)])
        await buf.ack("mqtt", "events", 3)
        assert (await buf.purge_delivered("mqtt", 2**62))["events"] == 3
        monkeypatch.setattr(replay_server, "MAX_RECORDS", 4)
        monkeypatch.setattr(replay_server, "RATE", 10_000.0)
        server = replay_server.ReplayServer(cfg, buf, encoder_for(cfg), lambda t, p: sent.append((t, p)) or True)
        unavailable: list[dict] = []
        server.on_unavailable = unavailable.append  # the runtime writes it as a replay_unavailable event
        with capture_logs() as logs:
            await server._serve(parse_request(b'{"stream": "events", "from_seq": 2, "requested_by": "mes-sink-1"}'))
    finally:
        await buf.close()
    assert [orjson.loads(p)["seq"] for _, p in sent] == [4, 5]  # 2..5 asked (bounded to 4), 2..3 purged
    missing = next(e for e in logs if e["event"].startswith("replay: part of the range is not in the buffer"))
    assert (missing["not_available_from"], missing["not_available_to"]) == (2, 3)
    assert [(u["stream"], u["seq_first"], u["seq_last"], u["requested_by"]) for u in unavailable] == [
        ("events", 2, 3, "mes-sink-1")]
    requested = next(e for e in logs if e["event"] == "replay requested")
    assert requested["truncated"] and requested["serving_to"] == 5
