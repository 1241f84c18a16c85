-- The PostgreSQL store's statements, by name (loaded by queries.py, used by
-- sqldb.py through postgres_db.py): the same names and parameters as
-- sqlite.sql. `%s` parameters are positional; `%(pN)s` is the Nth parameter,
-- for statements that use one more than once. Leases (lease_until,
-- workers.seen, leaders.until) are on the database's clock (`lease_now`),
-- everything else on the wall clock of the host that wrote it. Claims and the
-- rows an outcome or an admin action changes are locked (FOR UPDATE): two
-- hosts never both take or change one job; SKIP LOCKED lets a claim pass over
-- what another claim holds.

-- name: schema_1
CREATE TABLE messages (
    id           text PRIMARY KEY,
    sender       text NOT NULL,
    size         bigint NOT NULL,
    created      float8 NOT NULL,
    location     text NOT NULL,
    origin       text NOT NULL,
    received_by  text NOT NULL,
    content_file text,  -- large content: its rows in chunks; content is empty
    content      bytea NOT NULL,
    warned       integer NOT NULL DEFAULT 0,
    hop_count    integer NOT NULL DEFAULT 0
);
CREATE TABLE chunks (
    message_id text NOT NULL REFERENCES messages(id) ON DELETE CASCADE,
    seq        integer NOT NULL,
    data       bytea NOT NULL,
    PRIMARY KEY (message_id, seq)
);
ALTER TABLE chunks ALTER COLUMN data SET STORAGE EXTERNAL;
CREATE TABLE jobs (
    message_id    text NOT NULL REFERENCES messages(id),
    rcpt_id       integer NOT NULL,
    address       text NOT NULL,
    mailbox       text,
    location      text NOT NULL,
    queue         text NOT NULL,
    state         text NOT NULL,
    attempts      integer NOT NULL DEFAULT 0,
    created       float8 NOT NULL,
    next_attempt  float8,
    first_attempt float8,
    lease_owner   text,
    lease_until   float8,
    lease_token   text,
    pending       text,
    last_reply    text NOT NULL DEFAULT '',
    relay         text NOT NULL DEFAULT '',
    updated       float8 NOT NULL,
    PRIMARY KEY (message_id, rcpt_id)
);
CREATE INDEX jobs_claim ON jobs (queue, state, next_attempt, created);
CREATE INDEX jobs_by_state ON jobs (state, created, message_id, rcpt_id);
CREATE TABLE mailbox (
    entry_id   bigserial PRIMARY KEY,
    mailbox    text NOT NULL,
    message_id text NOT NULL REFERENCES messages(id),
    delivered  float8 NOT NULL
);
CREATE INDEX mailbox_by_key ON mailbox (mailbox, entry_id);
CREATE INDEX mailbox_by_message ON mailbox (message_id);
CREATE TABLE hops (
    id         bigserial PRIMARY KEY,
    message_id text NOT NULL,
    rcpt_id    integer NOT NULL,
    address    text NOT NULL,
    at         float8 NOT NULL,
    event      text NOT NULL,
    postoffice text NOT NULL,
    detail     text NOT NULL DEFAULT ''
);
CREATE INDEX hops_by_message ON hops (message_id, id);
CREATE INDEX hops_by_time ON hops (at);
CREATE TABLE workers (name text PRIMARY KEY, owner text NOT NULL, seen float8 NOT NULL);
CREATE TABLE leaders (duty text PRIMARY KEY, owner text NOT NULL, until float8 NOT NULL);
CREATE TABLE gatepost_schema (version integer NOT NULL);
INSERT INTO gatepost_schema (version) VALUES (1)

-- name: schema_lock
SELECT pg_advisory_xact_lock(7305150514350325)

-- name: has_schema
-- From the catalog table itself: to_regclass answers from this session's cache,
-- which may not yet show a table that another session created while we waited.
SELECT EXISTS (SELECT 1 FROM pg_catalog.pg_class c
    JOIN pg_catalog.pg_namespace n ON n.oid = c.relnamespace
    WHERE c.relname = 'gatepost_schema' AND n.nspname = current_schema())

-- name: schema_version
SELECT version FROM gatepost_schema

-- name: lease_now
SELECT extract(epoch FROM clock_timestamp())::float8

