//! The leader lease: which of several servers sharing one store drives the durable tasks, and
//! the fencing token that keeps a server that lost the lease from saving a step.
//!
//! One row of `leader_lease` (migration 5) holds the holder's id, the URL other replicas and
//! clients reach it at, the **epoch** and the expiry. Every change is one atomic `UPDATE`:
//!
//! - [`Store::acquire_lease`] takes the lease only when nobody holds it or it has expired, and
//!   raises the epoch by one: every new term has a new, larger epoch (the fencing token);
//! - [`Store::renew_lease`] extends it only for the same holder and epoch, and only while it has
//!   not expired (a lease that ran out is lost, even if nobody took it yet: the holder must
//!   acquire again, under a new epoch);
//! - [`Store::release_lease`] gives it up at once (a clean shutdown), keeping the epoch, so the
//!   next holder's epoch is still larger.
//!
//! Expiry is measured on the **database's clock** (PostgreSQL's `statement_timestamp()`, SQLite's
//! `julianday('now')`), never on the callers' clocks: replicas on machines whose clocks
//! disagree still agree on when a lease ran out. The store otherwise never reads a clock; this
//! is the one place where the time is the database's own.
//!
//! A server that leads tells the store its [`Fence`] ([`Store::set_fence`]); from then on every
//! durable save checks, inside its own transaction, that the lease row still has this holder
//! and epoch and has not expired (`check_fence`), and refuses with [`StoreError::Fenced`]
//! otherwise. On PostgreSQL the check locks the lease row `FOR SHARE` until the save commits, so
//! a new leader's acquiring `UPDATE` waits for a save that passed the check, and a save that
//! comes after the new leader's `UPDATE` sees the new holder: a step is stored either before
//! the new leader starts (and it reads the step) or not at all. A paused leader can therefore
//! never write after its lease ran out, whatever its own clock says when it wakes up.

use std::time::Duration;

use sqlx::Row;

use crate::{q, Backend, Store, StoreError};

/// The lease row's name.
const LEADER: &str = "leader";

/// The database's clock in milliseconds since the Unix epoch, per backend: one instant per
/// statement, however often a statement names it. PostgreSQL's `statement_timestamp()` is the
/// start of the statement (`clock_timestamp()` moved between the two uses in
/// `expires_at_ms = NOW + ttl, acquired_at_ms = NOW`, so a grant's expiry could be ttl − 1 ms
/// after the now it reported); SQLite's `'now'` is the same within one statement's step.
const PG_NOW_MS: &str = "(extract(epoch from statement_timestamp()) * 1000)::bigint";
const SQLITE_NOW_MS: &str = "CAST((julianday('now') - 2440587.5) * 86400000.0 AS INTEGER)";

/// The longest lease accepted: one hour.
const MAX_TTL: Duration = Duration::from_secs(3600);

/// How long a PostgreSQL session may sit idle inside a fenced save's transaction before the
/// database ends it. A leader paused (SIGSTOP) in the middle of a save holds the lease row's
/// share lock; this bounds how long that lock can delay the next leader's acquire.
const FENCED_IDLE_LIMIT_MS: i64 = 2000;

/// A leader's fencing token: the lease holder and the epoch of its term.
#[derive(Debug, Clone, PartialEq, Eq, Hash, serde::Serialize, serde::Deserialize)]
pub struct Fence {
    pub holder: String,
    pub epoch: i64,
}

/// A lease granted or renewed, with the database's clock at that moment.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LeaseGrant {
    pub fence: Fence,
    /// When the lease runs out, on the database's clock (ms since the Unix epoch).
    pub expires_at_ms: i64,
    /// The database's clock when it was granted.
    pub db_now_ms: i64,
}

