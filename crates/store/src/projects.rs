//! Projects, their members and protected branches, and the push log.

use custody_api::{CommitView, ProjectMemberView, ProjectView, PushView};
use custody_domain::audit::NewEvent;
use custody_domain::grant::GrantAction;
use custody_domain::project::check_branch_name;
use custody_domain::project::{Identity, PushedCommit};
use custody_domain::{ProjectName, RefUpdate, Role, Timestamp, UserName};
use serde_json::json;

use crate::lookups::{existing_user, require_admin, Authenticated, ProjectAccess};
use crate::seals::CommitRecord;
use crate::tx::{Reads, Tx};
use crate::GrantView;
use crate::{col, now_ms, Page, PageRequest, Result, Store, StoreError};

async fn project_id(tx: &mut Tx, project: &ProjectName) -> Result<(i64, String)> {
    let sql = tx.sql("SELECT id, default_branch FROM projects WHERE name = $1");
    let row = sqlx::query(&sql)
        .bind(project.as_str())
        .fetch_optional(tx.conn())
        .await?
        .ok_or_else(|| StoreError::not_found("project", project))?;
    Ok((col(&row, "id")?, col(&row, "default_branch")?))
}

async fn is_protected(tx: &mut Tx, project_id: i64, branch: &str) -> Result<bool> {
    let sql = tx.sql("SELECT COUNT(*) FROM protected_branches WHERE project_id = $1 AND branch = $2");
    let n: i64 = sqlx::query_scalar(&sql).bind(project_id).bind(branch).fetch_one(tx.conn()).await?;
    Ok(n > 0)
}

/// Checks that a project grant can apply to the state as it is now.
pub(crate) async fn check_applicable(tx: &mut Tx, action: &GrantAction) -> Result<()> {
    match action {
        GrantAction::AddProjectMember { project, user, .. } => {
            project_id(tx, project).await?;
            let (_, disabled) = existing_user(tx, user).await?;
            if disabled {
                return Err(StoreError::Conflict(format!("user {user} is disabled")));
            }
        }
        GrantAction::RemoveProjectMember { project, user } => {
            let (project_id, _) = project_id(tx, project).await?;
            let (user_id, _) = existing_user(tx, user).await?;
            let sql = tx.sql("SELECT COUNT(*) FROM project_members WHERE project_id = $1 AND user_id = $2");
            let n: i64 = sqlx::query_scalar(&sql).bind(project_id).bind(user_id).fetch_one(tx.conn()).await?;
            if n == 0 {
                return Err(StoreError::Conflict(format!("{user} is not a member of {project}")));
            }
        }
        GrantAction::ProtectBranch { project, branch } => {
            check_branch_name(branch)?;
            let (project_id, default_branch) = project_id(tx, project).await?;
            if *branch == default_branch || is_protected(tx, project_id, branch).await? {
                return Err(StoreError::Conflict(format!("branch {branch} of {project} is already protected")));
            }
        }
        GrantAction::SetDefaultBranch { project, branch } => {
            check_branch_name(branch)?;
            let (_, default_branch) = project_id(tx, project).await?;
            if *branch == default_branch {
                return Err(StoreError::Conflict(format!("{branch} is already the default branch of {project}")));
            }
        }
        GrantAction::ImportRepository { project, .. } => {
            let (project_id, _) = project_id(tx, project).await?;
            let sql = tx.sql("SELECT COUNT(*) FROM commits WHERE project_id = $1");
            let n: i64 = sqlx::query_scalar(&sql).bind(project_id).fetch_one(tx.conn()).await?;
            if n > 0 {
                return Err(StoreError::Conflict(format!(
                    "{project} already has history; only an empty project takes an import"
                )));
            }
        }
        GrantAction::DeleteTag { project, tag, .. } => {
            project_id(tx, project).await?;
            if tag.is_empty() || tag.contains("..") || tag.starts_with('/') {
                return Err(custody_domain::InvalidInput::new("tag", tag, "name a tag, such as v1.2").into());
            }
        }
        GrantAction::UnprotectBranch { project, branch } => {
            let (project_id, default_branch) = project_id(tx, project).await?;
            if *branch == default_branch {
                return Err(StoreError::Conflict(format!(
                    "{branch} is the default branch of {project}; it is always protected"
                )));
            }
            if !is_protected(tx, project_id, branch).await? {
                return Err(StoreError::Conflict(format!("branch {branch} of {project} is not protected")));
            }
        }
        _ => {}
    }
    Ok(())
}

