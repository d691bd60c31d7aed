//! The shadow built-ins (`shadow_start`, `shadow_stop`, `shadow_point`, `shadow_restore`,
//! `shadow_route`): the agent keeps its host's shadows with `bellwether_shadow` and carries
//! out the server's `shadow` task's decisions. The decisions are the server's; this module
//! only carries them out.
//!
//! Every path the server names (the resource, the shadow directory, the locations, the link)
//! is relative to the agent's root and resolved inside it as a chroot would ([`resolve`]):
//! `..` never climbs above the root and a symbolic link, absolute or relative, is followed
//! inside the root, so no built-in reads or writes outside it. The resolved path is then
//! handed to `bellwether_shadow`, which opens it by name: a link swapped into the path after
//! the resolution and before the use is not caught (the agent's root belongs to the host's
//! administrator, who runs the agent).
//!
//! A started shadow is followed by a thread of this process (`bellwether_shadow::point::run`)
//! until `shadow_stop`; a point is asked of that follower through the shadow directory (or
//! taken directly when no follower runs, and the point's answer then says `"following":
//! false`). Each started shadow's call is recorded in the agent's state directory
//! (`STATE_DIR/shadows/NAME.json`, removed by `shadow_stop`), so a restarted agent follows
//! its shadows again at once ([`Shadows::resume`]), before the server has said anything; the
//! server's task, told by a point that nobody follows, starts the shadow again too (a state
//! directory lost with the host).

use std::collections::HashMap;
use std::io::Read;
use std::path::{Component, Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bellwether_model::shadow::{
    PointReason, ResourceKind, RestoreTo, ShadowCall, ShadowOp, ShadowType,
};
use bellwether_shadow::point::{self, Control, Manifest, PointStore, Reason, Retention};
use bellwether_shadow::{
    PointId, RestoreRequest, ShadowError, ShadowOptions, Source, Target, Timestamp,
};
use serde_json::{json, Value};

/// The most symbolic links followed while resolving one path.
const MAX_LINKS: usize = 40;

/// A failed built-in: the error and the structured output the server's engine reads
/// (`point_unusable` for a damaged or missing point).
pub type Failure = (String, Value);

struct Running {
    ctl: Arc<Control>,
    thread: std::thread::JoinHandle<Result<(), ShadowError>>,
}

/// This agent's shadows.
#[derive(Clone)]
pub struct Shadows {
    root: PathBuf,
    /// `STATE_DIR/shadows`: one record per started shadow (its call), for [`Shadows::resume`].
    records: PathBuf,
    running: Arc<Mutex<HashMap<String, Running>>>,
    /// Held through a whole start: a resume and the server's `shadow_start` of one shadow
    /// never start two followers.
    starting: Arc<Mutex<()>>,
}

/// What [`Shadows::resume`] did with one record.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Resumed {
    /// The shadow's name, or the record's file name when it could not be read.
    pub name: String,
    /// `Ok` with the start's output, or why it was not resumed (the record is kept).
    pub result: Result<Value, String>,
}

impl std::fmt::Debug for Shadows {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Shadows").field("root", &self.root).finish()
    }
}

