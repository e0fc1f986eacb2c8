//! Which queue partitions this job consumes, when herald divides them among the
//! jobs (queues with [`herald_queue::Queue::partitions`]).
//!
//! Two questions, two mechanisms:
//!
//! - **Who should own partition `p`** is rendezvous hashing over the live jobs
//!   ([`owner_of`]): each job scores `hash(job, p)` and the highest score wins. A
//!   job joining takes only the partitions it now wins; a job leaving gives up only
//!   its own. Nothing else moves, so a deploy disturbs as few rooms as it can.
//! - **Who does own it** is a claim in the registry (scope [`PARTITION_SCOPE`],
//!   name `p`), held under the owner's registration lease. A job consumes `p` only
//!   while it holds the claim, and claims it only when no one else holds it. An
//!   owner giving `p` up stops consuming it, waits until every message it took
//!   from `p` has reached the comets and been acknowledged (and the queue has
//!   recorded that), and only then releases the claim: the next owner starts
//!   exactly after the last message the previous one delivered, so a room's
//!   messages never overtake each other across a hand-over.
//!
//! A job that dies stops renewing its lease; its claims vanish when the lease
//! expires and the others take its partitions (unacknowledged messages are
//! delivered again: at least once). A job that loses its lease while alive (cut
//! off from the registry) is told before the registry expires it
//! ([`herald_discovery::Registration::lease_losses`]) and stops consuming at once.
//! A job leaving on purpose first marks itself `leaving`, so the others stop
//! counting it, then hands its partitions over one by one, then deregisters.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::sync::Arc;
use std::time::Duration;

use herald_discovery::{Instance, Registration, Registry, CLAIM_OWNER};
use herald_queue::Queue;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tracing::{info, warn};

use crate::{consume_partition, Workers, JOB_APPID};

/// Registry scope of the partition claims.
pub const PARTITION_SCOPE: &str = "herald.job.partition";

/// Metadata a job sets on its registration while it hands its partitions over
/// before leaving: the others no longer count it.
pub const LEAVING: &str = "leaving";

/// How long to wait before claiming again after the registry failed to answer.
const RETRY: Duration = Duration::from_secs(1);

/// The score of `job` for partition `p`: FNV-1a 64 of the job id and the
/// partition, then a 64-bit finalizer, so scores of one job for neighbouring
/// partitions are unrelated. Stable across processes, versions and machines.
fn score(job: &str, p: u32) -> u64 {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for b in job.bytes().chain([0xff]).chain(p.to_le_bytes()) {
        h ^= u64::from(b);
        h = h.wrapping_mul(0x0000_0100_0000_01b3);
    }
    h ^= h >> 33;
    h = h.wrapping_mul(0xff51_afd7_ed55_8ccd);
    h ^= h >> 33;
    h = h.wrapping_mul(0xc4ce_b9fe_1a85_ec53);
    h ^ (h >> 33)
}

/// The job (of `jobs`) that should own partition `p`: the highest score, ties to
/// the smaller id. `None` when there is no job.
pub fn owner_of<'a>(p: u32, jobs: &[&'a str]) -> Option<&'a str> {
    jobs.iter()
        .copied()
        .max_by(|a, b| score(a, p).cmp(&score(b, p)).then_with(|| b.cmp(a)))
}

/// The partitions (of `n`) that job `me` should own when the live jobs are
/// `jobs`. A job that does not see itself among them should own nothing (its
/// registration was lost, or it is leaving).
pub fn wanted(n: u32, jobs: &[&str], me: &str) -> BTreeSet<u32> {
    if !jobs.contains(&me) {
        return BTreeSet::new();
    }
    (0..n).filter(|p| owner_of(*p, jobs) == Some(me)).collect()
}

/// The jobs that count when dividing partitions: registered and not leaving.
fn live_jobs(list: &[Instance]) -> Vec<String> {
    let mut ids: Vec<String> = list
        .iter()
        .filter(|i| i.metadata.get(LEAVING).is_none_or(|v| v != "true"))
        .map(|i| i.hostname.clone())
        .collect();
    ids.sort_unstable();
    ids.dedup();
    ids
}

/// Partition → holder, from the claims' instances.
fn holders(list: &[Instance]) -> HashMap<String, String> {
    list.iter()
        .filter_map(|i| Some((i.hostname.clone(), i.metadata.get(CLAIM_OWNER)?.clone())))
        .collect()
}