/// Applies a project grant.
pub(crate) async fn apply(tx: &mut Tx, grant_id: i64, action: &GrantAction) -> Result<()> {
    match action {
        GrantAction::AddProjectMember { project, user, role } => {
            let (project_id, _) = project_id(tx, project).await?;
            let (user_id, _) = existing_user(tx, user).await?;
            let sql = tx.sql(
                "INSERT INTO project_members (project_id, user_id, role, grant_id, added_at) VALUES ($1, $2, $3, $4, $5) \
                 ON CONFLICT (project_id, user_id) DO UPDATE SET role = excluded.role, grant_id = excluded.grant_id",
            );
            sqlx::query(&sql)
                .bind(project_id)
                .bind(user_id)
                .bind(role.as_str())
                .bind(grant_id)
                .bind(now_ms())
                .execute(tx.conn())
                .await?;
        }
        GrantAction::RemoveProjectMember { project, user } => {
            let (project_id, _) = project_id(tx, project).await?;
            let (user_id, _) = existing_user(tx, user).await?;
            let sql = tx.sql("DELETE FROM project_members WHERE project_id = $1 AND user_id = $2");
            sqlx::query(&sql).bind(project_id).bind(user_id).execute(tx.conn()).await?;
        }
        GrantAction::ProtectBranch { project, branch } => {
            let (project_id, _) = project_id(tx, project).await?;
            let sql = tx.sql("INSERT INTO protected_branches (project_id, branch, grant_id) VALUES ($1, $2, $3)");
            sqlx::query(&sql).bind(project_id).bind(branch).bind(grant_id).execute(tx.conn()).await?;
        }
        GrantAction::UnprotectBranch { project, branch } => {
            let (project_id, _) = project_id(tx, project).await?;
            let sql = tx.sql("DELETE FROM protected_branches WHERE project_id = $1 AND branch = $2");
            sqlx::query(&sql).bind(project_id).bind(branch).execute(tx.conn()).await?;
        }
        GrantAction::SetDefaultBranch { project, branch } => {
            // The old mainline stays protected: taking protection away is a
            // grant of its own.
            let (project_id, old) = project_id(tx, project).await?;
            let sql = tx.sql(
                "INSERT INTO protected_branches (project_id, branch, grant_id) VALUES ($1, $2, $3) ON CONFLICT DO NOTHING",
            );
            sqlx::query(&sql).bind(project_id).bind(&old).bind(grant_id).execute(tx.conn()).await?;
            let sql = tx.sql("DELETE FROM protected_branches WHERE project_id = $1 AND branch = $2");
            sqlx::query(&sql).bind(project_id).bind(branch).execute(tx.conn()).await?;
            let sql = tx.sql("UPDATE projects SET default_branch = $1 WHERE id = $2");
            sqlx::query(&sql).bind(branch).bind(project_id).execute(tx.conn()).await?;
        }
        _ => {}
    }
    Ok(())
}

