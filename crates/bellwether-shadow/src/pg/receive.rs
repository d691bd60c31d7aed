//! A running PostgreSQL shadow: the checks and set-up on the primary (slot, synchronous
//! standby name), the `pg_receivewal` supervisor of a transactional shadow, base backups and
//! points.

use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::io::AsyncBufReadExt;
use tokio::sync::watch;

use super::proc::{run, tail};
use super::{
    base, list_bases, list_points, now_us, pg_dir, read_info, write_json, Lsn, PgBase, PgPoint,
    PgShadowError, PgShadowInfo, PgShadowOptions, PgShadowType, SyncSetup,
};

/// How often the primary's replication view is read while waiting for the shadow (a state of
/// another process: there is no event to await).
const POLL: Duration = Duration::from_millis(10);
/// The longest pause between two starts of a `pg_receivewal` that keeps exiting.
const RESTART_CAP: Duration = Duration::from_secs(10);

/// A started shadow. Drop without [`PgShadow::stop`] leaves the slot and the synchronous
/// standby name on the primary (a crash does too): the next start with the same directory
/// picks them up again.
pub struct PgShadow {
    opts: PgShadowOptions,
    info: PgShadowInfo,
    bindir: PathBuf,
    conn: bellwether_pg::Instance,
    role: String,
    receiver: Option<Receiver>,
    may_create_restore_points: bool,
}

