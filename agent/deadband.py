"""Report by exception: which polled samples go to the telemetry buffer (config: `deadband:`, `max_silence:`).

The filter runs in `Agent._produce` after the unit capture has seen the whole batch and before the
telemetry writer gets it, so unit records and events see every poll and only telemetry is thinned.
Filtered samples never reach the buffer, hence take no seq: the MES sees no gap for them.

State per (device, tag): the last *sent* value, vtype, quality, reason and time. A sample passes when
- it is the tag's first sample, or the tag has no rule (neither the tag nor its device sets one);
- its quality changed, or its bad/uncertain reason changed;
- its value moved: |v - last sent| > absolute, or > percent/100 * |last sent| (any change for
  bool, bit and text tags and for a rule without deadband); a value appearing or vanishing, a
  change of type, NaN <-> number and a change between +-Infinity and anything else all count as
  moves; NaN after NaN does not;
- the tag has sent nothing for max_silence (`agent_ts - last sent >= max_silence`).

"Unchanged" vs "lost" at the MES: every batch of a filtered device (every poll) carries one extra
sample, tag `$polls` (a name no configured tag can have), value the device's poll count since the
agent started, quality good. So the MES sees the device polled (and how often) while its tags hold
still; a tag that does not appear held its last value through those polls; lost data is a seq gap
(or a gap event) as always; and each tag is re-sent at least every max_silence. The payload schema is
unchanged (`$polls` is one more sample of the device), and the sample is in the same batch as the
poll's other samples, so message boundaries stay a function of the rows.

Vectorised: numpy over the batch's columns; per-sample Python work only for text values (a few per
device) and when a batch's tag list is not the driver's shared `TagNames` (a lost device's all-bad batch).
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from linetap.config.devices.exception import TagException
from linetap.drivers.samples import Quality, SampleBatch, ValueColumns, VType

POLLS_TAG = "$polls"
_NEVER = np.iinfo(np.int64).min // 2  # "never sent": far enough back that any max_silence has passed
_NO_SILENCE = np.iinfo(np.int64).max // 4


class DeviceFilter:
    """The report-by-exception state of one device: arrays indexed by tag (config order, plus one
    slot for a tag the config does not know, which always passes)."""

    def __init__(self, device: str, tags: Sequence[str], rules: dict[str, TagException]) -> None:
        self.device = device
        self.polls = 0
        self.index = {name: i for i, name in enumerate(tags)}
        n = len(tags) + 1  # + the unknown-tag slot
        self.always = np.ones(n, dtype=bool)
        self.absolute = np.zeros(n)  # 0: any change
        self.percent = np.full(n, np.nan)  # fraction of |last sent|; NaN: absolute applies
        self.silence_us = np.full(n, _NO_SILENCE, dtype=np.int64)
        for name, rule in rules.items():
            i = self.index[name]
            self.always[i] = False
            if rule.absolute is not None:
                self.absolute[i] = rule.absolute
            if rule.percent is not None:
                self.percent[i] = rule.percent / 100.0
            self.silence_us[i] = round(rule.max_silence * 1e6)
        self.last_num = np.full(n, np.nan)
        self.last_present = np.zeros(n, dtype=bool)
        self.last_vtype = np.zeros(n, dtype=np.uint8)
        self.last_quality = np.full(n, -1, dtype=np.int16)
        self.last_reason = np.full(n, None, dtype=object)
        self.last_text = np.full(n, None, dtype=object)
        self.last_sent = np.full(n, _NEVER, dtype=np.int64)
        self._tags_ref: object = None  # the tag sequence `_idx` was computed for (identity)
        self._idx = np.zeros(0, dtype=np.intp)
        self._tag_obj = np.zeros(0, dtype=object)

    def _indexes(self, tags: Sequence[str]) -> tuple[np.ndarray, np.ndarray]:
        if tags is not self._tags_ref:  # once per driver (its TagNames), or per all-bad batch
            unknown = len(self.index)
            self._idx = np.fromiter((self.index.get(t, unknown) for t in tags), dtype=np.intp, count=len(tags))
            self._tag_obj = np.array(list(tags) + [None], dtype=object)[:-1]
            self._tags_ref = tags
        return self._idx, self._tag_obj

    def apply(self, batch: SampleBatch) -> SampleBatch:
        """The samples of `batch` that pass, plus the `$polls` sample."""
        self.polls += 1
        idx, tag_obj = self._indexes(batch.tag)
        num, vtype, missing, text = _columns(batch)
        n = len(idx)
        now = batch.agent_ts
        quality = np.asarray(batch.quality, dtype=np.int16)
        present = np.ones(n, dtype=bool) if missing is None else ~missing
        if text:
            present[list(text)] = True

        passes = self.always[idx] | (now - self.last_sent[idx] >= self.silence_us[idx])
        passes |= quality != self.last_quality[idx]
        not_good = quality != Quality.GOOD
        reason = None
        if not_good.any():  # same bad quality, another reason: passes
            reason = np.array([*batch.reason, None], dtype=object)[:-1]
            passes |= not_good & (reason != self.last_reason[idx])

        last = self.last_num[idx]
        with np.errstate(invalid="ignore", over="ignore"):
            limit = np.where(np.isnan(self.percent[idx]), self.absolute[idx], self.percent[idx] * np.abs(last))
            moved = np.abs(num - last) > limit
            same = (num == last) | (np.isnan(num) & np.isnan(last))
            moved = np.where(same, False, moved | ~np.isfinite(num) | ~np.isfinite(last))
        was_present = self.last_present[idx]
        # a value that appeared or vanished moved; with no value now and none before, nothing did
        moved = (moved & present & was_present) | (present != was_present)
        moved |= present & (vtype != self.last_vtype[idx])
        if text:
            pos = np.fromiter(text, dtype=np.intp, count=len(text))
            values = np.array([*text.values(), None], dtype=object)[:-1]
            moved[pos] = (vtype[pos] != self.last_vtype[idx[pos]]) | (values != self.last_text[idx[pos]])
        passes |= moved

        # what passes is the new "last sent"
        sent = idx[passes]
        self.last_num[sent] = num[passes]
        self.last_present[sent] = present[passes]
        self.last_vtype[sent] = vtype[passes]
        self.last_quality[sent] = quality[passes]
        self.last_reason[sent] = None if reason is None else reason[passes]
        self.last_sent[sent] = now
        if text:
            keep = passes[pos]
            self.last_text[idx[pos[keep]]] = values[keep]
        return self._output(batch, passes, tag_obj, num, vtype, missing, text, quality, reason)

    def _output(self, batch: SampleBatch, passes: np.ndarray, tag_obj: np.ndarray, num: np.ndarray,
                vtype: np.ndarray, missing: np.ndarray | None, text: dict[int, str | int] | None,
                quality: np.ndarray, reason: np.ndarray | None) -> SampleBatch:
        k = int(passes.sum())
        new_text = None
        if text:
            pos = np.fromiter(text, dtype=np.intp, count=len(text))
            new_pos = np.cumsum(passes) - 1
            new_text = {int(new_pos[p]): text[p] for p in pos[passes[pos]].tolist()} or None
        out_missing = None if missing is None else np.append(missing[passes], False)
        return SampleBatch(
            device=batch.device,
            tag=[*tag_obj[passes].tolist(), POLLS_TAG],
            value=ValueColumns(np.append(num[passes], float(self.polls)),
                               np.append(vtype[passes], np.uint8(VType.INT)).astype(np.uint8),
                               out_missing, new_text),
            quality=[*quality[passes].tolist(), int(Quality.GOOD)],
            reason=[None] * (k + 1) if reason is None else [*reason[passes].tolist(), None],
            agent_ts=batch.agent_ts,
            source_ts=None if batch.source_ts is None else
            [*np.array([*batch.source_ts, None], dtype=object)[:-1][passes].tolist(), None],
        )


def _columns(batch: SampleBatch) -> tuple[np.ndarray, np.ndarray, np.ndarray | None, dict[int, str | int] | None]:
    """num (float64), vtype (uint8), missing (None: none) and text (position -> value) of a batch."""
    v = batch.value
    if isinstance(v, ValueColumns):
        return np.asarray(v.num, dtype=np.float64), np.asarray(v.vtype, dtype=np.uint8), v.missing, v.text
    table = batch.to_arrow()  # Python values (all-bad batches, tests): the columns the buffer would store
    num_col, text_col = table.column("num"), table.column("text")
    num = num_col.to_numpy()  # nulls as NaN
    has_text = ~text_col.is_null().to_numpy(zero_copy_only=False)
    missing = num_col.is_null().to_numpy(zero_copy_only=False) & ~has_text
    texts = text_col.to_numpy(zero_copy_only=False)
    text = {int(i): texts[i] for i in np.flatnonzero(has_text).tolist()} or None
    return (num, table.column("vtype").to_numpy(zero_copy_only=False).astype(np.uint8),
            missing if missing.any() else None, text)


class ExceptionFilter:
    """Report by exception for a line: one `DeviceFilter` per device that has a rule; other devices'
    batches pass as they are (no `$polls` sample either)."""

    def __init__(self, devices: Sequence[object]) -> None:
        self.devices: dict[str, DeviceFilter] = {}
        for device in devices:
            rules_of = getattr(device, "exception_rules", None)
            rules = rules_of() if rules_of is not None else None
            if rules:
                self.devices[device.name] = DeviceFilter(device.name, [t.name for t in device.tags], rules)
        self.offered = 0  # samples of filtered devices seen
        self.passed = 0  # of those, sent (the `$polls` samples not counted)

    def apply(self, batch: SampleBatch) -> SampleBatch:
        f = self.devices.get(batch.device)
        if f is None:
            return batch
        out = f.apply(batch)
        self.offered += len(batch)
        self.passed += len(out) - 1
        return out
