//! The sandbox a script runs in: bubblewrap with every namespace unshared.
//!
//! Inside, the script sees its workspace (read-write, at `/work`), the
//! system's programs and libraries under `/usr` (read-only), a fresh `/tmp`,
//! `/proc` and `/dev`, and nothing else: the data directory, the keys, the
//! database and the rest of the host's files do not exist for it. It has no
//! network unless the pipeline allows it, runs as an unprivileged user in
//! its own user namespace, in a session of its own, and dies with its
//! parent. A timeout kills it.
//!
//! On the host, the job never acts as a privileged user: when custody runs
//! as root, each job runs under a uid of its own (one per running job, see
//! [`JOB_UID_BASE`]), its workspace belongs to that uid inside a directory
//! no other local user can enter, and no descriptor custody holds (a key it
//! opened, one it was started with) survives into the script.

use std::path::Path;
use std::process::Stdio;
use std::time::Duration;

use tokio::io::AsyncReadExt;
use tokio::process::{Child, Command};
use tokio::sync::mpsc;

use crate::cgroup::{Hit, JobGroup};
pub use custody_domain::pipeline::Resources;

/// The most output kept of one run.
pub const LOG_LIMIT: usize = 1024 * 1024;

/// What a sandboxed run may do.
#[derive(Clone, Debug)]
pub struct Limits {
    /// How long it may run.
    pub timeout: Duration,
    /// Whether it may reach the network.
    pub network: bool,
    /// The largest file it may write.
    pub max_file_bytes: u64,
    /// The memory all its processes may use together (a control group's
    /// cap; where custody has none, only the timeout bounds it).
    pub memory_bytes: u64,
    /// How many processes and threads it may run at once.
    pub processes: u32,
    /// The CPU time any one of its processes may use.
    pub cpu_time: Duration,
}

impl Limits {
    /// The largest file a script may write unless told otherwise: 8 GiB.
    pub const MAX_FILE_BYTES: u64 = 8 << 30;

    /// Limits with the instance's default ceiling for everything else.
    pub fn new(timeout: Duration, network: bool) -> Limits {
        let ceiling = Ceiling::default();
        Limits {
            timeout,
            network,
            max_file_bytes: Self::MAX_FILE_BYTES,
            memory_bytes: ceiling.memory_bytes,
            processes: ceiling.processes,
            cpu_time: ceiling.cpu_time,
        }
    }

    /// The limits of a job whose pipeline asks for `asked`, within the
    /// instance's `ceiling`; each value asked above the ceiling is held to
    /// it, with a line saying so for the job's log.
    pub fn within(timeout: Duration, network: bool, asked: &Resources, ceiling: &Ceiling) -> (Limits, String) {
        let mut notes = String::new();
        let mut cap = |what: &str, asked: Option<u64>, most: u64, show: &dyn Fn(u64) -> String| -> u64 {
            match asked {
                Some(asked) if asked > most => {
                    notes.push_str(&format!(
                        "custody: the pipeline asks for {what} {}, this instance allows at most {}; running with {}\n",
                        show(asked),
                        show(most),
                        show(most)
                    ));
                    most
                }
                Some(asked) => asked,
                None => most,
            }
        };
        let memory_bytes = cap("memory", asked.memory_bytes, ceiling.memory_bytes, &|b| bytes(b));
        let processes =
            cap("processes", asked.processes.map(u64::from), u64::from(ceiling.processes), &|n| n.to_string()) as u32;
        let cpu_time =
            cap("cpu_time", asked.cpu_time.map(|d| d.as_secs()), ceiling.cpu_time.as_secs(), &|s| format!("{s}s"));
        let limits = Limits {
            timeout,
            network,
            max_file_bytes: Self::MAX_FILE_BYTES,
            memory_bytes,
            processes,
            cpu_time: Duration::from_secs(cpu_time),
        };
        (limits, notes)
    }
}

/// The most any job of this instance may use, whatever its pipeline asks
/// (`custody serve --job-memory`, `--job-processes`, `--job-cpu-time`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Ceiling {
    /// Memory of all of a job's processes together.
    pub memory_bytes: u64,
    /// Processes and threads of a job at once.
    pub processes: u32,
    /// CPU time of any one process of a job.
    pub cpu_time: Duration,
}

impl Default for Ceiling {
    /// 4 GiB, 1,024 processes, two hours of CPU time.
    fn default() -> Self {
        Ceiling { memory_bytes: 4 << 30, processes: 1024, cpu_time: Duration::from_secs(2 * 3600) }
    }
}

/// A size for people: `512 MiB`, `4 GiB`.
pub fn bytes(n: u64) -> String {
    match n {
        n if n >= 1 << 30 && n % (1 << 30) == 0 => format!("{} GiB", n >> 30),
        n if n >= 1 << 20 && n % (1 << 20) == 0 => format!("{} MiB", n >> 20),
        n if n >= 1 << 20 => format!("{:.1} MiB", n as f64 / (1u64 << 20) as f64),
        n => format!("{n} bytes"),
    }
}