/// Records an accepted push in the caller's transaction: its ref updates,
/// and the commits it brings in with the identities they name.
async fn insert_push(
    tx: &mut Tx,
    project_id: i64,
    project: &ProjectName,
    pusher: &Authenticated,
    updates: &[RefUpdate],
    commits: &[PushedCommit],
) -> Result<i64> {
    let sql = tx.sql("INSERT INTO pushes (project_id, pusher_id, at) VALUES ($1, $2, $3) RETURNING id");
    let push_id: i64 =
        sqlx::query_scalar(&sql).bind(project_id).bind(pusher.user_id).bind(now_ms()).fetch_one(tx.conn()).await?;
    for update in updates {
        let sql = tx.sql("INSERT INTO push_updates (push_id, ref_name, old_id, new_id) VALUES ($1, $2, $3, $4)");
        sqlx::query(&sql)
            .bind(push_id)
            .bind(&update.name)
            .bind(&update.old)
            .bind(&update.new)
            .execute(tx.conn())
            .await?;
    }
    let mut introduced = Vec::new();
    let mut named = std::collections::BTreeSet::new();
    // A large push names few people many times: look each address up once.
    let mut known: std::collections::HashMap<String, Option<(i64, String)>> = Default::default();
    // Many rows per statement: a push of ten thousand commits is
    // fifty statements, not ten thousand.
    for chunk in commits.chunks(COMMITS_PER_STATEMENT) {
        let mut people = Vec::with_capacity(chunk.len());
        let mut seals = Vec::with_capacity(chunk.len());
        for commit in chunk {
            let author = lookup(tx, &mut known, &commit.author.email).await?;
            let committer = lookup(tx, &mut known, &commit.committer.email).await?;
            let mut co_authors = Vec::new();
            for co_author in &commit.co_authors {
                co_authors.extend(lookup(tx, &mut known, &co_author.email).await?.map(|u| u.0));
            }
            let record = CommitRecord {
                project_id,
                sha: &commit.sha,
                first_push: Some(push_id),
                pusher: Some(pusher.user_id),
                import_grant: None,
                author: author.as_ref().map(|a| a.0),
                committer: committer.as_ref().map(|c| c.0),
                co_authors,
            };
            seals.push(record.seal(&tx.ledger_state().secrets.key));
            people.push((author, committer));
        }
        // The chunk travels as one JSON parameter that the
        // database unpacks: one bind instead of ten per row.
        let rows: Vec<serde_json::Value> = chunk
            .iter()
            .zip(&people)
            .zip(&seals)
            .map(|((commit, (author, committer)), seal)| {
                json!({
                    "s": commit.sha, "an": commit.author.name, "ae": commit.author.email,
                    "au": author.as_ref().map(|a| a.0),
                    "cn": commit.committer.name, "ce": commit.committer.email,
                    "cu": committer.as_ref().map(|c| c.0), "z": seal,
                })
            })
            .collect();
        let inserted = insert_commit_rows(tx, project_id, push_id, &rows).await?;
        for (commit, (author, committer)) in chunk.iter().zip(people) {
            if !inserted.contains(&commit.sha) {
                continue;
            }
            introduced.push(commit.sha.clone());
            named.extend(author.map(|a| a.1));
            named.extend(committer.map(|c| c.1));
            for (position, co_author) in commit.co_authors.iter().enumerate() {
                let user = lookup(tx, &mut known, &co_author.email).await?;
                let sql = tx.sql(
                    "INSERT INTO commit_coauthors (project_id, sha, position, name, email, user_id) \
                                 VALUES ($1, $2, $3, $4, $5, $6)",
                );
                sqlx::query(&sql)
                    .bind(project_id)
                    .bind(&commit.sha)
                    .bind(position as i64)
                    .bind(&co_author.name)
                    .bind(&co_author.email)
                    .bind(user.as_ref().map(|u| u.0))
                    .execute(tx.conn())
                    .await?;
                named.extend(user.map(|u| u.1));
            }
        }
    }
    tx.audit(NewEvent {
        actor: pusher.name.to_string(),
        action: "git.push".into(),
        subject: format!("project:{project}"),
        details: json!({
            "push": push_id,
            "updates": updates,
            "commits_introduced": introduced.len(),
            "first_commit": introduced.first(),
            "last_commit": introduced.last(),
            "users_named_by_commits": named,
        }),
    })
    .await?;
    Ok(push_id)
}