/// One partition being consumed.
struct Running {
    stop: CancellationToken,
    done: JoinHandle<()>,
}

/// Divides the partitions with the other jobs until `stop`, then hands every
/// partition it holds over. Runs as one task owned by the job.
pub(crate) struct Ownership {
    pub n: u32,
    pub me: String,
    pub queue: Arc<dyn Queue>,
    pub workers: Workers,
    pub registry: Arc<dyn Registry>,
    pub registration: Arc<dyn Registration>,
    /// Where the partition consumers run (the job waits for it on shutdown).
    pub tasks: TaskTracker,
}

impl Ownership {
    pub(crate) async fn run(self, stop: CancellationToken) {
        let Some(mut jobs) = self.watch(JOB_APPID, &stop).await else {
            return;
        };
        let Some(mut claims) = self.watch(PARTITION_SCOPE, &stop).await else {
            return;
        };
        let mut losses = self.registration.lease_losses();
        losses.borrow_and_update();
        let mut running: BTreeMap<u32, Running> = BTreeMap::new();
        let mut logged: Option<Vec<u32>> = None;
        loop {
            let live = live_jobs(&jobs.borrow_and_update());
            let ids: Vec<&str> = live.iter().map(String::as_str).collect();
            let wanted = wanted(self.n, &ids, &self.me);
            let gone: Vec<u32> = running
                .keys()
                .filter(|p| !wanted.contains(p))
                .copied()
                .collect();
            if !gone.is_empty() {
                self.hand_over(&mut running, &gone, true).await;
            }
            let holders = holders(&claims.borrow_and_update());
            let mut retry = false;
            let missing: Vec<u32> = wanted
                .iter()
                .filter(|p| !running.contains_key(p))
                .copied()
                .collect();
            for p in missing {
                if holders.get(&p.to_string()).is_some_and(|o| *o != self.me) {
                    // Its owner is handing it over; the claim's release wakes us.
                    continue;
                }
                match self
                    .registration
                    .claim(PARTITION_SCOPE, &p.to_string())
                    .await
                {
                    Ok(true) => {
                        running.insert(p, self.start(p, &stop));
                    }
                    // Held under an older lease of ours (a restart with the same
                    // id) or taken meanwhile: its expiry or release wakes us.
                    Ok(false) => {}
                    Err(e) => {
                        warn!(partition = p, error = %e, "cannot claim a partition; retrying");
                        retry = true;
                    }
                }
            }
            let mine: Vec<u32> = running.keys().copied().collect();
            if logged.as_ref() != Some(&mine) {
                info!(job = %self.me, jobs = ids.len(), partitions = ?mine, "partitions held");
                logged = Some(mine);
            }
            tokio::select! {
                _ = stop.cancelled() => break,
                r = jobs.changed() => if r.is_err() { break },
                r = claims.changed() => if r.is_err() { break },
                r = losses.changed() => {
                    if r.is_err() {
                        break;
                    }
                    warn!(job = %self.me, "registry lease lost: every partition stops until claimed again");
                    let all: Vec<u32> = running.keys().copied().collect();
                    self.hand_over(&mut running, &all, false).await;
                }
                _ = tokio::time::sleep(RETRY), if retry => {}
            }
        }
        let all: Vec<u32> = running.keys().copied().collect();
        self.hand_over(&mut running, &all, true).await;
    }

    /// Watches `appid`, retrying while the registry does not answer (`None` once
    /// stopped).
    async fn watch(
        &self,
        appid: &str,
        stop: &CancellationToken,
    ) -> Option<tokio::sync::watch::Receiver<herald_discovery::Instances>> {
        loop {
            match self.registry.watch(appid).await {
                Ok(w) => return Some(w),
                Err(e) => {
                    warn!(%appid, error = %e, "cannot watch the registry; retrying");
                    tokio::select! {
                        _ = stop.cancelled() => return None,
                        _ = tokio::time::sleep(RETRY) => {}
                    }
                }
            }
        }
    }

    fn start(&self, p: u32, stop: &CancellationToken) -> Running {
        let stop = stop.child_token();
        let done = self.tasks.spawn(consume_partition(
            self.queue.clone(),
            p,
            self.workers.clone(),
            stop.clone(),
        ));
        Running { stop, done }
    }

