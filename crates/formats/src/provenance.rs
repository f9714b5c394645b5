//! SLSA provenance v1: how an artifact was built, from what, by whom.
//!
//! custody's builder writes one statement per build whose subjects are the
//! artifacts it stored; the builder key signs it in a DSSE envelope.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};
use serde_json::json;

use crate::statement::{Statement, Subject};

/// The predicate type of SLSA provenance v1.
pub const PROVENANCE_PREDICATE: &str = "https://slsa.dev/provenance/v1";

/// The build type of a custody build: the pipeline file's `build` command
/// run in custody's sandbox on a fresh checkout of a mainline commit.
pub const BUILD_TYPE: &str = "https://custody.dev/build/v1";

/// Everything a build's provenance records.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct BuildFacts {
    /// The artifacts: name (path in the workspace) and sha256, hex.
    pub artifacts: Vec<(String, String)>,
    /// The instance's name.
    pub instance: String,
    /// The project.
    pub project: String,
    /// The source repository's URI.
    pub repository: String,
    /// The branch built.
    pub branch: String,
    /// The commit built.
    pub commit: String,
    /// The pipeline file's path and sha256.
    pub pipeline: (String, String),
    /// The build command as the pipeline names it.
    pub command: String,
    /// The build script's path and sha256, when the command names a file of
    /// the repository.
    pub script: Option<(String, String)>,
    /// Whether the build could reach the network.
    pub network: bool,
    /// The builder's id (a URI naming this instance's build service).
    pub builder_id: String,
    /// custody's version.
    pub builder_version: String,
    /// A unique id of this run (project, build number and attempt).
    pub invocation_id: String,
    /// When the build started and finished, RFC 3339.
    pub started_on: String,
    /// When the build finished, RFC 3339.
    pub finished_on: String,
}

impl BuildFacts {
    /// The in-toto statement carrying the SLSA provenance of these facts.
    pub fn statement(&self) -> Statement {
        let subject = self
            .artifacts
            .iter()
            .map(|(name, sha256)| Subject {
                name: name.clone(),
                digest: BTreeMap::from([("sha256".into(), sha256.clone())]),
            })
            .collect();
        let mut dependencies = vec![
            json!({
                "uri": format!("git+{}@refs/heads/{}", self.repository, self.branch),
                "digest": { "gitCommit": self.commit },
            }),
            json!({ "uri": self.pipeline.0, "digest": { "sha256": self.pipeline.1 } }),
        ];
        if let Some((path, sha256)) = &self.script {
            dependencies.push(json!({ "uri": path, "digest": { "sha256": sha256 } }));
        }
        let predicate = json!({
            "buildDefinition": {
                "buildType": BUILD_TYPE,
                "externalParameters": {
                    "repository": self.repository,
                    "ref": format!("refs/heads/{}", self.branch),
                    "commit": self.commit,
                    "pipeline": self.pipeline.0,
                    "command": self.command,
                },
                "internalParameters": {
                    "instance": self.instance,
                    "project": self.project,
                    "network": self.network,
                    "sandbox": "bubblewrap: fresh mount, pid, ipc, uts, user and network namespaces",
                },
                "resolvedDependencies": dependencies,
            },
            "runDetails": {
                "builder": {
                    "id": self.builder_id,
                    "version": { "custody": self.builder_version },
                },
                "metadata": {
                    "invocationId": self.invocation_id,
                    "startedOn": self.started_on,
                    "finishedOn": self.finished_on,
                },
            },
        });
        Statement::new(subject, PROVENANCE_PREDICATE, predicate)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{KeyRole, ServiceKey};

    fn facts() -> BuildFacts {
        BuildFacts {
            artifacts: vec![("dist/app.tar.gz".into(), "ab".repeat(32))],
            instance: "bank".into(),
            project: "payments".into(),
            repository: "custody://bank/payments.git".into(),
            branch: "main".into(),
            commit: "cd".repeat(20),
            pipeline: (".custody/pipeline.toml".into(), "ef".repeat(32)),
            command: "scripts/build.sh".into(),
            script: Some(("scripts/build.sh".into(), "01".repeat(32))),
            network: false,
            builder_id: "custody://bank/builder".into(),
            builder_version: "0.1.0".into(),
            invocation_id: "custody://bank/payments/builds/1/1".into(),
            started_on: "2026-01-01T00:00:00Z".into(),
            finished_on: "2026-01-01T00:01:00Z".into(),
        }
    }

    #[test]
    fn provenance_names_each_artifact_and_every_input_of_the_build() {
        let statement = facts().statement();
        assert_eq!(statement.predicate_type, PROVENANCE_PREDICATE);
        assert_eq!(statement.subject[0].name, "dist/app.tar.gz");
        assert_eq!(statement.subject[0].digest["sha256"], "ab".repeat(32));
        let p = &statement.predicate;
        assert_eq!(p["buildDefinition"]["buildType"], BUILD_TYPE);
        assert_eq!(p["buildDefinition"]["resolvedDependencies"][0]["digest"]["gitCommit"], "cd".repeat(20));
        assert_eq!(p["buildDefinition"]["resolvedDependencies"][2]["digest"]["sha256"], "01".repeat(32));
        assert_eq!(p["buildDefinition"]["internalParameters"]["network"], false);
        assert_eq!(p["runDetails"]["builder"]["id"], "custody://bank/builder");
        assert_eq!(p["runDetails"]["metadata"]["invocationId"], "custody://bank/payments/builds/1/1");
    }

    #[test]
    fn provenance_signed_by_the_builder_does_not_verify_with_another_key() {
        let builder = ServiceKey::generate(KeyRole::Builder);
        let deployer = ServiceKey::generate(KeyRole::Deployer);
        let envelope = facts().statement().sign(&builder).expect("a key in memory signs");
        assert!(envelope.verify(&builder.public()).is_ok());
        assert!(envelope.verify(&deployer.public()).is_err());
    }
}