/// Inserts a chunk of commits (one JSON document the database unpacks, in
/// each dialect's JSON functions) and returns the ids it inserted: those
/// the project did not hold yet.
async fn insert_commit_rows(
    tx: &mut Tx,
    project_id: i64,
    push_id: i64,
    rows: &[serde_json::Value],
) -> Result<std::collections::HashSet<String>> {
    // The same statement in each dialect's JSON functions, through the
    // one placeholder rewriting.
    let sql = tx.sql(match tx.dialect() {
        crate::Dialect::Sqlite => {
            "INSERT INTO commits (project_id, sha, first_push_id, author_name, author_email, author_user_id, \
                         committer_name, committer_email, committer_user_id, seal) \
                         SELECT $1, json_extract(value, '$.s'), $2, json_extract(value, '$.an'), \
                         json_extract(value, '$.ae'), json_extract(value, '$.au'), json_extract(value, '$.cn'), \
                         json_extract(value, '$.ce'), json_extract(value, '$.cu'), json_extract(value, '$.z') \
                         FROM json_each($3) WHERE true \
                         ON CONFLICT (project_id, sha) DO NOTHING RETURNING sha"
        }
        crate::Dialect::Postgres => {
            "INSERT INTO commits (project_id, sha, first_push_id, author_name, author_email, author_user_id, \
                         committer_name, committer_email, committer_user_id, seal) \
                         SELECT $1, j->>'s', $2, j->>'an', j->>'ae', (j->>'au')::bigint, j->>'cn', j->>'ce', \
                         (j->>'cu')::bigint, j->>'z' FROM json_array_elements($3::json) AS j \
                         ON CONFLICT (project_id, sha) DO NOTHING RETURNING sha"
        }
    });
    let document = serde_json::to_string(rows).map_err(|e| StoreError::Corrupt(e.to_string()))?;
    let query = sqlx::query_scalar::<_, String>(&sql).bind(project_id).bind(push_id).bind(document);
    Ok(query.fetch_all(tx.conn()).await?.into_iter().collect())
}

/// How a push was decided in the writer's transaction.
#[derive(Debug)]
pub enum PushDecided {
    /// Accepted and recorded, on the access it was decided on.
    Recorded {
        /// The push's id.
        push_id: i64,
        /// The pusher's access to the project at that moment.
        access: ProjectAccess,
    },
    /// Refused, with every reason (the refusal is recorded too).
    Refused(custody_domain::Decision),
}

/// `user`'s access to `project`, read on `tx`.
pub(crate) async fn access_in(
    tx: &mut impl Reads,
    user: &Authenticated,
    project: &ProjectName,
) -> Result<ProjectAccess> {
    // Its default and protected branches only as custody wrote them.
    crate::seals::check(tx, &format!("project:{project}")).await?;
    let sql = tx.sql(
            "SELECT p.id, p.default_branch, \
                    (SELECT role FROM project_members m WHERE m.project_id = p.id AND m.user_id = $2) AS role, \
                    (SELECT group_concat(b.branch, char(31)) FROM protected_branches b WHERE b.project_id = p.id) AS protected \
             FROM projects p WHERE p.name = $1",
        );
    let row = sqlx::query(&sql)
        .bind(project.as_str())
        .bind(user.user_id)
        .fetch_optional(tx.conn())
        .await?
        .ok_or_else(|| StoreError::not_found("project", project))?;
    let role: Option<String> = col(&row, "role")?;
    let role = role.map(|r| Role::parse(&r)).transpose().map_err(|e| StoreError::Corrupt(e.to_string()))?;
    let can_read = role.is_some() || user.reads_everything();
    if !can_read {
        return Err(StoreError::not_found("project", project));
    }
    let protected: Option<String> = col(&row, "protected")?;
    let mut protected: Vec<String> =
        protected.map(|p| p.split('\u{1f}').map(str::to_owned).collect()).unwrap_or_default();
    // A branch a pending grant would protect, or make the default, is
    // frozen from the request on: what the second admin approves is the
    // branch as it was asked for.
    let sql = tx.sql(
        "SELECT payload FROM grants WHERE status = 'pending' \
             AND action IN ('project.branch.protect', 'project.default_branch')",
    );
    for payload in sqlx::query_scalar::<_, String>(&sql).fetch_all(tx.conn()).await? {
        match serde_json::from_str::<GrantAction>(&payload) {
            Ok(
                GrantAction::ProtectBranch { project: p, branch }
                | GrantAction::SetDefaultBranch { project: p, branch },
            ) if &p == project => protected.push(branch),
            _ => {}
        }
    }
    Ok(ProjectAccess {
        project_id: col(&row, "id")?,
        project: project.clone(),
        role,
        can_read,
        default_branch: col(&row, "default_branch")?,
        protected,
        as_of: 0,
    })
}

/// Finds the user whose registered address is `email`.
async fn user_by_email(tx: &mut Tx, email: &str) -> Result<Option<(i64, String)>> {
    let sql = tx.sql("SELECT u.id, u.name FROM user_emails e JOIN users u ON u.id = e.user_id WHERE e.email = $1");
    let row = sqlx::query(&sql).bind(email.to_lowercase()).fetch_optional(tx.conn()).await?;
    row.map(|row| Ok((col(&row, "id")?, col(&row, "name")?))).transpose()
}

