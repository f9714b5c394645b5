//! The smart HTTP services: `git upload-pack` (clone, fetch) and
//! `git receive-pack` (push), run as stateless RPC.

use std::path::Path;
use std::process::Stdio;

use tokio::process::Command;

/// One of git's two smart services.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Service {
    /// Clone and fetch.
    UploadPack,
    /// Push.
    ReceivePack,
}

impl Service {
    /// The service named in `?service=` or the request path.
    pub fn parse(name: &str) -> Option<Service> {
        match name {
            "git-upload-pack" => Some(Service::UploadPack),
            "git-receive-pack" => Some(Service::ReceivePack),
            _ => None,
        }
    }

    /// The service's name, as git spells it.
    pub fn name(self) -> &'static str {
        match self {
            Service::UploadPack => "git-upload-pack",
            Service::ReceivePack => "git-receive-pack",
        }
    }

    /// The content type of its ref advertisement.
    pub fn advertisement_type(self) -> String {
        format!("application/x-{}-advertisement", self.name())
    }

    /// The content type of its result.
    pub fn result_type(self) -> String {
        format!("application/x-{}-result", self.name())
    }

    /// The pkt-line header that starts a version 0/1 advertisement over HTTP.
    pub fn advertisement_header(self) -> Vec<u8> {
        let line = format!("# service={}\n", self.name());
        let mut out = format!("{:04x}{line}", line.len() + 4).into_bytes();
        out.extend_from_slice(b"0000");
        out
    }
}

/// Whether the client asked for protocol version 2 (`Git-Protocol: version=2`).
pub fn wants_v2(git_protocol: Option<&str>) -> bool {
    git_protocol.is_some_and(|p| p.split(':').any(|part| part == "version=2"))
}

/// The git process serving one request: `advertise` for `info/refs`, else
/// the RPC itself. Its environment is cleared except what git needs, what
/// the client asked for (`GIT_PROTOCOL`), and `extra` (for the hooks).
pub fn command(
    service: Service,
    repository: &Path,
    advertise: bool,
    git_protocol: Option<&str>,
    extra: &[(String, String)],
) -> Command {
    let subcommand = match service {
        Service::UploadPack => "upload-pack",
        Service::ReceivePack => "receive-pack",
    };
    let mut command = Command::new("git");
    command.arg(subcommand).arg("--stateless-rpc");
    if advertise {
        command.arg("--advertise-refs");
    }
    command
        .arg(repository)
        .env_clear()
        .env("PATH", std::env::var_os("PATH").unwrap_or_else(|| "/usr/local/bin:/usr/bin:/bin".into()))
        .envs(crate::CLEAN_GIT_ENV)
        .envs(extra.iter().map(|(k, v)| (k.as_str(), v.as_str())))
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true);
    if let Some(protocol) = git_protocol {
        command.env("GIT_PROTOCOL", protocol);
    }
    command
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_advertisement_header_is_a_pkt_line_and_a_flush() {
        assert_eq!(Service::UploadPack.advertisement_header(), b"001e# service=git-upload-pack\n0000");
    }

    #[test]
    fn only_the_two_smart_services_exist() {
        assert_eq!(Service::parse("git-receive-pack"), Some(Service::ReceivePack));
        assert_eq!(Service::parse("git-upload-archive"), None);
        assert!(wants_v2(Some("version=2")));
        assert!(!wants_v2(Some("version=1")));
    }
}
