-- linetap sink schema, version 1. The same SQL runs on PostgreSQL and DuckDB.
-- Every stream table is unique on (agent, seq): a record delivered twice (at-least-once MQTT,
-- several sinks on a shared subscription) is stored once.
-- `body` is the record's JSON body as received (text, so the hash chain recomputes exactly;
-- PostgreSQL: `body::jsonb` to query into it). `recorded_at` (µs since the epoch) is hashed too.

CREATE TABLE units (
    agent          TEXT NOT NULL,
    seq            BIGINT NOT NULL,
    id             TEXT NOT NULL,
    serial         TEXT,
    station        TEXT,
    device         TEXT,
    operator       TEXT,
    lot            TEXT,
    started_at     TIMESTAMPTZ,
    ended_at       TIMESTAMPTZ,
    cycle_time     DOUBLE PRECISION,
    verdict        TEXT,
    config_version TEXT,
    recorded_at    BIGINT NOT NULL,
    body           TEXT NOT NULL,
    prev_hash      TEXT NOT NULL,
    hash           TEXT NOT NULL,
    received_at    TIMESTAMPTZ NOT NULL,
    PRIMARY KEY (agent, seq)
);
CREATE INDEX units_serial ON units (serial);

CREATE TABLE events (
    agent       TEXT NOT NULL,
    seq         BIGINT NOT NULL,
    id          TEXT NOT NULL,
    kind        TEXT,
    serial      TEXT,
    station     TEXT,
    ts          TIMESTAMPTZ,
    recorded_at BIGINT NOT NULL,
    body        TEXT NOT NULL,
    prev_hash   TEXT NOT NULL,
    hash        TEXT NOT NULL,
    received_at TIMESTAMPTZ NOT NULL,
    PRIMARY KEY (agent, seq)
);
CREATE INDEX events_serial ON events (serial);

-- one row per sample; `value` is the JSON text of the value as the agent sent it
-- (integers stay integers, booleans booleans, "NaN" a string)
CREATE TABLE telemetry (
    agent     TEXT NOT NULL,
    seq       BIGINT NOT NULL,
    device    TEXT NOT NULL,
    station   TEXT,
    tag       TEXT NOT NULL,
    value     TEXT,
    quality   TEXT NOT NULL,
    reason    TEXT,
    source_ts TIMESTAMPTZ,
    agent_ts  TIMESTAMPTZ NOT NULL,
    PRIMARY KEY (agent, seq)
);

-- what the sink found wrong while storing: duplicate_differs (a second delivery of a seq with
-- other content: the first one is kept), chain_break (a link that does not verify)
CREATE TABLE sink_problems (
    agent   TEXT NOT NULL,
    stream  TEXT NOT NULL,
    seq     BIGINT NOT NULL,
    kind    TEXT NOT NULL,
    detail  TEXT NOT NULL,
    seen_at TIMESTAMPTZ NOT NULL
);

-- completeness bookkeeping per (agent, stream), refreshed by the sink as records land:
-- the seq ranges held (JSON [[first, last], ...]) and the seqs missing in between
CREATE TABLE sink_streams (
    agent      TEXT NOT NULL,
    stream     TEXT NOT NULL,
    seq_first  BIGINT NOT NULL,
    seq_last   BIGINT NOT NULL,
    held       BIGINT NOT NULL,
    missing    BIGINT NOT NULL,
    ranges     TEXT NOT NULL,
    updated_at TIMESTAMPTZ NOT NULL,
    PRIMARY KEY (agent, stream)
);