/// How a sandboxed run ended.
#[derive(Clone, Debug)]
pub struct Finished {
    /// The exit code; `None` when killed or when the sandbox failed.
    pub exit_code: Option<i32>,
    /// Whether the timeout killed it.
    pub timed_out: bool,
    /// Its output and errors, interleaved as written, cut at [`LOG_LIMIT`].
    pub log: String,
    /// The resource limit it ran into (`its memory limit of 512 MiB`), if
    /// any: such a run has failed whatever its exit code.
    pub limit: Option<String>,
}

/// Why a script could not be run at all.
#[derive(Debug, thiserror::Error)]
pub enum SandboxError {
    /// bubblewrap is not installed.
    #[error("bubblewrap (bwrap) is needed to run pipeline scripts in a sandbox; install it (Debian: apt-get install bubblewrap)")]
    Missing,
    /// Starting it failed.
    #[error("cannot start the sandbox: {0}")]
    Start(std::io::Error),
}

/// Where a job's uid comes from when custody runs as root: slot `n` of the
/// host is uid `JOB_UID_BASE + n` (`CUSTODY_JOB_UID_BASE` overrides it);
/// each slot is held by one job at a time, host-wide, through a lock file.
pub const JOB_UID_BASE: u32 = 1_900_000;

/// How many jobs may run at once on one host under their own uids.
const JOB_SLOTS: u32 = 1024;

/// A job's uid, held while the job runs.
#[derive(Debug)]
struct Slot {
    number: u32,
    uid: u32,
    _lock: std::fs::File,
}

impl Slot {
    /// A free slot of this host, when custody runs as root; `None` when it
    /// does not (a job then runs as custody's own, unprivileged, user).
    fn acquire() -> std::io::Result<Option<Slot>> {
        // SAFETY: geteuid has no preconditions.
        if unsafe { libc::geteuid() } != 0 {
            return Ok(None);
        }
        let base = std::env::var("CUSTODY_JOB_UID_BASE").ok().and_then(|b| b.parse().ok()).unwrap_or(JOB_UID_BASE);
        let dir = std::env::temp_dir().join("custody-job-slots");
        match std::fs::create_dir(&dir) {
            Ok(()) => {}
            Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {}
            Err(e) => return Err(e),
        }
        // Only root's own directory: never one another user planted or linked.
        use std::os::unix::fs::{MetadataExt as _, PermissionsExt as _};
        let meta = std::fs::symlink_metadata(&dir)?;
        if !meta.is_dir() || meta.uid() != 0 {
            return Err(std::io::Error::other(format!("{} is not a directory of root's", dir.display())));
        }
        std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(0o700))?;
        for n in 0..JOB_SLOTS {
            let file = std::fs::File::options()
                .create(true)
                .truncate(false)
                .write(true)
                .custom_flags(libc::O_NOFOLLOW)
                .open(dir.join(format!("{n}.lock")))?;
            if crate::try_lock(&file) {
                return Ok(Some(Slot { number: n, uid: base + n, _lock: file }));
            }
        }
        Err(std::io::Error::other(format!("all {JOB_SLOTS} job slots of this host are taken")))
    }
}

use std::os::unix::fs::OpenOptionsExt as _;

/// A job's workspace on the host: a fresh directory inside a private one
/// (mode 0700), both handed to the job's own uid before it runs when custody
/// runs as root, so that no other local user can enter it and nothing the
/// job leaves there (a setuid copy of a program, say) belongs to root.
#[derive(Debug)]
pub struct Workspace {
    root: tempfile::TempDir,
    work: std::path::PathBuf,
    slot: Option<Slot>,
}

impl Workspace {
    /// A new, empty workspace for a job of `kind` (`check`, `build`, `deploy`).
    pub fn new(kind: &str) -> std::io::Result<Workspace> {
        let slot = Slot::acquire()?;
        let root = tempfile::Builder::new().prefix(&format!("custody-{kind}-")).tempdir()?;
        use std::os::unix::fs::PermissionsExt as _;
        std::fs::set_permissions(root.path(), std::fs::Permissions::from_mode(0o700))?;
        let work = root.path().join("work");
        std::fs::create_dir(&work)?;
        Ok(Workspace { root, work, slot })
    }

    /// The workspace (seen as `/work` inside the sandbox).
    pub fn path(&self) -> &Path {
        &self.work
    }

    /// The host uid the job runs as, when it is not custody's own.
    pub fn job_uid(&self) -> Option<u32> {
        self.slot.as_ref().map(|s| s.uid)
    }

