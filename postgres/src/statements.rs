//! Statement text: the per-table protocol ([`Statements`]) and the
//! connection-level statements both backends run.

use crate::TableName;

/// `(extract(epoch FROM expr) * 1000000)::int8`: a timestamp as epoch µs.
fn us(expr: &str) -> String {
    format!("(extract(epoch FROM {expr}) * 1000000)::int8")
}

fn lease_cols(alias: &str) -> String {
    format!(
        "{a}.holder AS holder, {a}.term AS term, {a}.backend_pid AS backend_pid, \
         {} AS acquired_us, {} AS renewed_us, {} AS until_us",
        us(&format!("{alias}.acquired_at")),
        us(&format!("{alias}.renewed_at")),
        us(&format!("{alias}.lease_until")),
        a = alias,
    )
}

/// `try_lock` mode: call `pg_try_advisory_lock`.
pub const MODE_TRY: i16 = 0;
/// `try_lock` mode: the session already holds this key for this role;
/// report granted without locking again (advisory locks are re-entrant).
pub const MODE_ALREADY_HELD: i16 = 1;
/// `try_lock` mode: do not try (the key is held, or tried in this batch,
/// for another role whose key collides); report not granted.
pub const MODE_SKIP: i16 = 2;

/// `preempt` result: the holder's backend was terminated.
pub const PREEMPT_TERMINATED: &str = "terminated";
/// `preempt` result: the row or lock no longer describes that zombie.
pub const PREEMPT_NOT_ZOMBIE: &str = "not_zombie";
/// `preempt` result: the backend exists but could not be signalled.
pub const PREEMPT_NOT_PERMITTED: &str = "not_permitted";

