//! Change requests: their heads, reviews and merge.

use std::collections::{BTreeMap, BTreeSet};

use custody_api::{AuthorReason, ChangeView, ReviewView};
use custody_domain::access::ChangeWrite;
use custody_domain::audit::NewEvent;
use custody_domain::gate::{Review, Verdict};
use custody_domain::status::ChangeState;
use custody_domain::{GroupName, ProjectName, Timestamp, UserName};
use serde_json::json;

use crate::lookups::{Authenticated, ProjectAccess};
use crate::tx::{Reads, Tx};
use crate::{col, now_ms, Page, PageRequest, Result, Store, StoreError};

/// The authors of a change, each with every reason.
pub type Authors = BTreeMap<UserName, Vec<AuthorReason>>;

/// What the gate needs from the database, read in one transaction.
#[derive(Clone, Debug)]
pub struct GateRecords {
    /// The change.
    pub change: ChangeView,
    /// Its reviews, for the gate.
    pub reviews: Vec<Review>,
    /// Its authors.
    pub authors: Authors,
    /// Project members with write access.
    pub writers: BTreeSet<UserName>,
    /// Members of the groups asked about.
    pub groups: BTreeMap<GroupName, BTreeSet<UserName>>,
    /// How many of the change's commits custody has no record of (nobody
    /// is known to have pushed them): the gate refuses while any is unknown.
    pub unrecorded_commits: usize,
}

fn parse_user(name: String) -> Result<UserName> {
    UserName::parse(&name).map_err(|e| StoreError::Corrupt(e.to_string()))
}

pub(crate) async fn change_row(tx: &mut impl Reads, project_id: i64, number: i64) -> Result<(i64, ChangeView)> {
    let sql = tx.sql(
        "SELECT c.id, c.number, p.name AS project, c.title, c.description, c.source_branch, c.target_branch, c.state, \
                c.head, o.name AS opened_by, c.opened_at, m.name AS merged_by, c.merged_at, c.merge_commit \
         FROM changes c JOIN projects p ON p.id = c.project_id JOIN users o ON o.id = c.opened_by \
         LEFT JOIN users m ON m.id = c.merged_by WHERE c.project_id = $1 AND c.number = $2",
    );
    let row = sqlx::query(&sql)
        .bind(project_id)
        .bind(number)
        .fetch_optional(tx.conn())
        .await?
        .ok_or_else(|| StoreError::not_found("change", number))?;
    let view = change_view(&row)?;
    Ok((view.id, view))
}

/// A change as the database's JSON gives it.
#[derive(serde::Deserialize)]
struct ChangeRow {
    id: i64,
    number: i64,
    project: String,
    title: String,
    description: String,
    source_branch: String,
    target_branch: String,
    state: ChangeState,
    head: String,
    opened_by: String,
    opened_at: i64,
    merged_by: Option<String>,
    merged_at: Option<i64>,
    merge_commit: Option<String>,
}

impl ChangeRow {
    fn into_view(self) -> ChangeView {
        ChangeView {
            id: self.id,
            number: self.number,
            project: self.project,
            title: self.title,
            description: self.description,
            source_branch: self.source_branch,
            target_branch: self.target_branch,
            state: self.state,
            head: self.head,
            opened_by: self.opened_by,
            opened_at: Timestamp::from_millis(self.opened_at),
            merged_by: self.merged_by,
            merged_at: self.merged_at.map(Timestamp::from_millis),
            merge_commit: self.merge_commit,
            reviews: Vec::new(),
        }
    }
}

fn change_view(row: &sqlx::any::AnyRow) -> Result<ChangeView> {
    Ok(ChangeView {
        id: col(row, "id")?,
        number: col(row, "number")?,
        project: col(row, "project")?,
        title: col(row, "title")?,
        description: col(row, "description")?,
        source_branch: col(row, "source_branch")?,
        target_branch: col(row, "target_branch")?,
        state: crate::status_col(row, "state", ChangeState::parse)?,
        head: col(row, "head")?,
        opened_by: col(row, "opened_by")?,
        opened_at: Timestamp::from_millis(col(row, "opened_at")?),
        merged_by: col(row, "merged_by")?,
        merged_at: col::<Option<i64>>(row, "merged_at")?.map(Timestamp::from_millis),
        merge_commit: col(row, "merge_commit")?,
        reviews: Vec::new(),
    })
}

async fn reviews_of(tx: &mut impl Reads, change_id: i64, head: &str) -> Result<Vec<ReviewView>> {
    let sql = tx.sql(
        "SELECT r.id, u.name, r.verdict, r.head, r.message, r.at FROM reviews r JOIN users u ON u.id = r.reviewer_id \
         WHERE r.change_id = $1 ORDER BY r.id",
    );
    let rows = sqlx::query(&sql).bind(change_id).fetch_all(tx.conn()).await?;
    rows.iter()
        .map(|r| {
            let reviewed: String = col(r, "head")?;
            Ok(ReviewView {
                id: col(r, "id")?,
                reviewer: col(r, "name")?,
                verdict: col(r, "verdict")?,
                stale: reviewed != head,
                head: reviewed,
                message: col(r, "message")?,
                at: Timestamp::from_millis(col(r, "at")?),
            })
        })
        .collect()
}

