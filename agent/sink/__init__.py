"""The MES side of linetap: `linetap sink` (MQTT -> PostgreSQL or DuckDB, each record once, PUBACK after
the commit), `linetap audit` (completeness and chain integrity of what is held) and `linetap trace`
(the eDHR of one serial). Shares the payload schemas and the hash-chain verifier with the agent."""
