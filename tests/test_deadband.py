"""Report by exception (linetap.agent.deadband): which samples of a poll go to the telemetry buffer."""

from __future__ import annotations

import math

import numpy as np
import pytest

from linetap.agent.deadband import POLLS_TAG, DeviceFilter, ExceptionFilter
from linetap.config.devices.exception import TagException
from linetap.config.models import LineConfig
from linetap.drivers.samples import Quality, SampleBatch, TagNames, ValueColumns, VType

S = 1_000_000  # us per second
TAGS = TagNames(("t", "p", "s", "b", "free"))
RULES = {
    "t": TagException(True, 0.5, None, 10.0),  # absolute 0.5, max_silence 10s
    "p": TagException(True, None, 10.0, 10.0),  # 10 % of the last sent value
    "s": TagException(False, None, None, 10.0),  # text: any change
    "b": TagException(False, None, None, 10.0),  # bool: any change
}


def poll(ts_s: float, t: float, p: float, s: str, b: bool, free: float = 1.0, quality=None, reason=None):
    num = np.array([t, p, 0.0, float(b), free])
    vtype = np.array([VType.FLOAT32, VType.FLOAT64, VType.TEXT, VType.BOOL, VType.FLOAT64], dtype=np.uint8)
    return SampleBatch("d", TAGS, ValueColumns(num, vtype, None, {2: s}), quality or [0] * 5,
                       reason or [None] * 5, int(ts_s * S))


def sent(out: SampleBatch) -> dict[str, object]:
    assert out.tag[-1] == POLLS_TAG
    return dict(zip(out.tag[:-1], list(out.value)[:-1], strict=True))


@pytest.fixture
def f() -> DeviceFilter:
    return DeviceFilter("d", TAGS, RULES)


def test_first_sample_always_passes_and_polls_are_counted(f) -> None:
    out = f.apply(poll(0, 180.0, 5.0, "A1", False))
    assert sent(out) == {"t": 180.0, "p": 5.0, "s": "A1", "b": False, "free": 1.0}
    assert out.value[-1] == 1 and out.quality[-1] == Quality.GOOD
    out = f.apply(poll(1, 180.0, 5.0, "A1", False))
    assert sent(out) == {"free": 1.0}  # a tag without rule: every sample
    assert out.value[-1] == 2


def test_absolute_is_against_the_last_sent_value_not_the_last_read(f) -> None:
    f.apply(poll(0, 180.0, 5.0, "A", False))
    assert "t" not in sent(f.apply(poll(1, 180.4, 5.0, "A", False)))
    assert "t" not in sent(f.apply(poll(2, 180.5, 5.0, "A", False)))  # not > 0.5
    assert "t" not in sent(f.apply(poll(3, 179.6, 5.0, "A", False)))
    # creeping by 0.4 per poll: the third step is 0.6 from the last sent 180.0... still compared to 180.0
    assert sent(f.apply(poll(4, 180.6, 5.0, "A", False)))["t"] == pytest.approx(180.6)
    assert "t" not in sent(f.apply(poll(5, 181.0, 5.0, "A", False)))  # 0.4 from 180.6
    assert "t" in sent(f.apply(poll(6, 180.0, 5.0, "A", False)))  # down by 0.6


def test_percent_is_of_the_last_sent_magnitude(f) -> None:
    f.apply(poll(0, 180.0, 5.0, "A", False))
    assert "p" not in sent(f.apply(poll(1, 180.0, 5.5, "A", False)))  # 10 % of 5.0 = 0.5, not more
    assert sent(f.apply(poll(2, 180.0, 4.4, "A", False)))["p"] == 4.4
    assert "p" not in sent(f.apply(poll(3, 180.0, 4.8, "A", False)))  # 0.4 < 0.44
    f.apply(poll(4, 180.0, 0.0, "A", False))  # 4.4 -> 0: moved
    assert "p" in sent(f.apply(poll(5, 180.0, 1e-9, "A", False)))  # from 0, any change passes


def test_text_and_bool_pass_on_any_change(f) -> None:
    f.apply(poll(0, 180.0, 5.0, "A", False))
    assert sent(f.apply(poll(1, 180.0, 5.0, "B", False))) == {"s": "B", "free": 1.0}
    assert sent(f.apply(poll(2, 180.0, 5.0, "B", True))) == {"b": True, "free": 1.0}
    assert sent(f.apply(poll(3, 180.0, 5.0, "B", True))) == {"free": 1.0}


def test_max_silence_resends_an_unmoved_tag(f) -> None:
    f.apply(poll(0, 180.0, 5.0, "A", False))
    assert "t" not in sent(f.apply(poll(9.9, 180.0, 5.0, "A", False)))
    assert set(sent(f.apply(poll(10, 180.0, 5.0, "A", False)))) == {"t", "p", "s", "b", "free"}
    assert "t" not in sent(f.apply(poll(19, 180.2, 5.0, "A", False)))
    assert "t" in sent(f.apply(poll(20, 180.2, 5.0, "A", False)))  # counted from the last send