/// Every statement of the protocol for one lease table. Parameters are
/// listed per field; results are described by column name.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Statements {
    /// `$1 ns text, $2 roles text[], $3 ns_keys int4[], $4 role_keys int4[],
    /// $5 modes int2[]` ([`MODE_TRY`], ...) → one row per role in input
    /// order: `role, granted bool,` lease columns, `db_now_us`. Empty
    /// input → no rows (use [`Statements::now`]).
    pub try_lock: String,
    /// `$1 ns, $2 role, $3 holder text, $4 lease_us int8, $5 incarnation
    /// text` → one row: `new_term int8,` the previous row's lease columns (NULL if none),
    /// `db_now_us`. Locks the row `FOR UPDATE NOWAIT` first: while a fenced
    /// transaction (`FOR KEY SHARE`) is in flight the claim fails at once
    /// with SQLSTATE `55P03` instead of waiting on the shared session (the
    /// engine reports it as retryable [`BackendError::Busy`](regent_core::BackendError::Busy)).
    pub claim: String,
    /// `$1 ns, $2 holder, $3 roles text[], $4 terms int8[], $5 lease_us,
    /// $6 incarnation` → one row: `renewed text[], db_now_us`. Extends only
    /// rows naming this holder, incarnation, term and the session's own
    /// backend pid.
    pub renew: String,
    /// `$1 ns, $2 role, $3 holder, $4 term int8, $5 incarnation` → no rows.
    /// Ends the lease now if holder, incarnation and term match. Both modes.
    pub expire: String,
    /// no parameters → `pid int4`: the session's `pg_backend_pid()`, the
    /// round trip of lock validation (see [`held_roles`](crate::held_roles)
    /// for why no `pg_locks` scan is needed).
    pub session_pid: String,
    /// `$1 ns_key int4, $2 role_key int4` → `unlocked bool`.
    pub unlock: String,
    /// Release in one round trip: `$1 ns, $2 role, $3 holder, $4 term int8
    /// or NULL (do not expire), $5 ns_key int4, $6 role_key int4, $7 channel
    /// text, $8 floor_us int8 or NULL, $9 incarnation` → one row: `expired
    /// int8` (rows expired), `unlocked bool`, `notified int8` (0 or 1).
    /// Ends the lease if holder and term match — now, or at `floor_us` if
    /// that is later (the end of the lease a claim replaced) — *then*
    /// unlocks (the unlock reads the expiry's result), then, only when a
    /// term is given (this node claimed one), queues the release
    /// notification, which PostgreSQL delivers at commit: after the lock is
    /// free and the expiry visible, as DESIGN §2 rule 5 requires. A lock
    /// held for an instant without a claim is not announced.
    pub release: String,
    /// `$1 ns, $2 roles text[]` → at least one row: `db_now_us, role,`
    /// lease columns; `role` is NULL in the single row when nothing matched.
    pub read: String,
    /// `$1 ns text or NULL for all` → `namespace, role,` lease columns.
    pub list: String,
    /// `$1 ns, $2 role, $3 holder, $4 term int8, $5 pid int4, $6 grace_us
    /// int8, $7 ns_key int4, $8 role_key int4` → `outcome text`
    /// ([`PREEMPT_TERMINATED`], ...). Terminates only if the row still names
    /// that holder, term and pid, `lease_until + grace < now()`, and that pid
    /// still holds the role's advisory lock (so a reused pid is never hit).
    pub preempt: String,
    /// `$1 application_name text` → `ended int8`: terminates the backends
    /// that carry exactly this fenced-transaction name (see
    /// [`fenced_application_name`](crate::fenced_application_name)), run
    /// after the holder they belong to was deposed, so its open fenced work
    /// no longer holds the lease row against the next claim.
    pub end_fenced: String,
    /// `$1 ns, $2 role` → `holder, term` with the row locked `FOR KEY
    /// SHARE`: a takeover's claim (`FOR UPDATE`) conflicts with it, the
    /// leader's own renewal (`FOR NO KEY UPDATE`) does not.
    pub fenced: String,
    /// no parameters → `db_now_us`.
    pub now: String,
    /// `$1 qualified table name text` → `present bool, current bool`:
    /// whether the table exists, and whether it has every column this
    /// version needs (else [`upgrade_statements`](crate::upgrade_statements)).
    pub table_exists: String,
    /// Lease mode's `try_lock`: `$1 ns, $2 roles text[], $3 incarnation` →
    /// one row per role in input order: `role, granted bool,` lease
    /// columns, `db_now_us`. `granted` says a claim could succeed now: no
    /// row, a lease ended in database time, or a row this incarnation
    /// claimed (the claim also checks the holder). Takes no lock and
    /// changes nothing.
    pub lease_try_lock: String,
    /// Lease mode's claim, the compare-and-set: `$1 ns, $2 role, $3 holder,
    /// $4 lease_us, $5 incarnation` → one row: `new_term int8` (`NULL` when
    /// the row was not free: another node claimed first), the previous
    /// row's lease columns, `db_now_us`. Writes term + 1, holder,
    /// incarnation, `backend_pid = NULL` and a lease from `now()` only if
    /// the row is missing, its lease has ended (`lease_until <= now()`), or
    /// it is this holder's and incarnation's own. Locks the row `FOR UPDATE
    /// NOWAIT` first, like the session claim: a fenced transaction in
    /// flight, or a concurrent claim, makes it fail at once with `55P03`
    /// (retryable busy). Two inserts of a missing row serialise on the
    /// primary key; the second finds the first's lease unexpired.
    pub lease_claim: String,
    /// Lease mode's validation: `$1 ns, $2 roles text[], $3 holders
    /// text[], $4 terms int8[], $5 incarnation` → one row: `held text[]`.
    /// A role with term 0 (granted, not claimed yet) is held while a claim
    /// could succeed (no row, lease ended, or this incarnation's own); any
    /// other while its row names that holder, term and this incarnation.
    pub lease_held: String,
    /// Lease mode's renewal: as [`Statements::renew`] without the backend
    /// pid (there is no session): `$1 ns, $2 holder, $3 roles text[], $4
    /// terms int8[], $5 lease_us, $6 incarnation` → `renewed text[],
    /// db_now_us`.
    pub lease_renew: String,
    /// `$1 channel text, $2 payload text` → one row (`pg_notify`).
    pub notify: String,
    /// `$1 key int8` → one row; `pg_advisory_xact_lock` for migrations.
    pub migrate_lock: String,
}

const CURRENT_DB: &str = "(SELECT oid FROM pg_database WHERE datname = current_database())";

