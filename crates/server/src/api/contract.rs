//! What every operation of the document shares, filled in once rather than
//! restated on 75 handlers: each path parameter with its type and rule, and
//! each status the shared extractors and errors can answer with.
//!
//! A handler's own declarations win: a parameter or status it documents
//! itself is left as it wrote it.

use custody_domain::{GroupName, ProjectName, UserName};
use utoipa::openapi::path::{Operation, ParameterBuilder, ParameterIn};
use utoipa::openapi::schema::{ObjectBuilder, Schema, Type};
use utoipa::openapi::{ContentBuilder, Ref, RefOr, Required, ResponseBuilder};
use utoipa::PartialSchema as _;

/// A SHA-256 digest as the API reads one.
pub(crate) const DIGEST_PATTERN: &str = "^(sha256:)?[0-9a-fA-F]{64}$";

/// Completes `document`: path parameters, shared statuses, and the error
/// body each refers to.
pub(crate) fn complete(document: &mut utoipa::openapi::OpenApi) {
    for (path, item) in document.paths.paths.iter_mut() {
        let operations = [
            (&mut item.get, false),
            (&mut item.put, true),
            (&mut item.post, true),
            (&mut item.delete, true),
            (&mut item.patch, true),
        ];
        for (operation, writes) in operations {
            if let Some(operation) = operation {
                declare_path_parameters(path, operation);
                declare_statuses(path, operation, writes);
            }
        }
    }
}

/// The `{names}` of a path template, in order.
pub(crate) fn template_parameters(path: &str) -> Vec<&str> {
    path.split('/').filter_map(|segment| segment.strip_prefix('{')?.strip_suffix('}')).collect()
}

fn declare_path_parameters(path: &str, operation: &mut Operation) {
    let parameters = operation.parameters.get_or_insert_with(Vec::new);
    for name in template_parameters(path) {
        let (schema, description) = path_parameter(path, name);
        let declared = parameters.iter_mut().find(|p| p.name == name && p.parameter_in == ParameterIn::Path);
        if let Some(declared) = declared {
            // A handler that named the parameter as plain text gets its rule.
            if is_plain_text(declared.schema.as_ref()) {
                declared.schema = Some(schema);
            }
        } else {
            parameters.push(
                ParameterBuilder::new()
                    .name(name)
                    .parameter_in(ParameterIn::Path)
                    .required(Required::True)
                    .description(Some(description))
                    .schema(Some(schema))
                    .build(),
            );
        }
    }
}

/// Whether `schema` is a string with no pattern or other rule.
fn is_plain_text(schema: Option<&RefOr<Schema>>) -> bool {
    match schema {
        Some(RefOr::T(Schema::Object(object))) => {
            object.pattern.is_none()
                && object.enum_values.is_none()
                && matches!(object.schema_type, utoipa::openapi::schema::SchemaType::Type(Type::String))
        }
        _ => false,
    }
}

fn text(pattern: &str, min: usize, max: usize, description: &str) -> RefOr<Schema> {
    ObjectBuilder::new()
        .schema_type(Type::String)
        .pattern(Some(pattern))
        .min_length(Some(min))
        .max_length(Some(max))
        .description(Some(description))
        .into()
}

fn number(minimum: i64, description: &str) -> RefOr<Schema> {
    ObjectBuilder::new()
        .schema_type(Type::Integer)
        .format(Some(utoipa::openapi::SchemaFormat::KnownFormat(utoipa::openapi::KnownFormat::Int64)))
        .minimum(Some(minimum as f64))
        .description(Some(description))
        .into()
}

/// The schema and description of the path parameter `name` in `path`.
fn path_parameter(path: &str, name: &str) -> (RefOr<Schema>, &'static str) {
    match name {
        "name" if path.starts_with("/api/v1/projects/") => (ProjectName::schema(), "The project's name."),
        "name" if path.starts_with("/api/v1/groups/") => (GroupName::schema(), "The group's name."),
        "name" | "user" => (UserName::schema(), "The user's name."),
        "number" => (number(1, "Numbered from 1 in the project."), "The number in the project."),
        "id" if path.starts_with("/api/v1/tokens/") => {
            (text("^[A-Za-z0-9_-]{1,64}$", 1, 64, "A token's id, as `GET /api/v1/tokens` lists it."), "The token's id.")
        }
        "id" => (number(1, "An id custody gave."), "The id custody gave."),
        "seq" => (number(1, "An audit event's sequence number, from 1."), "The audit event's sequence number."),
        "sha" => (
            text("^[0-9a-f]{4,64}$", 4, 64, "A commit id, full or abbreviated (at least 4 hex digits)."),
            "The commit id.",
        ),
        "digest" => (
            text(DIGEST_PATTERN, 64, 71, "A SHA-256 digest: 64 hex digits, optionally after `sha256:`."),
            "The artifact's SHA-256 digest.",
        ),
        "environment" => {
            (custody_domain::name::environment_schema(), "The environment's name, as the pipeline file names it.")
        }
        "branch" => (custody_domain::project::branch_schema().into(), "The branch's name (percent-encode '/')."),
        "tag" => (text("^[A-Za-z0-9._/+@-]{1,200}$", 1, 200, "A tag name."), "The tag's name."),
        // A parameter this table does not know stays plain text, which the
        // document's test refuses: a new one gets its rule here.
        _ => (ObjectBuilder::new().schema_type(Type::String).into(), "A path parameter."),
    }
}