-- name: notify
-- Delivered to every listener when the transaction commits (never before).
SELECT pg_notify(%s, queue) FROM unnest(%s::text[]) AS queue

-- name: job_columns
j.message_id, j.rcpt_id, m.sender, j.address, j.mailbox, j.location, m.origin, j.queue,
j.attempts, j.created, j.first_attempt, m.size, m.warned, m.hop_count

-- name: claim_expired
SELECT {job_columns} FROM jobs j JOIN messages m ON m.id = j.message_id
WHERE j.queue = %s AND j.state = 'active' AND j.lease_until < %s AND j.pending IS NULL
ORDER BY j.created, j.message_id, j.rcpt_id LIMIT %s FOR UPDATE OF j SKIP LOCKED

-- name: claim_incoming
SELECT {job_columns} FROM jobs j JOIN messages m ON m.id = j.message_id
WHERE j.queue = %s AND j.state = 'incoming' AND j.next_attempt IS NULL
ORDER BY j.created, j.message_id, j.rcpt_id LIMIT %s FOR UPDATE OF j SKIP LOCKED

-- name: claim_deferred
SELECT {job_columns} FROM jobs j JOIN messages m ON m.id = j.message_id
WHERE j.queue = %s AND j.state = 'deferred' AND j.next_attempt <= %s
ORDER BY j.next_attempt, j.created LIMIT %s FOR UPDATE OF j SKIP LOCKED

-- name: lease_all
-- A claim's jobs leased in one statement (sqlite.sql's lease, for many jobs).
UPDATE jobs j SET state = 'active', lease_owner = %s, lease_token = %s, lease_until = %s,
updated = %s FROM unnest(%s::text[], %s::integer[]) AS k(message_id, rcpt_id)
WHERE j.message_id = k.message_id AND j.rcpt_id = k.rcpt_id

-- name: expired_pending
SELECT message_id, rcpt_id FROM jobs
WHERE queue = %s AND state = 'active' AND lease_until < %s AND pending IS NOT NULL
ORDER BY created, message_id, rcpt_id FOR UPDATE SKIP LOCKED

-- name: renew_all
-- An attempt's renewal in one statement: sqlite.sql's renew, for all its jobs at once.
UPDATE jobs j SET lease_until = GREATEST(j.lease_until, %s)
FROM unnest(%s::text[], %s::integer[], %s::text[]) AS k(message_id, rcpt_id, token)
WHERE j.message_id = k.message_id AND j.rcpt_id = k.rcpt_id
AND j.state = 'active' AND j.lease_token = k.token
RETURNING j.message_id, j.rcpt_id, j.pending

-- name: job_for_outcome
SELECT state, lease_token = %s, pending, location, address FROM jobs
WHERE message_id = %s AND rcpt_id = %s FOR UPDATE

-- name: jobs_for_outcomes
-- job_for_outcome for many jobs in one statement, each with its own token.
SELECT j.message_id, j.rcpt_id, j.state, j.lease_token = k.token, j.pending, j.location,
j.address FROM jobs j
JOIN unnest(%s::text[], %s::integer[], %s::text[]) AS k(message_id, rcpt_id, token)
ON j.message_id = k.message_id AND j.rcpt_id = k.rcpt_id
ORDER BY j.message_id, j.rcpt_id FOR UPDATE OF j

-- name: moved
UPDATE jobs SET location = %s, queue = %s, state = 'incoming', next_attempt = NULL,
lease_owner = NULL, lease_token = NULL, lease_until = NULL, pending = NULL, updated = %s
WHERE message_id = %s AND rcpt_id = %s

-- name: delivered
UPDATE jobs SET state = 'delivered', attempts = attempts + 1,
first_attempt = COALESCE(first_attempt, %s), next_attempt = NULL, relay = %s, last_reply = %s,
lease_owner = NULL, lease_token = NULL, lease_until = NULL, pending = NULL, updated = %s
WHERE message_id = %s AND rcpt_id = %s

-- name: deferred
UPDATE jobs SET state = 'deferred', attempts = attempts + 1,
first_attempt = COALESCE(first_attempt, %s), next_attempt = %s, relay = %s, last_reply = %s,
lease_owner = NULL, lease_token = NULL, lease_until = NULL, pending = NULL, updated = %s
WHERE message_id = %s AND rcpt_id = %s