/// The lease row as read, with the database's clock at the moment of reading.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct LeaseRecord {
    /// The holder's id, `None` when released or never taken.
    pub holder: Option<String>,
    /// The URL the holder said other replicas and clients reach it at.
    pub holder_url: Option<String>,
    /// The epoch of the current (or last) term; 0 before the first.
    pub epoch: i64,
    pub expires_at_ms: i64,
    pub acquired_at_ms: i64,
    pub db_now_ms: i64,
}

impl LeaseRecord {
    /// Held and not expired.
    pub fn is_live(&self) -> bool {
        self.holder.is_some() && self.expires_at_ms > self.db_now_ms
    }
}

/// Whether this process's durable saves are fenced, and by what.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub(crate) enum FenceState {
    /// Never set: one process owns the store (SQLite, tests); saves are not checked.
    #[default]
    Off,
    /// This process leads with this token; saves check it.
    Leading(Fence),
    /// Fencing is on and this process does not lead: every durable save is refused.
    NotLeading,
}

/// An open transaction on either backend, for [`Store::check_fence`].
pub(crate) enum FenceTx<'a, 'c> {
    Sqlite(&'a mut sqlx::Transaction<'c, sqlx::Sqlite>),
    Postgres(&'a mut sqlx::Transaction<'c, sqlx::Postgres>),
}

impl<'a, 'c> From<&'a mut sqlx::Transaction<'c, sqlx::Sqlite>> for FenceTx<'a, 'c> {
    fn from(tx: &'a mut sqlx::Transaction<'c, sqlx::Sqlite>) -> Self {
        FenceTx::Sqlite(tx)
    }
}

impl<'a, 'c> From<&'a mut sqlx::Transaction<'c, sqlx::Postgres>> for FenceTx<'a, 'c> {
    fn from(tx: &'a mut sqlx::Transaction<'c, sqlx::Postgres>) -> Self {
        FenceTx::Postgres(tx)
    }
}

fn ttl_ms(ttl: Duration) -> Result<i64, StoreError> {
    if ttl.is_zero() || ttl > MAX_TTL {
        return Err(StoreError::BadInput {
            field: "lease ttl".into(),
            reason: format!("{ttl:?} must be more than 0 and at most an hour"),
        });
    }
    Ok(ttl.as_millis() as i64)
}

/// Runs one lease statement on whichever backend, with `NOW` replaced by the database's clock.
macro_rules! lease_sql {
    ($store:expr, $sql:expr) => {
        match &$store.backend {
            Backend::Sqlite(_) => $sql.replace("NOW", SQLITE_NOW_MS),
            Backend::Postgres(_) => $sql.replace("NOW", PG_NOW_MS),
        }
    };
}

impl Store {
    /// Takes the lease for `holder` (reachable at `url`) for `ttl`, when nobody holds it or its
    /// holder's lease has expired, raising the epoch; `None` when another holder's lease is
    /// live (or `holder`'s own: a holder renews, it does not acquire twice).
    pub async fn acquire_lease(
        &self,
        holder: &str,
        url: &str,
        ttl: Duration,
    ) -> Result<Option<LeaseGrant>, StoreError> {
        let ttl = ttl_ms(ttl)?;
        let sql = lease_sql!(
            self,
            "UPDATE leader_lease SET holder = $1, holder_url = $2, epoch = epoch + 1, \
             expires_at_ms = NOW + $3, acquired_at_ms = NOW \
             WHERE name = $4 AND (holder IS NULL OR expires_at_ms <= NOW) \
             RETURNING epoch, expires_at_ms, acquired_at_ms"
        );
        let _turn = self.write_turn().await;
        let row = on_pool!(self, pool => {
            sqlx::query(&sql)
                .bind(holder)
                .bind(url)
                .bind(ttl)
                .bind(LEADER)
                .fetch_optional(pool)
                .await
                .map_err(q("acquire lease"))?
                .map(|row| -> Result<(i64, i64, i64), StoreError> {
                    Ok((
                        row.try_get(0).map_err(q("acquire lease"))?,
                        row.try_get(1).map_err(q("acquire lease"))?,
                        row.try_get(2).map_err(q("acquire lease"))?,
                    ))
                })
                .transpose()?
        });
        Ok(row.map(|(epoch, expires_at_ms, db_now_ms)| LeaseGrant {
            fence: Fence {
                holder: holder.to_string(),
                epoch,
            },
            expires_at_ms,
            db_now_ms,
        }))
    }