impl Statements {
    /// The statements for `table`.
    pub fn new(table: &TableName) -> Self {
        let t = table.qualified();
        let now_us = us("now()");
        let try_lock = format!(
            "SELECT r.role AS role, \
             CASE r.mode WHEN {MODE_TRY} THEN pg_try_advisory_lock(r.k1, r.k2) \
             WHEN {MODE_ALREADY_HELD} THEN true ELSE false END AS granted, {}, {now_us} AS db_now_us \
             FROM unnest($2::text[], $3::int4[], $4::int4[], $5::int2[]) \
             WITH ORDINALITY AS r(role, k1, k2, mode, ord) \
             LEFT JOIN {t} AS l ON l.namespace = $1::text AND l.role = r.role \
             ORDER BY r.ord",
            lease_cols("l")
        );
        let claim = format!(
            "WITH prev AS (\
             SELECT holder, term, backend_pid, acquired_at, renewed_at, lease_until \
             FROM {t} WHERE namespace = $1::text AND role = $2::text FOR UPDATE NOWAIT), \
             claimed AS (\
             INSERT INTO {t} AS l \
             (namespace, role, holder, term, backend_pid, acquired_at, renewed_at, lease_until, \
             incarnation) \
             SELECT $1::text, $2::text, $3::text, coalesce((SELECT term FROM prev), 0) + 1, \
             pg_backend_pid(), now(), now(), now() + $4::int8 * interval '1 microsecond', $5::text \
             ON CONFLICT (namespace, role) DO UPDATE SET holder = excluded.holder, \
             term = l.term + 1, backend_pid = excluded.backend_pid, \
             acquired_at = excluded.acquired_at, renewed_at = excluded.renewed_at, \
             lease_until = excluded.lease_until, incarnation = excluded.incarnation \
             RETURNING l.term) \
             SELECT c.term AS new_term, {}, {now_us} AS db_now_us \
             FROM claimed AS c LEFT JOIN prev AS p ON true",
            lease_cols("p")
        );
        // Lease mode: the same claim with the compare-and-set in its
        // `WHERE`, no backend pid, and a row even when nothing was claimed.
        let free = "(l.lease_until <= now() OR (l.holder = excluded.holder \
             AND l.incarnation = excluded.incarnation))";
        let lease_claim = format!(
            "WITH prev AS (\
             SELECT holder, term, backend_pid, acquired_at, renewed_at, lease_until \
             FROM {t} WHERE namespace = $1::text AND role = $2::text FOR UPDATE NOWAIT), \
             claimed AS (\
             INSERT INTO {t} AS l \
             (namespace, role, holder, term, backend_pid, acquired_at, renewed_at, lease_until, \
             incarnation) \
             SELECT $1::text, $2::text, $3::text, coalesce((SELECT term FROM prev), 0) + 1, \
             NULL, now(), now(), now() + $4::int8 * interval '1 microsecond', $5::text \
             ON CONFLICT (namespace, role) DO UPDATE SET holder = excluded.holder, \
             term = l.term + 1, backend_pid = NULL, \
             acquired_at = excluded.acquired_at, renewed_at = excluded.renewed_at, \
             lease_until = excluded.lease_until, incarnation = excluded.incarnation \
             WHERE {free} \
             RETURNING l.term) \
             SELECT c.term AS new_term, {}, {now_us} AS db_now_us \
             FROM (VALUES (1)) AS one(x) LEFT JOIN claimed AS c ON true LEFT JOIN prev AS p ON true",
            lease_cols("p")
        );
        let lease_try_lock = format!(
            "SELECT r.role AS role, \
             (l.holder IS NULL OR l.lease_until <= now() OR l.incarnation = $3::text) \
             AS granted, \
             {}, {now_us} AS db_now_us \
             FROM unnest($2::text[]) WITH ORDINALITY AS r(role, ord) \
             LEFT JOIN {t} AS l ON l.namespace = $1::text AND l.role = r.role \
             ORDER BY r.ord",
            lease_cols("l")
        );
        let lease_held = format!(
            "SELECT coalesce(array_agg(r.role ORDER BY r.ord), ARRAY[]::text[]) AS held \
             FROM unnest($2::text[], $3::text[], $4::int8[]) WITH ORDINALITY \
             AS r(role, holder, term, ord) \
             LEFT JOIN {t} AS l ON l.namespace = $1::text AND l.role = r.role \
             WHERE CASE WHEN r.term = 0 \
             THEN (l.holder IS NULL OR l.lease_until <= now() OR l.incarnation = $5::text) \
             ELSE (l.holder = r.holder AND l.term = r.term AND l.incarnation = $5::text) END"
        );
        let lease_renew = format!(
            "WITH renewed AS (\
             UPDATE {t} AS l SET renewed_at = now(), \
             lease_until = now() + $5::int8 * interval '1 microsecond' \
             FROM unnest($3::text[], $4::int8[]) AS r(role, term) \
             WHERE l.namespace = $1::text AND l.holder = $2::text AND l.role = r.role \
             AND l.term = r.term AND l.incarnation = $6::text \
             RETURNING l.role) \
             SELECT coalesce(array_agg(role), ARRAY[]::text[]) AS renewed, {now_us} AS db_now_us \
             FROM renewed"
        );
        let renew = format!(
            "WITH renewed AS (\
             UPDATE {t} AS l SET renewed_at = now(), \
             lease_until = now() + $5::int8 * interval '1 microsecond' \
             FROM unnest($3::text[], $4::int8[]) AS r(role, term) \
             WHERE l.namespace = $1::text AND l.holder = $2::text AND l.role = r.role \
             AND l.term = r.term AND l.backend_pid = pg_backend_pid() \
             AND l.incarnation = $6::text \
             RETURNING l.role) \
             SELECT coalesce(array_agg(role), ARRAY[]::text[]) AS renewed, {now_us} AS db_now_us \
             FROM renewed"
        );
        let expire = format!(
            "UPDATE {t} SET lease_until = least(lease_until, now()) \
             WHERE namespace = $1::text AND role = $2::text AND holder = $3::text \
             AND term = $4::int8 AND incarnation = $5::text"
        );
        let release = format!(
            "WITH expired AS (\
             UPDATE {t} SET lease_until = least(lease_until, greatest(now(), \
             'epoch'::timestamptz + $8::int8 * interval '1 microsecond')) \
             WHERE namespace = $1::text AND role = $2::text AND holder = $3::text \
             AND term = $4::int8 AND incarnation = $9::text RETURNING 1), \
             done AS (SELECT count(*) AS n FROM expired) \
             SELECT d.n AS expired, pg_advisory_unlock($5::int4, $6::int4) AS unlocked, \
             (SELECT count(*) FROM (SELECT pg_notify($7::text, $2::text) \
             WHERE $4::int8 IS NOT NULL) AS n) AS notified FROM done AS d"
        );
        let read = format!(
            "SELECT {now_us} AS db_now_us, l.role AS role, {} \
             FROM (VALUES (1)) AS one(x) \
             LEFT JOIN {t} AS l ON l.namespace = $1::text AND l.role = ANY($2::text[]) \
             ORDER BY l.role",
            lease_cols("l")
        );
        let list = format!(
            "SELECT l.namespace AS namespace, l.role AS role, {} FROM {t} AS l \
             WHERE $1::text IS NULL OR l.namespace = $1::text ORDER BY l.namespace, l.role",
            lease_cols("l")
        );
        let preempt = format!(
            "SELECT CASE \
             WHEN NOT EXISTS (SELECT 1 FROM {t} WHERE namespace = $1::text AND role = $2::text \
             AND holder = $3::text AND term = $4::int8 AND backend_pid = $5::int4 \
             AND lease_until + $6::int8 * interval '1 microsecond' < now()) \
             THEN '{PREEMPT_NOT_ZOMBIE}' \
             WHEN NOT EXISTS (SELECT 1 FROM pg_locks WHERE pid = $5::int4 \
             AND locktype = 'advisory' AND database = {CURRENT_DB} AND objsubid = 2 \
             AND granted AND classid = ($7::int4::int8 & 4294967295)::oid \
             AND objid = ($8::int4::int8 & 4294967295)::oid) \
             THEN '{PREEMPT_NOT_ZOMBIE}' \
             WHEN pg_terminate_backend($5::int4) THEN '{PREEMPT_TERMINATED}' \
             WHEN EXISTS (SELECT 1 FROM pg_stat_activity WHERE pid = $5::int4) \
             THEN '{PREEMPT_NOT_PERMITTED}' \
             ELSE '{PREEMPT_NOT_ZOMBIE}' END AS outcome"
        );
        let fenced = format!(
            "SELECT holder, term FROM {t} WHERE namespace = $1::text AND role = $2::text \
             FOR KEY SHARE"
        );
        let end_fenced = "SELECT count(*) FILTER (WHERE pg_terminate_backend(pid)) AS ended \
             FROM pg_stat_activity WHERE application_name = $1::text \
             AND datname = current_database() AND pid <> pg_backend_pid()"
            .to_owned();
        Self {
            end_fenced,
            try_lock,
            claim,
            renew,
            expire,
            session_pid: "SELECT pg_backend_pid() AS pid".to_owned(),
            release,
            unlock: "SELECT pg_advisory_unlock($1::int4, $2::int4) AS unlocked".to_owned(),
            read,
            list,
            preempt,
            fenced,
            now: format!("SELECT {now_us} AS db_now_us"),
            table_exists: "SELECT to_regclass($1::text) IS NOT NULL AS present, \
                 EXISTS (SELECT 1 FROM pg_attribute WHERE attrelid = to_regclass($1::text) \
                 AND attname = 'incarnation' AND NOT attisdropped) AS current"
                .to_owned(),
            lease_try_lock,
            lease_claim,
            lease_held,
            lease_renew,
            notify: "SELECT pg_notify($1::text, $2::text)".to_owned(),
            migrate_lock: "SELECT pg_advisory_xact_lock($1::int8)".to_owned(),
        }
    }
}