-- name: bounced
UPDATE jobs SET state = 'bounced', attempts = attempts + 1,
first_attempt = COALESCE(first_attempt, %s), next_attempt = NULL, relay = %s, last_reply = %s,
lease_owner = NULL, lease_token = NULL, lease_until = NULL, pending = NULL, updated = %s
WHERE message_id = %s AND rcpt_id = %s

-- name: to_hold
UPDATE jobs SET state = 'hold', lease_owner = NULL, lease_token = NULL, lease_until = NULL,
pending = NULL, updated = %s WHERE message_id = %s AND rcpt_id = %s

-- name: to_router
UPDATE jobs SET queue = 'router', state = 'incoming', next_attempt = NULL, lease_owner = NULL,
lease_token = NULL, lease_until = NULL, pending = NULL, updated = %s
WHERE message_id = %s AND rcpt_id = %s

-- name: to_incoming
UPDATE jobs SET state = 'incoming', next_attempt = NULL, lease_owner = NULL,
lease_token = NULL, lease_until = NULL, pending = NULL, updated = %s
WHERE message_id = %s AND rcpt_id = %s

-- name: delete_job
DELETE FROM jobs WHERE message_id = %s AND rcpt_id = %s

-- name: admin_rows
SELECT rcpt_id, address, location, state, pending FROM jobs
WHERE message_id = %s AND state NOT IN ('delivered', 'bounced')
ORDER BY rcpt_id FOR UPDATE

-- name: set_pending
UPDATE jobs SET pending = %s WHERE message_id = %s AND rcpt_id = %s AND state = 'active'

-- name: flush
UPDATE jobs SET next_attempt = %s, updated = %s WHERE message_id = %s AND rcpt_id = %s

-- name: lock_message
-- Before deciding whether nothing refers to it any more: a transaction that
-- removed another reference meanwhile is waited for, and the next statement sees it.
SELECT 1 FROM messages WHERE id = %s FOR UPDATE

-- name: drop_unused_message
-- Its chunks go with it (ON DELETE CASCADE): no file to remove.
DELETE FROM messages WHERE id = %s
AND NOT EXISTS (SELECT 1 FROM jobs WHERE message_id = messages.id)
AND NOT EXISTS (SELECT 1 FROM mailbox WHERE message_id = messages.id)
RETURNING NULL::text

-- name: insert_message
INSERT INTO messages
(id, sender, size, created, location, origin, received_by, hop_count, content_file, content)
VALUES (%s, %s, %s, %s, %s, %s, %s, %s, %s, %s)

-- name: insert_chunk
INSERT INTO chunks (message_id, seq, data) VALUES (%s, %s, %s)

-- name: chunks
SELECT seq, data FROM chunks WHERE message_id = %s AND seq >= %s ORDER BY seq LIMIT %s

-- name: insert_message_once
-- A report written again after a commit whose answer was lost: its id is taken.
{insert_message} ON CONFLICT (id) DO NOTHING RETURNING id

-- name: insert_job
INSERT INTO jobs (message_id, rcpt_id, address, mailbox, location, queue, state, created, updated)
VALUES (%s, %s, %s, %s, %s, 'router', 'incoming', %s, %s)

-- name: insert_hops
-- A transaction's trace rows in one statement, one array per column.
INSERT INTO hops (message_id, rcpt_id, address, at, event, postoffice, detail)
SELECT * FROM unnest(%s::text[], %s::integer[], %s::text[], %s::float8[], %s::text[],
    %s::text[], %s::text[])

-- name: insert_mailbox
INSERT INTO mailbox (mailbox, message_id, delivered) VALUES (%s, %s, %s)

-- name: warn_once
UPDATE messages SET warned = 1 WHERE id = %s AND warned = 0 RETURNING id

-- name: queue_state
SELECT * FROM (SELECT j.message_id, j.rcpt_id, m.sender, j.address, j.location, j.queue,
j.state, j.attempts, j.next_attempt, j.created, m.size, j.last_reply
FROM jobs j JOIN messages m ON m.id = j.message_id
WHERE j.state = %s AND (j.created, j.message_id, j.rcpt_id) > (%s::float8, %s::text, %s::integer)
ORDER BY j.created, j.message_id, j.rcpt_id LIMIT %s) AS page

-- name: queue_merge
ORDER BY 10, 1, 2 LIMIT %s