/// Commits inserted by one statement.
const COMMITS_PER_STATEMENT: usize = 2000;

async fn lookup(
    tx: &mut Tx,
    known: &mut std::collections::HashMap<String, Option<(i64, String)>>,
    email: &str,
) -> Result<Option<(i64, String)>> {
    if let Some(found) = known.get(email) {
        return Ok(found.clone());
    }
    let found = user_by_email(tx, email).await?;
    known.insert(email.to_owned(), found.clone());
    Ok(found)
}

impl Store {
    /// An admin creates a project. An empty project with no members confers
    /// nothing, so it needs no second admin; its members come by grants.
    /// The caller has made its repository already.
    pub async fn create_project(
        &self,
        actor: &Authenticated,
        name: ProjectName,
        default_branch: String,
    ) -> Result<ProjectView> {
        check_branch_name(&default_branch)?;
        let actor = actor.clone();
        let project = name.clone();
        self.write(move |tx| {
            Box::pin(async move {
                require_admin(tx, &actor).await?;
                let sql = tx.sql(
                    "INSERT INTO projects (name, default_branch, created_by, created_at) VALUES ($1, $2, $3, $4) \
                     ON CONFLICT DO NOTHING RETURNING id",
                );
                let id: Option<i64> = sqlx::query_scalar(&sql)
                    .bind(name.as_str())
                    .bind(&default_branch)
                    .bind(actor.name.as_str())
                    .bind(now_ms())
                    .fetch_optional(tx.conn())
                    .await?;
                id.ok_or_else(|| StoreError::Conflict(format!("a project named {name} already exists")))?;
                tx.audit(NewEvent {
                    actor: actor.name.to_string(),
                    action: "project.create".into(),
                    subject: format!("project:{name}"),
                    details: json!({ "default_branch": default_branch }),
                })
                .await?;
                Ok(())
            })
        })
        .await?;
        self.get_project(&project).await
    }

    /// Whether a project of that name exists.
    pub async fn project_exists(&self, name: &ProjectName) -> Result<bool> {
        let sql = self.sql("SELECT COUNT(*) FROM projects WHERE name = $1");
        let n: i64 = sqlx::query_scalar(&sql).bind(name.as_str()).fetch_one(self.readers()).await?;
        Ok(n > 0)
    }

    /// One project with its members and protected branches.
    pub async fn get_project(&self, name: &ProjectName) -> Result<ProjectView> {
        let sql = self
            .sql("SELECT id, name, default_branch, visibility, created_by, created_at FROM projects WHERE name = $1");
        let row = sqlx::query(&sql)
            .bind(name.as_str())
            .fetch_optional(self.readers())
            .await?
            .ok_or_else(|| StoreError::not_found("project", name))?;
        self.project_view(&row).await
    }

    async fn project_view(&self, row: &sqlx::any::AnyRow) -> Result<ProjectView> {
        let id: i64 = col(row, "id")?;
        let default_branch: String = col(row, "default_branch")?;
        let sql = self.sql("SELECT branch FROM protected_branches WHERE project_id = $1 ORDER BY branch");
        let mut protected_branches = vec![default_branch.clone()];
        protected_branches.extend(sqlx::query_scalar::<_, String>(&sql).bind(id).fetch_all(self.readers()).await?);
        let sql = self.sql(
            "SELECT u.name, m.role, m.grant_id FROM project_members m JOIN users u ON u.id = m.user_id \
             WHERE m.project_id = $1 ORDER BY u.name",
        );
        let members = sqlx::query(&sql)
            .bind(id)
            .fetch_all(self.readers())
            .await?
            .iter()
            .map(|m| {
                let role: String = col(m, "role")?;
                Ok(ProjectMemberView {
                    user: col(m, "name")?,
                    role: Role::parse(&role).map_err(|e| StoreError::Corrupt(e.to_string()))?,
                    grant: col(m, "grant_id")?,
                })
            })
            .collect::<Result<Vec<_>>>()?;
        Ok(ProjectView {
            id,
            name: col(row, "name")?,
            default_branch,
            protected_branches,
            members,
            visibility: col(row, "visibility")?,
            created_by: col(row, "created_by")?,
            created_at: Timestamp::from_millis(col(row, "created_at")?),
        })
    }