/// The authors the commits themselves make: their first pushers and the
/// users they name; and whether every commit was found recorded.
async fn commit_authors(tx: &mut impl Reads, project_id: i64, commits: &[String]) -> Result<(Authors, usize)> {
    let mut authors: Authors = BTreeMap::new();
    let mut found = 0;
    let mut add = |user: String, why: AuthorReason| -> Result<()> {
        authors.entry(parse_user(user)?).or_default().push(why);
        Ok(())
    };
    for chunk in commits.chunks(400) {
        let placeholders: Vec<String> = (0..chunk.len()).map(|i| format!("${}", i + 2)).collect();
        let list = placeholders.join(", ");
        let sql = tx.dialect().sql_owned(format!(
            "SELECT c.sha, pu.name AS pusher, au.name AS author, cu.name AS committer, c.first_push_id, ps.pusher_id, \
             c.import_grant_id, c.author_user_id, c.committer_user_id, c.seal \
             FROM commits c LEFT JOIN pushes ps ON ps.id = c.first_push_id LEFT JOIN users pu ON pu.id = ps.pusher_id \
             LEFT JOIN users au ON au.id = c.author_user_id LEFT JOIN users cu ON cu.id = c.committer_user_id \
             WHERE c.project_id = $1 AND c.sha IN ({list})"
        ));
        let mut query = sqlx::query(&sql).bind(project_id);
        for sha in chunk {
            query = query.bind(sha);
        }
        let rows = query.fetch_all(tx.conn()).await?;
        // Every record must be the one custody sealed: its push, pusher and
        // the users it names, co-authors included.
        let sql = tx.dialect().sql_owned(format!(
            "SELECT ca.sha, ca.user_id FROM commit_coauthors ca \
             WHERE ca.project_id = $1 AND ca.user_id IS NOT NULL AND ca.sha IN ({list})"
        ));
        let mut query = sqlx::query(&sql).bind(project_id);
        for sha in chunk {
            query = query.bind(sha);
        }
        let mut co_authors: BTreeMap<String, Vec<i64>> = BTreeMap::new();
        for row in query.fetch_all(tx.conn()).await? {
            co_authors.entry(col(&row, "sha")?).or_default().push(col(&row, "user_id")?);
        }
        let key = tx.ledger_state().secrets.key.clone();
        for row in &rows {
            let sha: String = col(row, "sha")?;
            let record = crate::seals::CommitRecord {
                project_id,
                sha: &sha,
                first_push: col(row, "first_push_id")?,
                pusher: col(row, "pusher_id")?,
                import_grant: col(row, "import_grant_id")?,
                author: col(row, "author_user_id")?,
                committer: col(row, "committer_user_id")?,
                co_authors: co_authors.remove(&sha).unwrap_or_default(),
            };
            if col::<Option<String>>(row, "seal")?.as_deref() != Some(record.seal(&key).as_str()) {
                return Err(crate::proof::unproven(format!(
                    "commits row {sha}: its record (the push that brought it, its pusher, the users it names) is not \
                     the one custody sealed (edited, or its push or co-authors deleted, around custody)"
                )));
            }
        }
        for row in rows {
            let sha: String = col(&row, "sha")?;
            found += 1;
            if let Some(pusher) = col::<Option<String>>(&row, "pusher")? {
                add(pusher, AuthorReason::PushedCommit { commit: sha.clone() })?;
            }
            if let Some(author) = col::<Option<String>>(&row, "author")? {
                add(author, AuthorReason::NamedAuthor { commit: sha.clone() })?;
            }
            if let Some(committer) = col::<Option<String>>(&row, "committer")? {
                add(committer, AuthorReason::NamedCommitter { commit: sha })?;
            }
        }
        let sql = tx.dialect().sql_owned(format!(
            "SELECT ca.sha, u.name FROM commit_coauthors ca JOIN users u ON u.id = ca.user_id \
             WHERE ca.project_id = $1 AND ca.sha IN ({list})"
        ));
        let mut query = sqlx::query(&sql).bind(project_id);
        for sha in chunk {
            query = query.bind(sha);
        }
        for row in query.fetch_all(tx.conn()).await? {
            add(col(&row, "name")?, AuthorReason::CoAuthor { commit: col(&row, "sha")? })?;
        }
    }
    Ok((authors, commits.len().saturating_sub(found)))
}

/// What the merge gate remembers between calls about authorship.
#[derive(Default)]
pub(crate) struct AuthorsCache {
    /// Authors by commit list: fixed for a given list of commits, since a
    /// commit's record (its first push, the people it names) is written once.
    by_commits: std::sync::Mutex<std::collections::HashMap<(i64, [u8; 32]), Authors>>,
    /// Who moved which branch, by project, from the project's proven
    /// `git.push` events, read on from where it stopped.
    moved: std::sync::Mutex<std::collections::HashMap<String, MovedRefs>>,
}

/// Who moved each branch of a project, from its proven `git.push` events
/// up to `through`.
#[derive(Clone, Default)]
struct MovedRefs {
    through: i64,
    by_ref: std::collections::HashMap<String, BTreeSet<(i64, String)>>,
}

impl MovedRefs {
    fn add(&mut self, event: &crate::proof::TaggedEvent) {
        if event.action != "git.push" {
            return;
        }
        let push = event.details.get("push").and_then(serde_json::Value::as_i64).unwrap_or_default();
        let updates = event.details.get("updates").and_then(serde_json::Value::as_array);
        for name in updates.into_iter().flatten().filter_map(|u| u.get("name").and_then(serde_json::Value::as_str)) {
            self.by_ref.entry(name.to_owned()).or_default().insert((push, event.actor.clone()));
        }
    }
}

/// Everyone who ever moved `branch` of `project`, by push, from the
/// project's proven `git.push` events: a push record deleted around custody
/// is still in the log, and one inserted around it is not proven.
async fn moved_branch(
    tx: &mut impl Reads,
    cache: &AuthorsCache,
    project: &ProjectName,
    branch: &str,
) -> Result<BTreeSet<(i64, String)>> {
    let subject = format!("project:{project}");
    let known = cache.moved.lock().unwrap_or_else(|e| e.into_inner()).get(&subject).cloned().unwrap_or_default();
    let events = crate::proof::proven_events_after(tx, &subject, known.through).await?;
    // Only what was committed when this process last knew of it is kept:
    // this transaction's own events may yet roll back.
    let committed = tx.ledger_state().newest(&subject).unwrap_or(0);
    let mut moved = known;
    let mut kept = None;
    for event in &events {
        moved.add(event);
        if event.seq <= committed {
            moved.through = event.seq;
            kept = Some(moved.clone());
        }
    }
    if let Some(kept) = kept {
        let mut cache = cache.moved.lock().unwrap_or_else(|e| e.into_inner());
        let stale = cache.get(&subject).is_some_and(|c| c.through >= kept.through);
        if !stale {
            cache.insert(subject, kept);
        }
    }
    Ok(moved.by_ref.remove(&format!("refs/heads/{branch}")).unwrap_or_default())
}

