-- The SQLite store's statements, by name (loaded by queries.py, used by
-- sqlite_db.py). `?` parameters are positional; `?1`, `?2` numbered. Leases
-- (lease_until, workers.seen) are on the lease clock, everything else on the
-- wall clock. A job's lease belongs to one attempt: lease_token.

-- name: job_columns
j.message_id, j.rcpt_id, m.sender, j.address, j.mailbox, j.location, m.origin, j.queue,
j.attempts, j.created, j.first_attempt, m.size, m.warned, m.hop_count

-- name: claim_expired
-- Active jobs whose attempt's lease ran out (with no admin action waiting).
SELECT {job_columns} FROM jobs j JOIN messages m ON m.id = j.message_id
WHERE j.queue = ? AND j.state = 'active' AND j.lease_until < ? AND j.pending IS NULL
ORDER BY j.created, j.message_id, j.rcpt_id LIMIT ?

-- name: claim_incoming
SELECT {job_columns} FROM jobs j JOIN messages m ON m.id = j.message_id
WHERE j.queue = ? AND j.state = 'incoming' AND j.next_attempt IS NULL
ORDER BY j.created, j.message_id, j.rcpt_id LIMIT ?

-- name: claim_deferred
SELECT {job_columns} FROM jobs j JOIN messages m ON m.id = j.message_id
WHERE j.queue = ? AND j.state = 'deferred' AND j.next_attempt <= ?
ORDER BY j.next_attempt, j.created LIMIT ?

-- name: lease
UPDATE jobs SET state = 'active', lease_owner = ?, lease_token = ?, lease_until = ?, updated = ?
WHERE message_id = ? AND rcpt_id = ?

-- name: expired_pending
-- Active jobs of a queue whose attempt ended without an outcome while an admin
-- action waited for it: the action is applied instead of a new claim.
SELECT message_id, rcpt_id FROM jobs
WHERE queue = ? AND state = 'active' AND lease_until < ? AND pending IS NOT NULL
ORDER BY created, message_id, rcpt_id

-- name: renew
UPDATE jobs SET lease_until = max(lease_until, ?) WHERE message_id = ? AND rcpt_id = ?
AND state = 'active' AND lease_token = ? RETURNING pending

-- name: job_for_outcome
-- The row an outcome applies to: its state, whether this attempt holds it,
-- and the admin action waiting for the attempt.
SELECT state, lease_token = ?, pending, location, address FROM jobs
WHERE message_id = ? AND rcpt_id = ?

-- name: moved
UPDATE jobs SET location = ?, queue = ?, state = 'incoming', next_attempt = NULL,
lease_owner = NULL, lease_token = NULL, lease_until = NULL, pending = NULL, updated = ?
WHERE message_id = ? AND rcpt_id = ?

-- name: delivered
UPDATE jobs SET state = 'delivered', attempts = attempts + 1,
first_attempt = COALESCE(first_attempt, ?), next_attempt = NULL, relay = ?, last_reply = ?,
lease_owner = NULL, lease_token = NULL, lease_until = NULL, pending = NULL, updated = ?
WHERE message_id = ? AND rcpt_id = ?

-- name: deferred
UPDATE jobs SET state = 'deferred', attempts = attempts + 1,
first_attempt = COALESCE(first_attempt, ?), next_attempt = ?, relay = ?, last_reply = ?,
lease_owner = NULL, lease_token = NULL, lease_until = NULL, pending = NULL, updated = ?
WHERE message_id = ? AND rcpt_id = ?

-- name: bounced
UPDATE jobs SET state = 'bounced', attempts = attempts + 1,
first_attempt = COALESCE(first_attempt, ?), next_attempt = NULL, relay = ?, last_reply = ?,
lease_owner = NULL, lease_token = NULL, lease_until = NULL, pending = NULL, updated = ?
WHERE message_id = ? AND rcpt_id = ?

-- name: to_hold
UPDATE jobs SET state = 'hold', lease_owner = NULL, lease_token = NULL, lease_until = NULL,
pending = NULL, updated = ? WHERE message_id = ? AND rcpt_id = ?

