//! Where a change, a check run, a build and a deployment stand: one enum
//! each, stored and sent as its snake_case name, so that no status is ever
//! compared as a string.

use serde::{Deserialize, Serialize};

macro_rules! status {
    ($(#[$doc:meta])* $name:ident { $($(#[$vdoc:meta])* $variant:ident => $text:literal),+ $(,)? }) => {
        $(#[$doc])*
        #[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
        #[serde(rename_all = "snake_case")]
        pub enum $name {
            $($(#[$vdoc])* $variant),+
        }

        impl $name {
            /// Its name, as stored and sent.
            pub fn as_str(self) -> &'static str {
                match self {
                    $($name::$variant => $text),+
                }
            }

            /// Reads a stored name; `None` for any other text.
            pub fn parse(text: &str) -> Option<$name> {
                match text {
                    $($text => Some($name::$variant),)+
                    _ => None,
                }
            }
        }

        impl std::fmt::Display for $name {
            fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.write_str(self.as_str())
            }
        }
    };
}

status!(
    /// A change request's state.
    ChangeState {
        /// Open for review.
        #[default]
        Open => "open",
        /// Merged by custody.
        Merged => "merged",
        /// Closed without merging.
        Closed => "closed",
    }
);

status!(
    /// A check run's status.
    CheckStatus {
        /// Waiting for a runner.
        Queued => "queued",
        /// Running.
        Running => "running",
        /// The check passed.
        Passed => "passed",
        /// The check failed (what an outcome says until known otherwise).
        #[default]
        Failed => "failed",
        /// The check could not be run.
        Error => "error",
        /// The target's pipeline names no check.
        NotRequired => "not_required",
    }
);

status!(
    /// A build's status.
    BuildStatus {
        /// Waiting for a builder.
        Queued => "queued",
        /// Running.
        Running => "running",
        /// Built, its artifacts stored and its provenance signed.
        Succeeded => "succeeded",
        /// The build script failed (what an outcome says until known otherwise).
        #[default]
        Failed => "failed",
        /// The build could not be run.
        Error => "error",
        /// Nothing to build (no build command).
        Skipped => "skipped",
    }
);

status!(
    /// A deployment's status.
    DeploymentStatus {
        /// Waiting for its gate.
        Pending => "pending",
        /// Its gate opened; waiting for a deployer.
        Queued => "queued",
        /// Its deploy script runs.
        Running => "running",
        /// Deployed.
        Succeeded => "succeeded",
        /// The deploy script failed, or the deployment could not run (what
        /// an outcome says until known otherwise).
        #[default]
        Failed => "failed",
        /// Cancelled before or while it ran.
        Cancelled => "cancelled",
        /// Rejected by an approver.
        Rejected => "rejected",
    }
);

impl BuildStatus {
    /// Whether it has not ended yet.
    pub fn is_waiting(self) -> bool {
        matches!(self, BuildStatus::Queued | BuildStatus::Running)
    }
}

impl DeploymentStatus {
    /// Whether it has not ended yet.
    pub fn is_waiting(self) -> bool {
        matches!(self, DeploymentStatus::Pending | DeploymentStatus::Queued | DeploymentStatus::Running)
    }
}

impl CheckStatus {
    /// Whether it has not ended yet.
    pub fn is_waiting(self) -> bool {
        matches!(self, CheckStatus::Queued | CheckStatus::Running)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_status_reads_back_its_own_name_and_nothing_else() {
        for status in [
            DeploymentStatus::Pending,
            DeploymentStatus::Queued,
            DeploymentStatus::Running,
            DeploymentStatus::Succeeded,
            DeploymentStatus::Failed,
            DeploymentStatus::Cancelled,
            DeploymentStatus::Rejected,
        ] {
            assert_eq!(DeploymentStatus::parse(status.as_str()), Some(status));
            assert_eq!(serde_json::to_value(status).unwrap(), status.as_str());
        }
        assert_eq!(CheckStatus::parse("not_required"), Some(CheckStatus::NotRequired));
        assert_eq!(BuildStatus::parse("Succeeded"), None);
        assert_eq!(ChangeState::parse("merged"), Some(ChangeState::Merged));
        assert!(DeploymentStatus::Pending.is_waiting() && !DeploymentStatus::Rejected.is_waiting());
    }
}
