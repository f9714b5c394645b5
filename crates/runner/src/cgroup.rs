//! A job's control group: the kernel's cap on the memory and the processes
//! of everything a script starts, however it forks.
//!
//! custody uses the host's cgroup v2 hierarchy when it is mounted alone at
//! `/sys/fs/cgroup` with the memory and pids controllers, and otherwise the
//! cgroup v1 memory and pids hierarchies (as on hosts that mount both
//! versions). Either way it needs to run as root; a custody that does not
//! has only the floor of resource limits (`RLIMIT_NPROC`, `RLIMIT_CPU`).
//!
//! A job's group is named after its host-wide slot, so two jobs never share
//! one, and a group left behind by a process that died is emptied and reused
//! by the next job of that slot.

use std::io::Write as _;
use std::os::unix::fs::OpenOptionsExt as _;
use std::path::{Path, PathBuf};

/// Where the hierarchies are mounted.
const ROOT: &str = "/sys/fs/cgroup";
/// The directory custody keeps its jobs' groups in, in each hierarchy.
const PARENT: &str = "custody-jobs";

/// Which limit a job ran into.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Hit {
    /// The memory limit: the kernel killed a process of the job.
    Memory,
    /// The process limit: a fork failed.
    Processes,
}

#[derive(Debug)]
enum Layout {
    /// One group in the unified hierarchy.
    V2 { dir: PathBuf },
    /// A group in each of the memory and pids hierarchies.
    V1 { memory: PathBuf, pids: PathBuf },
}

/// A job's control group, removed (with anything left in it) when dropped.
#[derive(Debug)]
pub struct JobGroup {
    layout: Layout,
}

impl JobGroup {
    /// Makes the group of job slot `slot`, capped at `memory_bytes` of
    /// memory (swap included where the host accounts it) and `processes`
    /// tasks. `Ok(None)` when the host offers no controller custody can use.
    pub fn create(slot: u32, memory_bytes: u64, processes: u32) -> std::io::Result<Option<JobGroup>> {
        Self::create_under(Path::new(ROOT), slot, memory_bytes, processes)
    }

    fn create_under(root: &Path, slot: u32, memory_bytes: u64, processes: u32) -> std::io::Result<Option<JobGroup>> {
        let name = format!("slot-{slot}");
        let unified = std::fs::read_to_string(root.join("cgroup.controllers")).ok();
        let layout = if let Some(controllers) = unified {
            let has = |c: &str| controllers.split_whitespace().any(|x| x == c);
            if !(has("memory") && has("pids")) {
                return Ok(None);
            }
            // The parent passes both controllers on to its children.
            let parent = root.join(PARENT);
            make_dir(&parent)?;
            write(&root.join("cgroup.subtree_control"), "+memory +pids")?;
            write(&parent.join("cgroup.subtree_control"), "+memory +pids")?;
            let dir = parent.join(&name);
            fresh(&dir)?;
            write(&dir.join("memory.max"), &memory_bytes.to_string())?;
            // Swap would let a job past its memory limit; the file is
            // missing where the host has no swap accounting.
            let _ = write(&dir.join("memory.swap.max"), "0");
            write(&dir.join("pids.max"), &processes.to_string())?;
            Layout::V2 { dir }
        } else {
            let (memory_root, pids_root) = (root.join("memory"), root.join("pids"));
            // (The root group of the pids hierarchy has no pids.max of its own.)
            if !memory_root.join("memory.limit_in_bytes").exists() || !pids_root.join("cgroup.procs").exists() {
                return Ok(None);
            }
            let memory = memory_root.join(PARENT);
            let pids = pids_root.join(PARENT);
            make_dir(&memory)?;
            make_dir(&pids)?;
            let (memory, pids) = (memory.join(&name), pids.join(&name));
            fresh(&memory)?;
            fresh(&pids)?;
            write(&memory.join("memory.limit_in_bytes"), &memory_bytes.to_string())?;
            let memsw = memory.join("memory.memsw.limit_in_bytes");
            if memsw.exists() {
                write(&memsw, &memory_bytes.to_string())?;
            }
            write(&pids.join("pids.max"), &processes.to_string())?;
            Layout::V1 { memory, pids }
        };
        Ok(Some(JobGroup { layout }))
    }