/// How many commit lists' authors are remembered.
const AUTHORS_REMEMBERED: usize = 256;

fn commits_key(project_id: i64, commits: &[String]) -> (i64, [u8; 32]) {
    use sha2::Digest;
    let mut hasher = sha2::Sha256::new();
    for sha in commits {
        hasher.update(sha.as_bytes());
        hasher.update(b"\n");
    }
    (project_id, hasher.finalize().into())
}

/// The authors of a change whose commits are `commits`, from the push log.
async fn authors_of(
    tx: &mut impl Reads,
    cache: &AuthorsCache,
    project_id: i64,
    project: &ProjectName,
    source_branch: &str,
    commits: &[String],
) -> Result<(Authors, usize)> {
    let key = commits_key(project_id, commits);
    let remembered = cache.by_commits.lock().unwrap_or_else(|e| e.into_inner()).get(&key).cloned();
    let mut unrecorded = 0;
    let mut authors = match remembered {
        Some(authors) => authors,
        None => {
            let (authors, missing) = commit_authors(tx, project_id, commits).await?;
            unrecorded = missing;
            // Only a list whose every commit is recorded is final.
            if missing == 0 {
                let mut cache = cache.by_commits.lock().unwrap_or_else(|e| e.into_inner());
                if cache.len() >= AUTHORS_REMEMBERED {
                    cache.clear();
                }
                cache.insert(key, authors.clone());
            }
            authors
        }
    };
    let mut add = |user: String, why: AuthorReason| -> Result<()> {
        authors.entry(parse_user(user)?).or_default().push(why);
        Ok(())
    };
    // Everyone who ever moved the source branch: over-inclusive on purpose,
    // since being an author can only make someone ineligible.
    for (push, user) in moved_branch(tx, cache, project, source_branch).await? {
        add(user, AuthorReason::MovedSourceBranch { push })?;
    }
    for reasons in authors.values_mut() {
        reasons.sort();
        reasons.dedup();
    }
    Ok((authors, unrecorded))
}

/// Checks a change's row and its reviews against the change's proven events:
/// its head and state are the ones its events last recorded, and its reviews
/// are exactly the reviews its events record. A review inserted, edited or
/// deleted around custody, or a head or state set around it, fails closed,
/// naming the row.
/// Returns the reviews a later head voided, by id.
async fn prove_change(tx: &mut impl Reads, change: &ChangeView) -> Result<BTreeSet<i64>> {
    use crate::proof::{detail, unproven};
    let subject = format!("change:{}/{}", change.project, change.number);
    let events = crate::proof::proven_events(tx, &subject).await?;
    let (mut head, mut state): (Option<&str>, Option<&str>) = (None, None);
    let mut recorded: BTreeMap<i64, (&str, &str, &str)> = BTreeMap::new();
    let mut voided = BTreeSet::new();
    for event in &events {
        match event.action.as_str() {
            "change.open" => (head, state) = (detail(event, "head"), Some("open")),
            "change.head" => {
                head = detail(event, "new");
                // Every review before a new head is void for good.
                voided.extend(recorded.keys().copied());
            }
            "change.close" => state = Some("closed"),
            "change.reopen" => state = Some("open"),
            "change.merge" => state = Some("merged"),
            "change.merge_dropped" => state = Some("open"),
            action => {
                if let Some(verdict) = action.strip_prefix("change.review.") {
                    let id = event.details.get("review").and_then(serde_json::Value::as_i64).unwrap_or_default();
                    recorded.insert(id, (event.actor.as_str(), verdict, detail(event, "head").unwrap_or_default()));
                }
            }
        }
    }
    if head != Some(change.head.as_str()) {
        return Err(unproven(format!(
            "changes row {}: its head {} is not the head custody recorded for change {} ({})",
            change.id,
            custody_domain::short_id(&change.head),
            change.number,
            head.map(custody_domain::short_id).unwrap_or("none")
        )));
    }
    if state != Some(change.state.as_str()) {
        return Err(unproven(format!(
            "changes row {}: it is {} but custody recorded it {}",
            change.id,
            change.state,
            state.unwrap_or("never opened")
        )));
    }
    for review in &change.reviews {
        match recorded.remove(&review.id) {
            Some((reviewer, verdict, head))
                if reviewer == review.reviewer && verdict == review.verdict && head == review.head => {}
            Some(_) => {
                return Err(unproven(format!(
                    "reviews row {}: {} {} on {} is not the review custody recorded (edited around custody)",
                    review.id,
                    review.reviewer,
                    review.verdict,
                    custody_domain::short_id(&review.head)
                )))
            }
            None => {
                return Err(unproven(format!(
                    "reviews row {}: {} {} on {} was never recorded by custody (inserted around custody)",
                    review.id,
                    review.reviewer,
                    review.verdict,
                    custody_domain::short_id(&review.head)
                )))
            }
        }
    }
    if let Some((id, (reviewer, verdict, head))) = recorded.into_iter().next() {
        return Err(unproven(format!(
            "reviews row {id}: custody recorded {reviewer} {verdict} on {} and the row is gone (deleted around custody)",
            custody_domain::short_id(head)
        )));
    }
    Ok(voided)
}