    /// The projects `reader` may see: all of them for admins and auditors,
    /// their own for everyone else.
    pub async fn list_projects(&self, reader: &Authenticated, page: PageRequest) -> Result<Page<ProjectView>> {
        let sql = self.sql(
            "SELECT id, name, default_branch, visibility, created_by, created_at FROM projects p \
             WHERE id > $1 AND ($2 = 1 OR EXISTS (SELECT 1 FROM project_members m WHERE m.project_id = p.id AND m.user_id = $3)) \
             ORDER BY id LIMIT $4",
        );
        let rows = sqlx::query(&sql)
            .bind(page.after.unwrap_or(0))
            .bind(i64::from(reader.reads_everything()))
            .bind(reader.user_id)
            .bind(page.limit)
            .fetch_all(self.readers())
            .await?;
        let mut projects = Vec::with_capacity(rows.len());
        for row in &rows {
            projects.push(self.project_view(row).await?);
        }
        Ok(crate::page_of(projects, page, |p| p.id))
    }

    /// What `user` may do in `project`. A project they may not read is
    /// reported as missing, so its existence does not leak.
    pub async fn project_access(&self, user: &Authenticated, project: &ProjectName) -> Result<ProjectAccess> {
        // What it reads changes only with a new audit event: the same answer
        // holds while the newest event is the same.
        // The newest event read with the token, when nothing this process
        // committed since is newer; else read now.
        let seq = match user.as_of {
            seen if seen > 0 && seen >= self.ledger().through() => seen,
            _ => self.newest_seq().await?,
        };
        let key = (project.to_string(), user.user_id, user.reads_everything());
        if let Some(known) = self.inner.accesses.remembered(&key, seq) {
            return Ok(known);
        }
        let access = ProjectAccess { as_of: seq, ..self.read_project_access(user, project).await? };
        self.inner.accesses.remember(key, seq, access.clone());
        Ok(access)
    }

    async fn read_project_access(&self, user: &Authenticated, project: &ProjectName) -> Result<ProjectAccess> {
        let mut reader = self.reader().await?;
        access_in(&mut reader, user, project).await
    }

    /// An admin asks to give `user` a role in `project`: a grant.
    pub async fn request_project_member(
        &self,
        actor: &Authenticated,
        project: ProjectName,
        user: UserName,
        role: Role,
    ) -> Result<GrantView> {
        self.request(actor, GrantAction::AddProjectMember { project, user, role }).await
    }

    /// Records an accepted push before any ref moves (from the pre-receive
    /// decision): its ref updates, and the commits it brings in with the
    /// identities they name, mapped to users by registered e-mail. A commit
    /// seen before keeps its first pusher. Recording a push that then fails
    /// to land can only make someone an author, never eligible.
    pub async fn record_push(
        &self,
        access: &ProjectAccess,
        pusher: &Authenticated,
        updates: Vec<RefUpdate>,
        commits: Vec<PushedCommit>,
    ) -> Result<i64> {
        let (project_id, project, pusher) = (access.project_id, access.project.clone(), pusher.clone());
        self.write(move |tx| {
            Box::pin(async move { insert_push(tx, project_id, &project, &pusher, &updates, &commits).await })
        })
        .await
    }