impl PgShadow {
    /// Checks the primary, records (or checks) which database the directory shadows, sets up
    /// the slot (differential, transactional), starts `pg_receivewal --synchronous` and
    /// registers it as a synchronous standby (transactional), and takes the first base backup
    /// (the first point, `id`).
    pub async fn start(
        opts: PgShadowOptions,
        first_point: &str,
    ) -> Result<(PgShadow, PgPoint), PgShadowError> {
        let conn = bellwether_pg::connect(&opts.url).await?;
        let target = conn.target.clone();
        let q = |what: &'static str| {
            let target = target.clone();
            move |e: tokio_postgres::Error| query_err(&target, what, e)
        };
        let row = conn
            .client
            .query_one(
                "SELECT (SELECT system_identifier::text FROM pg_control_system()), \
                 current_setting('server_version_num')::int, \
                 (SELECT setting::bigint FROM pg_settings WHERE name = 'wal_segment_size'), \
                 current_setting('wal_level'), current_setting('max_wal_senders')::int, \
                 current_user::text, \
                 (SELECT rolsuper OR rolreplication FROM pg_roles WHERE rolname = current_user), \
                 (SELECT rolsuper FROM pg_roles WHERE rolname = current_user), \
                 (SELECT count(*) FROM pg_tablespace WHERE spcname NOT IN ('pg_default', 'pg_global'))",
                &[],
            )
            .await
            .map_err(q("reading the primary's identity"))?;
        let system_identifier: String = row.get(0);
        let version: i32 = row.get(1);
        let seg_size: i64 = row.get(2);
        let wal_level: String = row.get(3);
        let senders: i32 = row.get(4);
        let role: String = row.get(5);
        let may_replicate: bool = row.get::<_, Option<bool>>(6).unwrap_or(false);
        let superuser: bool = row.get::<_, Option<bool>>(7).unwrap_or(false);
        let tablespaces: i64 = row.get(8);
        if !may_replicate {
            return Err(PgShadowError::Permission {
                target,
                role: role.clone(),
                what: "stream WAL or take base backups".into(),
                message: "it has neither REPLICATION nor SUPERUSER".into(),
                fix: format!("ALTER ROLE {role} REPLICATION, and allow it a `replication` line in pg_hba.conf"),
            });
        }
        if wal_level == "minimal" || senders < 2 {
            return Err(PgShadowError::Unsuitable {
                target,
                message: format!("wal_level is {wal_level} and max_wal_senders {senders}; a shadow needs wal_level = replica (or logical) and max_wal_senders >= 2 (its stream and a base backup's), which take a restart"),
            });
        }
        if tablespaces > 0 {
            return Err(PgShadowError::Unsuitable {
                target,
                message: format!("it has {tablespaces} tablespace(s) outside the data directory; PostgreSQL shadows copy the data directory only and do not handle tablespaces yet"),
            });
        }
        let bindir = match &opts.bindir {
            Some(b) => b.clone(),
            None => bellwether_pg::find_bindir(version as u32, None)?,
        };
        let pg = pg_dir(&opts.dir);
        std::fs::create_dir_all(pg.join("wal"))
            .map_err(|e| PgShadowError::io("creating", &pg, e))?;
        let info = match read_info(&opts.dir)? {
            Some(existing) => {
                if existing.system_identifier != system_identifier {
                    return Err(PgShadowError::OtherDatabase {
                        dir: opts.dir.clone(),
                        theirs: format!(
                            "{} (system identifier {})",
                            existing.source, existing.system_identifier
                        ),
                        ours: format!("{target} (system identifier {system_identifier})"),
                    });
                }
                if existing.kind != opts.kind {
                    return Err(PgShadowError::BadShadow {
                        path: pg.join("shadow-pg.json"),
                        message: format!(
                            "it is a {} shadow, not {}",
                            existing.kind.as_str(),
                            opts.kind.as_str()
                        ),
                    });
                }
                existing
            }
            None => {
                let name = match &opts.name {
                    Some(n) => n.clone(),
                    None => format!(
                        "bw_shadow_{:x}",
                        now_us() ^ ((std::process::id() as i64) << 40)
                    ),
                };
                let info = PgShadowInfo {
                    system_identifier,
                    server_version_num: version as u32,
                    wal_segment_size: seg_size as u64,
                    name,
                    source: target.clone(),
                    kind: opts.kind,
                    sync_original: None,
                };
                write_json(&pg.join("shadow-pg.json"), &info)?;
                info
            }
        };
        if info.name.is_empty()
            || info.name.len() > 63
            || !info
                .name
                .bytes()
                .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_')
        {
            return Err(PgShadowError::BadShadow {
                path: pg.join("shadow-pg.json"),
                message: format!("shadow name {:?} must be 1 to 63 of [a-z0-9_]", info.name),
            });
        }
        let mut shadow = PgShadow {
            opts,
            info,
            bindir,
            conn,
            role,
            receiver: None,
            may_create_restore_points: superuser,
        };
        if shadow.opts.kind != PgShadowType::Full {
            shadow.ensure_slot().await?;
        }
        if shadow.opts.kind == PgShadowType::Transactional {
            let r = Receiver::spawn(
                &shadow.bindir,
                &shadow.opts.url,
                &pg.join("wal"),
                &shadow.info.name,
            );
            shadow.receiver = Some(r);
            if let Err(e) = shadow.wait_streaming().await {
                shadow.stop_receiver().await;
                return Err(e);
            }
            if let Err(e) = shadow.register_sync().await {
                shadow.stop_receiver().await;
                return Err(e);
            }
        }
        let point = match shadow.take_base_point(first_point).await {
            Ok(p) => p,
            Err(e) => {
                let _ = shadow.unregister_sync().await;
                shadow.stop_receiver().await;
                return Err(e);
            }
        };
        Ok((shadow, point))
    }

    pub fn info(&self) -> &PgShadowInfo {
        &self.info
    }

    pub fn dir(&self) -> &Path {
        &self.opts.dir
    }

    /// Takes a point named `id`: a base backup (full), or a restore point on the primary that
    /// the shadow is then waited for (transactional) or fetched up to (differential).
    pub async fn take_point(&mut self, id: &str) -> Result<PgPoint, PgShadowError> {
        if self.opts.kind == PgShadowType::Full {
            return self.take_base_point(id).await;
        }
        let base = list_bases(&self.opts.dir)?
            .pop()
            .ok_or_else(|| PgShadowError::BadShadow {
                path: pg_dir(&self.opts.dir).join("base"),
                message: "no finished base backup (the shadow's start takes one)".into(),
            })?;
        let (lsn, timeline, at_us, restore_point) = self.mark(id).await?;
        match self.opts.kind {
            PgShadowType::Transactional => self.wait_flushed(lsn).await?,
            _ => self.fetch_until(lsn).await?,
        }
        let point = PgPoint {
            id: id.to_string(),
            lsn,
            timeline,
            at_us,
            restore_point,
            base: base.id,
        };
        self.record(&point)?;
        Ok(point)
    }

    /// A new base backup as point `id` (restores after it replay less WAL).
    pub async fn take_base_point(&mut self, id: &str) -> Result<PgPoint, PgShadowError> {
        let base = base::take(
            &self.bindir,
            &self.opts.url,
            &pg_dir(&self.opts.dir).join("base"),
            id,
            self.opts.step_timeout,
        )
        .await?;
        let point = PgPoint {
            id: id.to_string(),
            lsn: base.end_lsn,
            timeline: base.timeline,
            at_us: base.finished_at_us,
            restore_point: None,
            base: base.id.clone(),
        };
        self.record(&point)?;
        Ok(point)
    }

    /// Stops the stream, takes the shadow out of `synchronous_standby_names` first (or the
    /// primary would wait for it forever), and drops the slot (or the primary would keep WAL
    /// for it forever). The shadow directory stays whole: its points remain restorable.
    pub async fn stop(mut self) -> Result<(), PgShadowError> {
        let unreg = self.unregister_sync().await;
        self.stop_receiver().await;
        let drop = if self.opts.kind != PgShadowType::Full {
            self.conn
                .client
                .execute(
                    "SELECT pg_drop_replication_slot(slot_name) FROM pg_replication_slots WHERE slot_name = $1",
                    &[&self.info.name],
                )
                .await
                .map(|_| ())
                .map_err(|e| query_err(&self.conn.target, "dropping the shadow's replication slot", e))
        } else {
            Ok(())
        };
        unreg?;
        drop
    }

    /// The last error `pg_receivewal` printed, if it exited (transactional).
    pub fn receiver_error(&self) -> Option<String> {
        self.receiver
            .as_ref()
            .and_then(|r| r.last_error.lock().ok().and_then(|g| g.clone()))
    }

    async fn ensure_slot(&self) -> Result<(), PgShadowError> {
        self.conn
            .client
            .execute(
                "SELECT pg_create_physical_replication_slot($1, true) \
                 WHERE NOT EXISTS (SELECT 1 FROM pg_replication_slots WHERE slot_name = $1)",
                &[&self.info.name],
            )
            .await
            .map_err(|e| {
                query_err(
                    &self.conn.target,
                    "creating the shadow's replication slot",
                    e,
                )
            })?;
        Ok(())
    }

    /// Waits until the primary reports the shadow's stream.
    async fn wait_streaming(&self) -> Result<(), PgShadowError> {
        let deadline =
            tokio::time::Instant::now() + self.opts.step_timeout.min(Duration::from_secs(60));
        loop {
            let row = self
                .conn
                .client
                .query_opt(
                    "SELECT state FROM pg_stat_replication WHERE application_name = $1 AND state = 'streaming'",
                    &[&self.info.name],
                )
                .await
                .map_err(|e| query_err(&self.conn.target, "reading pg_stat_replication", e))?;
            if row.is_some() {
                return Ok(());
            }
            if tokio::time::Instant::now() > deadline {
                return Err(PgShadowError::Program {
                    program: "pg_receivewal".into(),
                    what: "streaming the primary's WAL".into(),
                    output: self
                        .receiver_error()
                        .unwrap_or_else(|| "the primary shows no stream for the shadow".into()),
                });
            }
            tokio::time::sleep(POLL).await;
        }
    }

    /// Makes the shadow a synchronous standby (see [`SyncSetup`]) and waits until the primary
    /// reports it as `sync`.
    async fn register_sync(&mut self) -> Result<(), PgShadowError> {
        let target = self.conn.target.clone();
        let current: String = self
            .conn
            .client
            .query_one("SELECT current_setting('synchronous_standby_names')", &[])
            .await
            .map_err(|e| query_err(&target, "reading synchronous_standby_names", e))?
            .get(0);
        let commit: String = self
            .conn
            .client
            .query_one("SELECT current_setting('synchronous_commit')", &[])
            .await
            .map_err(|e| query_err(&target, "reading synchronous_commit", e))?
            .get(0);
        match self.opts.sync {
            SyncSetup::Off => return Ok(()),
            SyncSetup::Expect => {}
            SyncSetup::Configure => {
                if !names_include(&current, &self.info.name) {
                    if !current.trim().is_empty() {
                        return Err(PgShadowError::SyncNamesInUse {
                            target,
                            current,
                            name: self.info.name.clone(),
                        });
                    }
                    // Saved before the change, so a crash between the two still restores it.
                    self.info.sync_original = Some(current.clone());
                    write_json(&pg_dir(&self.opts.dir).join("shadow-pg.json"), &self.info)?;
                    let sql = format!(
                        "ALTER SYSTEM SET synchronous_standby_names = '{}'",
                        self.info.name
                    );
                    let fix = format!(
                        "run the shadow as a superuser; or GRANT ALTER SYSTEM ON PARAMETER synchronous_standby_names TO {role} and GRANT EXECUTE ON FUNCTION pg_reload_conf() TO {role}; or set synchronous_standby_names = '{name}' yourself, reload, and use sync = expect",
                        role = self.role,
                        name = self.info.name
                    );
                    if let Err(e) = self.conn.client.batch_execute(&sql).await {
                        self.info.sync_original = None;
                        write_json(&pg_dir(&self.opts.dir).join("shadow-pg.json"), &self.info)?;
                        return Err(permission_or_query(
                            &target,
                            &self.role,
                            "set synchronous_standby_names (ALTER SYSTEM)",
                            &fix,
                            e,
                        ));
                    }
                    if let Err(e) = self
                        .conn
                        .client
                        .batch_execute("SELECT pg_reload_conf()")
                        .await
                    {
                        let err = permission_or_query(
                            &target,
                            &self.role,
                            "reload the configuration (pg_reload_conf)",
                            &fix,
                            e,
                        );
                        let _ = self.unregister_sync().await;
                        return Err(err);
                    }
                }
            }
        }
        if matches!(commit.as_str(), "off" | "local" | "remote_apply") {
            tracing::warn!(target = %target, synchronous_commit = %commit, "synchronous_commit does not wait for the shadow's flush: local and off acknowledge before it, remote_apply waits for an apply pg_receivewal never reports.");
        }
        let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
        loop {
            let row = self
                .conn
                .client
                .query_opt(
                    "SELECT sync_state FROM pg_stat_replication WHERE application_name = $1 AND sync_state = 'sync'",
                    &[&self.info.name],
                )
                .await
                .map_err(|e| query_err(&target, "reading pg_stat_replication", e))?;
            if row.is_some() {
                return Ok(());
            }
            if tokio::time::Instant::now() > deadline {
                let _ = self.unregister_sync().await;
                return Err(PgShadowError::Unsuitable {
                    target,
                    message: format!(
                        "the primary does not report the shadow {} as a synchronous standby within 30 s (synchronous_standby_names is {current:?}); it must name {0}",
                        self.info.name
                    ),
                });
            }
            tokio::time::sleep(POLL).await;
        }
    }

    /// Puts `synchronous_standby_names` back to what it was, when Bellwether set it.
    async fn unregister_sync(&mut self) -> Result<(), PgShadowError> {
        let Some(original) = self.info.sync_original.clone() else {
            return Ok(());
        };
        let sql = if original.is_empty() {
            "ALTER SYSTEM RESET synchronous_standby_names".to_string()
        } else {
            format!(
                "ALTER SYSTEM SET synchronous_standby_names = '{}'",
                original.replace('\'', "''")
            )
        };
        let target = self.conn.target.clone();
        self.conn
            .client
            .batch_execute(&sql)
            .await
            .map_err(|e| query_err(&target, "resetting synchronous_standby_names", e))?;
        self.conn
            .client
            .batch_execute("SELECT pg_reload_conf()")
            .await
            .map_err(|e| query_err(&target, "reloading the configuration", e))?;
        self.info.sync_original = None;
        write_json(&pg_dir(&self.opts.dir).join("shadow-pg.json"), &self.info)
    }

    async fn stop_receiver(&mut self) {
        if let Some(r) = self.receiver.take() {
            r.stop().await;
        }
    }

    /// A restore point `bw-ID` (or the current LSN when the role may not create one) and the
    /// primary's clock.
    async fn mark(&mut self, id: &str) -> Result<(Lsn, u32, i64, Option<String>), PgShadowError> {
        let target = self.conn.target.clone();
        let name = format!("bw-{id}");
        let sql = if self.may_create_restore_points {
            "SELECT pg_create_restore_point($1)::text, (extract(epoch FROM clock_timestamp()) * 1000000)::bigint, \
             (SELECT timeline_id FROM pg_control_checkpoint())"
        } else {
            "SELECT pg_current_wal_lsn()::text, (extract(epoch FROM clock_timestamp()) * 1000000)::bigint, \
             (SELECT timeline_id FROM pg_control_checkpoint()), $1::text"
        };
        let row = self
            .conn
            .client
            .query_one(sql, &[&name])
            .await
            .map_err(|e| query_err(&target, "marking the point on the primary", e))?;
        let lsn_text: String = row.get(0);
        let lsn = Lsn::parse(&lsn_text).ok_or_else(|| PgShadowError::Io {
            what: format!("{target}: marking the point"),
            message: format!("not an LSN: {lsn_text:?}"),
        })?;
        let at: i64 = row.get(1);
        let tl: i32 = row.get(2);
        Ok((
            lsn,
            tl as u32,
            at,
            self.may_create_restore_points.then_some(name),
        ))
    }

    /// Waits until the primary reports the shadow flushed `lsn` (transactional).
    async fn wait_flushed(&self, lsn: Lsn) -> Result<(), PgShadowError> {
        let deadline = tokio::time::Instant::now() + self.opts.step_timeout;
        loop {
            let row = self
                .conn
                .client
                .query_opt(
                    "SELECT flush_lsn::text FROM pg_stat_replication WHERE application_name = $1",
                    &[&self.info.name],
                )
                .await
                .map_err(|e| query_err(&self.conn.target, "reading pg_stat_replication", e))?;
            let flushed = row
                .and_then(|r| r.get::<_, Option<String>>(0))
                .and_then(|t| Lsn::parse(&t));
            if flushed.is_some_and(|f| f >= lsn) {
                return Ok(());
            }
            if tokio::time::Instant::now() > deadline {
                return Err(PgShadowError::Program {
                    program: "pg_receivewal".into(),
                    what: format!("flushing the WAL up to {lsn}"),
                    output: format!(
                        "the shadow flushed {} after {} s; {}",
                        flushed
                            .map(|f| f.to_string())
                            .unwrap_or_else(|| "nothing".into()),
                        self.opts.step_timeout.as_secs(),
                        self.receiver_error().unwrap_or_default()
                    ),
                });
            }
            tokio::time::sleep(POLL).await;
        }
    }

    /// Fetches the WAL through the slot up to `lsn` (differential): `pg_receivewal --endpos`.
    async fn fetch_until(&self, lsn: Lsn) -> Result<(), PgShadowError> {
        let wal = pg_dir(&self.opts.dir).join("wal");
        let argv = vec![
            self.bindir.join("pg_receivewal").display().to_string(),
            "-d".into(),
            self.opts.url.clone(),
            "-D".into(),
            wal.display().to_string(),
            "--slot".into(),
            self.info.name.clone(),
            "--endpos".into(),
            lsn.to_string(),
            "--no-loop".into(),
            "--synchronous".into(),
        ];
        run(
            &argv,
            &[("PGAPPNAME", self.info.name.as_str())],
            &format!("fetching the WAL up to {lsn}"),
            self.opts.step_timeout,
        )
        .await
        .map(|_| ())
    }

    fn record(&self, point: &PgPoint) -> Result<(), PgShadowError> {
        let mut points = list_points(&self.opts.dir)?;
        if points.iter().any(|p| p.id == point.id) {
            return Err(PgShadowError::BadShadow {
                path: pg_dir(&self.opts.dir).join("points.json"),
                message: format!("a point {:?} exists already", point.id),
            });
        }
        points.push(point.clone());
        write_json(&pg_dir(&self.opts.dir).join("points.json"), &points)
    }
}