    /// Makes the directory `name` of the workspace for the job (its home,
    /// its temporary files, the artifacts of a deployment). A checkout that
    /// holds anything there other than a plain directory (a symbolic link
    /// to somewhere on the host, say) fails the job, naming the path.
    pub fn fresh_dir(&self, name: &str) -> Result<std::path::PathBuf, String> {
        let path = self.work.join(name);
        match std::fs::symlink_metadata(&path) {
            Ok(meta) if meta.is_dir() && !meta.file_type().is_symlink() => Ok(path),
            Ok(_) => Err(format!(
                "{name} in the checkout is not a plain directory (a symbolic link or a file); custody makes it \
                 itself and never writes through a link: remove it from the repository"
            )),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                std::fs::create_dir(&path).map_err(|e| format!("cannot make {name}: {e}"))?;
                Ok(path)
            }
            Err(e) => Err(format!("cannot look at {name}: {e}")),
        }
    }

    /// Gives everything in the workspace to the job's uid, without following
    /// any link; called once custody has placed everything, before the job
    /// runs.
    fn hand_over(&self) -> std::io::Result<()> {
        let Some(uid) = self.job_uid() else { return Ok(()) };
        fn walk(path: &Path, uid: u32) -> std::io::Result<()> {
            std::os::unix::fs::lchown(path, Some(uid), Some(uid))?;
            let meta = std::fs::symlink_metadata(path)?;
            if meta.is_dir() {
                for entry in std::fs::read_dir(path)? {
                    walk(&entry?.path(), uid)?;
                }
            }
            Ok(())
        }
        walk(self.root.path(), uid)
    }
}

/// Marks every descriptor above 2 close-on-exec: whatever custody was
/// started with (or opened without the flag) never reaches a script.
/// Async-signal-safe, for use between fork and exec.
pub fn close_inherited_descriptors() {
    // SAFETY: close_range only changes flags of this process's descriptors.
    let done = unsafe { libc::syscall(libc::SYS_close_range, 3u32, u32::MAX, libc::CLOSE_RANGE_CLOEXEC) };
    if done != 0 {
        // Kernels before 5.11: one at a time, up to the descriptor limit.
        // SAFETY: sysconf and fcntl on integers, no memory involved.
        let most = unsafe { libc::sysconf(libc::_SC_OPEN_MAX) }.clamp(3, 65_536) as i32;
        for fd in 3..most {
            unsafe {
                libc::fcntl(fd, libc::F_SETFD, libc::FD_CLOEXEC);
            }
        }
    }
}

/// The bubblewrap arguments for running `command` with `sh -c` in `workspace`.
pub fn arguments(workspace: &Path, env: &[(String, String)], limits: &Limits) -> Vec<String> {
    let mut args: Vec<String> = [
        "--unshare-all",
        "--die-with-parent",
        "--new-session",
        "--uid",
        "65534",
        "--gid",
        "65534",
        "--ro-bind",
        "/usr",
        "/usr",
        "--symlink",
        "usr/bin",
        "/bin",
        "--symlink",
        "usr/lib",
        "/lib",
        "--symlink",
        "usr/lib64",
        "/lib64",
        "--symlink",
        "usr/sbin",
        "/sbin",
        "--proc",
        "/proc",
        "--dev",
        "/dev",
        "--tmpfs",
        "/tmp",
    ]
    .into_iter()
    .map(str::to_owned)
    .collect();
    // Only what programs need from /etc; never the whole of it.
    for path in ["/etc/alternatives", "/etc/ld.so.cache", "/etc/ssl/certs"] {
        if Path::new(path).exists() {
            args.extend(["--ro-bind".into(), path.into(), path.into()]);
        }
    }
    if limits.network {
        args.push("--share-net".into());
        if Path::new("/etc/resolv.conf").exists() {
            args.extend(["--ro-bind".into(), "/etc/resolv.conf".into(), "/etc/resolv.conf".into()]);
        }
    }
    args.extend(["--bind".into(), workspace.display().to_string(), "/work".into(), "--chdir".into(), "/work".into()]);
    args.push("--clearenv".into());
    for (key, value) in env {
        args.extend(["--setenv".into(), key.clone(), value.clone()]);
    }
    args
}

/// Runs `command` (a shell command line) in the sandbox.
pub async fn run(
    workspace: &Workspace,
    command: &str,
    env: &[(String, String)],
    limits: &Limits,
) -> Result<Finished, SandboxError> {
    run_streaming(workspace, command, env, limits, None).await
}

/// Runs `command` in the sandbox, also sending its output to `output` as it
/// is written (the kept log is still cut at [`LOG_LIMIT`]).
pub async fn run_streaming(
    workspace: &Workspace,
    command: &str,
    env: &[(String, String)],
    limits: &Limits,
    output: Option<mpsc::UnboundedSender<Vec<u8>>>,
) -> Result<Finished, SandboxError> {
    let bwrap = bwrap()?;
    workspace.hand_over().map_err(SandboxError::Start)?;
    let job_uid = workspace.job_uid();
    let group = control_group(workspace, limits);
    // Held open until the job has started.
    let entry_files = match &group {
        Some(group) => group.entry_files().map_err(SandboxError::Start)?,
        None => Vec::new(),
    };
    let entries: Vec<i32> = entry_files.iter().map(std::os::fd::AsRawFd::as_raw_fd).collect();
    let floor = Floor::for_job(limits, job_uid);
    let mut sandbox = sandbox_command(bwrap, workspace.path(), command, env, limits);
    confine(&mut sandbox, entries, floor, job_uid);
    let mut child = sandbox.spawn().map_err(SandboxError::Start)?;
    drop(entry_files);
    let notice = output.clone();
    let mut finished = wait_or_kill(&mut child, output, limits.timeout).await;
    finished.limit = limit_hit(group.as_ref(), &finished, limits);
    note_limit(&mut finished, notice.as_ref());
    remove_group(group).await;
    Ok(finished)
}