    /// Decides a push inside the writer's transaction, on the pusher's
    /// access to the project as it is at that moment (not as it was when the
    /// push began: write access removed, the pusher disabled or the token
    /// revoked meanwhile all refuse it), and records it: accepted, its ref
    /// updates and commits; refused, a `git.push.refused` event with every
    /// reason.
    pub async fn decide_and_record_push(
        &self,
        pusher: &Authenticated,
        project: &ProjectName,
        updates: Vec<RefUpdate>,
        commits: Vec<PushedCommit>,
    ) -> Result<PushDecided> {
        let (project, pusher) = (project.clone(), pusher.clone());
        self.write(move |tx| {
            Box::pin(async move {
                let access = access_in(tx, &pusher, &project).await?;
                crate::seals::check(tx, &format!("user:{}", pusher.name)).await?;
                let sql = tx.sql(
                    "SELECT u.disabled_at, t.id AS token, t.revoked_at \
                     FROM users u LEFT JOIN tokens t ON t.id = $2 AND t.user_id = u.id WHERE u.id = $1",
                );
                let row =
                    sqlx::query(&sql).bind(pusher.user_id).bind(&pusher.token_id).fetch_optional(tx.conn()).await?;
                let active = match row {
                    Some(row) => {
                        col::<Option<i64>>(&row, "disabled_at")?.is_none()
                            && col::<Option<String>>(&row, "token")?.is_some()
                            && col::<Option<i64>>(&row, "revoked_at")?.is_none()
                    }
                    None => false,
                };
                let can_write = active
                    && pusher.has_scope(custody_domain::Scope::Write)
                    && access.role.is_some_and(|r| r.can_write());
                let decision = custody_domain::project::decide_push(
                    &updates,
                    access.project.as_str(),
                    &access.protected,
                    &access.default_branch,
                    can_write,
                );
                if !decision.allowed {
                    tx.audit(NewEvent {
                        actor: pusher.name.to_string(),
                        action: "git.push.refused".into(),
                        subject: format!("project:{}", access.project),
                        details: json!({ "updates": updates, "reasons": decision.reasons }),
                    })
                    .await?;
                    return Ok(PushDecided::Refused(decision));
                }
                let push_id = insert_push(tx, access.project_id, &access.project, &pusher, &updates, &commits).await?;
                Ok(PushDecided::Recorded { push_id, access })
            })
        })
        .await
    }

    /// After a recorded push landed: moves the head of every change
    /// following an updated branch.
    pub async fn push_landed(
        &self,
        access: &ProjectAccess,
        pusher: &Authenticated,
        push_id: i64,
        updates: Vec<RefUpdate>,
    ) -> Result<()> {
        let (project_id, project, pusher) = (access.project_id, access.project.clone(), pusher.clone());
        self.write(move |tx| {
            Box::pin(async move {
                for update in &updates {
                    if let Some(branch) = update.name.strip_prefix("refs/heads/") {
                        if !update.deletes() {
                            crate::changes::follow_push(
                                tx,
                                project_id,
                                project.as_str(),
                                push_id,
                                pusher.name.as_str(),
                                branch,
                                &update.new,
                            )
                            .await?;
                        }
                    }
                }
                Ok(())
            })
        })
        .await
    }

    /// Records the commits an approved import brought in, as unreviewed
    /// history of the grant that approved it.
    pub async fn record_import(&self, project: &ProjectName, grant: i64, commits: Vec<PushedCommit>) -> Result<usize> {
        let project = project.clone();
        self.write(move |tx| {
            Box::pin(async move {
                let (project_id, _) = project_id(tx, &project).await?;
                let mut known = std::collections::HashMap::new();
                let mut recorded = 0;
                for commit in &commits {
                    let author = lookup(tx, &mut known, &commit.author.email).await?;
                    let committer = lookup(tx, &mut known, &commit.committer.email).await?;
                    let seal = CommitRecord {
                        project_id,
                        sha: &commit.sha,
                        first_push: None,
                        pusher: None,
                        import_grant: Some(grant),
                        author: author.as_ref().map(|a| a.0),
                        committer: committer.as_ref().map(|c| c.0),
                        co_authors: Vec::new(),
                    }
                    .seal(&tx.ledger_state().secrets.key);
                    let sql = tx.sql(
                        "INSERT INTO commits (project_id, sha, import_grant_id, author_name, author_email, author_user_id, \
                         committer_name, committer_email, committer_user_id, seal) \
                         VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10) ON CONFLICT (project_id, sha) DO NOTHING",
                    );
                    recorded += sqlx::query(&sql)
                        .bind(project_id)
                        .bind(&commit.sha)
                        .bind(grant)
                        .bind(&commit.author.name)
                        .bind(&commit.author.email)
                        .bind(author.map(|a| a.0))
                        .bind(&commit.committer.name)
                        .bind(&commit.committer.email)
                        .bind(committer.map(|c| c.0))
                        .bind(seal)
                        .execute(tx.conn())
                        .await?
                        .rows_affected() as usize;
                }
                tx.audit(NewEvent {
                    actor: custody_domain::audit::SYSTEM_ACTOR.into(),
                    action: "project.import.apply".into(),
                    subject: format!("project:{project}"),
                    details: json!({ "grant": grant, "commits": recorded, "reviewed": false }),
                })
                .await?;
                Ok(recorded)
            })
        })
        .await
    }

