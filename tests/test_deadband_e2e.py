"""Report by exception through the whole agent: the Modbus simulator (a hand-driven model clock) read by two
real agents at once, deadband off and on; their buffers compared with each other and with the model's truth."""

from __future__ import annotations

import asyncio
import contextlib
import time

import duckdb
import numpy as np
import orjson
from agent_helpers import line_config, modbus_device, running_agent
from fixtures_sim import ModelClock

from linetap.agent.deadband import POLLS_TAG
from linetap.simulators import STATION_TAGS, ModbusStationServer, StationModel

T_BAND = 0.5  # degC, absolute
P_BAND = 5.0  # percent of the last sent pressure
SILENCE = 1.0  # s
POLL = 0.02  # s
STATION = {"name": "sealer1", "device": "sealer1", "serial": {"tag": "serial"}, "operator": {"tag": "operator"},
           "start": {"tag": "cycle_active", "on": "rising"},
           "parameters": [{"name": "t_max", "tag": "temperature", "reduce": "max"},
                          {"name": "t_min", "tag": "temperature", "reduce": "min"},
                          {"name": "p_max", "tag": "pressure", "reduce": "max"},
                          {"name": "dwell", "tag": "dwell", "reduce": "end"}]}
TRUTH_FIELDS = {"temperature": "temperature", "pressure": "pressure", "dwell": "dwell", "serial": "serial",
                "operator": "operator", "cycle_active": "cycle_active", "unit_count": "unit_count"}


def _tags(rbe: bool) -> list[dict]:
    if not rbe:
        return STATION_TAGS
    out = []
    for t in STATION_TAGS:
        if t["name"] == "temperature":
            t = {**t, "deadband": {"absolute": T_BAND}}
        elif t["name"] == "pressure":
            t = {**t, "deadband": {"percent": P_BAND}}
        out.append(t)
    return out


def _telemetry(path) -> list[tuple]:
    with contextlib.closing(duckdb.connect(str(path), read_only=True)) as con:
        return con.execute("SELECT seq, tag, num, text, quality, agent_ts FROM telemetry ORDER BY seq").fetchall()


def _units(path) -> list[dict]:
    with contextlib.closing(duckdb.connect(f"{path}.records", read_only=True)) as con:
        return [orjson.loads(b) for (b,) in con.execute("SELECT body FROM units ORDER BY seq").fetchall()]


def _value(row):
    return row[3] if row[3] is not None else row[2]