async fn gate_records(
    tx: &mut impl Reads,
    cache: &AuthorsCache,
    access: &ProjectAccess,
    number: i64,
    commits: &[String],
    groups: &[GroupName],
) -> Result<GateRecords> {
    let (change_id, mut change) = change_row(tx, access.project_id, number).await?;
    change.reviews = reviews_of(tx, change_id, &change.head).await?;
    let voided = prove_change(tx, &change).await?;
    for review in &mut change.reviews {
        review.stale |= voided.contains(&review.id);
    }
    // A merge renews the change's seal with its duties: only over rows
    // custody wrote.
    crate::seals::check(tx, &format!("change:{}/{number}", access.project)).await?;
    // Whether a reviewer may approve (write access, groups) rests on their
    // memberships as custody wrote them.
    let reviewers: BTreeSet<&str> = change.reviews.iter().map(|r| r.reviewer.as_str()).collect();
    for reviewer in reviewers {
        crate::seals::check(tx, &format!("user:{reviewer}")).await?;
    }
    let reviews = change
        .reviews
        .iter()
        .map(|r| {
            Ok(Review {
                reviewer: parse_user(r.reviewer.clone())?,
                verdict: Verdict::parse(&r.verdict)
                    .ok_or_else(|| StoreError::Corrupt(format!("verdict {}", r.verdict)))?,
                head: r.head.clone(),
                voided: voided.contains(&r.id),
            })
        })
        .collect::<Result<Vec<_>>>()?;
    let (authors, unrecorded_commits) =
        authors_of(tx, cache, access.project_id, &access.project, &change.source_branch, commits).await?;
    let sql = tx.sql(
        "SELECT u.name FROM project_members m JOIN users u ON u.id = m.user_id \
         WHERE m.project_id = $1 AND m.role IN ('write', 'maintain') AND u.disabled_at IS NULL",
    );
    let writers = sqlx::query_scalar::<_, String>(&sql)
        .bind(access.project_id)
        .fetch_all(tx.conn())
        .await?
        .into_iter()
        .map(parse_user)
        .collect::<Result<BTreeSet<_>>>()?;
    let mut members = BTreeMap::new();
    for group in groups {
        members.insert(group.clone(), crate::lookups::group_members(tx, group).await?);
    }
    Ok(GateRecords { change, reviews, authors, writers, groups: members, unrecorded_commits })
}

fn require_writer(access: &ProjectAccess, actor: &Authenticated, action: ChangeWrite) -> Result<()> {
    crate::allowed(custody_domain::access::decide_change_write(
        &actor.name,
        &access.project,
        access.role,
        actor.scopes,
        action,
    ))
}

/// How a merge is evaluated and made visible, supplied by the caller.
pub struct MergePlan {
    /// The head the gate was evaluated on.
    pub head: String,
    /// The target's tip the merge is made on; `None` when the merge
    /// creates the target branch.
    pub base: Option<String>,
    /// How the merge weakens the target's gates (see
    /// [`custody_domain::pipeline::weakenings`]): a finding is opened for
    /// them in the merge's transaction.
    pub weakened: Vec<String>,
    /// The gate, as evaluated inside the merge's transaction.
    pub evaluate: Box<dyn FnOnce(&GateRecords) -> custody_domain::gate::GateReport + Send>,
    /// The merge commit and its signed attestation, made before the
    /// transaction (git and signing never run inside the writer) from the
    /// gate as it was read then; `None` when that gate was closed.
    pub prepared: Option<Published>,
    /// The unsigned attestation statement of the records, the gate and the
    /// merge commit as they are inside the transaction: the prepared merge
    /// is recorded only when it is the one its attestation signed; else the
    /// facts moved and the merge is decided again ([`StoreError::FactsMoved`]).
    #[allow(clippy::type_complexity)]
    pub restate: Box<dyn FnOnce(&GateRecords, &custody_domain::gate::GateReport, &str) -> serde_json::Value + Send>,
}

/// What a merge made visible.
pub struct Published {
    /// The merge commit on the target.
    pub commit: String,
    /// The signed change attestation.
    pub attestation: String,
    /// The statement it signs, to compare with the facts in the transaction.
    pub statement: serde_json::Value,
}

/// A change's title: one line of 1 to 200 characters.
fn check_title(title: &str) -> Result<()> {
    if title.trim().is_empty() || title.chars().count() > 200 {
        return Err(custody_domain::InvalidInput::new("title", title, "use 1 to 200 characters").into());
    }
    if title.chars().any(char::is_control) {
        return Err(custody_domain::InvalidInput::new(
            "title",
            title,
            "a title is one line, without control characters; say more in the description",
        )
        .into());
    }
    Ok(())
}

impl Store {
    /// Opens a change from `source` into `target` at `head`.
    #[allow(clippy::too_many_arguments)]
    pub async fn open_change(
        &self,
        actor: &Authenticated,
        access: &ProjectAccess,
        source: String,
        target: String,
        title: String,
        description: String,
        head: String,
    ) -> Result<ChangeView> {
        require_writer(access, actor, ChangeWrite::Open)?;
        check_title(&title)?;
        let (actor, project) = (actor.clone(), access.clone());
        let number = self
            .write(move |tx| {
                Box::pin(async move {
                    let sql = tx.sql(
                        "SELECT number FROM changes WHERE project_id = $1 AND source_branch = $2 AND target_branch = $3 \
                         AND state = 'open'",
                    );
                    let existing: Option<i64> = sqlx::query_scalar(&sql)
                        .bind(project.project_id)
                        .bind(&source)
                        .bind(&target)
                        .fetch_optional(tx.conn())
                        .await?;
                    if let Some(n) = existing {
                        return Err(StoreError::Conflict(format!("change {n} is already open from {source} into {target}")));
                    }
                    let sql = tx.sql("SELECT COALESCE(MAX(number), 0) + 1 FROM changes WHERE project_id = $1");
                    let number: i64 = sqlx::query_scalar(&sql).bind(project.project_id).fetch_one(tx.conn()).await?;
                    let now = now_ms();
                    let sql = tx.sql(
                        "INSERT INTO changes (project_id, number, title, description, source_branch, target_branch, state, \
                         head, opened_by, opened_at) VALUES ($1, $2, $3, $4, $5, $6, 'open', $7, $8, $9) RETURNING id",
                    );
                    let id: i64 = sqlx::query_scalar(&sql)
                        .bind(project.project_id)
                        .bind(number)
                        .bind(&title)
                        .bind(&description)
                        .bind(&source)
                        .bind(&target)
                        .bind(&head)
                        .bind(actor.user_id)
                        .bind(now)
                        .fetch_one(tx.conn())
                        .await?;
                    let sql = tx.sql("INSERT INTO change_heads (change_id, position, head, at) VALUES ($1, 1, $2, $3)");
                    sqlx::query(&sql).bind(id).bind(&head).bind(now).execute(tx.conn()).await?;
                    crate::checks::enqueue(tx, id, &head).await?;
                    tx.audit(NewEvent {
                        actor: actor.name.to_string(),
                        action: "change.open".into(),
                        subject: format!("change:{}/{number}", project.project),
                        details: json!({ "source": source, "target": target, "head": head, "title": title }),
                    })
                    .await?;
                    Ok(number)
                })
            })
            .await?;
        self.get_change(&access.project, number).await
    }