    /// A commit and who brought it in.
    pub async fn commit(&self, project: &ProjectName, sha: &str) -> Result<CommitView> {
        let sql = self.sql(
            "SELECT c.sha, c.first_push_id, c.import_grant_id, pu.name AS pusher, c.author_name, c.author_email, au.name AS author_user, \
                    c.committer_name, c.committer_email, cu.name AS committer_user \
             FROM commits c JOIN projects p ON p.id = c.project_id \
             LEFT JOIN pushes ps ON ps.id = c.first_push_id LEFT JOIN users pu ON pu.id = ps.pusher_id \
             LEFT JOIN users au ON au.id = c.author_user_id LEFT JOIN users cu ON cu.id = c.committer_user_id \
             WHERE p.name = $1 AND c.sha = $2",
        );
        let row = sqlx::query(&sql)
            .bind(project.as_str())
            .bind(sha)
            .fetch_optional(self.readers())
            .await?
            .ok_or_else(|| StoreError::not_found("commit", sha))?;
        let sql = self.sql(
            "SELECT ca.name, ca.email, u.name AS user_name FROM commit_coauthors ca JOIN projects p ON p.id = ca.project_id \
             LEFT JOIN users u ON u.id = ca.user_id WHERE p.name = $1 AND ca.sha = $2 ORDER BY ca.position",
        );
        let co_authors = sqlx::query(&sql)
            .bind(project.as_str())
            .bind(sha)
            .fetch_all(self.readers())
            .await?
            .iter()
            .map(|r| Ok(Identity { name: col(r, "name")?, email: col(r, "email")?, user: col(r, "user_name")? }))
            .collect::<Result<Vec<_>>>()?;
        Ok(CommitView {
            sha: col(&row, "sha")?,
            first_push: col(&row, "first_push_id")?,
            imported_by_grant: col(&row, "import_grant_id")?,
            pusher: col(&row, "pusher")?,
            author: Identity {
                name: col(&row, "author_name")?,
                email: col(&row, "author_email")?,
                user: col(&row, "author_user")?,
            },
            committer: Identity {
                name: col(&row, "committer_name")?,
                email: col(&row, "committer_email")?,
                user: col(&row, "committer_user")?,
            },
            co_authors,
        })
    }

    /// A project's pushes, oldest first, a page at a time.
    pub async fn pushes(&self, project: &ProjectName, page: PageRequest) -> Result<Page<PushView>> {
        let sql = self.sql(
            "SELECT ps.id, u.name, ps.at FROM pushes ps JOIN projects p ON p.id = ps.project_id \
             JOIN users u ON u.id = ps.pusher_id WHERE p.name = $1 AND ps.id > $2 ORDER BY ps.id LIMIT $3",
        );
        let rows = sqlx::query(&sql)
            .bind(project.as_str())
            .bind(page.after.unwrap_or(0))
            .bind(page.limit)
            .fetch_all(self.readers())
            .await?;
        let mut pushes = Vec::with_capacity(rows.len());
        for row in &rows {
            let id: i64 = col(row, "id")?;
            let sql =
                self.sql("SELECT ref_name, old_id, new_id FROM push_updates WHERE push_id = $1 ORDER BY ref_name");
            let updates = sqlx::query(&sql)
                .bind(id)
                .fetch_all(self.readers())
                .await?
                .iter()
                .map(|u| Ok(RefUpdate { name: col(u, "ref_name")?, old: col(u, "old_id")?, new: col(u, "new_id")? }))
                .collect::<Result<Vec<_>>>()?;
            let sql = self.sql("SELECT sha FROM commits WHERE first_push_id = $1 ORDER BY sha");
            let commits: Vec<String> = sqlx::query_scalar(&sql).bind(id).fetch_all(self.readers()).await?;
            pushes.push(PushView {
                id,
                pusher: col(row, "name")?,
                at: Timestamp::from_millis(col(row, "at")?),
                updates,
                commits,
            });
        }
        Ok(crate::page_of(pushes, page, |p| p.id))
    }
}