/// Resolves `rel` inside `root` as a chroot at `root` would: components are walked one by
/// one; `..` stops at the root; a symbolic link's target is followed relative to its
/// directory, or to the root when absolute. Components that do not exist yet are appended
/// as they are (a file a restore creates). The result is always under `root`'s real path.
pub fn resolve(root: &Path, rel: &str) -> Result<PathBuf, String> {
    let base = std::fs::canonicalize(root)
        .map_err(|e| format!("the agent's root {}: {e}", root.display()))?;
    let mut todo: Vec<String> = rel
        .split('/')
        .filter(|c| !c.is_empty() && *c != ".")
        .map(str::to_string)
        .rev()
        .collect();
    let mut cur = base.clone();
    let mut links = 0;
    let mut missing = false;
    while let Some(c) = todo.pop() {
        if c == ".." {
            if cur != base {
                cur.pop();
            }
            continue;
        }
        let next = cur.join(&c);
        if missing {
            cur = next;
            continue;
        }
        match std::fs::symlink_metadata(&next) {
            Ok(m) if m.file_type().is_symlink() => {
                links += 1;
                if links > MAX_LINKS {
                    return Err(format!("{rel}: more than {MAX_LINKS} symbolic links"));
                }
                let target = std::fs::read_link(&next).map_err(|e| format!("{rel}: {e}"))?;
                let t = target.to_string_lossy().into_owned();
                if target.is_absolute() {
                    cur = base.clone();
                }
                for part in t.split('/').filter(|p| !p.is_empty() && *p != ".").rev() {
                    todo.push(part.to_string());
                }
            }
            Ok(_) => cur = next,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                missing = true;
                cur = next;
            }
            Err(e) => return Err(format!("{rel}: {e}")),
        }
    }
    // The walk never leaves `base`; checked again so a mistake here cannot escape.
    if !cur.starts_with(&base)
        || cur
            .strip_prefix(&base)
            .map(|p| p.components().any(|c| matches!(c, Component::ParentDir)))
            .unwrap_or(true)
    {
        return Err(format!("{rel} leads out of the agent's root"));
    }
    Ok(cur)
}

fn kind_of(k: ResourceKind) -> bellwether_shadow::ResourceKind {
    match k {
        ResourceKind::Sqlite => bellwether_shadow::ResourceKind::Sqlite,
        ResourceKind::Postgres => bellwether_shadow::ResourceKind::Postgres,
        ResourceKind::Dir => bellwether_shadow::ResourceKind::Dir,
    }
}

fn type_of(t: ShadowType) -> bellwether_shadow::ShadowType {
    match t {
        ShadowType::Full => bellwether_shadow::ShadowType::Full,
        ShadowType::Differential => bellwether_shadow::ShadowType::Differential,
        ShadowType::Transactional => bellwether_shadow::ShadowType::Transactional,
    }
}

fn reason_of(r: &PointReason) -> Reason {
    match r {
        PointReason::Schedule => Reason::Schedule,
        PointReason::OnDemand => Reason::OnDemand,
        PointReason::Predicted {
            source,
            expected_failure_ms,
            probability,
        } => Reason::Predicted {
            source: source.clone(),
            failure_at: Timestamp::from_micros(expected_failure_ms.saturating_mul(1000)),
            probability: *probability,
        },
        PointReason::BeforeRestore => Reason::BeforeRestore,
    }
}

/// A point as the server's engine reads it.
fn point_json(m: &Manifest) -> Value {
    json!({
        "id": m.id().to_string(),
        "seq": m.seq,
        "consistent_at_ms": m.consistent_at.as_micros().div_euclid(1000),
        "reason": match &m.reason {
            Reason::Schedule => "schedule",
            Reason::OnDemand => "on_demand",
            Reason::Predicted { .. } => "predicted",
            Reason::BeforeRestore => "before_restore",
            Reason::Base => "base",
        },
    })
}

/// A damaged, missing or absent point: the engine tries the next older one.
fn unusable(e: &ShadowError) -> bool {
    matches!(
        e,
        ShadowError::NoSuchPoint { .. }
            | ShadowError::DamagedPoint { .. }
            | ShadowError::MissingPoint { .. }
            | ShadowError::BadObject { .. }
            | ShadowError::BeforeFirstPoint { .. }
            | ShadowError::NoPoints { .. }
    )
}

fn fail(e: impl std::fmt::Display) -> Failure {
    (e.to_string(), Value::Null)
}

impl Shadows {
    /// Shadows of paths inside `root`; started shadows are recorded under `state_dir`.
    pub fn new(root: &Path, state_dir: &Path) -> Shadows {
        Shadows {
            root: root.to_path_buf(),
            records: state_dir.join("shadows"),
            running: Arc::new(Mutex::new(HashMap::new())),
            starting: Arc::new(Mutex::new(())),
        }
    }