    /// Where a change stands, read without the writer: its target branch,
    /// head and merge commit.
    pub async fn change_position(
        &self,
        access: &ProjectAccess,
        number: i64,
    ) -> Result<(String, String, Option<String>)> {
        let sql =
            self.sql("SELECT target_branch, head, merge_commit FROM changes WHERE project_id = $1 AND number = $2");
        let row = sqlx::query(&sql)
            .bind(access.project_id)
            .bind(number)
            .fetch_optional(self.readers())
            .await?
            .ok_or_else(|| StoreError::not_found("change", number))?;
        Ok((col(&row, "target_branch")?, col(&row, "head")?, col(&row, "merge_commit")?))
    }

    /// One change, with its reviews.
    pub async fn get_change(&self, project: &ProjectName, number: i64) -> Result<ChangeView> {
        let project = project.clone();
        // Read through the writer so that the change and its reviews are one snapshot.
        self.write(move |tx| {
            Box::pin(async move {
                let sql = tx.sql("SELECT id FROM projects WHERE name = $1");
                let project_id: i64 = sqlx::query_scalar(&sql)
                    .bind(project.as_str())
                    .fetch_optional(tx.conn())
                    .await?
                    .ok_or_else(|| StoreError::not_found("project", &project))?;
                let (id, mut change) = change_row(tx, project_id, number).await?;
                change.reviews = reviews_of(tx, id, &change.head).await?;
                Ok(change)
            })
        })
        .await
    }

    /// A project's changes, optionally in one state, newest number last.
    pub async fn list_changes(
        &self,
        access: &ProjectAccess,
        state: Option<&str>,
        page: PageRequest,
    ) -> Result<Page<ChangeView>> {
        // The page comes back as one JSON document built by the database:
        // one value to decode instead of fourteen columns of each row.
        let sql = self.sql(
            "SELECT CAST(json_group_array(json_object(\
                'id', id, 'number', number, 'project', project, 'title', title, 'description', description, \
                'source_branch', source_branch, 'target_branch', target_branch, 'state', state, 'head', head, \
                'opened_by', opened_by, 'opened_at', opened_at, 'merged_by', merged_by, 'merged_at', merged_at, \
                'merge_commit', merge_commit) ORDER BY number) AS TEXT) FROM (\
             SELECT c.id, c.number, p.name AS project, c.title, c.description, c.source_branch, c.target_branch, c.state, \
                    c.head, o.name AS opened_by, c.opened_at, m.name AS merged_by, c.merged_at, c.merge_commit \
             FROM changes c JOIN projects p ON p.id = c.project_id JOIN users o ON o.id = c.opened_by \
             LEFT JOIN users m ON m.id = c.merged_by \
             WHERE c.project_id = $1 AND c.number > $2 AND ($3 = '' OR c.state = $3) ORDER BY c.number LIMIT $4) page",
        );
        let document: Option<String> = sqlx::query_scalar(&sql)
            .bind(access.project_id)
            .bind(page.after.unwrap_or(0))
            .bind(state.unwrap_or(""))
            .bind(page.limit)
            .fetch_one(self.readers())
            .await?;
        let rows: Vec<ChangeRow> = match document {
            Some(text) => serde_json::from_str(&text).map_err(|e| StoreError::Corrupt(format!("change list: {e}")))?,
            None => Vec::new(),
        };
        let items: Vec<ChangeView> = rows.into_iter().map(ChangeRow::into_view).collect();
        Ok(crate::page_of(items, page, |c| c.number))
    }

    /// Closes or reopens a change.
    pub async fn set_change_state(
        &self,
        actor: &Authenticated,
        access: &ProjectAccess,
        number: i64,
        open: bool,
    ) -> Result<ChangeView> {
        require_writer(access, actor, ChangeWrite::CloseOrReopen)?;
        let (actor, access2) = (actor.clone(), access.clone());
        self.write(move |tx| {
            Box::pin(async move {
                let (id, change) = change_row(tx, access2.project_id, number).await?;
                let (from, to) =
                    if open { (ChangeState::Closed, ChangeState::Open) } else { (ChangeState::Open, ChangeState::Closed) };
                if change.state != from {
                    return Err(StoreError::Conflict(format!("change {number} is {}, not {from}", change.state)));
                }
                if open {
                    let sql = tx.sql(
                        "SELECT number FROM changes WHERE project_id = $1 AND source_branch = $2 AND target_branch = $3 \
                         AND state = 'open'",
                    );
                    let other: Option<i64> = sqlx::query_scalar(&sql)
                        .bind(access2.project_id)
                        .bind(&change.source_branch)
                        .bind(&change.target_branch)
                        .fetch_optional(tx.conn())
                        .await?;
                    if let Some(other) = other {
                        return Err(StoreError::Conflict(format!(
                            "change {other} is already open from {} into {}; close it first",
                            change.source_branch, change.target_branch
                        )));
                    }
                }
                let sql = tx.sql("UPDATE changes SET state = $1, auto_merge_by = NULL WHERE id = $2 AND state = $3");
                sqlx::query(&sql).bind(to.as_str()).bind(id).bind(from.as_str()).execute(tx.conn()).await?;
                tx.audit(NewEvent {
                    actor: actor.name.to_string(),
                    action: if open { "change.reopen" } else { "change.close" }.into(),
                    subject: format!("change:{}/{number}", access2.project),
                    details: json!({ "head": change.head }),
                })
                .await?;
                Ok(())
            })
        })
        .await?;
        self.get_change(&access.project, number).await
    }

