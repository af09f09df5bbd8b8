-- linetap sink schema, version 2: the replays the sink asked agents for, and what came of them.
-- Append-only: one row per request sent (outcome `requested`, attempt 1, 2, ...) and one when a
-- range closes: `recovered` (it arrived), `covered` (a gap event of the agent names it: reported
-- lost at the source) or `unrecovered` (the agent said it no longer holds it, e.g. purged by
-- `buffer.retention`, or no answer after the last attempt; `detail` says which).
CREATE TABLE sink_replays (
    agent     TEXT NOT NULL,
    stream    TEXT NOT NULL,
    seq_first BIGINT NOT NULL,
    seq_last  BIGINT NOT NULL,
    outcome   TEXT NOT NULL,
    attempt   INTEGER NOT NULL,
    detail    TEXT NOT NULL,
    noted_at  TIMESTAMPTZ NOT NULL
);
CREATE INDEX sink_replays_stream ON sink_replays (agent, stream);

-- gap and replay_unavailable events are read by kind
CREATE INDEX events_kind ON events (kind);