/// The migration's checks, for the simple query protocol (no parameters,
/// no prepared statement, so it is safe through a transaction pooler):
/// takes `pg_advisory_xact_lock(key)` and returns one row `present,
/// current` (as [`Statements::table_exists`]) for `table`. The table name
/// is validated (ASCII letters, digits, `_`), so it needs no escaping
/// inside the string literal.
pub fn migrate_check(table: &crate::TableName, key: i64) -> String {
    let q = table.qualified();
    format!(
        "SELECT pg_advisory_xact_lock({key}); \
         SELECT to_regclass('{q}') IS NOT NULL AS present, \
         EXISTS (SELECT 1 FROM pg_attribute WHERE attrelid = to_regclass('{q}') \
         AND attname = 'incarnation' AND NOT attisdropped) AS current"
    )
}

/// `pg_backend_pid()` of the connection, as one `int4` column `pid`. Used for
/// the transaction-pooling check at session start (two round trips of it,
/// simple protocol; see
/// [`transaction_pooling_error`](super::transaction_pooling_error)).
pub const BACKEND_PID: &str = "SELECT pg_backend_pid() AS pid";

/// Starts the probe's transaction and reads its `pg_backend_pid()` (one
/// `int4` column `pid`), in one simple-protocol round trip; the transaction
/// stays open until [`ROLLBACK`]. See
/// [`pooler_probe_error`](super::pooler_probe_error).
pub const PROBE_BEGIN: &str = "BEGIN; SELECT pg_backend_pid() AS pid";

