//! `custody project …`: projects, their members and protected branches.

use clap::Subcommand;
use custody_api::{CommitView, CreatedProject, GrantView, ProjectAnswer, PushView};
use custody_domain::project::Identity;
use custody_domain::{ProjectName, RefUpdate, Role, UserName};
use reqwest::Method;

use crate::client::Client;
use crate::commands::{grant_outcome, Output};
use crate::Failure;

#[derive(Subcommand, Debug)]
pub enum ProjectCommand {
    /// Create a project with an empty repository.
    Create {
        name: String,
        /// The mainline, always protected.
        #[arg(long, default_value = "main")]
        default_branch: String,
        /// Take this git repository (a path on the server) as the project's
        /// unreviewed baseline; a grant a second admin approves.
        #[arg(long, value_name = "PATH")]
        import: Option<String>,
    },
    /// The projects you may see.
    List,
    /// One project, with its clone URL.
    Show { name: String },
    /// Members of a project.
    #[command(subcommand)]
    Member(MemberCommand),
    /// Ask to protect another branch (a grant).
    Protect { name: String, branch: String },
    /// Ask to stop protecting a branch (a grant); the default branch stays protected.
    Unprotect { name: String, branch: String },
    /// Ask to make another branch the default (a grant); the old one stays protected.
    SetDefaultBranch { name: String, branch: String },
    /// Ask to delete a tag, which no push may do (a grant); it goes once a
    /// second admin approves, if it still points where it does now.
    DeleteTag { name: String, tag: String },
    /// Who pushed what, as authenticated.
    Pushes { name: String },
    /// A commit: who pushed it first, and who it names.
    Commit { name: String, sha: String },
}

#[derive(Subcommand, Debug)]
pub enum MemberCommand {
    /// Ask to give a user a role (a grant).
    Add {
        project: String,
        user: String,
        /// read, write or maintain.
        #[arg(long)]
        role: String,
    },
    /// Ask to remove a user (a grant).
    Remove { project: String, user: String },
}

pub async fn run(client: &Client, command: ProjectCommand, out: Output) -> Result<(), Failure> {
    match command {
        ProjectCommand::Create { name, default_branch, import } => {
            create(client, name, default_branch, import, out).await
        }
        ProjectCommand::List => list(client, out).await,
        ProjectCommand::Show { name } => show(client, &name, out).await,
        ProjectCommand::Member(command) => asked(out, member(client, command).await?),
        ProjectCommand::Protect { name, branch } => asked(out, protect(client, &name, branch).await?),
        ProjectCommand::Unprotect { name, branch } => asked(out, unprotect(client, &name, &branch).await?),
        ProjectCommand::SetDefaultBranch { name, branch } => {
            asked(out, set_default_branch(client, &name, branch).await?)
        }
        ProjectCommand::DeleteTag { name, tag } => asked(out, delete_tag(client, &name, &tag).await?),
        ProjectCommand::Pushes { name } => pushes(client, &name, out).await,
        ProjectCommand::Commit { name, sha } => commit(client, &name, &sha, out).await,
    }
}

/// Prints the grant a command asked for.
fn asked(out: Output, grant: GrantView) -> Result<(), Failure> {
    out.show(&grant, grant_outcome);
    Ok(())
}

// ---------------------------------------------------------------------------
// Projects: made, listed, shown
// ---------------------------------------------------------------------------

async fn create(
    client: &Client,
    name: String,
    default_branch: String,
    import: Option<String>,
    out: Output,
) -> Result<(), Failure> {
    ProjectName::parse(&name)?;
    custody_domain::project::check_branch_name(&default_branch)?;
    // A relative path means the caller's directory, when the server shares this machine.
    let import = import.map(|p| std::fs::canonicalize(&p).map(|c| c.display().to_string()).unwrap_or(p));
    let body = custody_api::CreateProjectRequest { name, default_branch: Some(default_branch), import };
    let made: CreatedProject = client.submit("/api/v1/projects", &body).await?;
    out.show(&made, created_text);
    Ok(())
}

fn created_text(made: &CreatedProject) -> String {
    let mut text =
        format!("project {} created; clone it with: git clone {}", made.project.project.name, made.project.clone_url);
    if let Some(grant) = &made.import_grant {
        text.push('\n');
        text.push_str(&grant_outcome(grant));
    }
    text
}

async fn list(client: &Client, out: Output) -> Result<(), Failure> {
    let projects: Vec<ProjectAnswer> = client.list("/api/v1/projects").await?;
    out.list(&projects, |p| format!("{:<24} {}", p.project.name, p.clone_url), "no projects");
    Ok(())
}

async fn show(client: &Client, name: &str, out: Output) -> Result<(), Failure> {
    let project: ProjectAnswer = client.get(&format!("/api/v1/projects/{}", ProjectName::parse(name)?)).await?;
    out.show(&project, project_text);
    Ok(())
}