/// The statuses any operation can answer with besides its own, by what it
/// takes: every status the shared extractors and store errors produce.
fn declare_statuses(path: &str, operation: &mut Operation, writes: bool) {
    let secured = operation.security.as_ref().is_some_and(|s| !s.is_empty());
    let has_body = operation.request_body.is_some();
    let mut statuses: Vec<(&str, &str)> = vec![
        ("400", "The request is malformed or breaks an input rule (a name, a limit, a query parameter)."),
        ("503", "The database is unavailable or refuses writes until an operator looks; nothing was changed."),
    ];
    if secured {
        statuses.push(("401", "No valid token: send `Authorization: Bearer TOKEN`."));
        statuses.push(("403", "The token lacks the scope, or its holder the role, this operation needs."));
    }
    statuses.push(("404", "Nothing by that name or number, or nothing the caller may see."));
    if writes {
        statuses.push((
            "409",
            "The request conflicts with the state it finds: it is already so, or waits for another step.",
        ));
    }
    if has_body {
        statuses.push(("413", "The body is larger than the API accepts."));
        statuses.push(("415", "The body is not `application/json` in UTF-8."));
        statuses.push(("422", "The body is JSON but not of this operation's shape."));
    }
    if matches!(path, "/api/v1/auth/token" | "/api/v1/invites/redeem") {
        statuses.push(("429", "Too many attempts from this address: wait `Retry-After` seconds."));
    }
    for (status, description) in statuses {
        if !operation.responses.responses.contains_key(status) {
            let error = ContentBuilder::new().schema(Some(Ref::from_schema_name("ErrorBody"))).build();
            let response = ResponseBuilder::new().description(description).content("application/json", error);
            operation.responses.responses.insert(status.to_owned(), RefOr::T(response.build()));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use utoipa::openapi::path::Parameter;

    fn path_parameters(operation: &Operation) -> Vec<&Parameter> {
        operation.parameters.iter().flatten().filter(|p| p.parameter_in == ParameterIn::Path).collect()
    }

    fn operations(document: &utoipa::openapi::OpenApi) -> Vec<(String, String, &Operation)> {
        let mut all = Vec::new();
        for (path, item) in &document.paths.paths {
            for (method, operation) in [
                ("get", &item.get),
                ("put", &item.put),
                ("post", &item.post),
                ("delete", &item.delete),
                ("patch", &item.patch),
            ] {
                if let Some(operation) = operation {
                    all.push((method.to_owned(), path.clone(), operation));
                }
            }
        }
        all
    }

    #[test]
    fn every_path_parameter_is_declared_with_a_typed_schema_and_nothing_else_is() {
        let document = crate::api::openapi();
        let all = operations(&document);
        assert!(all.len() >= 70, "only {} operations", all.len());
        for (method, path, operation) in all {
            let template = template_parameters(&path);
            let declared: Vec<&str> = path_parameters(operation).iter().map(|p| p.name.as_str()).collect();
            for name in &template {
                assert!(declared.contains(name), "{method} {path} does not declare {{{name}}}");
            }
            for name in &declared {
                assert!(template.contains(name), "{method} {path} declares {name}, which its path lacks");
            }
            for parameter in path_parameters(operation) {
                let schema = serde_json::to_value(&parameter.schema).unwrap();
                let typed = schema.get("pattern").is_some() || schema["type"] == "integer";
                assert!(typed, "{method} {path}: {{{}}} has no pattern or integer type: {schema}", parameter.name);
            }
        }
    }

    #[test]
    fn every_operation_documents_the_errors_it_can_answer_with() {
        let document = crate::api::openapi();
        for (method, path, operation) in operations(&document) {
            let statuses: Vec<&str> = operation.responses.responses.keys().map(String::as_str).collect();
            assert!(statuses.contains(&"400") && statuses.contains(&"503"), "{method} {path}: {statuses:?}");
            if operation.security.as_ref().is_some_and(|s| !s.is_empty()) {
                assert!(statuses.contains(&"401") && statuses.contains(&"403"), "{method} {path}: {statuses:?}");
            }
            if operation.request_body.is_some() {
                for status in ["413", "415", "422"] {
                    assert!(statuses.contains(&status), "{method} {path} lacks {status}: {statuses:?}");
                }
            }
            if path.contains('{') {
                assert!(statuses.contains(&"404"), "{method} {path}: {statuses:?}");
            }
        }
    }

    #[test]
    fn evidence_is_asked_for_by_its_subject_in_the_path_and_the_query_form_is_deprecated() {
        let document = serde_json::to_value(crate::api::openapi()).unwrap();
        let paths = &document["paths"];
        for (path, parameter) in [
            ("/api/v1/projects/{name}/deployments/{number}/evidence", "number"),
            ("/api/v1/projects/{name}/artifacts/{digest}/evidence", "digest"),
        ] {
            let operation = &paths[path]["get"];
            assert_ne!(operation["deprecated"], true, "{path}");
            let declared = operation["parameters"].as_array().unwrap();
            assert!(declared.iter().any(|p| p["name"] == parameter && p["required"] == true), "{operation}");
        }
        assert_eq!(paths["/api/v1/projects/{name}/evidence"]["get"]["deprecated"], true);
    }
}