-- name: mailbox
SELECT b.entry_id, b.message_id, m.sender, b.delivered, m.size
FROM mailbox b JOIN messages m ON m.id = b.message_id
WHERE b.mailbox = %s ORDER BY b.entry_id

-- name: mailbox_content
SELECT m.content_file, m.content, m.size, m.id FROM mailbox b
JOIN messages m ON m.id = b.message_id WHERE b.mailbox = %s AND b.entry_id = %s

-- name: content
SELECT content_file, content, size, id FROM messages WHERE id = %s

-- name: hops
SELECT message_id, rcpt_id, address, at, event, postoffice, detail
FROM hops WHERE message_id = %s ORDER BY id

-- name: heartbeat
INSERT INTO workers (name, owner, seen) VALUES (%s, %s, %s)
ON CONFLICT (name) DO UPDATE SET owner = excluded.owner, seen = excluded.seen

-- name: forget
DELETE FROM workers WHERE name = %s AND owner = %s

-- name: alive
SELECT name FROM workers WHERE seen >= %s

-- name: lead
INSERT INTO leaders (duty, owner, until) VALUES (%(p1)s, %(p2)s, %(p3)s)
ON CONFLICT (duty) DO UPDATE SET owner = excluded.owner, until = excluded.until
WHERE leaders.owner = excluded.owner OR leaders.until < %(p4)s
RETURNING owner

-- name: resign
DELETE FROM leaders WHERE duty = %s AND owner = %s

-- name: failover_rows
SELECT j.message_id, j.rcpt_id, j.address, j.location, j.pending FROM jobs j
WHERE j.queue = %(p1)s AND (j.state IN ('incoming', 'deferred')
    OR (j.state = 'active' AND (j.lease_until < %(p2)s
        OR (j.lease_owner = ANY(%(p3)s::text[])
            AND NOT EXISTS (SELECT 1 FROM workers w
                WHERE w.owner = j.lease_owner AND w.seen >= %(p5)s)))))
AND j.message_id IN (SELECT id FROM messages WHERE origin = ANY(%(p4)s::text[]))
ORDER BY j.created, j.message_id, j.rcpt_id FOR UPDATE OF j SKIP LOCKED

-- name: due
SELECT EXISTS (SELECT 1 FROM jobs WHERE queue = %(p1)s AND state = 'incoming')
OR EXISTS (SELECT 1 FROM jobs WHERE queue = %(p1)s AND state = 'deferred'
    AND next_attempt <= %(p2)s)
OR EXISTS (SELECT 1 FROM jobs WHERE queue = %(p1)s AND state = 'active'
    AND lease_until < %(p3)s)

-- name: owners
SELECT DISTINCT lease_owner FROM jobs
WHERE queue = %s AND state = 'active' AND lease_owner IS NOT NULL

-- name: owned_rows
SELECT message_id, rcpt_id, address, location, pending FROM jobs
WHERE queue = %s AND state = 'active' AND lease_owner = %s
ORDER BY created, message_id, rcpt_id FOR UPDATE

-- name: counts
SELECT state, count(*) FROM jobs GROUP BY state

-- name: pending
SELECT (SELECT count(*) FROM jobs WHERE queue = %(p1)s AND state IN ('incoming', 'active'))
+ (SELECT count(*) FROM jobs WHERE queue = %(p1)s AND state = 'deferred'
    AND next_attempt <= %(p2)s)

-- name: purge_jobs
DELETE FROM jobs WHERE (message_id, rcpt_id) IN (SELECT message_id, rcpt_id
FROM jobs WHERE state IN ('delivered', 'bounced') AND created < %(p1)s AND updated < %(p1)s
LIMIT %(p2)s) RETURNING message_id

-- name: purge_hops
DELETE FROM hops WHERE id IN (SELECT id FROM hops WHERE at < %s LIMIT %s) RETURNING id

-- name: damaged
-- Messages whose content is not all there: at most five, for `check`.
SELECT m.id FROM messages m
LEFT JOIN (SELECT message_id, sum(length(data)) AS n FROM chunks GROUP BY message_id) c
ON c.message_id = m.id
WHERE CASE WHEN m.content_file IS NULL THEN length(m.content) <> m.size
    ELSE COALESCE(c.n, 0) <> m.size END
LIMIT 5