fn project_text(answer: &ProjectAnswer) -> String {
    let project = &answer.project;
    let members: Vec<String> = project.members.iter().map(|m| format!("{} ({})", m.user, m.role.as_str())).collect();
    format!(
        "{}\nclone: {}\ndefault branch: {}\nprotected: {}\nmembers: {}",
        project.name,
        answer.clone_url,
        project.default_branch,
        project.protected_branches.join(", "),
        if members.is_empty() { "(none)".to_owned() } else { members.join(", ") }
    )
}

// ---------------------------------------------------------------------------
// Grants asked for: members, protected branches, the default branch, tags
// ---------------------------------------------------------------------------

async fn member(client: &Client, command: MemberCommand) -> Result<GrantView, Failure> {
    match command {
        MemberCommand::Add { project, user, role } => {
            let (project, user, role) = (ProjectName::parse(&project)?, UserName::parse(&user)?, Role::parse(&role)?);
            let request = custody_api::ProjectMemberRequest { user: user.to_string(), role: role.as_str().to_owned() };
            client.submit(&format!("/api/v1/projects/{project}/members"), &request).await
        }
        MemberCommand::Remove { project, user } => {
            let (project, user) = (ProjectName::parse(&project)?, UserName::parse(&user)?);
            client.call(Method::DELETE, &format!("/api/v1/projects/{project}/members/{user}"), None).await
        }
    }
}

async fn protect(client: &Client, name: &str, branch: String) -> Result<GrantView, Failure> {
    custody_domain::project::check_branch_name(&branch)?;
    let path = format!("/api/v1/projects/{}/protected-branches", ProjectName::parse(name)?);
    client.submit(&path, &custody_api::BranchRequest { branch }).await
}

async fn unprotect(client: &Client, name: &str, branch: &str) -> Result<GrantView, Failure> {
    custody_domain::project::check_branch_name(branch)?;
    let path = format!("/api/v1/projects/{}/protected-branches/{branch}", ProjectName::parse(name)?);
    client.call(Method::DELETE, &path, None).await
}

async fn set_default_branch(client: &Client, name: &str, branch: String) -> Result<GrantView, Failure> {
    custody_domain::project::check_branch_name(&branch)?;
    let path = format!("/api/v1/projects/{}/default-branch", ProjectName::parse(name)?);
    client.submit_as(Method::PUT, &path, &custody_api::BranchRequest { branch }).await
}

async fn delete_tag(client: &Client, name: &str, tag: &str) -> Result<GrantView, Failure> {
    // One path segment, whatever the tag holds (`release/1`, say).
    let segment: String = tag
        .bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'.' | b'_' | b'~' => (b as char).to_string(),
            other => format!("%{other:02X}"),
        })
        .collect();
    let path = format!("/api/v1/projects/{}/tags/{segment}", ProjectName::parse(name)?);
    client.call(Method::DELETE, &path, None).await
}

// ---------------------------------------------------------------------------
// History: pushes and commits
// ---------------------------------------------------------------------------

async fn pushes(client: &Client, name: &str, out: Output) -> Result<(), Failure> {
    let pushes: Vec<PushView> = client.list(&format!("/api/v1/projects/{}/pushes", ProjectName::parse(name)?)).await?;
    out.list(&pushes, push_line, "no pushes");
    Ok(())
}

fn push_line(push: &PushView) -> String {
    let refs: Vec<String> = push.updates.iter().map(ref_moved).collect();
    format!("#{} {} {}  {}  ({} new commits)", push.id, push.at, push.pusher, refs.join(", "), push.commits.len())
}

fn ref_moved(update: &RefUpdate) -> String {
    format!("{} {}..{}", update.name, short(&update.old), short(&update.new))
}

async fn commit(client: &Client, name: &str, sha: &str, out: Output) -> Result<(), Failure> {
    let path = format!("/api/v1/projects/{}/commits/{sha}", ProjectName::parse(name)?);
    let commit: CommitView = client.get(&path).await?;
    out.show(&commit, commit_text);
    Ok(())
}

fn commit_text(commit: &CommitView) -> String {
    let co_authors: Vec<String> = commit.co_authors.iter().map(identity).collect();
    let pushed_by = match (&commit.pusher, commit.imported_by_grant) {
        (Some(pusher), _) => pusher.clone(),
        (None, Some(grant)) => format!("nobody: imported, unreviewed, by grant {grant}"),
        (None, None) => "nobody: custody made it, merging a reviewed change".to_owned(),
    };
    // The push as JSON wrote it: `null` when no push brought the commit.
    let first_push = commit.first_push.map_or_else(|| "null".to_owned(), |push| push.to_string());
    format!(
        "{}\npushed first by: {pushed_by} (push {first_push})\nauthor: {}\ncommitter: {}\nco-authors: {}",
        commit.sha,
        identity(&commit.author),
        identity(&commit.committer),
        if co_authors.is_empty() { "(none)".to_owned() } else { co_authors.join("; ") }
    )
}

fn identity(identity: &Identity) -> String {
    let user = identity.user.as_ref().map(|u| format!(" = {u}")).unwrap_or_else(|| " (no custody user)".into());
    format!("{} <{}>{user}", identity.name, identity.email)
}

/// A commit id's first eight characters.
fn short(id: &str) -> &str {
    id.char_indices().nth(8).map_or(id, |(end, _)| &id[..end])
}
