//! How long a policy set takes to load as the number of distinct actions
//! grows: `cargo bench --bench policy_load`.
//!
//! Two shapes, each at 250, 1000 and 2000 actions:
//! - `one_permit_per_action`: a policy file with one scoped permit per
//!   action plus two guardrails that apply to every action;
//! - `workflow_actions_only`: the same two guardrails, with the actions
//!   coming from the workflow alone.

use std::hint::black_box;
use std::time::Duration;

use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion};
use stepgate::policy::PolicySet;

const SIZES: [usize; 3] = [250, 1000, 2000];

const GUARDRAILS: &str = r#"
@id("own-trust-domain-only")
forbid (principal, action, resource)
unless { principal.trust_domain == "dev.stepgate.local" };

@id("critical-steps-stop-after-three-stepups")
forbid (principal, action, resource)
when { context.risk_level >= 3 && context.stepups_so_far >= 3 };
"#;

fn actions(n: usize) -> Vec<String> {
    (0..n).map(|i| format!("service-{i}.deploy")).collect()
}

fn one_permit_per_action(actions: &[String]) -> String {
    let mut text = GUARDRAILS.to_string();
    for (i, action) in actions.iter().enumerate() {
        text.push_str(&format!(
            "@id(\"permit-{i}\")\npermit (principal, action == Stepgate::Action::\"{action}\", resource)\nwhen {{ context.risk_level <= 1 }};\n"
        ));
    }
    text
}

fn load(c: &mut Criterion) {
    let mut group = c.benchmark_group("policy_load");
    group.sample_size(10);
    group.measurement_time(Duration::from_secs(10));
    for n in SIZES {
        let names = actions(n);
        let text = one_permit_per_action(&names);
        group.bench_with_input(BenchmarkId::new("one_permit_per_action", n), &n, |b, _| {
            b.iter(|| {
                PolicySet::parse(
                    "bench.cedar",
                    black_box(&text),
                    names.iter().map(String::as_str),
                )
            })
        });
        group.bench_with_input(BenchmarkId::new("workflow_actions_only", n), &n, |b, _| {
            b.iter(|| {
                PolicySet::parse(
                    "bench.cedar",
                    black_box(GUARDRAILS),
                    names.iter().map(String::as_str),
                )
            })
        });
    }
    group.finish();
}

criterion_group!(benches, load);
criterion_main!(benches);
