//! The pipeline file, `.custody/pipeline.toml`: the reviewed policy of a
//! project, read from the target branch of a change.
//!
//! Reading is strict: an unknown key, a wrong type or a value out of range
//! is an error that names its line and column, so a typo can never loosen a
//! rule by being ignored.

use std::time::Duration;

use serde::Deserialize;

use crate::glob::Glob;
use crate::GroupName;

/// Where the pipeline file lives in a repository.
pub const PATH: &str = ".custody/pipeline.toml";

/// Why a pipeline file was refused, and where.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("{PATH}{}: {message}", location.map(|(l, c)| format!(" line {l}, column {c}")).unwrap_or_default())]
pub struct PipelineError {
    /// Line and column (from 1), when known.
    pub location: Option<(usize, usize)>,
    /// What is wrong and what is allowed.
    pub message: String,
}

/// The policy a pipeline file states, validated.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Pipeline {
    /// Distinct independent approvals every change needs (at least 1).
    pub approvals: u32,
    /// Code-owner style rules.
    pub rules: Vec<PathRule>,
    /// The group that must approve changes to owned paths.
    pub owners: Option<GroupName>,
    /// Owned paths besides `.custody/**` and the scripts named here.
    pub owned: Vec<Glob>,
    /// The check command, run on every change head.
    pub check: Option<String>,
    /// The build command, run on every new mainline commit.
    pub build: Option<String>,
    /// The files a build produces.
    pub artifacts: Vec<Glob>,
    /// The container images a build produces, as OCI image layouts.
    pub images: Vec<ImageSpec>,
    /// How long a check or build may run.
    pub timeout: Duration,
    /// Whether checks and builds may reach the network.
    pub network: bool,
    /// What one job (a check, a build, a deployment) may use; unset values
    /// take the instance's ceiling.
    pub resources: Resources,
    /// Helper files a check may use besides the pipeline's own files and
    /// scripts, taken from the target branch like them (never from the
    /// change under check).
    pub check_inputs: Vec<Glob>,
    /// Environments, in the order they are passed.
    pub environments: Vec<Environment>,
}

/// A container image a build produces: `[[pipeline.image]]`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ImageSpec {
    /// Its name in the project's registry (`payments/app`'s `app`):
    /// lowercase letters and digits, separated by one `.`, `_`, `__` or `-`.
    pub name: String,
    /// Where the build leaves it: an OCI image layout, a directory or a
    /// `.tar` of one, relative to the workspace.
    pub layout: String,
}

/// Whether `name` is one path component of an OCI repository name
/// (`[a-z0-9]+((\.|_|__|-+)[a-z0-9]+)*`), at most 64 characters.
pub fn is_image_name(name: &str) -> bool {
    if name.is_empty() || name.len() > 64 {
        return false;
    }
    let bytes = name.as_bytes();
    let alnum = |b: u8| b.is_ascii_lowercase() || b.is_ascii_digit();
    if !alnum(bytes[0]) || !alnum(bytes[bytes.len() - 1]) {
        return false;
    }
    let mut i = 0;
    while i < bytes.len() {
        if alnum(bytes[i]) {
            i += 1;
            continue;
        }
        let start = i;
        while i < bytes.len() && !alnum(bytes[i]) {
            i += 1;
        }
        let separator = &name[start..i];
        let dashes = separator.bytes().all(|b| b == b'-');
        if !(separator == "." || separator == "_" || separator == "__" || dashes) {
            return false;
        }
    }
    true
}

/// What one job may use, as the pipeline file asks; the instance caps each.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Resources {
    /// Memory, in bytes (`memory = "512MiB"`).
    pub memory_bytes: Option<u64>,
    /// Processes and threads at once (`processes = 256`).
    pub processes: Option<u32>,
    /// CPU time of any one process (`cpu_time = "10m"`).
    pub cpu_time: Option<Duration>,
}

/// A code-owner style rule: changes touching `paths` need `approvals` from
/// members of `group`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PathRule {
    /// The patterns.
    pub paths: Vec<Glob>,
    /// Whose approvals count.
    pub group: GroupName,
    /// How many.
    pub approvals: u32,
}