-- name: to_router
UPDATE jobs SET queue = 'router', state = 'incoming', next_attempt = NULL, lease_owner = NULL,
lease_token = NULL, lease_until = NULL, pending = NULL, updated = ?
WHERE message_id = ? AND rcpt_id = ?

-- name: to_incoming
UPDATE jobs SET state = 'incoming', next_attempt = NULL, lease_owner = NULL,
lease_token = NULL, lease_until = NULL, pending = NULL, updated = ?
WHERE message_id = ? AND rcpt_id = ?

-- name: delete_job
DELETE FROM jobs WHERE message_id = ? AND rcpt_id = ?

-- name: admin_rows
-- Every recipient of a message that an admin action may touch.
SELECT rcpt_id, address, location, state, pending FROM jobs
WHERE message_id = ? AND state NOT IN ('delivered', 'bounced')

-- name: set_pending
UPDATE jobs SET pending = ? WHERE message_id = ? AND rcpt_id = ? AND state = 'active'

-- name: flush
UPDATE jobs SET next_attempt = ?, updated = ? WHERE message_id = ? AND rcpt_id = ?

-- name: lock_message
-- (A write transaction holds the whole file already.)
SELECT 1 FROM messages WHERE id = ?

-- name: drop_unused_message
DELETE FROM messages WHERE id = ?
AND NOT EXISTS (SELECT 1 FROM jobs WHERE message_id = messages.id)
AND NOT EXISTS (SELECT 1 FROM mailbox WHERE message_id = messages.id)
RETURNING content_file

-- name: names_file
SELECT 1 FROM messages WHERE id = ? AND content_file = ?

-- name: insert_message
INSERT INTO messages
(id, sender, size, created, location, origin, received_by, hop_count, content_file, content)
VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?)

-- name: insert_message_once
-- A report written again after a commit whose answer was lost: its id is taken.
{insert_message} ON CONFLICT (id) DO NOTHING RETURNING id

-- name: insert_job
INSERT INTO jobs (message_id, rcpt_id, address, mailbox, location, queue, state, created, updated)
VALUES (?, ?, ?, ?, ?, 'router', 'incoming', ?, ?)

-- name: insert_hop
INSERT INTO hops (message_id, rcpt_id, address, at, event, postoffice, detail)
VALUES (?, ?, ?, ?, ?, ?, ?)

-- name: insert_mailbox
INSERT INTO mailbox (mailbox, message_id, delivered) VALUES (?, ?, ?)

-- name: warn_once
UPDATE messages SET warned = 1 WHERE id = ? AND warned = 0 RETURNING id

-- name: queue_state
-- One page of the listing for one state: an ordered range of jobs_by_state
-- after the key (?, ?, ?), cut at LIMIT. A page is one statement (one
-- snapshot): these ranges joined by UNION ALL, then queue_merge.
SELECT * FROM (SELECT j.message_id, j.rcpt_id, m.sender, j.address, j.location, j.queue,
j.state, j.attempts, j.next_attempt, j.created, m.size, j.last_reply
FROM jobs j JOIN messages m ON m.id = j.message_id
WHERE j.state = ? AND (j.created, j.message_id, j.rcpt_id) > (?, ?, ?)
ORDER BY j.created, j.message_id, j.rcpt_id LIMIT ?)

-- name: queue_merge
ORDER BY 10, 1, 2 LIMIT ?

-- name: mailbox
SELECT b.entry_id, b.message_id, m.sender, b.delivered, m.size
FROM mailbox b JOIN messages m ON m.id = b.message_id
WHERE b.mailbox = ? ORDER BY b.entry_id

-- name: mailbox_content
SELECT m.content_file, m.content, m.size FROM mailbox b
JOIN messages m ON m.id = b.message_id WHERE b.mailbox = ? AND b.entry_id = ?

-- name: content
SELECT content_file, content, size FROM messages WHERE id = ?