def test_quality_and_reason_changes_always_pass(f) -> None:
    f.apply(poll(0, 180.0, 5.0, "A", False))
    q = [0, Quality.UNCERTAIN, 0, 0, 0]
    out = f.apply(poll(1, 180.0, 5.0, "A", False, quality=q, reason=[None, "over range", None, None, None]))
    assert sent(out) == {"p": 5.0, "free": 1.0} and out.reason[0] == "over range"
    same = poll(2, 180.0, 5.0, "A", False, quality=q, reason=[None, "over range", None, None, None])
    assert "p" not in sent(f.apply(same))
    other = poll(3, 180.0, 5.0, "A", False, quality=q, reason=[None, "wire break", None, None, None])
    assert "p" in sent(f.apply(other))
    assert "p" in sent(f.apply(poll(4, 180.0, 5.0, "A", False)))  # back to good


def test_a_lost_device_all_bad_batch_passes_then_holds(f) -> None:
    f.apply(poll(0, 180.0, 5.0, "A", False))
    bad = SampleBatch.all_bad("d", list(TAGS), "connection lost", agent_ts=1 * S)
    out = f.apply(bad)
    assert out.tag[:-1] == list(TAGS) and list(out.value)[:-1] == [None] * 5
    assert out.quality[:-1] == [Quality.BAD] * 5 and out.reason[:-1] == ["connection lost"] * 5
    again = f.apply(SampleBatch.all_bad("d", list(TAGS), "connection lost", agent_ts=2 * S))
    assert again.tag[:-1] == ["free"]
    back = f.apply(poll(3, 180.0, 5.0, "A", False))
    assert set(sent(back)) == {"t", "p", "s", "b", "free"}


def test_nan_and_infinity(f) -> None:
    f.apply(poll(0, 180.0, 5.0, "A", False))
    assert math.isnan(sent(f.apply(poll(1, math.nan, 5.0, "A", False)))["t"])  # number -> NaN: a change
    assert "t" not in sent(f.apply(poll(2, math.nan, 5.0, "A", False)))  # NaN again: unchanged
    assert sent(f.apply(poll(3, 180.0, 5.0, "A", False)))["t"] == 180.0  # NaN -> number
    assert sent(f.apply(poll(4, 180.0, math.inf, "A", False)))["p"] == math.inf
    assert "p" not in sent(f.apply(poll(5, 180.0, math.inf, "A", False)))
    assert sent(f.apply(poll(6, 180.0, -math.inf, "A", False)))["p"] == -math.inf
    assert sent(f.apply(poll(7, 180.0, 1e300, "A", False)))["p"] == 1e300


def test_the_output_stores_like_the_input() -> None:
    """Passed samples keep their types in the buffer's columns (float32, text, bool), $polls is an int."""
    f = DeviceFilter("d", TAGS, {"t": RULES["t"]})
    table = f.apply(poll(0, 180.25, 5.0, "A1", True)).to_arrow()
    assert table.column("tag").to_pylist() == [*TAGS, POLLS_TAG]
    assert table.column("vtype").to_pylist() == [VType.FLOAT32, VType.FLOAT64, VType.TEXT, VType.BOOL,
                                                 VType.FLOAT64, VType.INT]
    assert table.column("text").to_pylist()[2] == "A1"
    table = f.apply(poll(1, 180.0, 5.0, "A2", True)).to_arrow()
    assert table.column("tag").to_pylist() == ["p", "s", "b", "free", POLLS_TAG]
    assert table.column("text").to_pylist() == [None, "A2", None, None, None]
    assert table.column("num").to_pylist()[-1] == 2


def test_only_devices_with_a_rule_are_filtered() -> None:
    def device(name: str, **extra):
        return {"protocol": "modbus", "name": name, "host": "h", "addressing": "zero_based",
                "tags": [{"name": "x", "address": 0, "type": "float32"}], **extra}
    cfg = LineConfig.model_validate({
        "agent": {"id": "a", "enterprise": "e", "site": "s", "area": "a", "line": "l"},
        "devices": [device("plain"), device("rbe", deadband={"absolute": 1})]})
    filt = ExceptionFilter(cfg.devices)
    plain = SampleBatch("plain", ["x"], [1.0], [0], [None], 1)
    assert filt.apply(plain) is plain
    rbe = SampleBatch("rbe", ["x"], [1.0], [0], [None], 1)
    assert filt.apply(rbe).tag == ["x", POLLS_TAG]
    assert filt.apply(SampleBatch("rbe", ["x"], [1.5], [0], [None], 2)).tag == [POLLS_TAG]
    assert (filt.offered, filt.passed) == (2, 1)