    /// Starts again every shadow recorded as started (an agent that restarted), each as the
    /// server's `shadow_start` would, once `allowed` says the agent may still run
    /// `shadow_start` for it. A record that cannot be read, or a shadow that cannot start, is
    /// reported and kept: the server's next call decides (a `shadow_stop` removes it).
    pub fn resume(&self, allowed: impl Fn(&ShadowCall) -> Result<(), String>) -> Vec<Resumed> {
        let mut entries: Vec<PathBuf> = match std::fs::read_dir(&self.records) {
            Ok(rd) => rd
                .filter_map(Result::ok)
                .map(|e| e.path())
                .filter(|p| p.extension().is_some_and(|x| x == "json"))
                .collect(),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Vec::new(),
            Err(e) => {
                return vec![Resumed {
                    name: self.records.display().to_string(),
                    result: Err(format!("{}: {e}", self.records.display())),
                }]
            }
        };
        entries.sort();
        let mut out = Vec::new();
        for path in entries {
            let file = path.display().to_string();
            let call = std::fs::read(&path)
                .map_err(|e| format!("{file}: {e}"))
                .and_then(|b| {
                    serde_json::from_slice::<ShadowCall>(&b).map_err(|e| format!("{file}: {e}"))
                })
                .and_then(|c| {
                    c.validate(ShadowOp::Start)
                        .map_err(|e| format!("{file}: {e}"))?;
                    Ok(c)
                });
            let call = match call {
                Ok(c) => c,
                Err(e) => {
                    out.push(Resumed {
                        name: file,
                        result: Err(e),
                    });
                    continue;
                }
            };
            let result = allowed(&call).and_then(|()| self.start(&call).map_err(|(e, _)| e));
            out.push(Resumed {
                name: call.name.clone(),
                result,
            });
        }
        out
    }

    /// Stops every follower this process runs (an agent shutting down, or a test that
    /// plays one); the records stay, so the next start resumes them.
    pub fn stop_all(&self) {
        let all: Vec<Running> = self.lock().drain().map(|(_, r)| r).collect();
        for r in &all {
            r.ctl.stop();
        }
        for r in all {
            let _ = r.thread.join();
        }
    }

    fn record_path(&self, name: &str) -> PathBuf {
        self.records.join(format!("{name}.json"))
    }