    /// Changes an open change's title or description (whichever is given),
    /// as a writer of the project. A merged or closed change keeps what it
    /// was merged or closed with: its title is in its signed attestation.
    pub async fn edit_change(
        &self,
        actor: &Authenticated,
        access: &ProjectAccess,
        number: i64,
        title: Option<String>,
        description: Option<String>,
    ) -> Result<ChangeView> {
        require_writer(access, actor, ChangeWrite::Open)?;
        if let Some(title) = &title {
            check_title(title)?;
        }
        if description.as_ref().is_some_and(|d| d.chars().count() > 20_000) {
            return Err(
                custody_domain::InvalidInput::new("description", "(long)", "use at most 20,000 characters").into()
            );
        }
        let (actor, access2) = (actor.clone(), access.clone());
        self.write(move |tx| {
            Box::pin(async move {
                let (id, change) = change_row(tx, access2.project_id, number).await?;
                if change.state != ChangeState::Open {
                    return Err(StoreError::Conflict(format!(
                        "change {number} is {}: only an open change is edited",
                        change.state
                    )));
                }
                let title = title.unwrap_or(change.title.clone());
                let description = description.unwrap_or(change.description.clone());
                if title == change.title && description == change.description {
                    return Ok(());
                }
                let sql = tx.sql("UPDATE changes SET title = $1, description = $2 WHERE id = $3");
                sqlx::query(&sql).bind(&title).bind(&description).bind(id).execute(tx.conn()).await?;
                tx.audit(NewEvent {
                    actor: actor.name.to_string(),
                    action: "change.edit".into(),
                    subject: format!("change:{}/{number}", access2.project),
                    details: json!({ "title": title, "description": description }),
                })
                .await?;
                Ok(())
            })
        })
        .await?;
        self.get_change(&access.project, number).await
    }

    /// Records a review against the change's current head, read in the
    /// same transaction. When the reviewer says which head they looked at
    /// (`seen_head`), a review of any other head is refused, so an approval
    /// can never land on a head its giver did not see.
    pub async fn review(
        &self,
        actor: &Authenticated,
        access: &ProjectAccess,
        number: i64,
        verdict: Verdict,
        message: String,
        seen_head: Option<String>,
    ) -> Result<ReviewView> {
        crate::allowed(custody_domain::access::decide_review(
            &actor.name,
            &access.project,
            access.role,
            actor.scopes,
            verdict,
        ))?;
        if message.chars().count() > 20_000 {
            return Err(custody_domain::InvalidInput::new("message", "(long)", "use at most 20,000 characters").into());
        }
        if verdict == Verdict::Approve && seen_head.as_deref().is_none_or(str::is_empty) {
            // An approval binds to what its reviewer read, never to
            // whatever the head is when it arrives.
            return Err(custody_domain::InvalidInput::new(
                "head",
                "",
                "an approval names the head you reviewed: give the full commit id that the change's page, \
                 `custody change show` or `custody change diff` showed you",
            )
            .into());
        }
        let (actor, access) = (actor.clone(), access.clone());
        self.write(move |tx| {
            Box::pin(async move {
                crate::seals::check(tx, &format!("user:{}", actor.name)).await?;
                crate::seals::check(tx, &format!("change:{}/{number}", access.project)).await?;
                let (id, change) = change_row(tx, access.project_id, number).await?;
                if change.state != ChangeState::Open {
                    return Err(StoreError::Conflict(format!("change {number} is {}; only open changes are reviewed", change.state)));
                }
                crate::allowed(custody_domain::change::decide_review_head(seen_head.as_deref(), &change.head))?;

                let now = now_ms();
                let sql = tx.sql(
                    "INSERT INTO reviews (change_id, reviewer_id, verdict, head, message, at) VALUES ($1, $2, $3, $4, $5, $6) \
                     RETURNING id",
                );
                let review_id: i64 = sqlx::query_scalar(&sql)
                    .bind(id)
                    .bind(actor.user_id)
                    .bind(verdict.as_str())
                    .bind(&change.head)
                    .bind(&message)
                    .bind(now)
                    .fetch_one(tx.conn())
                    .await?;
                tx.audit(NewEvent {
                    actor: actor.name.to_string(),
                    action: format!("change.review.{}", verdict.as_str()),
                    subject: format!("change:{}/{number}", access.project),
                    details: json!({ "head": change.head, "review": review_id }),
                })
                .await?;
                Ok(ReviewView {
                    id: review_id,
                    reviewer: actor.name.to_string(),
                    verdict: verdict.as_str().into(),
                    head: change.head,
                    stale: false,
                    message,
                    at: Timestamp::from_millis(now),
                })
            })
        })
        .await
    }

    /// Reads what the gate needs, in one read-only transaction on a reader
    /// (the merge reads them again inside its own write).
    pub async fn gate_records(
        &self,
        access: &ProjectAccess,
        number: i64,
        commits: Vec<String>,
        groups: Vec<GroupName>,
    ) -> Result<GateRecords> {
        let cache = self.authors_cache();
        let mut reader = self.reader().await?;
        reader.begin_snapshot().await?;
        let records = gate_records(&mut reader, &cache, access, number, &commits, &groups).await;
        reader.end_snapshot().await;
        records
    }

