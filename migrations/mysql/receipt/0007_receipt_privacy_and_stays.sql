-- Reciprocal read privacy and membership as intervals.
--
-- receipt_privacy: each user's choice, for every group (gid 0) and per group
-- (a group's row overrides the user's default). A private member still moves
-- their own cursors, is counted in no one's receipts, and sees no one's reads.
--
-- receipt_cursors.private is the choice in force for that member in that
-- group, kept beside the cursors so an ack reads it with the row it locks.
-- receipt_cursors.shown_seq is how far others may see the member has read:
-- it follows read_seq while the member shares reads and stays put while they
-- are private. Counts, lists and read times are derived from it, and
-- shown_at_ms is when it last moved (a cursor-tier read time's bound).
--
-- receipt_stays: a member's earlier, closed stays in a group (they left and
-- joined again), each with how far others saw them read during it, so answers
-- for messages of an earlier stay stay exact after a rejoin.
CREATE TABLE receipt_privacy (
    uid            VARCHAR(64) NOT NULL,
    gid            BIGINT      NOT NULL,
    private        BOOLEAN     NOT NULL,
    updated_at_ms  BIGINT      NOT NULL,
    PRIMARY KEY (uid, gid)
) ENGINE = InnoDB DEFAULT CHARSET = utf8mb4 COLLATE = utf8mb4_bin;
CREATE TABLE receipt_stays (
    gid            BIGINT      NOT NULL,
    uid            VARCHAR(64) NOT NULL,
    joined_seq     BIGINT      NOT NULL,
    left_seq       BIGINT      NOT NULL,
    shown_seq      BIGINT      NOT NULL,
    shown_at_ms    BIGINT      NOT NULL,
    PRIMARY KEY (gid, uid, joined_seq),
    KEY receipt_stays_by_shown (gid, shown_seq)
) ENGINE = InnoDB DEFAULT CHARSET = utf8mb4 COLLATE = utf8mb4_bin;
ALTER TABLE receipt_cursors
    ADD COLUMN private BOOLEAN NOT NULL DEFAULT FALSE,
    ADD COLUMN shown_seq BIGINT NOT NULL DEFAULT 0,
    ADD COLUMN shown_at_ms BIGINT NOT NULL DEFAULT 0;
UPDATE receipt_cursors SET shown_seq = read_seq, shown_at_ms = updated_at_ms;
ALTER TABLE receipt_cursors
    ADD KEY receipt_cursors_by_shown (gid, shown_seq),
    DROP KEY receipt_cursors_by_read;
