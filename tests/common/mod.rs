//! Shared fixtures: the release example, a development trust domain with
//! fixed keys, and an engine environment at a fixed time.
#![allow(dead_code)]

use std::path::PathBuf;

use stepgate::engine::{Config, Engine, Env, SeqIds};
use stepgate::identity::{DevTrustDomain, TrustBundle};
use stepgate::policy::PolicySet;
use stepgate::review::Reviewers;
use stepgate::spiffe::SpiffeId;
use stepgate::token::KeyPair;
use stepgate::workflow::Workflow;

/// 2026-12-04T16:00:00Z in ms.
pub const T0: i64 = 1_796_400_000_000;

pub const DOMAIN: &str = "dev.stepgate.local";
pub const DANA: &str = "spiffe://dev.stepgate.local/human/dana";
pub const RILEY: &str = "spiffe://dev.stepgate.local/human/riley";
pub const SAM: &str = "spiffe://dev.stepgate.local/human/sam";

pub fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

pub fn example(name: &str) -> PathBuf {
    root().join("examples").join(name)
}

pub fn workflow(name: &str) -> Workflow {
    Workflow::load(&example(name).join("workflow.yaml")).expect("example workflow loads")
}

pub fn policy(name: &str, wf: &Workflow) -> PolicySet {
    PolicySet::load(
        &example(name).join("policy.cedar"),
        wf.steps().iter().map(|s| s.action.as_str()),
    )
    .expect("example policy loads")
}

pub fn reviewers(name: &str) -> Reviewers {
    Reviewers::load(&example(name).join("reviewers.yaml")).expect("example reviewers load")
}

pub fn id(s: &str) -> SpiffeId {
    SpiffeId::parse(s).expect("valid SPIFFE ID")
}

/// Everything an [`Env`] borrows, with fixed keys so runs are reproducible.
pub struct World {
    pub name: &'static str,
    pub workflow: Workflow,
    pub policy: PolicySet,
    pub reviewers: Reviewers,
    pub td: DevTrustDomain,
    pub trust: TrustBundle,
    pub key: KeyPair,
    pub config: Config,
    pub ids: SeqIds,
    pub now: i64,
}

impl World {
    pub fn new(name: &'static str) -> Self {
        let workflow = workflow(name);
        let policy = policy(name, &workflow);
        let td = dev_domain();
        Self {
            name,
            policy,
            workflow,
            reviewers: reviewers(name),
            trust: td.bundle(),
            td,
            key: KeyPair::from_secret_bytes([7u8; 32]),
            config: Config::default(),
            ids: SeqIds::default(),
            now: T0,
        }
    }

    pub fn env(&mut self) -> Env<'_> {
        Env {
            now: self.now,
            policy: &self.policy,
            trust: &self.trust,
            reviewers: &self.reviewers,
            minter: &self.key,
            ids: &mut self.ids,
            config: &self.config,
        }
    }

    /// A JWT-SVID for `who`, valid for 5 minutes from now.
    pub fn svid(&self, who: &str) -> String {
        self.td
            .mint_svid(&id(who), "stepgate", self.now / 1000, 300)
            .expect("mint svid")
    }

    pub fn agent_of(&self, step: &str) -> String {
        self.workflow
            .step(step)
            .expect("step exists")
            .agent
            .to_string()
    }
}

/// A development trust domain with a fixed key, generated once per process.
pub fn dev_domain() -> DevTrustDomain {
    use std::sync::OnceLock;
    static DER: OnceLock<Vec<u8>> = OnceLock::new();
    let der = DER.get_or_init(|| {
        DevTrustDomain::generate(DOMAIN, &mut rand_core::OsRng)
            .expect("generate dev trust domain")
            .to_pkcs8_der()
            .expect("der")
    });
    DevTrustDomain::from_pkcs8_der(DOMAIN, der).expect("reload dev trust domain")
}

/// Starts a run of the world's workflow as dana.
pub fn start(engine: &mut Engine, world: &mut World) -> stepgate::engine::RunStartedReply {
    let svid = world.svid(DANA);
    let wf = world.workflow.clone();
    let reply = engine
        .start_run(&mut world.env(), &svid, &wf, None)
        .expect("run starts");
    engine.take_events();
    reply
}