/// A deployment environment.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Environment {
    /// Its name.
    pub name: String,
    /// The deploy script.
    pub deploy: Option<String>,
    /// The environment a build must have reached first.
    pub after: Option<String>,
    /// Independent approvals a deployment needs.
    pub approvals: u32,
    /// Whose approvals count.
    pub approvers: Option<GroupName>,
    /// Who signs off manual tests, when any are needed.
    pub testers: Option<GroupName>,
    /// How long a build must have been live in `after`.
    pub soak: Option<Duration>,
    /// Whether reviewers of a change may approve its deployment.
    pub reviewers_may_approve: bool,
    /// The group whose members (and auditors) alone read its deploy logs;
    /// every project member when unset.
    pub log_readers: Option<GroupName>,
}

impl Default for Pipeline {
    /// The policy of a project with no pipeline file: one independent approval.
    fn default() -> Self {
        Pipeline {
            approvals: 1,
            rules: Vec::new(),
            owners: None,
            owned: Vec::new(),
            check: None,
            build: None,
            artifacts: Vec::new(),
            images: Vec::new(),
            timeout: Duration::from_secs(30 * 60),
            network: false,
            resources: Resources::default(),
            check_inputs: Vec::new(),
            environments: Vec::new(),
        }
    }
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct File {
    review: Option<ReviewSection>,
    pipeline: Option<PipelineSection>,
    #[serde(default)]
    environment: Vec<toml::Spanned<EnvironmentSection>>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct ReviewSection {
    approvals: Option<toml::Spanned<i64>>,
    #[serde(default)]
    rule: Vec<toml::Spanned<RuleSection>>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RuleSection {
    paths: toml::Spanned<Vec<toml::Spanned<String>>>,
    group: toml::Spanned<String>,
    approvals: Option<toml::Spanned<i64>>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct PipelineSection {
    owners: Option<toml::Spanned<String>>,
    #[serde(default)]
    owned: Vec<toml::Spanned<String>>,
    check: Option<toml::Spanned<String>>,
    build: Option<toml::Spanned<String>>,
    #[serde(default)]
    artifacts: Vec<toml::Spanned<String>>,
    timeout: Option<toml::Spanned<String>>,
    network: Option<bool>,
    memory: Option<toml::Spanned<String>>,
    processes: Option<toml::Spanned<i64>>,
    cpu_time: Option<toml::Spanned<String>>,
    #[serde(default)]
    check_inputs: Vec<toml::Spanned<String>>,
    #[serde(default)]
    image: Vec<toml::Spanned<ImageSection>>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct ImageSection {
    name: toml::Spanned<String>,
    layout: toml::Spanned<String>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct EnvironmentSection {
    name: toml::Spanned<String>,
    deploy: Option<toml::Spanned<String>>,
    after: Option<toml::Spanned<String>>,
    approvals: Option<toml::Spanned<i64>>,
    approvers: Option<toml::Spanned<String>>,
    testers: Option<toml::Spanned<String>>,
    soak: Option<toml::Spanned<String>>,
    reviewers_may_approve: Option<bool>,
    log_readers: Option<toml::Spanned<String>>,
}

/// Reads sizes such as `512MiB`, `4GiB`, `100MB` or a plain number of bytes.
pub fn parse_size(text: &str) -> Option<u64> {
    let text = text.trim();
    let split = text.find(|c: char| !c.is_ascii_digit()).unwrap_or(text.len());
    let (number, unit) = text.split_at(split);
    let number: u64 = number.parse().ok()?;
    let unit: u64 = match unit.trim() {
        "" | "B" => 1,
        "KiB" => 1 << 10,
        "MiB" => 1 << 20,
        "GiB" => 1 << 30,
        "TiB" => 1 << 40,
        "kB" | "KB" => 1_000,
        "MB" => 1_000_000,
        "GB" => 1_000_000_000,
        "TB" => 1_000_000_000_000,
        _ => return None,
    };
    number.checked_mul(unit)
}

/// Reads durations such as `90s`, `30m`, `1h`, `2d`.
pub fn parse_duration(text: &str) -> Option<Duration> {
    let text = text.trim();
    let split = text.find(|c: char| !c.is_ascii_digit())?;
    let (number, unit) = text.split_at(split);
    let number: u64 = number.parse().ok()?;
    let seconds = match unit {
        "s" => number,
        "m" => number.checked_mul(60)?,
        "h" => number.checked_mul(3600)?,
        "d" => number.checked_mul(86_400)?,
        _ => return None,
    };
    Some(Duration::from_secs(seconds))
}

struct Reader<'a> {
    text: &'a str,
}

impl Reader<'_> {
    fn at(&self, span: std::ops::Range<usize>, message: impl Into<String>) -> PipelineError {
        let before = &self.text[..span.start.min(self.text.len())];
        let line = before.matches('\n').count() + 1;
        let column = before.rsplit('\n').next().map_or(0, |l| l.chars().count()) + 1;
        PipelineError { location: Some((line, column)), message: message.into() }
    }

    fn count(&self, value: &toml::Spanned<i64>, min: i64, what: &str) -> Result<u32, PipelineError> {
        let n = *value.get_ref();
        if n < min || n > 100 {
            return Err(self.at(value.span(), format!("{what} must be between {min} and 100, not {n}")));
        }
        Ok(n as u32)
    }

    fn group(&self, value: &toml::Spanned<String>) -> Result<GroupName, PipelineError> {
        GroupName::parse(value.get_ref()).map_err(|e| self.at(value.span(), e.to_string()))
    }

    fn glob(&self, value: &toml::Spanned<String>) -> Result<Glob, PipelineError> {
        Glob::parse(value.get_ref()).map_err(|e| self.at(value.span(), e.to_string()))
    }

    fn duration(&self, value: &toml::Spanned<String>) -> Result<Duration, PipelineError> {
        parse_duration(value.get_ref()).ok_or_else(|| {
            self.at(value.span(), format!("{:?} is not a duration; write it like 90s, 30m, 1h or 2d", value.get_ref()))
        })
    }

    /// A command: a script path in the repository, optionally with
    /// arguments. The script must be relative, inside the repository.
    fn command(&self, value: &toml::Spanned<String>) -> Result<String, PipelineError> {
        let command = value.get_ref().trim();
        let script = command.split_whitespace().next().unwrap_or("");
        if script.is_empty() || script.starts_with('/') || script.split('/').any(|p| p == "..") {
            return Err(self.at(
                value.span(),
                "a command starts with a script in the repository, such as scripts/ci.sh (relative, no '..')",
            ));
        }
        Ok(command.to_owned())
    }
}

/// Reads and validates a pipeline file.
pub fn parse(text: &str) -> Result<Pipeline, PipelineError> {
    let reader = Reader { text };
    let file = reader.file()?;
    let mut pipeline = Pipeline::default();
    if let Some(review) = file.review {
        reader.review_table(review, &mut pipeline)?;
    }
    if let Some(section) = file.pipeline {
        reader.pipeline_table(&section, &mut pipeline)?;
    }
    pipeline.environments = reader.environments(file.environment)?;
    owners_named(&pipeline)?;
    Ok(pipeline)
}

impl Reader<'_> {
    /// The file's sections as TOML reads them, strictly.
    fn file(&self) -> Result<File, PipelineError> {
        toml::from_str(self.text).map_err(|e| match e.span() {
            Some(span) => self.at(span, e.message().to_owned()),
            None => PipelineError { location: None, message: e.message().to_owned() },
        })
    }

    /// The `[review]` table: the approvals every change needs, and its rules.
    fn review_table(&self, review: ReviewSection, pipeline: &mut Pipeline) -> Result<(), PipelineError> {
        if let Some(approvals) = &review.approvals {
            pipeline.approvals = self.count(approvals, 1, "review.approvals")?;
        }
        for rule in review.rule {
            pipeline.rules.push(self.rule(rule)?);
        }
        Ok(())
    }

    /// One `[[review.rule]]`: at least one path pattern, a group, and its approvals.
    fn rule(&self, rule: toml::Spanned<RuleSection>) -> Result<PathRule, PipelineError> {
        let span = rule.span();
        let rule = rule.into_inner();
        if rule.paths.get_ref().is_empty() {
            return Err(self.at(span, "a rule needs at least one path pattern"));
        }
        Ok(PathRule {
            paths: self.globs(rule.paths.get_ref())?,
            group: self.group(&rule.group)?,
            approvals: match &rule.approvals {
                Some(a) => self.count(a, 1, "rule approvals")?,
                None => 1,
            },
        })
    }

    /// The `[pipeline]` table: owners, scripts, artifacts and how jobs run.
    fn pipeline_table(&self, section: &PipelineSection, pipeline: &mut Pipeline) -> Result<(), PipelineError> {
        pipeline.owners = section.owners.as_ref().map(|g| self.group(g)).transpose()?;
        pipeline.owned = self.globs(&section.owned)?;
        pipeline.check = section.check.as_ref().map(|c| self.command(c)).transpose()?;
        pipeline.build = section.build.as_ref().map(|c| self.command(c)).transpose()?;
        pipeline.artifacts = self.globs(&section.artifacts)?;
        if let Some(timeout) = &section.timeout {
            pipeline.timeout = self.duration(timeout)?;
        }
        pipeline.network = section.network.unwrap_or(false);
        pipeline.resources = self.resources(section)?;
        pipeline.check_inputs = self.globs(&section.check_inputs)?;
        pipeline.images = self.images(&section.image)?;
        Ok(())
    }

    /// The `[[pipeline.image]]` tables: distinct names, layouts inside the
    /// workspace.
    fn images(&self, sections: &[toml::Spanned<ImageSection>]) -> Result<Vec<ImageSpec>, PipelineError> {
        let mut images: Vec<ImageSpec> = Vec::new();
        for section in sections {
            let image = section.get_ref();
            let name = image.name.get_ref();
            if !is_image_name(name) {
                return Err(self.at(
                    image.name.span(),
                    format!(
                        "image name {name:?} is not a registry name: 1 to 64 lowercase letters and digits, \
                         separated by one '.', '_', '__' or dashes, such as \"app\" or \"web-api\""
                    ),
                ));
            }
            if images.iter().any(|i| &i.name == name) {
                return Err(self.at(image.name.span(), format!("image {name:?} is named twice")));
            }
            let layout = image.layout.get_ref().trim_end_matches('/');
            if layout.is_empty()
                || layout.starts_with('/')
                || layout.split('/').any(|p| p == ".." || p == "." || p.is_empty())
            {
                return Err(self.at(
                    image.layout.span(),
                    "an image's layout is a path in the build's workspace, such as dist/app-oci or dist/app.tar \
                     (relative, no '..')",
                ));
            }
            images.push(ImageSpec { name: name.clone(), layout: layout.to_owned() });
        }
        Ok(images)
    }

    /// What one job may use: `memory`, `processes` and `cpu_time`, each within its range.
    fn resources(&self, section: &PipelineSection) -> Result<Resources, PipelineError> {
        let mut resources = Resources::default();
        if let Some(memory) = &section.memory {
            let bytes = parse_size(memory.get_ref()).filter(|b| *b >= 16 << 20).ok_or_else(|| {
                self.at(
                    memory.span(),
                    format!(
                        "memory = {:?} is not a size of at least 16MiB; write it like 512MiB or 4GiB",
                        memory.get_ref()
                    ),
                )
            })?;
            resources.memory_bytes = Some(bytes);
        }
        if let Some(processes) = &section.processes {
            let n = *processes.get_ref();
            if !(8..=1_000_000).contains(&n) {
                return Err(self.at(processes.span(), format!("processes must be between 8 and 1000000, not {n}")));
            }
            resources.processes = Some(n as u32);
        }
        if let Some(cpu_time) = &section.cpu_time {
            resources.cpu_time = Some(self.duration(cpu_time)?).filter(|d| !d.is_zero());
            if resources.cpu_time.is_none() {
                return Err(self.at(cpu_time.span(), "cpu_time must be longer than zero"));
            }
        }
        Ok(resources)
    }

    /// The `[[environment]]` tables, in order.
    fn environments(
        &self,
        sections: Vec<toml::Spanned<EnvironmentSection>>,
    ) -> Result<Vec<Environment>, PipelineError> {
        let mut environments: Vec<Environment> = Vec::new();
        for section in sections {
            let environment = self.environment(section.into_inner(), &environments)?;
            environments.push(environment);
        }
        Ok(environments)
    }

    /// One `[[environment]]`, read after the environments defined `above` it.
    fn environment(
        &self,
        environment: EnvironmentSection,
        above: &[Environment],
    ) -> Result<Environment, PipelineError> {
        let name = self.environment_name(&environment.name, above)?;
        if let Some(after) = &environment.after {
            // Naming only environments defined above rules out cycles.
            if !above.iter().any(|e| &e.name == after.get_ref()) {
                return Err(self.at(
                    after.span(),
                    format!("after = {:?} names no environment defined above this one", after.get_ref()),
                ));
            }
        }
        let approvals = match &environment.approvals {
            Some(a) => self.count(a, 0, "approvals")?,
            None => 0,
        };
        let approvers = environment.approvers.as_ref().map(|g| self.group(g)).transpose()?;
        if approvals > 0 && approvers.is_none() {
            return Err(self.at(
                environment.name.span(),
                format!("environment {name} needs approvals but names no approvers group"),
            ));
        }
        Ok(Environment {
            deploy: environment.deploy.as_ref().map(|c| self.command(c)).transpose()?,
            after: environment.after.map(|a| a.into_inner()),
            approvals,
            approvers,
            testers: environment.testers.as_ref().map(|g| self.group(g)).transpose()?,
            soak: environment.soak.as_ref().map(|s| self.duration(s)).transpose()?,
            reviewers_may_approve: environment.reviewers_may_approve.unwrap_or(false),
            log_readers: environment.log_readers.as_ref().map(|g| self.group(g)).transpose()?,
            name,
        })
    }

    /// An environment's name: valid, and not one of the environments defined `above` it.
    fn environment_name(&self, name: &toml::Spanned<String>, above: &[Environment]) -> Result<String, PipelineError> {
        let text = name.get_ref().clone();
        if crate::name::check_environment_name(&text).is_err() {
            return Err(
                self.at(name.span(), format!("environment name {text:?} is not valid: {}", crate::name::NAME_RULE))
            );
        }
        if above.iter().any(|e| e.name == text) {
            return Err(self.at(name.span(), format!("environment {text} is defined twice")));
        }
        Ok(text)
    }

    /// Each pattern of a list, read as a glob.
    fn globs(&self, values: &[toml::Spanned<String>]) -> Result<Vec<Glob>, PipelineError> {
        values.iter().map(|p| self.glob(p)).collect()
    }
}

/// Refuses scripts or owned paths without an owners group to approve changes to them.
fn owners_named(pipeline: &Pipeline) -> Result<(), PipelineError> {
    if pipeline.owners.is_none() && (!pipeline.owned.is_empty() || pipeline.check.is_some() || pipeline.build.is_some())
    {
        // Without owners, nobody could ever approve a change to the
        // pipeline itself; say so instead of locking the project.
        return Err(PipelineError {
            location: None,
            message: "[pipeline] names scripts or owned paths but no owners group to approve changes to them".into(),
        });
    }
    Ok(())
}

/// How `after` weakens a gate `before` set, one line each (empty when it
/// weakens none): fewer approvals, testers or owners, other groups,
/// reviewers allowed to approve, a shorter soak, a skipped environment
/// order, a removed environment or rule, checks dropped or given the
/// network. Strengthening is never listed.
pub fn weakenings(before: &Pipeline, after: &Pipeline) -> Vec<String> {
    let mut found = Vec::new();
    let group = |g: &Option<GroupName>| g.as_ref().map_or_else(|| "none".to_owned(), GroupName::to_string);
    if after.approvals < before.approvals {
        found.push(format!("review.approvals lowered from {} to {}", before.approvals, after.approvals));
    }
    for rule in &before.rules {
        let kept =
            after.rules.iter().any(|r| r.paths == rule.paths && r.group == rule.group && r.approvals >= rule.approvals);
        if !kept {
            let paths: Vec<&str> = rule.paths.iter().map(Glob::as_str).collect();
            found.push(format!(
                "the review rule for {} ({} approval(s) by {}) was removed or lowered",
                paths.join(", "),
                rule.approvals,
                rule.group
            ));
        }
    }
    if before.owners.is_some() && after.owners != before.owners {
        found.push(format!("pipeline.owners changed from {} to {}", group(&before.owners), group(&after.owners)));
    }
    for glob in before.owned.iter().chain(&before.check_inputs) {
        if !after.owned.contains(glob) && !after.check_inputs.contains(glob) {
            found.push(format!("{} is no longer owned by the pipeline owners", glob.as_str()));
        }
    }
    if before.check.is_some() && after.check.is_none() {
        found.push("the check was removed".to_owned());
    }
    if after.network && !before.network {
        found.push("checks and builds were given the network".to_owned());
    }
    for env in &before.environments {
        let name = &env.name;
        let Some(now) = after.environments.iter().find(|e| &e.name == name) else {
            found.push(format!("environment {name} was removed (its last gate still holds)"));
            continue;
        };
        if now.approvals < env.approvals {
            found.push(format!("{name}: approvals lowered from {} to {}", env.approvals, now.approvals));
        }
        if env.approvers.is_some() && now.approvers != env.approvers {
            found.push(format!(
                "{name}: approvers changed from {} to {}",
                group(&env.approvers),
                group(&now.approvers)
            ));
        }
        if env.testers.is_some() && now.testers != env.testers {
            found.push(format!("{name}: testers changed from {} to {}", group(&env.testers), group(&now.testers)));
        }
        if now.reviewers_may_approve && !env.reviewers_may_approve {
            found.push(format!("{name}: reviewers may now approve its deployments"));
        }
        if let Some(soak) = env.soak {
            if now.soak.is_none_or(|s| s < soak) {
                let shown = |d: Option<Duration>| d.map_or_else(|| "none".to_owned(), |d| format!("{}s", d.as_secs()));
                found.push(format!("{name}: soak shortened from {} to {}", shown(Some(soak)), shown(now.soak)));
            }
        }
        if env.log_readers.is_some() && now.log_readers != env.log_readers {
            found.push(format!(
                "{name}: deploy log readers changed from {} to {}",
                group(&env.log_readers),
                group(&now.log_readers).replace("none", "every project member")
            ));
        }
        if env.after.is_some() && now.after != env.after {
            found.push(format!("{name}: no longer deployed after {}", env.after.as_deref().unwrap_or_default()));
        }
    }
    found
}

impl Pipeline {
    /// Whether a check takes `path` from the target branch rather than from
    /// the change under check: `.custody/**`, every script the pipeline
    /// names and its `check_inputs`. Not the whole `owned` list, which may
    /// hold the very code the check tests.
    pub fn governs_checks(&self, path: &str) -> bool {
        path == ".custody"
            || path.starts_with(".custody/")
            || self.scripts().any(|script| path == script)
            || self.check_inputs.iter().any(|glob| glob.matches(path))
    }

    /// The scripts the pipeline names, as repository paths.
    fn scripts(&self) -> impl Iterator<Item = &str> {
        self.check
            .iter()
            .chain(&self.build)
            .chain(self.environments.iter().filter_map(|e| e.deploy.as_ref()))
            .filter_map(|command| command.split_whitespace().next())
            .map(|script| script.trim_start_matches("./"))
    }

    /// Whether a path is owned by the pipeline's owners: `.custody/**`, every
    /// script the pipeline names, its check inputs and its `owned` list.
    pub fn owns(&self, path: &str) -> bool {
        self.governs_checks(path) || self.owned.iter().any(|glob| glob.matches(path))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const DESIGN_EXAMPLE: &str = r#"
[review]
approvals = 2
[[review.rule]]
paths = ["src/payments/**"]
group = "payments"
approvals = 1

[pipeline]
owners = "platform"
owned = ["Makefile", "lib/**"]
check = "scripts/ci.sh"
build = "scripts/build.sh"
artifacts = ["dist/*.tar.gz"]
timeout = "30m"
network = false

[[environment]]
name = "staging"
deploy = "scripts/deploy.sh"

[[environment]]
name = "production"
after = "staging"
approvals = 2
approvers = "release-managers"
testers = "qa"
soak = "1h"
reviewers_may_approve = false
"#;

    #[test]
    fn the_design_example_reads_as_written() {
        let pipeline = parse(DESIGN_EXAMPLE).unwrap();
        assert_eq!(pipeline.approvals, 2);
        assert_eq!(pipeline.rules[0].group.as_str(), "payments");
        assert_eq!(pipeline.timeout, Duration::from_secs(1800));
        assert_eq!(pipeline.environments[1].after.as_deref(), Some("staging"));
        assert_eq!(pipeline.environments[1].soak, Some(Duration::from_secs(3600)));
        assert!(pipeline.owns(".custody/pipeline.toml"));
        assert!(pipeline.owns("scripts/ci.sh"));
        assert!(pipeline.owns("scripts/deploy.sh"));
        assert!(pipeline.owns("lib/x/y.py"));
        assert!(pipeline.owns("Makefile"));
        assert!(!pipeline.owns("src/main.rs"));
    }

    #[test]
    fn an_unknown_key_is_an_error_with_line_and_column() {
        let error = parse("[review]\napprovals = 1\napprovers = 0\n").unwrap_err();
        assert_eq!(error.location, Some((3, 1)), "{error}");
        assert!(error.message.contains("unknown field"), "{error}");
    }

    #[test]
    fn zero_approvals_cannot_be_written() {
        let error = parse("[review]\napprovals = 0\n").unwrap_err();
        assert_eq!(error.location, Some((2, 13)), "{error}");
    }

    #[test]
    fn a_rule_table_may_come_without_a_review_table() {
        let pipeline = parse("[[review.rule]]\npaths = [\"src/**\"]\ngroup = \"core\"\n").unwrap();
        assert_eq!(pipeline.rules.len(), 1);
    }

    #[test]
    fn no_file_means_one_independent_approval() {
        assert_eq!(Pipeline::default().approvals, 1);
        assert_eq!(parse("").unwrap().approvals, 1);
    }

    #[test]
    fn environments_must_name_earlier_ones_and_have_approvers_when_approvals_are_needed() {
        let error = parse("[[environment]]\nname = \"prod\"\nafter = \"staging\"\n").unwrap_err();
        assert_eq!(error.location, Some((3, 9)), "{error}");
        let error = parse("[[environment]]\nname = \"prod\"\napprovals = 1\n").unwrap_err();
        assert!(error.message.contains("approvers"), "{error}");
    }

    #[test]
    fn a_build_names_its_images_and_where_it_leaves_their_layouts() {
        let pipeline = parse(
            "[pipeline]\nowners = \"platform\"\nbuild = \"scripts/build.sh\"\n\n\
             [[pipeline.image]]\nname = \"app\"\nlayout = \"dist/app-oci/\"\n\n\
             [[pipeline.image]]\nname = \"web__api-2\"\nlayout = \"dist/web.tar\"\n",
        )
        .unwrap();
        let images: Vec<(&str, &str)> = pipeline.images.iter().map(|i| (i.name.as_str(), i.layout.as_str())).collect();
        assert_eq!(images, [("app", "dist/app-oci"), ("web__api-2", "dist/web.tar")]);
        for (name, layout, why) in [
            ("App", "dist/a", "not a registry name"),
            ("a..b", "dist/a", "not a registry name"),
            ("-a", "dist/a", "not a registry name"),
            ("app", "/tmp/app", "relative"),
            ("app", "dist/../../etc", "relative"),
        ] {
            let text =
                format!("[pipeline]\nowners = \"p\"\n[[pipeline.image]]\nname = {name:?}\nlayout = {layout:?}\n");
            let error = parse(&text).unwrap_err();
            assert!(error.message.contains(why), "{name} {layout}: {error}");
            assert_eq!(error.location.map(|l| l.0), Some(if why.contains("registry") { 4 } else { 5 }), "{error}");
        }
        let twice = "[pipeline]\nowners = \"p\"\n[[pipeline.image]]\nname = \"app\"\nlayout = \"a\"\n\
                     [[pipeline.image]]\nname = \"app\"\nlayout = \"b\"\n";
        assert!(parse(twice).unwrap_err().message.contains("named twice"));
    }

    #[test]
    fn scripts_must_live_in_the_repository() {
        for bad in ["/bin/true", "../outside.sh", ""] {
            let text = format!("[pipeline]\nowners = \"platform\"\ncheck = {bad:?}\n");
            assert!(parse(&text).is_err(), "{bad}");
        }
    }

    #[test]
    fn bad_durations_and_types_say_where() {
        let error = parse("[pipeline]\nowners = \"p\"\ntimeout = \"soon\"\n").unwrap_err();
        assert_eq!(error.location.unwrap().0, 3);
        let error = parse("[review]\napprovals = \"two\"\n").unwrap_err();
        assert_eq!(error.location.unwrap().0, 2);
    }

    #[test]
    fn a_pipeline_asks_for_its_jobs_resources_and_names_its_check_inputs() {
        let pipeline = parse(
            "[pipeline]\nowners = \"platform\"\ncheck = \"scripts/check.sh\"\nmemory = \"512MiB\"\nprocesses = 64\n\
             cpu_time = \"10m\"\ncheck_inputs = [\"scripts/lib/*.sh\"]\n",
        )
        .unwrap();
        assert_eq!(pipeline.resources.memory_bytes, Some(512 << 20));
        assert_eq!(pipeline.resources.processes, Some(64));
        assert_eq!(pipeline.resources.cpu_time, Some(Duration::from_secs(600)));
        assert!(pipeline.owns("scripts/lib/common.sh"), "a check input is the owners' to approve");
        assert!(!pipeline.owns("src/main.rs"));
        let error = parse("[pipeline]\nmemory = \"lots\"\n").unwrap_err();
        assert_eq!(error.location, Some((2, 10)));
        assert!(error.message.contains("512MiB"), "{error}");
        let error = parse("[pipeline]\nprocesses = 2\n").unwrap_err();
        assert!(error.message.contains("between 8"), "{error}");
        assert_eq!(parse_size("4GiB"), Some(4 << 30));
        assert_eq!(parse_size("100MB"), Some(100_000_000));
        assert_eq!(parse_size("12 parsecs"), None);
    }

    #[test]
    fn every_weakening_of_a_gate_is_named_and_no_strengthening_is() {
        let before = parse(DESIGN_EXAMPLE).unwrap();
        assert!(weakenings(&before, &before).is_empty());
        let lax = DESIGN_EXAMPLE
            .replace("approvals = 2\n[[review.rule]]", "approvals = 1\n[[review.rule]]")
            .replace("soak = \"1h\"", "soak = \"10m\"")
            .replace("reviewers_may_approve = false", "reviewers_may_approve = true");
        let after = parse(&lax).unwrap();
        assert_eq!(
            weakenings(&before, &after),
            [
                "review.approvals lowered from 2 to 1",
                "production: reviewers may now approve its deployments",
                "production: soak shortened from 3600s to 600s",
            ]
        );
        // Raising the bar is no weakening.
        assert!(weakenings(&after, &before).is_empty());
        let mut gone = before.clone();
        gone.environments.retain(|e| e.name != "production");
        assert_eq!(weakenings(&before, &gone), ["environment production was removed (its last gate still holds)"]);
        let mut open = before.clone();
        open.environments[1].approvals = 0;
        open.environments[1].approvers = None;
        assert_eq!(
            weakenings(&before, &open),
            [
                "production: approvals lowered from 2 to 0",
                "production: approvers changed from release-managers to none"
            ]
        );
    }
}
