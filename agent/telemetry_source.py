"""Where the forwarder's next telemetry message comes from: the rows a commit just offered, or a
read of the buffer.

When the forwarder is caught up, the writer's fresh commit is turned into messages from memory,
instead of reading back what was just written (measured: the read was ~10% of the agent's CPU at
300k samples/s). They are the rows a read would return, and a commit ends at the buffer's head,
where a read ends too, so the messages (ids and content) are the same either way
(`json_envelope.message_spans`). Whatever does not continue exactly where the forwarder is comes
from the buffer, as always: the buffer stays the one source of truth.
"""

from __future__ import annotations

from collections import deque
from typing import Any

import numpy as np
import pyarrow as pa

from linetap.agent.encoders import Encoder, TelemetryRows

OFFERED_COMMITS = 4  # commits held for the forwarder at most; one behind that far reads the buffer


class TelemetrySource:
    def __init__(self, buffer: Any, encoder: Encoder, chunk_rows: int) -> None:
        self.buffer = buffer
        self.encoder = encoder
        self.chunk_rows = chunk_rows  # rows per buffer read, at most
        self._rows: TelemetryRows | None = None  # rows prepared, not all turned into messages yet
        self._spans: deque[tuple[int, int]] = deque()
        self._offered: deque[tuple[int, pa.Table]] = deque(maxlen=OFFERED_COMMITS)  # (first seq, rows)

    def offer(self, first: int, table: pa.Table) -> None:
        """Rows the writer just committed (TELEMETRY_SCHEMA), with seqs from `first` on."""
        self._offered.append((first, table))

    @property
    def has_messages(self) -> bool:
        return bool(self._spans)

    async def load(self, after: int) -> bool:
        """Prepare the rows after seq `after` for messages: offered ones, else a read of the buffer
        (ending on a bucket end or at the head). False when there are none."""
        table = self._offered_after(after)
        if table is None:
            if await self.buffer.last_seq("telemetry") <= after:
                return False
            table = await self.buffer.read_telemetry(after, self.chunk_rows, self.encoder.batch)
            if table.num_rows == 0:
                return False
        self._rows = self.encoder.telemetry_rows(table)
        self._spans = deque(self._rows.spans)
        return True

    def next_message(self, sent_at: int) -> tuple[int, int, str, bytes]:
        """(first seq, last seq, topic, payload) of the next message of the rows loaded."""
        start, end = self._spans.popleft()
        rows = self._rows
        topic, payload = self.encoder.telemetry(rows, start, end, sent_at)
        if not self._spans:
            self._rows = None
        return rows.seq[start], rows.seq[end - 1], topic, payload

    def _offered_after(self, after: int) -> pa.Table | None:
        while self._offered:
            first, table = self._offered.popleft()
            if first == after + 1:
                return table.add_column(0, "seq", pa.array(np.arange(first, first + table.num_rows, dtype=np.int64)))
            if first > after + 1:  # the rows in between are in the buffer only: read them first
                self._offered.appendleft((first, table))
                return None
        return None