    /// Writes the started shadow's call (without the per-call fields), atomically.
    fn record(&self, call: &ShadowCall) -> Result<(), String> {
        let mut kept = call.clone();
        kept.reason = None;
        kept.to = None;
        kept.location = None;
        let bytes = serde_json::to_vec_pretty(&kept).map_err(|e| e.to_string())?;
        let path = self.record_path(&call.name);
        let tmp = self.records.join(format!(".{}.json.tmp", call.name));
        let write = || -> std::io::Result<()> {
            std::fs::create_dir_all(&self.records)?;
            let mut f = std::fs::File::create(&tmp)?;
            std::io::Write::write_all(&mut f, &bytes)?;
            f.sync_all()?;
            std::fs::rename(&tmp, &path)?;
            std::fs::File::open(&self.records)?.sync_all()
        };
        write().map_err(|e| format!("{}: {e}", path.display()))
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<String, Running>> {
        self.running.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Carries out a shadow built-in on the blocking pool; its structured output, or the
    /// error with the output the engine reads.
    pub async fn run(
        &self,
        op: ShadowOp,
        call: &ShadowCall,
        timeout: Duration,
    ) -> Result<Value, Failure> {
        call.validate(op).map_err(fail)?;
        let this = self.clone();
        let call = call.clone();
        tokio::task::spawn_blocking(move || this.run_blocking(op, &call, timeout))
            .await
            .map_err(|e| fail(format!("the {} built-in stopped: {e}", op.builtin())))?
    }

    fn options(&self, call: &ShadowCall) -> Result<ShadowOptions, Failure> {
        let source = match (&call.resource.path, &call.resource.url) {
            (Some(p), _) => Source::Path(resolve(&self.root, p).map_err(fail)?),
            (None, Some(u)) => Source::Url(u.clone()),
            (None, None) => return Err(fail("the resource names no path or url")),
        };
        let retention = call
            .retention
            .as_ref()
            .map(|r| Retention {
                keep_all_for: r.keep_all,
                hourly_for: r.hourly,
                daily_for: r.daily,
            })
            .unwrap_or_default();
        Ok(ShadowOptions {
            dir: resolve(&self.root, &call.dir).map_err(fail)?,
            source,
            shadow_type: type_of(call.shadow_type),
            // The server's engine schedules the points.
            points_every: None,
            retention,
            poll: None,
            clones: call.clones,
        })
    }

    fn resource(
        &self,
        call: &ShadowCall,
    ) -> Result<&'static dyn bellwether_shadow::Resource, Failure> {
        bellwether_shadow::resource(kind_of(call.resource.kind)).ok_or_else(|| {
            fail(format!(
                "this agent cannot keep {} shadows (its build has no support for them)",
                call.resource.kind.as_str()
            ))
        })
    }

    fn run_blocking(
        &self,
        op: ShadowOp,
        call: &ShadowCall,
        timeout: Duration,
    ) -> Result<Value, Failure> {
        match op {
            ShadowOp::Start => self.start(call),
            ShadowOp::Stop => self.stop(call),
            ShadowOp::Point => self.point(call, timeout),
            ShadowOp::Restore => self.restore(call),
            ShadowOp::Route => self.route(call),
        }
    }

    fn start(&self, call: &ShadowCall) -> Result<Value, Failure> {
        let _one_start = self.starting.lock().unwrap_or_else(|e| e.into_inner());
        {
            let mut running = self.lock();
            if let Some(r) = running.get(&call.name) {
                if !r.thread.is_finished() {
                    drop(running);
                    // Recorded again: a record lost while it ran is written back.
                    self.record(call).map_err(fail)?;
                    return Ok(json!({ "running": true, "already": true }));
                }
                running.remove(&call.name);
            }
        }
        let opts = self.options(call)?;
        let mut shadow = self.resource(call)?.start(&opts).map_err(fail)?;
        let points = shadow.store().points().map(|p| p.len()).unwrap_or(0);
        let ctl = Arc::new(Control::new());
        let ctl2 = ctl.clone();
        let name = call.name.clone();
        let thread = std::thread::Builder::new()
            .name(format!("shadow-{name}"))
            .spawn(move || {
                point::run(shadow.as_mut(), None, &ctl2, &mut |e| {
                    if let point::RunEvent::Failed(why) = e {
                        tracing::warn!(shadow = %name, error = %why, "Shadow step failed; it goes on.");
                    }
                })
            })
            .map_err(fail)?;
        self.lock()
            .insert(call.name.clone(), Running { ctl, thread });
        if let Err(e) = self.record(call) {
            // Followed now, but not after a restart until the server starts it again.
            tracing::warn!(shadow = %call.name, error = %e, "Could not record the started shadow; a restarted agent will wait for the server to start it.");
            return Ok(
                json!({ "running": true, "points": points, "recorded": false, "record_error": e }),
            );
        }
        Ok(json!({ "running": true, "points": points, "recorded": true }))
    }

    fn stop(&self, call: &ShadowCall) -> Result<Value, Failure> {
        match std::fs::remove_file(self.record_path(&call.name)) {
            Ok(()) => {}
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => {
                return Err(fail(format!(
                    "{}: {e} (the shadow would resume after a restart; nothing was stopped)",
                    self.record_path(&call.name).display()
                )))
            }
        }
        let Some(r) = self.lock().remove(&call.name) else {
            return Ok(json!({ "stopped": false, "running": false }));
        };
        r.ctl.stop();
        match r.thread.join() {
            Ok(Ok(())) => Ok(json!({ "stopped": true })),
            Ok(Err(e)) => Ok(json!({ "stopped": true, "last_error": e.to_string() })),
            Err(_) => Err(fail("the shadow's thread panicked")),
        }
    }

    fn point(&self, call: &ShadowCall, timeout: Duration) -> Result<Value, Failure> {
        let reason = reason_of(call.reason.as_ref().ok_or_else(|| fail("no reason"))?);
        let opts = self.options(call)?;
        let following = PointStore::open(&opts.dir)
            .map(|s| s.writer_running())
            .unwrap_or(false);
        let m = if following {
            // The follower (this process's thread or another process) takes it.
            let store = PointStore::open(&opts.dir).map_err(fail)?;
            let req = store.request_point(&reason).map_err(fail)?;
            store
                .await_request(&req, timeout.saturating_sub(Duration::from_secs(1)))
                .map_err(fail)?
                .ok_or_else(|| fail("the shadow's follower did not take the point in time"))?
        } else {
            let mut shadow = self.resource(call)?.start(&opts).map_err(fail)?;
            shadow.take_point(reason).map_err(fail)?
        };
        let locations = self.check_locations(call, &m);
        Ok(json!({
            // A started shadow nobody follows (the agent restarted without its record): the
            // server's task starts it again.
            "following": following,
            "point": point_json(&m),
            "bytes": m.bytes,
            "new_bytes": m.new_bytes,
            "checksum": m.checksum,
            "locations": locations,
        }))
    }

    /// Each location's check for the engine's merit: its directory exists, and its copy
    /// (when present) opens and looks like its kind; how long that took; the bytes a restore
    /// into it writes (the point's).
    fn check_locations(&self, call: &ShadowCall, m: &Manifest) -> Vec<Value> {
        let mut out = Vec::new();
        for l in &call.locations {
            let Some(rel) = &l.path else { continue };
            let start = Instant::now();
            let ok = match resolve(&self.root, rel) {
                Err(_) => false,
                Ok(p) => match std::fs::metadata(&p) {
                    Ok(md) if md.is_file() && call.resource.kind == ResourceKind::Sqlite => {
                        let mut head = [0u8; 16];
                        std::fs::File::open(&p)
                            .and_then(|mut f| f.read_exact(&mut head))
                            .map(|()| &head == b"SQLite format 3\0")
                            .unwrap_or(false)
                    }
                    Ok(md) => md.is_file() || md.is_dir(),
                    // Not there yet: a restore makes it, if its directory exists.
                    Err(_) => p.parent().is_some_and(Path::is_dir),
                },
            };
            out.push(json!({
                "location": l.id,
                "up": ok,
                "latency_ms": start.elapsed().as_secs_f64() * 1000.0,
                "errors": u64::from(!ok),
                "rollback_bytes": m.bytes,
            }));
        }
        out
    }

    fn restore(&self, call: &ShadowCall) -> Result<Value, Failure> {
        let id = call.location.as_deref().unwrap_or_default();
        let loc = call
            .locations
            .iter()
            .find(|l| l.id == id)
            .ok_or_else(|| fail(format!("no location {id}")))?;
        let rel = loc
            .path
            .as_deref()
            .ok_or_else(|| fail(format!("location {id} has no path to restore into")))?;
        let target = match call.to.as_ref().ok_or_else(|| fail("no target"))? {
            RestoreTo::Point(p) => Target::Point(p.parse::<PointId>().map_err(fail)?),
            RestoreTo::Time(ms) => Target::Time(Timestamp::from_micros(ms.saturating_mul(1000))),
        };
        let dir = resolve(&self.root, &call.dir).map_err(fail)?;
        let dest = resolve(&self.root, rel).map_err(fail)?;
        let elsewhere = call.resource.path.as_deref() != Some(rel);
        let req = RestoreRequest {
            dir,
            target,
            dest,
            elsewhere,
        };
        match bellwether_shadow::restore(&req) {
            Ok(r) => Ok(json!({
                "location": id,
                "path": rel,
                "point": r.point.to_string(),
                "point_taken_at_ms": r.point_taken_at.as_micros().div_euclid(1000),
                "restored_to_ms": r.restored_to.as_micros().div_euclid(1000),
                "commits_replayed": r.commits_replayed,
                "bytes": r.bytes,
                "checks": r.checks,
                "elapsed_ms": r.elapsed_ms,
            })),
            Err(e) => Err((e.to_string(), json!({ "point_unusable": unusable(&e) }))),
        }
    }

    /// Points `call.link` at the location's path: a new symbolic link (relative, so it
    /// means the same inside and outside the root) renamed over the old one.
    fn route(&self, call: &ShadowCall) -> Result<Value, Failure> {
        let id = call.location.as_deref().unwrap_or_default();
        let loc = call
            .locations
            .iter()
            .find(|l| l.id == id)
            .ok_or_else(|| fail(format!("no location {id}")))?;
        let to = loc
            .path
            .as_deref()
            .ok_or_else(|| fail(format!("location {id} has no path")))?;
        let link = call.link.as_deref().ok_or_else(|| fail("no link"))?;
        let (parent_rel, name) = match link.trim_end_matches('/').rsplit_once('/') {
            Some((p, n)) => (p, n),
            None => ("", link),
        };
        if name.is_empty() || name == ".." || name == "." {
            return Err(fail(format!("{link} names no link")));
        }
        let parent = resolve(&self.root, parent_rel).map_err(fail)?;
        let path = parent.join(name);
        match std::fs::symlink_metadata(&path) {
            Ok(m) if !m.file_type().is_symlink() => {
                return Err(fail(format!(
                    "{link} is a {} and not a link; move it away before routing through it (nothing was changed)",
                    if m.is_dir() { "directory" } else { "file" }
                )))
            }
            _ => {}
        }
        // Relative to the link's directory: up to the root, then down to the location.
        let depth = parent_rel
            .split('/')
            .filter(|c| !c.is_empty() && *c != ".")
            .count();
        let target = format!("{}{}", "../".repeat(depth), to.trim_start_matches("./"));
        let tmp = parent.join(format!(".{name}.bw-route-{}", std::process::id()));
        let _ = std::fs::remove_file(&tmp);
        std::os::unix::fs::symlink(&target, &tmp)
            .map_err(|e| fail(format!("{}: {e}", tmp.display())))?;
        if let Err(e) = std::fs::rename(&tmp, &path) {
            let _ = std::fs::remove_file(&tmp);
            return Err(fail(format!("{link}: {e}")));
        }
        if let Ok(d) = std::fs::File::open(&parent) {
            let _ = d.sync_all();
        }
        Ok(json!({ "link": link, "target": target, "location": id }))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn paths_resolve_inside_the_root_whatever_the_links() {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path().join("root");
        std::fs::create_dir_all(root.join("srv/data")).unwrap();
        std::fs::create_dir_all(dir.path().join("outside")).unwrap();
        let real = std::fs::canonicalize(&root).unwrap();
        // `..` stops at the root.
        assert_eq!(
            resolve(&root, "../../etc/passwd").unwrap(),
            real.join("etc/passwd")
        );
        // An absolute link is followed inside the root, as in a chroot.
        std::os::unix::fs::symlink("/etc", root.join("srv/abs")).unwrap();
        assert_eq!(resolve(&root, "srv/abs/x").unwrap(), real.join("etc/x"));
        // A relative link climbing out stops at the root.
        std::os::unix::fs::symlink("../../../outside", root.join("srv/up")).unwrap();
        assert_eq!(resolve(&root, "srv/up/f").unwrap(), real.join("outside/f"));
        // A loop is an error naming the path.
        std::os::unix::fs::symlink("loop", root.join("srv/loop")).unwrap();
        assert!(resolve(&root, "srv/loop/f")
            .unwrap_err()
            .contains("srv/loop/f"));
        // A missing tail is kept as it is.
        assert_eq!(
            resolve(&root, "srv/data/new/app.db").unwrap(),
            real.join("srv/data/new/app.db")
        );
    }

    #[test]
    fn a_bad_or_refused_record_is_named_and_kept() {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path().join("root");
        let state = dir.path().join("state");
        std::fs::create_dir_all(root.join("srv")).unwrap();
        std::fs::create_dir_all(state.join("shadows")).unwrap();
        let bad = state.join("shadows/broken.json");
        std::fs::write(&bad, b"{\"name\": \"broken\", \"resource\": ").unwrap();
        let spec: bellwether_model::shadow::ShadowSpec = serde_json::from_value(json!({
            "name": "app", "host": "h", "type": "full", "dir": "var/shadow",
            "resource": {"kind": "dir", "path": "srv"},
            "locations": [{"id": "a", "path": "srv"}]
        }))
        .unwrap();
        let good = state.join("shadows/app.json");
        std::fs::write(&good, serde_json::to_vec(&ShadowCall::of(&spec)).unwrap()).unwrap();
        let shadows = Shadows::new(&root, &state);
        let got = shadows.resume(|c| Err(format!("{} is not allowed here", c.name)));
        assert_eq!(got.len(), 2, "{got:?}");
        assert_eq!(got[0].name, "app");
        assert_eq!(got[0].result, Err("app is not allowed here".into()));
        let e = got[1].result.as_ref().unwrap_err();
        assert!(e.contains("broken.json"), "{e}");
        // Nothing is deleted and nothing runs: the server's next call decides.
        assert!(bad.is_file() && good.is_file());
        assert!(shadows.lock().is_empty());
        // Allowed, it runs and stays recorded; a stop forgets it.
        let got = shadows.resume(|_| Ok(()));
        assert!(got[0].result.is_ok(), "{got:?}");
        assert!(shadows.lock().contains_key("app"));
        shadows.stop(&ShadowCall::of(&spec)).unwrap();
        assert!(!good.exists());
        assert!(shadows.resume(|_| Ok(())).iter().all(|r| r.name != "app"));
    }

    #[test]
    fn a_route_swaps_the_link_and_never_replaces_a_file() {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path();
        std::fs::create_dir_all(root.join("srv/a")).unwrap();
        std::fs::create_dir_all(root.join("srv/b")).unwrap();
        std::fs::write(root.join("srv/a/app.db"), b"a").unwrap();
        std::fs::write(root.join("srv/b/app.db"), b"b").unwrap();
        let shadows = Shadows::new(root, &root.join("state"));
        let spec: bellwether_model::shadow::ShadowSpec = serde_json::from_value(json!({
            "name": "app", "host": "h", "type": "full", "dir": "var/shadow",
            "resource": {"kind": "sqlite", "path": "srv/a/app.db"},
            "locations": [{"id": "a", "path": "srv/a/app.db"}, {"id": "b", "path": "srv/b/app.db"}],
            "routing": {"link": "srv/current.db"}
        }))
        .unwrap();
        let mut call = ShadowCall::of(&spec);
        call.link = spec.routing.link.clone();
        for (loc, content) in [("a", "a"), ("b", "b")] {
            call.location = Some(loc.into());
            let out = shadows.route(&call).unwrap();
            assert_eq!(out["target"], format!("../srv/{loc}/app.db"));
            assert_eq!(
                std::fs::read_to_string(root.join("srv/current.db")).unwrap(),
                content
            );
        }
        std::fs::remove_file(root.join("srv/current.db")).unwrap();
        std::fs::write(root.join("srv/current.db"), b"precious").unwrap();
        let e = shadows.route(&call).unwrap_err();
        assert!(e.0.contains("not a link"), "{}", e.0);
        assert_eq!(
            std::fs::read(root.join("srv/current.db")).unwrap(),
            b"precious"
        );
    }
}
