//! `custody project …`: projects, their members and protected branches.

use clap::Subcommand;
use custody_domain::{ProjectName, Role, UserName};
use reqwest::Method;
use serde_json::Value;

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

fn project_text(p: &Value) -> String {
    let members: Vec<String> = p["members"]
        .as_array()
        .map(|m| {
            m.iter()
                .map(|m| format!("{} ({})", m["user"].as_str().unwrap_or(""), m["role"].as_str().unwrap_or("")))
                .collect()
        })
        .unwrap_or_default();
    let protected: Vec<&str> =
        p["protected_branches"].as_array().map(|b| b.iter().filter_map(Value::as_str).collect()).unwrap_or_default();
    format!(
        "{}\nclone: {}\ndefault branch: {}\nprotected: {}\nmembers: {}",
        p["name"].as_str().unwrap_or(""),
        p["clone_url"].as_str().unwrap_or(""),
        p["default_branch"].as_str().unwrap_or(""),
        protected.join(", "),
        if members.is_empty() { "(none)".to_owned() } else { members.join(", ") }
    )
}

fn identity(i: &Value) -> String {
    let user = i["user"].as_str().map(|u| format!(" = {u}")).unwrap_or_else(|| " (no custody user)".into());
    format!("{} <{}>{user}", i["name"].as_str().unwrap_or(""), i["email"].as_str().unwrap_or(""))
}

pub async fn run(client: &Client, command: ProjectCommand, out: Output) -> Result<(), Failure> {
    match command {
        ProjectCommand::Create { name, default_branch, import } => {
            ProjectName::parse(&name)?;
            custody_domain::project::check_branch_name(&default_branch)?;
            // A relative path means the caller's directory, when the server shares this machine.
            let import = import.map(|p| std::fs::canonicalize(&p).map(|c| c.display().to_string()).unwrap_or(p));
            let body = custody_api::CreateProjectRequest { name, default_branch: Some(default_branch), import };
            let made: Value = client.submit("/api/v1/projects", &body).await?;
            out.show(&made, |p| {
                let mut text = format!(
                    "project {} created; clone it with: git clone {}",
                    p["name"].as_str().unwrap_or(""),
                    p["clone_url"].as_str().unwrap_or("")
                );
                if let Some(grant) = p.get("import_grant").filter(|g| !g.is_null()) {
                    text.push('\n');
                    text.push_str(&grant_outcome(grant));
                }
                text
            });
        }
        ProjectCommand::List => {
            let projects = client.list("/api/v1/projects").await?;
            out.list(
                &projects,
                |p: &Value| {
                    format!("{:<24} {}", p["name"].as_str().unwrap_or(""), p["clone_url"].as_str().unwrap_or(""))
                },
                "no projects",
            );
        }
        ProjectCommand::Show { name } => {
            let project = client.get(&format!("/api/v1/projects/{}", ProjectName::parse(&name)?)).await?;
            out.show(&project, project_text);
        }
        ProjectCommand::Member(MemberCommand::Add { project, user, role }) => {
            let (project, user, role) = (ProjectName::parse(&project)?, UserName::parse(&user)?, Role::parse(&role)?);
            let grant = client
                .submit(
                    &format!("/api/v1/projects/{project}/members"),
                    &custody_api::ProjectMemberRequest { user: user.to_string(), role: role.as_str().to_owned() },
                )
                .await?;
            out.show(&grant, grant_outcome);
        }
        ProjectCommand::Member(MemberCommand::Remove { project, user }) => {
            let (project, user) = (ProjectName::parse(&project)?, UserName::parse(&user)?);
            let grant =
                client.call(Method::DELETE, &format!("/api/v1/projects/{project}/members/{user}"), None).await?;
            out.show(&grant, grant_outcome);
        }
        ProjectCommand::Protect { name, branch } => {
            custody_domain::project::check_branch_name(&branch)?;
            let grant = client
                .submit(
                    &format!("/api/v1/projects/{}/protected-branches", ProjectName::parse(&name)?),
                    &custody_api::BranchRequest { branch },
                )
                .await?;
            out.show(&grant, grant_outcome);
        }
        ProjectCommand::Unprotect { name, branch } => {
            custody_domain::project::check_branch_name(&branch)?;
            let path = format!("/api/v1/projects/{}/protected-branches/{branch}", ProjectName::parse(&name)?);
            let grant = client.call(Method::DELETE, &path, None).await?;
            out.show(&grant, grant_outcome);
        }
        ProjectCommand::DeleteTag { name, tag } => {
            // One path segment, whatever the tag holds (`release/1`, say).
            let segment: String = tag
                .bytes()
                .map(|b| match b {
                    b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'.' | b'_' | b'~' => (b as char).to_string(),
                    other => format!("%{other:02X}"),
                })
                .collect();
            let path = format!("/api/v1/projects/{}/tags/{segment}", ProjectName::parse(&name)?);
            let grant = client.call(Method::DELETE, &path, None).await?;
            out.show(&grant, grant_outcome);
        }
        ProjectCommand::SetDefaultBranch { name, branch } => {
            custody_domain::project::check_branch_name(&branch)?;
            let path = format!("/api/v1/projects/{}/default-branch", ProjectName::parse(&name)?);
            let grant = client.submit_as(Method::PUT, &path, &custody_api::BranchRequest { branch }).await?;
            out.show(&grant, grant_outcome);
        }
        ProjectCommand::Pushes { name } => {
            let pushes = client.list(&format!("/api/v1/projects/{}/pushes", ProjectName::parse(&name)?)).await?;
            out.list(
                &pushes,
                |p: &Value| {
                    let refs: Vec<String> = p["updates"]
                        .as_array()
                        .map(|u| {
                            u.iter()
                                .map(|u| {
                                    format!(
                                        "{} {}..{}",
                                        u["name"].as_str().unwrap_or(""),
                                        short(&u["old"]),
                                        short(&u["new"])
                                    )
                                })
                                .collect()
                        })
                        .unwrap_or_default();
                    let commits = p["commits"].as_array().map_or(0, Vec::len);
                    format!(
                        "#{:<5} {} {}  {}  ({commits} new commits)",
                        p["id"],
                        p["at"].as_str().unwrap_or(""),
                        p["pusher"].as_str().unwrap_or(""),
                        refs.join(", ")
                    )
                },
                "no pushes",
            );
        }
        ProjectCommand::Commit { name, sha } => {
            let commit: Value =
                client.get(&format!("/api/v1/projects/{}/commits/{sha}", ProjectName::parse(&name)?)).await?;
            out.show(&commit, |c| {
                let co: Vec<String> =
                    c["co_authors"].as_array().map(|a| a.iter().map(identity).collect()).unwrap_or_default();
                format!(
                    "{}\npushed first by: {} (push {})\nauthor: {}\ncommitter: {}\nco-authors: {}",
                    c["sha"].as_str().unwrap_or(""),
                    match (c["pusher"].as_str(), c["imported_by_grant"].as_i64()) {
                        (Some(pusher), _) => pusher.to_owned(),
                        (None, Some(grant)) => format!("nobody: imported, unreviewed, by grant {grant}"),
                        (None, None) => "nobody: custody made it, merging a reviewed change".to_owned(),
                    },
                    c["first_push"],
                    identity(&c["author"]),
                    identity(&c["committer"]),
                    if co.is_empty() { "(none)".to_owned() } else { co.join("; ") }
                )
            });
        }
    }
    Ok(())
}

fn short(id: &Value) -> &str {
    id.as_str().map(|s| s.char_indices().nth(8).map_or(s, |(end, _)| &s[..end])).unwrap_or("")
}