    /// Asks for a change to be merged as soon as its gate opens, by the
    /// asker's authority at that moment.
    pub async fn request_auto_merge(&self, actor: &Authenticated, access: &ProjectAccess, number: i64) -> Result<()> {
        require_writer(access, actor, ChangeWrite::Merge)?;
        let (actor, access) = (actor.clone(), access.clone());
        self.write(move |tx| {
            Box::pin(async move {
                let (id, change) = change_row(tx, access.project_id, number).await?;
                if change.state != ChangeState::Open {
                    return Err(StoreError::Conflict(format!("change {number} is {}, not open", change.state)));
                }
                let sql = tx.sql("UPDATE changes SET auto_merge_by = $1, auto_merge_token = $2 WHERE id = $3");
                sqlx::query(&sql).bind(actor.user_id).bind(&actor.token_id).bind(id).execute(tx.conn()).await?;
                tx.audit(NewEvent {
                    actor: actor.name.to_string(),
                    action: "change.auto_merge".into(),
                    subject: format!("change:{}/{number}", access.project),
                    details: json!({ "head": change.head }),
                })
                .await?;
                Ok(())
            })
        })
        .await
    }

    /// Open changes waiting to be merged when their gate opens: project,
    /// number, the asker's user id, and whether the token they asked with
    /// still works (revoked or expired, the request lapses).
    pub async fn auto_merge_candidates(&self) -> Result<Vec<(String, i64, i64, bool)>> {
        let sql = self.sql(
            "SELECT p.name, c.number, c.auto_merge_by, \
                    (SELECT COUNT(*) FROM tokens t WHERE t.id = c.auto_merge_token AND t.revoked_at IS NULL \
                      AND (t.expires_at IS NULL OR t.expires_at > $1)) AS live \
             FROM changes c JOIN projects p ON p.id = c.project_id \
             WHERE c.state = 'open' AND c.auto_merge_by IS NOT NULL ORDER BY c.id",
        );
        let rows = sqlx::query(&sql).bind(now_ms()).fetch_all(self.readers()).await?;
        rows.iter()
            .map(|r| Ok((col(r, "name")?, col(r, "number")?, col(r, "auto_merge_by")?, col::<i64>(r, "live")? > 0)))
            .collect()
    }

    /// Stops waiting to merge a change (its asker can no longer merge).
    pub async fn cancel_auto_merge(&self, project: &ProjectName, number: i64, why: String) -> Result<()> {
        let project = project.clone();
        self.write(move |tx| {
            Box::pin(async move {
                let sql = tx.sql(
                    "UPDATE changes SET auto_merge_by = NULL WHERE number = $1 \
                     AND project_id = (SELECT id FROM projects WHERE name = $2)",
                );
                sqlx::query(&sql).bind(number).bind(project.as_str()).execute(tx.conn()).await?;
                tx.audit(NewEvent {
                    actor: custody_domain::audit::SYSTEM_ACTOR.into(),
                    action: "change.auto_merge.cancel".into(),
                    subject: format!("change:{project}/{number}"),
                    details: json!({ "reason": why }),
                })
                .await?;
                Ok(())
            })
        })
        .await
    }

    /// The signed attestation of a merged change.
    pub async fn attestation(&self, access: &ProjectAccess, number: i64) -> Result<String> {
        let sql = self.sql("SELECT attestation FROM changes WHERE project_id = $1 AND number = $2");
        let found: Option<Option<String>> =
            sqlx::query_scalar(&sql).bind(access.project_id).bind(number).fetch_optional(self.readers()).await?;
        match found {
            None => Err(StoreError::not_found("change", number)),
            Some(None) => Err(StoreError::Conflict(format!("change {number} is not merged, so it has no attestation"))),
            Some(Some(envelope)) => Ok(envelope),
        }
    }

    /// Merges a change: inside one transaction, re-reads the change and its
    /// reviews, checks that its head is still the one the merge commit was
    /// made for, evaluates the gate, moves the target ref (by the plan's
    /// `publish`, a compare-and-swap) and records the merge. Any failure
    /// leaves nothing changed.
    pub async fn merge_change(
        &self,
        actor: &Authenticated,
        access: &ProjectAccess,
        number: i64,
        commits: Vec<String>,
        groups: Vec<GroupName>,
        plan: MergePlan,
    ) -> Result<(ChangeView, custody_domain::gate::GateReport)> {
        require_writer(access, actor, ChangeWrite::Merge)?;
        let (actor, access2, cache) = (actor.clone(), access.clone(), self.authors_cache());
        let report = self
            .write(move |tx| {
                Box::pin(async move {
                    let records = gate_records(tx, &cache, &access2, number, &commits, &groups).await?;
                    crate::allowed(custody_domain::change::decide_merge_head(&records.change.head, &plan.head))?;
                    let report = (plan.evaluate)(&records);
                    if !report.open {
                        return Err(StoreError::Refused(report.decision()));
                    }
                    // The merge prepared outside the writer, if the facts it
                    // was made from are still the facts.
                    let Some(published) = plan.prepared else { return Err(StoreError::FactsMoved) };
                    if (plan.restate)(&records, &report, &published.commit) != published.statement {
                        return Err(StoreError::FactsMoved);
                    }
                    let merge_commit = published.commit;
                    let reference = format!("refs/heads/{}", records.change.target_branch);
                    crate::intents::record(tx, access2.project_id, number, &reference, plan.base.as_deref(), &merge_commit)
                        .await?;
                    record_own_commit(tx, access2.project_id, &merge_commit).await?;
                    let now = now_ms();
                    let sql = tx.sql(
                        "UPDATE changes SET state = 'merged', merged_by = $1, merged_at = $2, merge_commit = $3, attestation = $6 \
                         WHERE id = $4 AND state = 'open' AND head = $5",
                    );
                    let done = sqlx::query(&sql)
                        .bind(actor.user_id)
                        .bind(now)
                        .bind(&merge_commit)
                        .bind(records.change.id)
                        .bind(&plan.head)
                        .bind(&published.attestation)
                        .execute(tx.conn())
                        .await?;
                    if done.rows_affected() != 1 {
                        return Err(StoreError::Conflict(format!("change {number} changed while merging; try again")));
                    }
                    record_duties(tx, &records, &report.approvers).await?;
                    // A new mainline commit is built; the build is queued in
                    // this transaction, so no merge can escape its build.
                    let build = if records.change.target_branch == access2.default_branch {
                        Some(crate::builds::enqueue(tx, access2.project_id, &merge_commit, &access2.default_branch, Some(number)).await?)
                    } else {
                        None
                    };
                    let finding =
                        open_weakened_finding(tx, &access2, number, &records, &report.approvers, &actor, &plan.weakened)
                            .await?;
                    tx.audit(NewEvent {
                        actor: actor.name.to_string(),
                        action: "change.merge".into(),
                        subject: format!("change:{}/{number}", access2.project),
                        details: json!({
                            "target": records.change.target_branch,
                            "reviewed_head": plan.head,
                            "base": plan.base,
                            "merge_commit": merge_commit,
                            "approvers": report.approvers,
                            "authors": records.authors.keys().map(UserName::as_str).collect::<Vec<_>>(),
                            "gate": report.rules,
                            "weakened": plan.weakened,
                            "finding": finding,
                            "build": build,
                            "envelope_sha256": custody_formats::Envelope::digest_of_json(&published.attestation),
                        }),
                    })
                    .await?;
                    Ok(report)
                })
            })
            .await?;
        Ok((self.get_change(&access.project, number).await?, report))
    }
}