/// Where bubblewrap is installed on this host: `CUSTODY_BWRAP` when set
/// (a host that keeps it elsewhere), else `/usr/bin/bwrap` or `/bin/bwrap`.
/// Which one a server uses is part of the configuration its start records.
pub fn bubblewrap() -> Option<&'static str> {
    static CONFIGURED: std::sync::OnceLock<Option<String>> = std::sync::OnceLock::new();
    let configured = CONFIGURED.get_or_init(|| std::env::var("CUSTODY_BWRAP").ok().filter(|p| !p.is_empty()));
    match configured {
        Some(path) => Some(path.as_str()).filter(|p| Path::new(p).exists()),
        None => ["/usr/bin/bwrap", "/bin/bwrap"].into_iter().find(|p| Path::new(p).exists()),
    }
}

fn bwrap() -> Result<&'static str, SandboxError> {
    bubblewrap().ok_or(SandboxError::Missing)
}

/// Runs a command in the sandbox as a job would, and says how it went: the
/// check `custody doctor` makes that bubblewrap is there and works here.
/// `Ok(true)` when jobs also run under a uid of their own (custody is root).
pub async fn self_test() -> Result<bool, String> {
    let workspace = Workspace::new("doctor").map_err(|e| format!("cannot make a job's workspace: {e}"))?;
    let limits = Limits::new(Duration::from_secs(30), false);
    let finished = run(&workspace, "echo sandboxed", &[], &limits).await.map_err(|e| e.to_string())?;
    if finished.exit_code == Some(0) && finished.log.trim() == "sandboxed" {
        Ok(workspace.job_uid().is_some())
    } else {
        Err(format!("bubblewrap did not run a job: exit {:?}, output {:?}", finished.exit_code, finished.log.trim()))
    }
}

/// The kernel's cap on all of the job's processes together, where custody can make one (as root).
fn control_group(workspace: &Workspace, limits: &Limits) -> Option<JobGroup> {
    // The rlimits of the job's [`Floor`] hold either way.
    let slot = workspace.slot.as_ref()?;
    match JobGroup::create(slot.number, limits.memory_bytes, limits.processes) {
        Ok(group) => group,
        Err(error) => {
            tracing::warn!(%error, "cannot make the job's control group; its memory is not capped");
            None
        }
    }
}

/// bubblewrap running `command` with `sh -c` in `workspace`, its output piped, in a process group of its own.
fn sandbox_command(bwrap: &str, workspace: &Path, command: &str, env: &[(String, String)], limits: &Limits) -> Command {
    let mut sandbox = Command::new(bwrap);
    sandbox
        .args(arguments(workspace, env, limits))
        .args(["--", "/bin/sh", "-c", &format!("exec 2>&1; {command}")])
        .env_clear()
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true)
        // Its own process group, so that a timeout kills all of it.
        .process_group(0);
    sandbox
}

/// Between fork and exec: join the control group, close inherited descriptors, apply the floor, take the job's uid.
fn confine(sandbox: &mut Command, entries: Vec<i32>, floor: Floor, job_uid: Option<u32>) {
    // SAFETY: only async-signal-safe calls (write, close_range or fcntl,
    // setrlimit, setgroups, setgid, setuid) between fork and exec, on
    // memory allocated before the fork.
    unsafe {
        sandbox.pre_exec(move || {
            for fd in &entries {
                // `0` is the writing process: the job joins its group
                // before it can start anything.
                if libc::write(*fd, b"0".as_ptr().cast(), 1) != 1 {
                    return Err(std::io::Error::last_os_error());
                }
            }
            close_inherited_descriptors();
            floor.apply()?;
            if let Some(uid) = job_uid {
                // The job's own uid, never root's: bubblewrap then maps its
                // sandbox user to it.
                if libc::setgroups(0, std::ptr::null()) != 0
                    || libc::setgid(uid as libc::gid_t) != 0
                    || libc::setuid(uid as libc::uid_t) != 0
                {
                    return Err(std::io::Error::last_os_error());
                }
            }
            Ok(())
        });
    }
}

/// Reads the job's output until it exits, or kills it when `timeout` passes first.
async fn wait_or_kill(
    child: &mut Child,
    output: Option<mpsc::UnboundedSender<Vec<u8>>>,
    timeout: Duration,
) -> Finished {
    let group_id = child.id();
    let mut stdout = child.stdout.take().expect("piped");
    let mut stderr = child.stderr.take().expect("piped");
    let reading = async {
        let (mut out, err) = tokio::join!(
            read_capped(&mut stdout, LOG_LIMIT, output.clone()),
            read_capped(&mut stderr, 64 * 1024, output)
        );
        out.extend(err);
        out
    };
    let waited = tokio::time::timeout(timeout, async {
        let output = reading.await;
        let status = child.wait().await;
        (output, status)
    })
    .await;
    match waited {
        Ok((output, status)) => Finished {
            exit_code: status.ok().and_then(|s| s.code()),
            timed_out: false,
            log: String::from_utf8_lossy(&output).into_owned(),
            limit: None,
        },
        Err(_) => {
            kill_job(group_id, child).await;
            Finished {
                exit_code: None,
                timed_out: true,
                log: format!("killed after the timeout of {} s\n", timeout.as_secs()),
                limit: None,
            }
        }
    }
}