    /// Extends the lease of `fence` by `ttl` from now (the database's now); `None` when the
    /// lease is no longer this holder's at this epoch, or has expired.
    pub async fn renew_lease(
        &self,
        fence: &Fence,
        ttl: Duration,
    ) -> Result<Option<LeaseGrant>, StoreError> {
        let ttl = ttl_ms(ttl)?;
        let sql = lease_sql!(
            self,
            "UPDATE leader_lease SET expires_at_ms = NOW + $1 \
             WHERE name = $2 AND holder = $3 AND epoch = $4 AND expires_at_ms > NOW \
             RETURNING expires_at_ms, NOW"
        );
        let _turn = self.write_turn().await;
        let row = on_pool!(self, pool => {
            sqlx::query(&sql)
                .bind(ttl)
                .bind(LEADER)
                .bind(&fence.holder)
                .bind(fence.epoch)
                .fetch_optional(pool)
                .await
                .map_err(q("renew lease"))?
                .map(|row| -> Result<(i64, i64), StoreError> {
                    Ok((
                        row.try_get(0).map_err(q("renew lease"))?,
                        row.try_get(1).map_err(q("renew lease"))?,
                    ))
                })
                .transpose()?
        });
        Ok(row.map(|(expires_at_ms, db_now_ms)| LeaseGrant {
            fence: fence.clone(),
            expires_at_ms,
            db_now_ms,
        }))
    }

    /// Gives the lease of `fence` up now, so another replica may take it at once; the epoch
    /// stays, so the next term's is larger. `false` when it was not this holder's any more.
    pub async fn release_lease(&self, fence: &Fence) -> Result<bool, StoreError> {
        let _turn = self.write_turn().await;
        let n = on_pool!(self, pool => {
            sqlx::query(
                "UPDATE leader_lease SET holder = NULL, holder_url = NULL, expires_at_ms = 0 \
                 WHERE name = $1 AND holder = $2 AND epoch = $3",
            )
            .bind(LEADER)
            .bind(&fence.holder)
            .bind(fence.epoch)
            .execute(pool)
            .await
            .map_err(q("release lease"))?
            .rows_affected()
        });
        Ok(n > 0)
    }

    /// The lease row and the database's clock.
    pub async fn leader_lease(&self) -> Result<LeaseRecord, StoreError> {
        let sql = lease_sql!(
            self,
            "SELECT holder, holder_url, epoch, expires_at_ms, acquired_at_ms, NOW \
             FROM leader_lease WHERE name = $1"
        );
        on_pool!(self, pool => {
            let row = sqlx::query(&sql)
                .bind(LEADER)
                .fetch_one(pool)
                .await
                .map_err(q("read lease"))?;
            Ok(LeaseRecord {
                holder: row.try_get(0).map_err(q("read lease"))?,
                holder_url: row.try_get(1).map_err(q("read lease"))?,
                epoch: row.try_get(2).map_err(q("read lease"))?,
                expires_at_ms: row.try_get(3).map_err(q("read lease"))?,
                acquired_at_ms: row.try_get(4).map_err(q("read lease"))?,
                db_now_ms: row.try_get(5).map_err(q("read lease"))?,
            })
        })
    }

    /// Turns fencing on for every clone of this store: `Some(fence)` once this process leads
    /// (durable saves then check that the lease is still `fence`'s), `None` once it does not
    /// (every durable save is refused). A store whose fence was never set checks nothing: one
    /// process owns it.
    pub fn set_fence(&self, fence: Option<Fence>) {
        let mut state = self
            .fence
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        *state = match fence {
            Some(f) => FenceState::Leading(f),
            None => FenceState::NotLeading,
        };
    }

