//! A policy's concurrency caps (`spec.concurrency`): how many of its backups run at once per
//! source host, and how many run at once into its backup target (every policy's jobs into that
//! target count). [`Slots`] counts what is in flight and answers, for each due backup in turn,
//! whether it starts now or waits for a slot.

use std::collections::BTreeMap;

/// Whether a due backup starts now.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Admission {
    /// It takes a slot on its host and on the target.
    Start,
    /// No free slot. `held_elsewhere`: the target is full and other policies' jobs hold some
    /// of its slots (their end does not wake this policy, so it must look again by itself).
    Wait { held_elsewhere: bool },
}

/// The free and taken slots of one policy's reconcile.
#[derive(Debug, Clone)]
pub struct Slots {
    per_host_cap: u32,
    per_target_cap: u32,
    in_flight_per_host: BTreeMap<String, u32>,
    in_flight_target: u32,
    target_elsewhere: u32,
}

impl Slots {
    /// `own_in_flight` names the source host of each of the policy's own jobs in flight
    /// (Pending or Running); `target_elsewhere` counts other policies' jobs in flight into the
    /// same target.
    pub fn new<'a>(
        per_host_cap: u32,
        per_target_cap: u32,
        own_in_flight: impl IntoIterator<Item = &'a str>,
        target_elsewhere: u32,
    ) -> Self {
        let mut in_flight_per_host: BTreeMap<String, u32> = BTreeMap::new();
        for host in own_in_flight {
            *in_flight_per_host.entry(host.to_owned()).or_default() += 1;
        }
        let own: u32 = in_flight_per_host.values().sum();
        Slots {
            per_host_cap,
            per_target_cap,
            in_flight_per_host,
            in_flight_target: own.saturating_add(target_elsewhere),
            target_elsewhere,
        }
    }

    /// Whether a due backup of `host` starts now; a start takes its slots.
    pub fn admit(&mut self, host: &str) -> Admission {
        let per_host = self.in_flight_per_host.entry(host.to_owned()).or_default();
        let target_full = self.in_flight_target >= self.per_target_cap;
        if target_full || *per_host >= self.per_host_cap {
            return Admission::Wait {
                held_elsewhere: target_full && self.target_elsewhere > 0,
            };
        }
        *per_host += 1;
        self.in_flight_target += 1;
        Admission::Start
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn each_cap_holds_and_only_a_target_full_of_others_jobs_is_held_elsewhere() {
        struct Case {
            per_host: u32,
            per_target: u32,
            own: &'static [&'static str],
            elsewhere: u32,
            asks: &'static [&'static str],
            want: &'static [Admission],
        }
        const START: Admission = Admission::Start;
        const WAIT: Admission = Admission::Wait {
            held_elsewhere: false,
        };
        const HELD: Admission = Admission::Wait {
            held_elsewhere: true,
        };
        let cases = [
            // perHost 1: one per host, other hosts still start.
            Case {
                per_host: 1,
                per_target: 10,
                own: &[],
                elsewhere: 0,
                asks: &["a", "a", "b"],
                want: &[START, WAIT, START],
            },
            // A job in flight on the host takes its slot.
            Case {
                per_host: 1,
                per_target: 10,
                own: &["a"],
                elsewhere: 0,
                asks: &["a", "b"],
                want: &[WAIT, START],
            },
            // perTarget 2 with one own job in flight: one more starts, then the target is full
            // of this policy's own jobs (their end wakes it).
            Case {
                per_host: 5,
                per_target: 2,
                own: &["a"],
                elsewhere: 0,
                asks: &["b", "c"],
                want: &[START, WAIT],
            },
            // Other policies' jobs count into the target and make the wait held elsewhere.
            Case {
                per_host: 5,
                per_target: 2,
                own: &[],
                elsewhere: 1,
                asks: &["a", "b"],
                want: &[START, HELD],
            },
            // A host at its cap with room at the target is not held elsewhere.
            Case {
                per_host: 1,
                per_target: 3,
                own: &["a"],
                elsewhere: 1,
                asks: &["a"],
                want: &[WAIT],
            },
        ];
        for (i, c) in cases.iter().enumerate() {
            let mut slots =
                Slots::new(c.per_host, c.per_target, c.own.iter().copied(), c.elsewhere);
            let got: Vec<Admission> = c.asks.iter().map(|h| slots.admit(h)).collect();
            assert_eq!(got, c.want, "case {i}");
        }
    }
}