/// Whether `synchronous_standby_names` names `name` (as a plain or quoted member).
fn names_include(value: &str, name: &str) -> bool {
    value
        .split(|c: char| c == ',' || c == '(' || c == ')' || c.is_whitespace())
        .map(|t| t.trim_matches('"'))
        .any(|t| t == name || t == "*")
}

fn query_err(target: &str, what: &str, e: tokio_postgres::Error) -> PgShadowError {
    PgShadowError::Pg(bellwether_pg::PgError::Query {
        what: format!("{target}: {what}"),
        message: db_text(&e),
    })
}

fn db_text(e: &tokio_postgres::Error) -> String {
    match e.as_db_error() {
        Some(db) => format!("{}: {}", db.severity(), db.message()),
        None => e.to_string(),
    }
}

fn permission_or_query(
    target: &str,
    role: &str,
    what: &str,
    fix: &str,
    e: tokio_postgres::Error,
) -> PgShadowError {
    if e.code() == Some(&tokio_postgres::error::SqlState::INSUFFICIENT_PRIVILEGE) {
        PgShadowError::Permission {
            target: target.to_string(),
            role: role.to_string(),
            what: what.to_string(),
            message: db_text(&e),
            fix: fix.to_string(),
        }
    } else {
        query_err(target, what, e)
    }
}