/// Starts a fenced transaction (for a backend whose fenced transaction owns
/// its pooled connection and so runs the transaction control statements
/// itself).
pub const BEGIN: &str = "BEGIN";
/// Commits a fenced transaction.
pub const COMMIT: &str = "COMMIT";
/// Abandons a fenced transaction.
pub const ROLLBACK: &str = "ROLLBACK";

/// `LISTEN "<channel>"`, the channel quoted as an identifier (embedded `"`
/// doubled). Channel names come from [`notify_channel`](super::notify_channel)
/// and are at most 63 bytes. (sqlx's `PgListener` issues `LISTEN` itself;
/// tokio-postgres has no listener type, so that backend runs this.)
pub fn listen(channel: &str) -> String {
    format!("LISTEN \"{}\"", channel.replace('"', "\"\""))
}

/// `SET name = value;` for each setting (values are integers in server
/// units, so they need no quoting), for sessions that apply their settings
/// with `SET` commands instead of startup options.
pub fn set_commands(gucs: &[(&'static str, String)]) -> String {
    gucs.iter()
        .map(|(k, v)| format!("SET {k} = {v};"))
        .collect()
}

/// `SET LOCAL name = value;` for each setting (integers in server units),
/// run right after `BEGIN`: the settings last until the transaction ends.
/// A fenced transaction runs it with
/// [`Settings::fenced_gucs`](super::Settings::fenced_gucs).
pub fn set_local_commands(gucs: &[(&'static str, String)]) -> String {
    gucs.iter()
        .map(|(k, v)| format!("SET LOCAL {k} = {v};"))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ownership_includes_the_incarnation() {
        let s = Statements::new(&TableName::default());
        // Session mode writes it and checks it wherever ownership decides.
        assert!(s.claim.contains("incarnation = excluded.incarnation"));
        assert!(s.claim.contains("$5::text"));
        assert!(s.renew.contains("l.incarnation = $6::text"));
        assert!(s.renew.contains("l.backend_pid = pg_backend_pid()"));
        assert!(
            s.expire
                .ends_with("AND term = $4::int8 AND incarnation = $5::text")
        );
        assert!(s.release.contains("AND incarnation = $9::text"));
        assert!(s.table_exists.contains("attname = 'incarnation'"));
    }

    #[test]
    fn lease_mode_statements_take_no_lock_and_compare_and_set() {
        let s = Statements::new(&TableName::new("ops", "leases").unwrap());
        let lease = [
            &s.lease_try_lock,
            &s.lease_claim,
            &s.lease_held,
            &s.lease_renew,
        ];
        for sql in lease.iter().chain([&&s.expire, &&s.read, &&s.now]) {
            assert!(!sql.contains("advisory"), "no advisory lock: {sql}");
            assert!(
                !sql.contains("pg_backend_pid"),
                "no session identity: {sql}"
            );
            assert!(!sql.contains(';'), "one statement: {sql}");
        }
        for sql in lease {
            assert!(sql.contains(r#""ops"."leases""#), "{sql}");
        }
        // The claim: only when the lease ended in database time, or it is
        // this holder's and incarnation's own; never waits on a row lock.
        assert!(s.lease_claim.contains(
            "WHERE (l.lease_until <= now() OR (l.holder = excluded.holder \
             AND l.incarnation = excluded.incarnation))"
        ));
        assert!(s.lease_claim.contains("FOR UPDATE NOWAIT"));
        assert!(
            s.lease_claim
                .contains("term = l.term + 1, backend_pid = NULL")
        );
        // A row even when the compare-and-set claimed nothing.
        assert!(
            s.lease_claim
                .contains("FROM (VALUES (1)) AS one(x) LEFT JOIN claimed")
        );
        assert!(
            s.lease_try_lock.contains(
                "(l.holder IS NULL OR l.lease_until <= now() OR l.incarnation = $3::text)"
            )
        );
        assert!(
            s.lease_held
                .contains("l.holder = r.holder AND l.term = r.term AND l.incarnation = $5::text")
        );
        assert!(
            s.lease_renew
                .contains("AND l.term = r.term AND l.incarnation = $6::text")
        );
    }

    #[test]
    fn migrate_check_is_one_simple_script() {
        let m = migrate_check(&TableName::new("ops", "t").unwrap(), 42);
        assert!(
            m.starts_with("SELECT pg_advisory_xact_lock(42); SELECT to_regclass('\"ops\".\"t\"')")
        );
        assert!(m.contains("attname = 'incarnation'") && !m.contains('$'));
    }

    #[test]
    fn listen_quotes_the_channel() {
        assert_eq!(listen("regent:default"), "LISTEN \"regent:default\"");
        assert_eq!(listen("regent:a\"b"), "LISTEN \"regent:a\"\"b\"");
    }

    #[test]
    fn set_commands_join() {
        let s = set_commands(&[("statement_timeout", "5000".into()), ("x", "1".into())]);
        assert_eq!(s, "SET statement_timeout = 5000;SET x = 1;");
        let l = set_local_commands(&[("idle_in_transaction_session_timeout", "300".into())]);
        assert_eq!(l, "SET LOCAL idle_in_transaction_session_timeout = 300;");
    }
}