/// Kills the job's whole process group, then bubblewrap itself.
async fn kill_job(group_id: Option<u32>, child: &mut Child) {
    // The whole group goes; bwrap's death also ends the sandbox's
    // pid namespace, and with it every process the script started.
    if let Some(pid) = group_id {
        // SAFETY: kill(2) on a process group id we created.
        unsafe {
            libc::kill(-(pid as i32), libc::SIGKILL);
        }
    }
    let _ = child.kill().await;
}

/// The resource limit the job ran into, as its control group, exit code or log tell it.
fn limit_hit(group: Option<&JobGroup>, finished: &Finished, limits: &Limits) -> Option<String> {
    match group.and_then(JobGroup::hit) {
        Some(Hit::Memory) => Some(format!("its memory limit of {}", bytes(limits.memory_bytes))),
        Some(Hit::Processes) => Some(format!("its limit of {} processes", limits.processes)),
        // 128 + SIGXCPU: a process ran out of CPU time.
        None if finished.exit_code == Some(128 + libc::SIGXCPU) => {
            Some(format!("its CPU-time limit of {} s per process", limits.cpu_time.as_secs()))
        }
        // A fork refused under RLIMIT_NPROC leaves no other sign.
        None if forks_refused(&finished.log) => Some(format!("its limit of {} processes", limits.processes)),
        None => None,
    }
}

/// Says at the end of the log, and of the stream, which limit stopped the job.
fn note_limit(finished: &mut Finished, notice: Option<&mpsc::UnboundedSender<Vec<u8>>>) {
    if let Some(limit) = &finished.limit {
        let line = format!("\ncustody: the job ran into {limit} and was stopped\n");
        if let Some(notice) = notice {
            // Past the stream's cap too: this line always reaches the log.
            let _ = notice.send(line.clone().into_bytes());
        }
        finished.log.push_str(&line);
    }
}

/// Removes the job's control group, on a blocking thread: it waits for its last tasks to be reaped.
async fn remove_group(group: Option<JobGroup>) {
    if let Some(group) = group {
        let _ = tokio::task::spawn_blocking(move || drop(group)).await;
    }
}

/// Whether a shell said that a fork was refused.
fn forks_refused(log: &str) -> bool {
    log.contains("Cannot fork") || log.contains("fork: Resource temporarily unavailable")
}

/// How many tasks (processes and threads) custody's own user runs now.
fn tasks_of_this_user() -> u64 {
    // SAFETY: getuid has no preconditions.
    let uid = unsafe { libc::getuid() }.to_string();
    let Ok(entries) = std::fs::read_dir("/proc") else { return 0 };
    entries
        .filter_map(|e| e.ok())
        .filter(|e| e.file_name().to_str().is_some_and(|n| n.bytes().all(|b| b.is_ascii_digit())))
        .filter_map(|e| std::fs::read_to_string(e.path().join("status")).ok())
        .filter(|status| {
            status.lines().any(|l| l.strip_prefix("Uid:").and_then(|v| v.split_whitespace().next()) == Some(&uid))
        })
        .filter_map(|status| {
            status.lines().find_map(|l| l.strip_prefix("Threads:").and_then(|n| n.trim().parse::<u64>().ok()))
        })
        .sum()
}

/// The resource limits every script inherits, the floor under any control
/// group: no core dumps, a bounded number of open files, no file larger
/// than `file_bytes`, no process past `cpu_seconds` of CPU time, and at
/// most `processes` tasks of the uid it runs as. Never `RLIMIT_AS`: it
/// counts address space reserved, not used, and breaks JVMs and Go.
#[derive(Clone, Copy)]
struct Floor {
    file_bytes: u64,
    cpu_seconds: u64,
    processes: u64,
}

impl Floor {
    /// The floor of a job with `limits`, running as `job_uid` or else as custody's own user.
    fn for_job(limits: &Limits, job_uid: Option<u32>) -> Floor {
        Floor {
            file_bytes: limits.max_file_bytes,
            cpu_seconds: limits.cpu_time.as_secs().max(1),
            // RLIMIT_NPROC counts every task of the real uid: a job's own uid has
            // only the job's; custody's own user also has custody's.
            processes: match job_uid {
                Some(_) => u64::from(limits.processes),
                None => u64::from(limits.processes) + tasks_of_this_user(),
            },
        }
    }