    /// The `cgroup.procs` files a process writes itself into (with `0`,
    /// meaning itself) to join the group, opened now so that joining
    /// between fork and exec needs no allocation.
    pub fn entry_files(&self) -> std::io::Result<Vec<std::fs::File>> {
        self.dirs()
            .iter()
            .map(|dir| {
                std::fs::File::options().write(true).custom_flags(libc::O_CLOEXEC).open(dir.join("cgroup.procs"))
            })
            .collect()
    }

    /// Which limit the job ran into, if any.
    pub fn hit(&self) -> Option<Hit> {
        let count = |file: &Path, key: &str| -> u64 {
            std::fs::read_to_string(file)
                .ok()
                .and_then(|text| text.lines().find_map(|l| l.strip_prefix(key).and_then(|n| n.trim().parse().ok())))
                .unwrap_or(0)
        };
        let (oom, forks) = match &self.layout {
            Layout::V2 { dir } => {
                (count(&dir.join("memory.events"), "oom_kill "), count(&dir.join("pids.events"), "max "))
            }
            Layout::V1 { memory, pids } => {
                (count(&memory.join("memory.oom_control"), "oom_kill "), count(&pids.join("pids.events"), "max "))
            }
        };
        if oom > 0 {
            Some(Hit::Memory)
        } else if forks > 0 {
            Some(Hit::Processes)
        } else {
            None
        }
    }

    fn dirs(&self) -> Vec<&Path> {
        match &self.layout {
            Layout::V2 { dir } => vec![dir],
            Layout::V1 { memory, pids } => vec![memory, pids],
        }
    }
}

impl Drop for JobGroup {
    fn drop(&mut self) {
        for dir in self.dirs() {
            kill_all(dir);
        }
        for dir in self.dirs() {
            // A killed task leaves its group once reaped; give it a moment.
            for _ in 0..50 {
                if std::fs::remove_dir(dir).is_ok() || !dir.exists() {
                    break;
                }
                std::thread::sleep(std::time::Duration::from_millis(10));
            }
        }
    }
}

/// Kills every task in the group at `dir`.
fn kill_all(dir: &Path) {
    let Ok(text) = std::fs::read_to_string(dir.join("cgroup.procs")) else { return };
    for pid in text.lines().filter_map(|l| l.trim().parse::<i32>().ok()) {
        // SAFETY: kill(2) on a pid read from the group's own list.
        unsafe {
            libc::kill(pid, libc::SIGKILL);
        }
    }
}

/// Makes `dir` unless it exists.
fn make_dir(dir: &Path) -> std::io::Result<()> {
    match std::fs::create_dir(dir) {
        Err(e) if e.kind() != std::io::ErrorKind::AlreadyExists => Err(e),
        _ => Ok(()),
    }
}

/// Makes `dir` as a new, empty group: one a dead process left behind is
/// emptied and removed first, so its counters start again from zero.
fn fresh(dir: &Path) -> std::io::Result<()> {
    if dir.exists() {
        kill_all(dir);
        for _ in 0..50 {
            if std::fs::remove_dir(dir).is_ok() {
                break;
            }
            std::thread::sleep(std::time::Duration::from_millis(10));
        }
    }
    std::fs::create_dir(dir)
}

fn write(file: &Path, value: &str) -> std::io::Result<()> {
    std::fs::OpenOptions::new()
        .write(true)
        .open(file)
        .and_then(|mut f| f.write_all(value.as_bytes()))
        .map_err(|e| std::io::Error::new(e.kind(), format!("cannot write {value} to {}: {e}", file.display())))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_host_without_memory_and_pids_controllers_gives_no_group() {
        let root = tempfile::tempdir().unwrap();
        std::fs::write(root.path().join("cgroup.controllers"), "cpu io\n").unwrap();
        assert!(JobGroup::create_under(root.path(), 0, 1 << 30, 64).unwrap().is_none());
        let v1 = tempfile::tempdir().unwrap();
        assert!(JobGroup::create_under(v1.path(), 0, 1 << 30, 64).unwrap().is_none());
    }
}