/// `pg_receivewal --synchronous` kept running: started again (backing off up to
/// [`RESTART_CAP`]) whenever it exits, until stopped.
struct Receiver {
    stop: watch::Sender<bool>,
    task: tokio::task::JoinHandle<()>,
    last_error: Arc<Mutex<Option<String>>>,
}

impl Receiver {
    fn spawn(bindir: &Path, url: &str, wal: &Path, name: &str) -> Receiver {
        let (stop, mut stopped) = watch::channel(false);
        let last_error = Arc::new(Mutex::new(None));
        let argv = vec![
            bindir.join("pg_receivewal").display().to_string(),
            "-d".into(),
            url.to_string(),
            "-D".into(),
            wal.display().to_string(),
            "--slot".into(),
            name.to_string(),
            "--synchronous".into(),
            "--no-loop".into(),
        ];
        let name = name.to_string();
        let errors = last_error.clone();
        let task = tokio::spawn(async move {
            let mut pause = Duration::from_millis(100);
            loop {
                let mut cmd = tokio::process::Command::new(&argv[0]);
                cmd.args(&argv[1..])
                    .env("PGAPPNAME", &name)
                    .stdin(Stdio::null())
                    .stdout(Stdio::null())
                    .stderr(Stdio::piped())
                    .kill_on_drop(true);
                let mut child = match cmd.spawn() {
                    Ok(c) => c,
                    Err(e) => {
                        if let Ok(mut g) = errors.lock() {
                            *g = Some(format!("cannot run {}: {e}", argv[0]));
                        }
                        return;
                    }
                };
                let stderr = child.stderr.take();
                let errs = errors.clone();
                let reader = tokio::spawn(async move {
                    let Some(stderr) = stderr else { return };
                    let mut lines = tokio::io::BufReader::new(stderr).lines();
                    let mut text = String::new();
                    while let Ok(Some(line)) = lines.next_line().await {
                        text.push_str(&line);
                        text.push('\n');
                        text = tail(&text, 2000);
                        text.push('\n');
                        if let Ok(mut g) = errs.lock() {
                            *g = Some(text.trim().to_string());
                        }
                    }
                });
                tokio::select! {
                    status = child.wait() => {
                        let _ = reader.await;
                        let msg = errors.lock().ok().and_then(|g| g.clone()).unwrap_or_default();
                        tracing::warn!(slot = %name, status = ?status.ok(), error = %msg, "The shadow's pg_receivewal exited; starting it again.");
                    }
                    _ = stopped.changed() => {
                        if let Some(pid) = child.id() {
                            // SIGINT: pg_receivewal flushes and closes its segment, then exits.
                            let _ = nix::sys::signal::kill(nix::unistd::Pid::from_raw(pid as i32), nix::sys::signal::Signal::SIGINT);
                        }
                        if tokio::time::timeout(Duration::from_secs(10), child.wait()).await.is_err() {
                            let _ = child.kill().await;
                        }
                        reader.abort();
                        return;
                    }
                }
                tokio::select! {
                    _ = tokio::time::sleep(pause) => {}
                    _ = stopped.changed() => return,
                }
                pause = (pause * 2).min(RESTART_CAP);
            }
        });
        Receiver {
            stop,
            task,
            last_error,
        }
    }

    async fn stop(self) {
        let _ = self.stop.send(true);
        let _ = self.task.await;
    }
}

/// The bases of a shadow directory and which one a restore to `lsn` starts from: the latest
/// whose consistent end lies at or before it.
pub(crate) fn base_for_lsn(bases: &[PgBase], lsn: Lsn) -> Option<&PgBase> {
    bases.iter().rev().find(|b| b.end_lsn <= lsn)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn standby_names_are_matched_as_members() {
        assert!(names_include("bw_shadow_1", "bw_shadow_1"));
        assert!(names_include("FIRST 1 (a, \"bw_shadow_1\")", "bw_shadow_1"));
        assert!(names_include("ANY 2 (x,bw_shadow_1,y)", "bw_shadow_1"));
        assert!(names_include("*", "bw_shadow_1"));
        assert!(!names_include("bw_shadow_10", "bw_shadow_1"));
        assert!(!names_include("", "bw_shadow_1"));
    }
}