    /// The fence this process saves under, when it leads.
    pub fn fence(&self) -> Option<Fence> {
        match &*self
            .fence
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
        {
            FenceState::Leading(f) => Some(f.clone()),
            _ => None,
        }
    }

    /// The fencing check of a durable save, run inside the save's transaction (see the module
    /// documentation): refuses with [`StoreError::Fenced`] unless fencing is off, or the lease
    /// row still has this process's holder and epoch and has not expired by the database's
    /// clock. On PostgreSQL the row stays share-locked until the transaction ends.
    pub(crate) async fn check_fence<'a, 'c>(
        &self,
        tx: impl Into<FenceTx<'a, 'c>>,
    ) -> Result<(), StoreError>
    where
        'c: 'a,
    {
        let state = self
            .fence
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .clone();
        let fence = match state {
            FenceState::Off => return Ok(()),
            FenceState::NotLeading => {
                return Err(StoreError::Fenced {
                    holder: None,
                    epoch: None,
                    reason: "this server does not hold the leader lease".into(),
                })
            }
            FenceState::Leading(f) => f,
        };
        const CHECK: &str = "SELECT epoch FROM leader_lease \
             WHERE name = $1 AND holder = $2 AND epoch = $3 AND expires_at_ms > NOW";
        const NOW_ROW: &str =
            "SELECT holder, epoch, expires_at_ms > NOW FROM leader_lease WHERE name = $1";
        // The same two reads on either driver; `$lock` is PostgreSQL's `FOR SHARE`.
        macro_rules! read_fence {
            ($tx:expr, $now:expr, $lock:expr) => {{
                let held: Option<i64> =
                    sqlx::query_scalar(&format!("{}{}", CHECK.replace("NOW", $now), $lock))
                        .bind(LEADER)
                        .bind(&fence.holder)
                        .bind(fence.epoch)
                        .fetch_optional(&mut **$tx)
                        .await
                        .map_err(q("check fence"))?;
                let row = if held.is_none() {
                    let r = sqlx::query(&NOW_ROW.replace("NOW", $now))
                        .bind(LEADER)
                        .fetch_one(&mut **$tx)
                        .await
                        .map_err(q("check fence"))?;
                    Some((
                        r.try_get::<Option<String>, _>(0)
                            .map_err(q("check fence"))?,
                        r.try_get::<i64, _>(1).map_err(q("check fence"))?,
                        r.try_get::<bool, _>(2).map_err(q("check fence"))?,
                    ))
                } else {
                    None
                };
                (held.is_some(), row)
            }};
        }
        let (held, now_row) = match tx.into() {
            FenceTx::Sqlite(tx) => read_fence!(tx, SQLITE_NOW_MS, ""),
            FenceTx::Postgres(tx) => {
                // Bounds how long a save paused in the middle (its process stopped) can hold
                // the share lock below, and so delay the next leader.
                sqlx::query("SELECT set_config('idle_in_transaction_session_timeout', $1, true)")
                    .bind(FENCED_IDLE_LIMIT_MS.to_string())
                    .execute(&mut **tx)
                    .await
                    .map_err(q("check fence"))?;
                read_fence!(tx, PG_NOW_MS, " FOR SHARE")
            }
        };
        if held {
            return Ok(());
        }
        let reason = match now_row {
            Some((Some(h), e, true)) if h != fence.holder || e != fence.epoch => {
                format!("the lease is now held by {h} at epoch {e}")
            }
            Some((_, e, _)) if e != fence.epoch => {
                format!("the lease moved on to epoch {e} and is not held now")
            }
            _ => "the lease expired before this save".to_string(),
        };
        Err(StoreError::Fenced {
            holder: Some(fence.holder),
            epoch: Some(fence.epoch),
            reason,
        })
    }
}