/// custody's own merge commit, recorded, so that later changes containing
/// it know who made it (nobody can have pushed it).
async fn record_own_commit(tx: &mut Tx, project_id: i64, sha: &str) -> Result<()> {
    let (name, email) = ("custody", "custody@localhost");
    let seal = crate::seals::CommitRecord {
        project_id,
        sha,
        first_push: None,
        pusher: None,
        import_grant: None,
        author: None,
        committer: None,
        co_authors: Vec::new(),
    }
    .seal(&tx.ledger_state().secrets.key);
    let sql = tx.sql(
        "INSERT INTO commits (project_id, sha, author_name, author_email, committer_name, committer_email, seal) \
         VALUES ($1, $2, $3, $4, $5, $6, $7) ON CONFLICT (project_id, sha) DO NOTHING",
    );
    sqlx::query(&sql)
        .bind(project_id)
        .bind(sha)
        .bind(name)
        .bind(email)
        .bind(name)
        .bind(email)
        .bind(seal)
        .execute(tx.conn())
        .await?;
    Ok(())
}

/// Who held which duty in a merged change, for the releases it goes into.
async fn record_duties(tx: &mut Tx, records: &GateRecords, approvers: &[String]) -> Result<()> {
    let duties = records
        .authors
        .keys()
        .map(|u| (u.as_str().to_owned(), "author"))
        .chain(approvers.iter().map(|u| (u.clone(), "reviewer")));
    for (user, duty) in duties {
        let sql = tx.sql(
            "INSERT INTO change_duties (change_id, user_name, duty) VALUES ($1, $2, $3) \
             ON CONFLICT (change_id, user_name, duty) DO NOTHING",
        );
        sqlx::query(&sql).bind(records.change.id).bind(user).bind(duty).execute(tx.conn()).await?;
    }
    Ok(())
}

/// A weakened gate is allowed through review, but never quietly: a finding
/// opens, for an admin who took no part in it to review.
async fn open_weakened_finding(
    tx: &mut Tx,
    access: &ProjectAccess,
    number: i64,
    records: &GateRecords,
    approvers: &[String],
    actor: &Authenticated,
    weakened: &[String],
) -> Result<Option<i64>> {
    if weakened.is_empty() {
        return Ok(None);
    }
    let mut involved: Vec<String> = records.authors.keys().map(|u| u.as_str().to_owned()).collect();
    involved.extend(approvers.iter().cloned());
    involved.push(actor.name.to_string());
    involved.sort();
    involved.dedup();
    let summary = format!("change {}#{number} weakened the gate: {}", access.project, weakened.join("; "));
    let subject = format!("change:{}/{number}", access.project);
    Ok(Some(crate::findings::open(tx, "gate_weakened", Some(access.project_id), &subject, &summary, &involved).await?))
}

/// Moves the head of every change following `branch` after a push: open
/// ones, and closed ones too, so that a change reopened after its branch
/// moved is at the branch's tip and not at a head it no longer has.
pub(crate) async fn follow_push(
    tx: &mut Tx,
    project_id: i64,
    project: &str,
    push_id: i64,
    actor: &str,
    branch: &str,
    head: &str,
) -> Result<()> {
    let sql = tx
        .sql("SELECT id, number, head FROM changes WHERE project_id = $1 AND source_branch = $2 AND state <> 'merged'");
    let rows = sqlx::query(&sql).bind(project_id).bind(branch).fetch_all(tx.conn()).await?;
    for row in rows {
        let (id, number, old): (i64, i64, String) = (col(&row, "id")?, col(&row, "number")?, col(&row, "head")?);
        if old == head {
            continue;
        }
        let sql = tx.sql("UPDATE changes SET head = $1 WHERE id = $2");
        sqlx::query(&sql).bind(head).bind(id).execute(tx.conn()).await?;
        let sql = tx.sql(
            "INSERT INTO change_heads (change_id, position, head, push_id, at) \
             SELECT $1, COALESCE(MAX(position), 0) + 1, $2, $3, $4 FROM change_heads WHERE change_id = $1",
        );
        sqlx::query(&sql).bind(id).bind(head).bind(push_id).bind(now_ms()).execute(tx.conn()).await?;
        crate::checks::enqueue(tx, id, head).await?;
        tx.audit(NewEvent {
            actor: actor.to_owned(),
            action: "change.head".into(),
            subject: format!("change:{project}/{number}"),
            details: json!({ "old": old, "new": head, "push": push_id, "approvals": "void" }),
        })
        .await?;
    }
    Ok(())
}
