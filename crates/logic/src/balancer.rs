//! goim's weighted comet balancer: each request ranks comets by their configured
//! weight against their share of connections, hands out the best first, and counts
//! the client against it until the next registry update.

use std::collections::HashMap;

use herald_discovery::Instance;

const MIN_WEIGHT: i64 = 1;
const MAX_WEIGHT: i64 = 1 << 20;
/// Most nodes returned to one client.
pub const MAX_NODES: usize = 5;

#[derive(Debug, Clone)]
struct Node {
    region: String,
    hostname: String,
    addrs: Vec<String>,
    fixed_weight: i64,
    current_weight: i64,
    current_conns: i64,
    updated: i64,
}

/// The balancer state.
#[derive(Debug, Default)]
pub struct Balancer {
    nodes: HashMap<String, Node>,
    total_conns: i64,
    total_weight: i64,
}

impl Balancer {
    /// Replaces the node set from the live, online comets. Ignored when the new set
    /// is empty or less than half the current one (registry flap protection).
    pub fn update(&mut self, instances: &[Instance]) {
        if instances.is_empty() || instances.len() * 2 < self.nodes.len() {
            return;
        }
        let mut nodes = HashMap::new();
        let (mut total_conns, mut total_weight) = (0, 0);
        for ins in instances {
            let node = match self.nodes.get(&ins.hostname) {
                Some(old) if old.updated == ins.latest_timestamp => old.clone(),
                _ => {
                    let (Some(weight), Some(conns)) =
                        (ins.meta_i64("weight"), ins.meta_i64("conn_count"))
                    else {
                        continue;
                    };
                    Node {
                        region: ins.region.clone(),
                        hostname: ins.hostname.clone(),
                        addrs: ins
                            .metadata
                            .get("addrs")
                            .map(|a| {
                                a.split(',')
                                    .map(str::trim)
                                    .filter(|s| !s.is_empty())
                                    .map(String::from)
                                    .collect()
                            })
                            .unwrap_or_default(),
                        fixed_weight: weight,
                        current_weight: 0,
                        current_conns: conns,
                        updated: ins.latest_timestamp,
                    }
                }
            };
            total_conns += node.current_conns;
            total_weight += node.fixed_weight;
            nodes.insert(node.hostname.clone(), node);
        }
        self.nodes = nodes;
        self.total_conns = total_conns;
        self.total_weight = total_weight;
    }

    /// Ranks the comets for a client in `region`; returns up to five
    /// `(domains, addresses)` and counts the client against the first.
    pub fn pick(
        &mut self,
        region: &str,
        host_domain: &str,
        region_weight: f64,
    ) -> (Vec<String>, Vec<String>) {
        for n in self.nodes.values_mut() {
            let gain = if n.region == region {
                region_weight
            } else {
                1.0
            };
            let fw = n.fixed_weight as f64 * gain;
            let tw = (self.total_weight + (fw as i64 - n.fixed_weight)) as f64;
            if self.total_conns > 0 && tw > 0.0 {
                let diff = fw / tw - 0.5 * n.current_conns as f64 / self.total_conns as f64;
                let m = diff * self.total_conns as f64;
                let adj = if m.floor() - m >= -0.5 {
                    m.floor()
                } else {
                    m.ceil()
                };
                let mut w = (fw + adj) as i64;
                if diff < 0.0 {
                    w = w.max(MIN_WEIGHT);
                } else {
                    w = w.min(MAX_WEIGHT);
                }
                n.current_weight = w;
            } else {
                n.current_weight = 0;
            }
        }
        let mut order: Vec<&mut Node> = self.nodes.values_mut().collect();
        order.sort_by(|a, b| {
            b.current_weight
                .cmp(&a.current_weight)
                .then_with(|| a.current_conns.cmp(&b.current_conns))
                .then_with(|| a.hostname.cmp(&b.hostname))
        });
        if let Some(first) = order.first_mut() {
            first.current_conns += 1;
        }
        let mut domains = Vec::new();
        let mut addrs = Vec::new();
        for n in order.iter().take(MAX_NODES) {
            // The server id may carry the internal port; a domain is the host alone.
            let host = match n.hostname.rsplit_once(':') {
                Some((h, p)) if p.chars().all(|c| c.is_ascii_digit()) => h,
                _ => n.hostname.as_str(),
            };
            domains.push(format!("{host}{host_domain}"));
            addrs.extend(n.addrs.iter().cloned());
        }
        if !order.is_empty() {
            self.total_conns += 1;
        }
        (domains, addrs)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ins(host: &str, weight: i64, conns: i64, ts: i64) -> Instance {
        Instance {
            hostname: host.into(),
            latest_timestamp: ts,
            metadata: [
                ("weight".to_string(), weight.to_string()),
                ("conn_count".to_string(), conns.to_string()),
                ("addrs".to_string(), format!("{host}-ip")),
            ]
            .into(),
            ..Default::default()
        }
    }

    #[test]
    fn prefers_less_loaded_and_counts_picks() {
        let mut b = Balancer::default();
        b.update(&[ins("a", 10, 100, 1), ins("b", 10, 10, 1)]);
        let (domains, addrs) = b.pick("", ".example", 1.0);
        assert_eq!(domains, vec!["b.example", "a.example"]);
        assert_eq!(addrs, vec!["b-ip", "a-ip"]);
        // Picking b many times shifts the balance towards a.
        let mut firsts = HashMap::new();
        for _ in 0..200 {
            let (d, _) = b.pick("", "", 1.0);
            *firsts.entry(d[0].clone()).or_insert(0) += 1;
        }
        assert!(firsts.get("a").copied().unwrap_or(0) > 0);
    }

    #[test]
    fn flap_protection_and_bad_metadata() {
        let mut b = Balancer::default();
        b.update(&[ins("a", 1, 0, 1), ins("b", 1, 0, 1), ins("c", 1, 0, 1)]);
        b.update(&[ins("a", 1, 0, 1)]);
        assert_eq!(b.pick("", "", 1.0).0.len(), 3);
        b.update(&[]);
        assert_eq!(b.pick("", "", 1.0).0.len(), 3);
        let mut bad = ins("d", 1, 0, 1);
        bad.metadata.remove("weight");
        b.update(&[ins("a", 1, 0, 2), ins("b", 1, 0, 2), bad]);
        assert_eq!(b.pick("", "", 1.0).0.len(), 2);
    }
}