-- name: hops
-- Ids follow commit order.
SELECT message_id, rcpt_id, address, at, event, postoffice, detail
FROM hops WHERE message_id = ? ORDER BY id

-- name: heartbeat
INSERT INTO workers (name, owner, seen) VALUES (?, ?, ?)
ON CONFLICT (name) DO UPDATE SET owner = excluded.owner, seen = excluded.seen

-- name: forget
DELETE FROM workers WHERE name = ? AND owner = ?

-- name: alive
SELECT name FROM workers WHERE seen >= ?

-- name: failover_rows
-- Jobs of a stopped gateway's queue to hand back, for messages of the given
-- origins (a JSON array): waiting ones, and active ones whose lease ran out
-- or whose owner (a JSON array) is gone: no heartbeat since ?5.
SELECT j.message_id, j.rcpt_id, j.address, j.location, j.pending FROM jobs j
WHERE j.queue = ?1 AND (j.state IN ('incoming', 'deferred')
    OR (j.state = 'active' AND (j.lease_until < ?2
        OR (j.lease_owner IN (SELECT value FROM json_each(?3))
            AND NOT EXISTS (SELECT 1 FROM workers w
                WHERE w.owner = j.lease_owner AND w.seen >= ?5)))))
AND j.message_id IN (SELECT id FROM messages WHERE origin IN (SELECT value FROM json_each(?4)))
ORDER BY j.created, j.message_id, j.rcpt_id

-- name: due
SELECT EXISTS (SELECT 1 FROM jobs WHERE queue = ?1 AND state = 'incoming')
OR EXISTS (SELECT 1 FROM jobs WHERE queue = ?1 AND state = 'deferred' AND next_attempt <= ?2)
OR EXISTS (SELECT 1 FROM jobs WHERE queue = ?1 AND state = 'active' AND lease_until < ?3)

-- name: owners
SELECT DISTINCT lease_owner FROM jobs
WHERE queue = ? AND state = 'active' AND lease_owner IS NOT NULL

-- name: owned_rows
SELECT message_id, rcpt_id, address, location, pending FROM jobs
WHERE queue = ? AND state = 'active' AND lease_owner = ?
ORDER BY created, message_id, rcpt_id

-- name: counts
SELECT state, count(*) FROM jobs GROUP BY state

-- name: pending
SELECT (SELECT count(*) FROM jobs WHERE queue = ?1 AND state IN ('incoming', 'active'))
+ (SELECT count(*) FROM jobs WHERE queue = ?1 AND state = 'deferred' AND next_attempt <= ?2)

-- name: purge_jobs
-- A job is changed after it is created: `created < ?1` keeps the range of
-- jobs_by_state read to the old jobs; then one chunk of them goes.
DELETE FROM jobs WHERE (message_id, rcpt_id) IN (SELECT message_id, rcpt_id
FROM jobs WHERE state IN ('delivered', 'bounced') AND created < ?1 AND updated < ?1
LIMIT ?2) RETURNING message_id

-- name: purge_hops
DELETE FROM hops WHERE id IN (SELECT id FROM hops WHERE at < ? LIMIT ?) RETURNING id

-- name: boot
SELECT boot_id FROM boot

-- name: new_boot
-- The lease clock restarted: every lease and heartbeat of the last boot is over.
UPDATE jobs SET lease_until = -1 WHERE state = 'active' AND lease_until IS NOT NULL;
UPDATE workers SET seen = -1;
UPDATE leaders SET until = -1;
DELETE FROM boot;
INSERT INTO boot (boot_id) VALUES (?)

-- name: lead
-- Take or keep a duty that one process of the network does (failover, purge):
-- a row per duty, held by its owner until its term ends on the lease clock.
INSERT INTO leaders (duty, owner, until) VALUES (?1, ?2, ?3)
ON CONFLICT (duty) DO UPDATE SET owner = excluded.owner, until = excluded.until
WHERE leaders.owner = excluded.owner OR leaders.until < ?4
RETURNING owner

-- name: resign
DELETE FROM leaders WHERE duty = ? AND owner = ?