    /// Stops consuming `parts`, waits until all they delivered is acknowledged and
    /// recorded, then (when `release`) gives their claims up.
    async fn hand_over(&self, running: &mut BTreeMap<u32, Running>, parts: &[u32], release: bool) {
        let stopping: Vec<(u32, Running)> = parts
            .iter()
            .filter_map(|p| Some((*p, running.remove(p)?)))
            .collect();
        for (_, r) in &stopping {
            r.stop.cancel();
        }
        for (p, r) in stopping {
            if let Err(e) = r.done.await {
                warn!(partition = p, error = %e, "partition consumer ended abnormally");
            }
            if release {
                if let Err(e) = self
                    .registration
                    .release(PARTITION_SCOPE, &p.to_string())
                    .await
                {
                    // The claim then ends with the lease.
                    warn!(partition = p, error = %e, "cannot release a partition claim");
                }
            }
            info!(job = %self.me, partition = p, "partition handed over");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn all(n: u32, jobs: &[&str]) -> Vec<BTreeSet<u32>> {
        jobs.iter().map(|j| wanted(n, jobs, j)).collect()
    }

    #[test]
    fn every_partition_has_one_owner() {
        let jobs = ["job-a", "job-b", "job-c"];
        let owned = all(64, &jobs);
        let mut seen: Vec<u32> = owned.iter().flatten().copied().collect();
        seen.sort_unstable();
        assert_eq!(seen, (0..64).collect::<Vec<_>>());
        // Spread: with 64 partitions over 3 jobs nobody is left out or takes all.
        for (j, o) in jobs.iter().zip(&owned) {
            assert!((8..=40).contains(&o.len()), "{j} owns {}", o.len());
        }
        assert!(wanted(8, &jobs, "not-a-job").is_empty());
        assert_eq!(wanted(4, &["solo"], "solo"), (0..4).collect());
        assert_eq!(owner_of(0, &[]), None);
    }

    #[test]
    fn a_job_joining_takes_only_what_it_wins() {
        let before = ["job-a", "job-b", "job-c"];
        let after = ["job-a", "job-b", "job-c", "job-d"];
        for p in 0..256 {
            let (old, new) = (owner_of(p, &before), owner_of(p, &after));
            assert!(
                old == new || new == Some("job-d"),
                "partition {p} moved from {old:?} to {new:?}"
            );
        }
        let moved = wanted(256, &after, "job-d").len();
        assert!(
            (32..=96).contains(&moved),
            "{moved} of 256 moved to the new job"
        );
    }

    #[test]
    fn a_job_leaving_gives_up_only_its_own() {
        let before = ["job-a", "job-b", "job-c"];
        let after = ["job-a", "job-c"];
        for p in 0..256 {
            let (old, new) = (owner_of(p, &before), owner_of(p, &after));
            assert!(
                old == new || old == Some("job-b"),
                "partition {p} moved from {old:?} to {new:?}"
            );
        }
    }

    #[test]
    fn scores_are_stable() {
        // Fixed values: jobs of every version and machine must agree on them.
        assert_eq!(score("job-a", 1), 0x48fc_6305_ee87_051f);
        assert_eq!(score("job-b", 1), 0xace9_748c_a42c_3bbb);
        let jobs = ["job-a", "job-b", "job-c"];
        let owners: Vec<&str> = (0..8).filter_map(|p| owner_of(p, &jobs)).collect();
        assert_eq!(
            owners,
            ["job-a", "job-b", "job-b", "job-c", "job-c", "job-c", "job-c", "job-b"]
        );
        // The order the jobs are listed in does not matter.
        assert_eq!(owner_of(5, &["job-c", "job-a", "job-b"]), Some("job-c"));
        assert_ne!(score("job-a1", 2), score("job-a", 12));
    }

    #[test]
    fn leaving_jobs_do_not_count() {
        let ins = |h: &str, leaving: bool| Instance {
            hostname: h.into(),
            metadata: if leaving {
                [(LEAVING.to_string(), "true".to_string())].into()
            } else {
                Default::default()
            },
            ..Default::default()
        };
        let list = [
            ins("b", false),
            ins("a", true),
            ins("c", false),
            ins("b", false),
        ];
        assert_eq!(live_jobs(&list), ["b", "c"]);
    }
}
