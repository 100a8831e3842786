//! Which policies' scopes admit a request, read from the scopes alone.
//!
//! `stepgate plan --reviewers` asks which reviewer groups a workflow can
//! meet at run time, not only those its preview met: a condition on the
//! scopes asked for, the step-ups so far or the time may send a step to
//! review later. A `@review` permit whose scope (principal, action,
//! resource) admits a step can ask for review of it, whatever its
//! conditions say; [`admits`] tells that without evaluating them, so the
//! answer errs on the side of "can".
//!
//! stepgate's entities have no parents, so `in` in a scope means `==`.

use cedar_policy::{ActionConstraint, EntityUid, Policy, PrincipalConstraint, ResourceConstraint};

use super::NAMESPACE;

/// True when the scope of `policy` admits `agent` doing `action` on
/// `resource`.
pub(super) fn admits(policy: &Policy, agent: &str, action: &str, resource: &str) -> bool {
    principal_admits(&policy.principal_constraint(), agent)
        && action_admits(&policy.action_constraint(), action)
        && resource_admits(&policy.resource_constraint(), resource)
}

fn principal_admits(c: &PrincipalConstraint, agent: &str) -> bool {
    match c {
        PrincipalConstraint::Any => true,
        PrincipalConstraint::Eq(uid) | PrincipalConstraint::In(uid) => is(uid, "Agent", agent),
        PrincipalConstraint::Is(kind) => kind.to_string() == type_name("Agent"),
        PrincipalConstraint::IsIn(kind, uid) => {
            kind.to_string() == type_name("Agent") && is(uid, "Agent", agent)
        }
    }
}

fn action_admits(c: &ActionConstraint, action: &str) -> bool {
    match c {
        ActionConstraint::Any => true,
        ActionConstraint::Eq(uid) => is(uid, "Action", action),
        ActionConstraint::In(uids) => uids.iter().any(|uid| is(uid, "Action", action)),
    }
}

fn resource_admits(c: &ResourceConstraint, resource: &str) -> bool {
    match c {
        ResourceConstraint::Any => true,
        ResourceConstraint::Eq(uid) | ResourceConstraint::In(uid) => is(uid, "Resource", resource),
        ResourceConstraint::Is(kind) => kind.to_string() == type_name("Resource"),
        ResourceConstraint::IsIn(kind, uid) => {
            kind.to_string() == type_name("Resource") && is(uid, "Resource", resource)
        }
    }
}

/// True when `uid` is `Stepgate::<kind>::"<id>"`.
fn is(uid: &EntityUid, kind: &str, id: &str) -> bool {
    uid.type_name().to_string() == type_name(kind) && uid.id().unescaped() == id
}

fn type_name(kind: &str) -> String {
    format!("{NAMESPACE}::{kind}")
}

#[cfg(test)]
mod tests {
    use std::str::FromStr;

    use super::*;

    const AGENT: &str = "spiffe://example.org/agent/deployer";

    fn admitted(scope: &str) -> bool {
        let policy = Policy::from_str(&format!("permit ({scope});")).unwrap();
        admits(&policy, AGENT, "deploy", "https://deploy.example.org")
    }

    #[test]
    fn scopes_admit_by_equality_membership_and_type_and_ignore_conditions() {
        assert!(admitted("principal, action, resource"));
        assert!(admitted(
            r#"principal == Stepgate::Agent::"spiffe://example.org/agent/deployer", action == Stepgate::Action::"deploy", resource"#
        ));
        assert!(admitted(
            r#"principal is Stepgate::Agent, action in [Stepgate::Action::"x", Stepgate::Action::"deploy"], resource in Stepgate::Resource::"https://deploy.example.org""#
        ));
        assert!(!admitted(
            r#"principal == Stepgate::Agent::"spiffe://example.org/agent/other", action, resource"#
        ));
        assert!(!admitted(
            r#"principal, action == Stepgate::Action::"restart", resource"#
        ));
        assert!(!admitted(
            r#"principal, action, resource is Stepgate::Agent"#
        ));
        assert!(!admitted(
            r#"principal, action == Other::Action::"deploy", resource"#
        ));
    }
}