async def test_deadband_on_and_off_against_the_simulators_truth(tmp_path, broker):
    model = StationModel(seed=5, cycle_time=2.0, idle_time=0.5, out_of_limit_share=0.2, keep_units=100)
    clock = ModelClock(0.0)
    cfgs = {}
    for rbe in (False, True):
        folder = tmp_path / ("on" if rbe else "off")
        folder.mkdir()
        device = modbus_device(0, tags=_tags(rbe), poll_interval=f"{POLL * 1000:g}ms",
                               **({"max_silence": f"{SILENCE:g}s"} if rbe else {}))
        cfgs[rbe] = (folder / "buffer.duckdb", device)
    truth: list[dict] = []  # the served values at each model step
    done: list[int] = []  # when each step had been polled, us
    async with ModbusStationServer(model, port=0, clock=clock) as sim:
        agents_cfg = []
        for rbe, (path, device) in cfgs.items():
            device["port"] = sim.port
            agents_cfg.append(line_config(tmp_path, broker, [device], stations=[STATION],
                                          agent={"id": f"line-{'on' if rbe else 'off'}"},
                                          buffer={"path": str(path)}))
        async with running_agent(agents_cfg[0]) as off, running_agent(agents_cfg[1]) as on:
            agents = (off, on)

            async def polled_twice() -> None:
                before = [a.stats.devices["sealer1"].batches for a in agents]
                while any(a.stats.devices["sealer1"].batches < b + 2 for a, b in zip(agents, before, strict=True)):
                    await asyncio.sleep(0.005)

            await polled_twice()
            snap = sim.snapshot()
            truth.append({k: getattr(snap, v) for k, v in TRUTH_FIELDS.items()})
            done.append(time.time_ns() // 1000)
            t = 0.0
            while model.unit_count < 4:  # model steps of 50 ms, every one seen by both agents
                t += 0.05
                clock.t = t
                snap = sim.snapshot()
                truth.append({k: getattr(snap, v) for k, v in TRUTH_FIELDS.items()})
                await asyncio.wait_for(polled_twice(), 10)
                done.append(time.time_ns() // 1000)  # both agents polled this step (twice) before this
            await asyncio.sleep(SILENCE * 1.5)  # values held: max_silence must resend them
    # the agents have stopped: their poll counts are final
    polls = {rbe: a.stats.devices["sealer1"].batches for rbe, a in zip((False, True), agents, strict=True)}

    rows_off, rows_on = _telemetry(cfgs[False][0]), _telemetry(cfgs[True][0])
    n_tags = len(STATION_TAGS)
    # Off: every poll is there, seqs contiguous.
    assert [r[0] for r in rows_off] == list(range(1, len(rows_off) + 1))
    assert len(rows_off) == polls[False] * n_tags
    # On: fewer samples, seqs still contiguous (filtered samples take no seq), one $polls per poll, counting up.
    assert [r[0] for r in rows_on] == list(range(1, len(rows_on) + 1))
    counter = [int(r[2]) for r in rows_on if r[1] == POLLS_TAG]
    assert counter == list(range(1, polls[True] + 1))
    data_on = [r for r in rows_on if r[1] != POLLS_TAG]
    assert len(data_on) < 0.5 * len(rows_off), (len(data_on), len(rows_off))

    def series(rows, tag):
        return [(r[5], _value(r)) for r in rows if r[1] == tag]

    # Off saw every served value (the truth's distinct values, in order, for each tag).
    for tag in TRUTH_FIELDS:
        seen = [v for _, v in series(rows_off, tag)]
        values = [s[tag] for s in truth]
        served = [v for k, v in enumerate(values) if k == 0 or v != values[k - 1]]
        distinct = [v for k, v in enumerate(seen) if k == 0 or v != seen[k - 1]]
        assert _close(distinct, served), tag

    # On: every change beyond the deadband is there; the value held at the MES never strays from the truth
    # by more than the deadband (at every model step, after that step's polls); any change for the rest.
    # A sample carries its poll's start time: a poll sent just before a step's `done` time and answered
    # after the next step holds that next step's value (a loaded machine makes this happen), so the held
    # value may match step k or k + 1.
    def near(held: list, served: list, ok) -> list:
        return [(k, h, served[k]) for k, h in enumerate(held)
                if not (ok(h, served[k]) or (k + 1 < len(served) and ok(h, served[k + 1])))]

    for tag in TRUTH_FIELDS:
        on = series(rows_on, tag)
        sent = [v for _, v in on]
        served = [s[tag] for s in truth]
        held = _held(on, done)
        if tag == "temperature":
            assert not near(held, served, lambda h, s: abs(h - s) <= T_BAND + 1e-3), tag
        elif tag == "pressure":
            assert not near(held, served, lambda h, s: abs(h - s) <= P_BAND / 100 * abs(h) + 1e-5), tag
        else:
            assert not near(held, served, lambda h, s: _close([h], [s])), tag
            changes = [v for k, v in enumerate(served) if k == 0 or v != served[k - 1]]
            distinct = [v for k, v in enumerate(sent) if k == 0 or v != sent[k - 1]]
            assert _close(distinct, changes), tag
    # max_silence: no tag is silent longer than max_silence plus the longest time between two polls (a
    # resend goes with the first poll after the silence; a loaded machine stretches the polls, not the rule)
    poll_gap = max(np.diff([r[5] for r in rows_on if r[1] == POLLS_TAG]))
    for tag in (t["name"] for t in STATION_TAGS):
        ts = [a for a, _ in series(rows_on, tag)]
        assert len(ts) >= 2 and max(np.diff(ts)) <= SILENCE * 1e6 + poll_gap + 1000, (tag, poll_gap)
    assert any(max(np.diff([a for a, _ in series(rows_on, t)])) >= SILENCE * 1e6 * 0.9
               for t in ("dwell", "setpoint", "rejects")), "a held tag was re-sent by max_silence"

    # Unit capture saw every poll either way: the same units with the same parameters, as the model made them.
    units_off, units_on = _units(cfgs[False][0]), _units(cfgs[True][0])
    assert len(units_off) >= 3
    params = [[(u["serial"], sorted((p["name"], p["value"]) for p in u["parameters"])) for u in units]
              for units in (units_off, units_on)]
    assert params[0] == params[1]
    made = {u.serial: u for u in model.completed_units}
    for u in units_off:
        if u["serial"] in made and not u.get("started_before_agent"):
            p = {x["name"]: x["value"] for x in u["parameters"]}
            assert abs(p["p_max"] - made[u["serial"]].pressure) < 1e-5
            assert abs(p["dwell"] - made[u["serial"]].dwell) < 1e-5


def _held(sent: list[tuple[int, object]], done: list[int]) -> list:
    """The value the MES holds at each of the `done` times: the last sample sent at or before it."""
    ts = np.array([a for a, _ in sent])
    return [sent[int(np.searchsorted(ts, d, side="right")) - 1][1] for d in done]


def _close(a: list, b: list) -> bool:
    if len(a) != len(b):
        return False
    return all(abs(x - y) <= 1e-4 * max(1.0, abs(y)) if isinstance(y, float) and not isinstance(x, str)
               else x == y for x, y in zip(a, b, strict=True))