    fn apply(&self) -> std::io::Result<()> {
        let set = |resource, soft: u64, hard: u64| {
            let limit = libc::rlimit { rlim_cur: soft as libc::rlim_t, rlim_max: hard as libc::rlim_t };
            // SAFETY: setrlimit with a valid pointer to a local struct.
            if unsafe { libc::setrlimit(resource, &limit) } != 0 {
                return Err(std::io::Error::last_os_error());
            }
            Ok(())
        };
        set(libc::RLIMIT_CORE, 0, 0)?;
        set(libc::RLIMIT_NOFILE, 4096, 4096)?;
        set(libc::RLIMIT_FSIZE, self.file_bytes, self.file_bytes)?;
        // SIGXCPU at the limit, which a shell reports; SIGKILL a second on.
        set(libc::RLIMIT_CPU, self.cpu_seconds, self.cpu_seconds + 1)?;
        set(libc::RLIMIT_NPROC, self.processes, self.processes)?;
        Ok(())
    }
}

/// Reads to the end, keeping the first `limit` bytes: a script that writes
/// more is never blocked on a full pipe.
async fn read_capped(
    reader: &mut (impl tokio::io::AsyncRead + Unpin),
    limit: usize,
    output: Option<mpsc::UnboundedSender<Vec<u8>>>,
) -> Vec<u8> {
    let mut kept = Vec::new();
    let mut buffer = [0u8; 8192];
    let mut streamed = 0usize;
    loop {
        match reader.read(&mut buffer).await {
            Ok(0) | Err(_) => return kept,
            Ok(n) => {
                if let Some(output) = &output {
                    // The stream is capped like the log, so a chatty script
                    // cannot flood the database.
                    let room = limit.saturating_sub(streamed).min(n);
                    if room > 0 {
                        streamed += room;
                        let _ = output.send(buffer[..room].to_vec());
                    }
                }
                let room = limit.saturating_sub(kept.len());
                kept.extend_from_slice(&buffer[..n.min(room)]);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn limits() -> Limits {
        Limits::new(Duration::from_secs(20), false)
    }

    fn available() -> bool {
        let present = Path::new("/usr/bin/bwrap").exists();
        assert!(present, "bubblewrap is not installed: run scripts/setup");
        present
    }

    #[tokio::test]
    async fn a_script_sees_its_workspace_and_not_the_hosts_files() {
        if !available() {
            return;
        }
        let host = tempfile::tempdir().unwrap();
        std::fs::write(host.path().join("signing.key"), "secret").unwrap();
        let workspace = Workspace::new("test").unwrap();
        std::fs::write(workspace.path().join("input.txt"), "hello").unwrap();
        let secret = host.path().join("signing.key");
        let command = format!(
            "cat input.txt; echo; cat {} && echo LEAKED; ls /root /etc/shadow 2>/dev/null && echo LEAKED; echo out > made.txt",
            secret.display()
        );
        let done = run(&workspace, &command, &[], &limits()).await.unwrap();
        assert_eq!(done.exit_code, Some(0), "{}", done.log);
        assert!(done.log.starts_with("hello"), "{}", done.log);
        assert!(!done.log.contains("LEAKED"), "{}", done.log);
        assert!(!done.log.contains("secret"), "{}", done.log);
        assert_eq!(std::fs::read_to_string(workspace.path().join("made.txt")).unwrap(), "out\n");
    }

    #[tokio::test]
    async fn a_script_has_no_network_and_a_clean_environment() {
        if !available() {
            return;
        }
        let workspace = Workspace::new("test").unwrap();
        let env = vec![("CUSTODY_PROJECT".to_owned(), "payments".to_owned())];
        let done = run(&workspace, "echo $CUSTODY_PROJECT; env | wc -l; cat /proc/net/dev | wc -l", &env, &limits())
            .await
            .unwrap();
        let lines: Vec<&str> = done.log.lines().collect();
        assert_eq!(lines[0], "payments", "{}", done.log);
        // Only the loopback device exists in a fresh network namespace.
        assert_eq!(lines[2].trim(), "3", "{}", done.log);
    }

    #[tokio::test]
    async fn a_script_past_its_timeout_is_killed() {
        if !available() {
            return;
        }
        let workspace = Workspace::new("test").unwrap();
        let limits = Limits::new(Duration::from_millis(500), false);
        let done = run(&workspace, "sleep 30", &[], &limits).await.unwrap();
        assert!(done.timed_out);
        assert_eq!(done.exit_code, None);
    }

    #[tokio::test]
    async fn a_script_cannot_write_a_file_past_its_size_limit() {
        if !available() {
            return;
        }
        let workspace = Workspace::new("test").unwrap();
        let limits = Limits { max_file_bytes: 1 << 20, ..limits() };
        let done = run(&workspace, "head -c 3000000 /dev/zero > big; echo status $?", &[], &limits).await.unwrap();
        assert!(!done.log.contains("status 0"), "{}", done.log);
        let written = std::fs::metadata(workspace.path().join("big")).map(|m| m.len()).unwrap_or(0);
        assert!(written <= 1 << 20, "wrote {written} bytes");
    }

    #[tokio::test]
    async fn the_output_streams_while_the_script_runs() {
        if !available() {
            return;
        }
        let workspace = Workspace::new("test").unwrap();
        let (sender, mut receiver) = mpsc::unbounded_channel();
        let limits = limits();
        let done = run_streaming(&workspace, "echo first; sleep 1; echo second", &[], &limits, Some(sender));
        let first = async { receiver.recv().await };
        tokio::pin!(done);
        // The first line arrives while the script still sleeps.
        let chunk = tokio::select! {
            chunk = first => chunk.unwrap(),
            _ = &mut done => panic!("the script finished before its first line was streamed"),
        };
        assert_eq!(chunk, b"first\n");
        let finished = done.await.unwrap();
        assert_eq!(finished.log, "first\nsecond\n");
    }

    #[tokio::test]
    async fn a_job_never_acts_as_root_on_the_host_and_its_workspace_is_private() {
        use std::os::unix::fs::{MetadataExt as _, PermissionsExt as _};
        if !available() {
            return;
        }
        let workspace = Workspace::new("test").unwrap();
        // A setuid copy of a program, made by the script and seen from the host.
        let done = run(&workspace, "cp /usr/bin/true ./escape && chmod 4755 ./escape && echo made", &[], &limits())
            .await
            .unwrap();
        assert!(done.log.contains("made"), "{}", done.log);
        let escape = std::fs::metadata(workspace.path().join("escape")).unwrap();
        // SAFETY: geteuid has no preconditions.
        let custody_uid = unsafe { libc::geteuid() };
        if custody_uid == 0 {
            assert_ne!(escape.uid(), 0, "the job's files are not root's");
            assert_eq!(Some(escape.uid()), workspace.job_uid());
        } else {
            assert_eq!(escape.uid(), custody_uid, "the job runs as custody's own user");
        }
        let parent = std::fs::metadata(workspace.path().parent().unwrap()).unwrap();
        assert_eq!(parent.permissions().mode() & 0o777, 0o700, "no other local user enters the workspace");
        assert_eq!(parent.uid(), escape.uid());
        // Two jobs at once hold two different uids.
        let other = Workspace::new("test").unwrap();
        if custody_uid == 0 {
            assert_ne!(other.job_uid(), workspace.job_uid());
        }
    }

    #[tokio::test]
    async fn a_descriptor_custody_holds_does_not_reach_a_script() {
        use std::os::fd::AsRawFd as _;
        if !available() {
            return;
        }
        let keys = tempfile::tempdir().unwrap();
        let key = keys.path().join("ledger.pem");
        std::fs::write(&key, "PRIVATE KEY MATERIAL").unwrap();
        let file = std::fs::File::open(&key).unwrap();
        // As if custody had been started with it open: no close-on-exec.
        // SAFETY: fcntl on a descriptor this test owns.
        unsafe {
            libc::fcntl(file.as_raw_fd(), libc::F_SETFD, 0);
        }
        let workspace = Workspace::new("test").unwrap();
        let fd = file.as_raw_fd();
        let command = format!("cat /proc/self/fd/{fd} 2>&1; ls /proc/self/fd; echo done");
        let done = run(&workspace, &command, &[], &limits()).await.unwrap();
        assert!(done.log.contains("done"), "{}", done.log);
        assert!(!done.log.contains("PRIVATE KEY"), "{}", done.log);
        drop(file);
    }

    #[test]
    fn a_link_in_the_checkout_where_custody_makes_a_directory_fails_the_job() {
        let workspace = Workspace::new("test").unwrap();
        let host = tempfile::tempdir().unwrap();
        std::os::unix::fs::symlink(host.path(), workspace.path().join(".home")).unwrap();
        let why = workspace.fresh_dir(".home").unwrap_err();
        assert!(why.contains(".home") && why.contains("symbolic link"), "{why}");
        assert!(workspace.fresh_dir(".tmp").is_ok());
    }

    /// Whether custody can cap a job's memory here: it runs as root on a
    /// host with the memory and pids controllers. Under CI, which runs as
    /// root on such hosts, it must.
    fn capped() -> bool {
        let workspace = Workspace::new("test").unwrap();
        let capped = workspace.slot.as_ref().is_some_and(|slot| {
            JobGroup::create(slot.number + 512, 64 << 20, 64).expect("making a control group").is_some()
        });
        let ci = std::env::var("CI").is_ok_and(|v| v == "true");
        assert!(capped || workspace.slot.is_none() || !ci, "as root under CI, jobs must get a control group");
        capped
    }

    #[tokio::test]
    async fn a_fork_bomb_fails_its_job_with_the_process_limit_named() {
        if !available() {
            return;
        }
        let workspace = Workspace::new("test").unwrap();
        let limits = Limits { processes: 64, ..limits() };
        let done = run(&workspace, "bomb() { bomb | bomb; }; bomb; echo survived", &[], &limits).await.unwrap();
        assert_eq!(done.limit.as_deref(), Some("its limit of 64 processes"), "{}", done.log);
        assert!(done.log.contains("custody: the job ran into its limit of 64 processes"), "{}", done.log);
        // Every process of the bomb is gone with its job (a zombie left to
        // the host's init to reap runs nothing).
        if let Some(uid) = workspace.job_uid() {
            let listed = std::process::Command::new("ps")
                .args(["-o", "pid=,stat=,comm=", "-u", &uid.to_string()])
                .output()
                .unwrap();
            let listed = String::from_utf8_lossy(&listed.stdout);
            let running: Vec<&str> =
                listed.lines().filter(|l| l.split_whitespace().nth(1).is_some_and(|s| !s.starts_with('Z'))).collect();
            assert!(running.is_empty(), "left running: {running:?}");
        }
    }

    #[tokio::test]
    async fn a_job_touching_more_memory_than_its_limit_fails_with_the_limit_named() {
        if !available() {
            return;
        }
        let workspace = Workspace::new("test").unwrap();
        let limits = Limits { memory_bytes: 512 << 20, ..limits() };
        // 1 GiB, every page of it written.
        let done =
            run(&workspace, "python3 -c \"b = b'x' * (1 << 30); print('held', len(b))\"", &[], &limits).await.unwrap();
        if capped() {
            assert_eq!(done.limit.as_deref(), Some("its memory limit of 512 MiB"), "{}", done.log);
            assert!(!done.log.contains("held"), "{}", done.log);
        } else {
            // Unprivileged, custody has no memory cap to give: the job is
            // bounded by its timeout only, as SECURITY.md says.
            assert_eq!(done.limit, None, "{}", done.log);
        }
    }

    #[tokio::test]
    async fn a_process_past_its_cpu_time_is_stopped_with_the_limit_named() {
        if !available() {
            return;
        }
        let workspace = Workspace::new("test").unwrap();
        let limits = Limits { cpu_time: Duration::from_secs(1), ..limits() };
        let done = run(&workspace, "while :; do :; done", &[], &limits).await.unwrap();
        assert!(!done.timed_out, "{}", done.log);
        assert_eq!(done.limit.as_deref(), Some("its CPU-time limit of 1 s per process"), "{}", done.log);
    }

    #[test]
    fn a_pipeline_asking_past_the_instance_ceiling_gets_the_ceiling() {
        let ceiling = Ceiling { memory_bytes: 1 << 30, processes: 100, cpu_time: Duration::from_secs(60) };
        let asked = Resources { memory_bytes: Some(8 << 30), processes: Some(50), cpu_time: None };
        let (limits, notes) = Limits::within(Duration::from_secs(10), false, &asked, &ceiling);
        assert_eq!(limits.memory_bytes, 1 << 30);
        assert_eq!(limits.processes, 50);
        assert_eq!(limits.cpu_time, Duration::from_secs(60));
        assert_eq!(
            notes,
            "custody: the pipeline asks for memory 8 GiB, this instance allows at most 1 GiB; running with 1 GiB\n"
        );
    }

    /// The tests of the sandbox that hold whichever user custody runs as.
    const EITHER_USER: &[&str] = &[
        "sandbox::tests::a_script_sees_its_workspace_and_not_the_hosts_files",
        "sandbox::tests::a_script_has_no_network_and_a_clean_environment",
        "sandbox::tests::a_job_never_acts_as_root_on_the_host_and_its_workspace_is_private",
        "sandbox::tests::a_descriptor_custody_holds_does_not_reach_a_script",
        "sandbox::tests::a_fork_bomb_fails_its_job_with_the_process_limit_named",
        "sandbox::tests::a_job_touching_more_memory_than_its_limit_fails_with_the_limit_named",
        "sandbox::tests::a_process_past_its_cpu_time_is_stopped_with_the_limit_named",
        "sandbox::tests::a_script_cannot_write_a_file_past_its_size_limit",
    ];

    #[test]
    fn the_sandbox_holds_when_custody_runs_as_an_unprivileged_user() {
        use std::os::unix::fs::PermissionsExt as _;
        use std::os::unix::process::CommandExt as _;
        // SAFETY: geteuid has no preconditions.
        if !available() || unsafe { libc::geteuid() } != 0 {
            // Not root: every test of this module runs unprivileged already.
            return;
        }
        // This very test binary, where user nobody can run it.
        let dir = tempfile::tempdir().unwrap();
        std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o755)).unwrap();
        let binary = dir.path().join("runner-tests");
        std::fs::copy(std::env::current_exe().unwrap(), &binary).unwrap();
        std::fs::set_permissions(&binary, std::fs::Permissions::from_mode(0o755)).unwrap();
        let output = std::process::Command::new(&binary)
            .args(["--exact", "--test-threads", "1"])
            .args(EITHER_USER)
            .env_clear()
            .env("PATH", "/usr/bin:/bin")
            .env("TMPDIR", "/tmp")
            .env("CI", std::env::var("CI").unwrap_or_default())
            .uid(65534)
            .gid(65534)
            .output()
            .unwrap();
        let text = String::from_utf8_lossy(&output.stdout);
        assert!(output.status.success(), "{text}\n{}", String::from_utf8_lossy(&output.stderr));
        assert!(text.contains(&format!("test result: ok. {} passed", EITHER_USER.len())), "{text}");
    }
}
