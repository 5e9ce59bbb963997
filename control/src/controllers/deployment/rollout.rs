//! The arithmetic of a rolling update, apart from the API: given the new
//! ReplicaSet and the old ones, how far each may be scaled now without
//! going above `replicas + maxSurge` pods nor below `replicas -
//! maxUnavailable` available ones. The steps are kube-controller-manager's
//! (`reconcileNewReplicaSet`, `cleanupUnhealthyReplicas`,
//! `scaleDownOldReplicaSetsForRollingUpdate`).

use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;

/// One ReplicaSet as the rollout sees it.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Set {
    /// `spec.replicas`: what it is asked to run.
    pub replicas: i32,
    /// `status.replicas`: the pods it has.
    pub current: i32,
    /// `status.availableReplicas`.
    pub available: i32,
}

/// The bounds of one Deployment's rollout, in pods.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Limits {
    pub replicas: i32,
    pub max_surge: i32,
    pub max_unavailable: i32,
}

impl Limits {
    /// From the strategy, as Kubernetes resolves it: percentages of
    /// `replicas`, surge rounded up and unavailability down, and one pod of
    /// unavailability when both come to zero (or no rollout could move).
    pub fn new(
        replicas: i32,
        max_surge: Option<&IntOrString>,
        max_unavailable: Option<&IntOrString>,
    ) -> Result<Limits, String> {
        let default = IntOrString::String("25%".into());
        let surge = resolve(max_surge.unwrap_or(&default), replicas, true)?;
        let mut unavailable = resolve(max_unavailable.unwrap_or(&default), replicas, false)?;
        if surge == 0 && unavailable == 0 {
            unavailable = 1;
        }
        Ok(Limits {
            replicas,
            max_surge: surge,
            max_unavailable: unavailable.min(replicas),
        })
    }
}

fn resolve(value: &IntOrString, replicas: i32, round_up: bool) -> Result<i32, String> {
    match value {
        IntOrString::Int(count) if *count >= 0 => Ok(*count),
        IntOrString::Int(count) => Err(format!("{count} must be at least 0")),
        IntOrString::String(text) => {
            let percent: i64 = text
                .strip_suffix('%')
                .and_then(|p| p.parse().ok())
                .filter(|p| *p >= 0)
                .ok_or_else(|| format!("{text:?} is neither a count nor a percentage"))?;
            let scaled = percent * i64::from(replicas);
            let pods = if round_up {
                (scaled + 99) / 100
            } else {
                scaled / 100
            };
            Ok(i32::try_from(pods).unwrap_or(i32::MAX))
        }
    }
}

/// What the new set should be asked to run now. Growing it comes first;
/// a step that grows it changes nothing else. A set counts for what it is
/// asked to run or the pods it still has, whichever is more: an old set
/// just asked to shrink still has its pod until its controller removes
/// it, and growing the new set meanwhile would run more than the surge.
pub fn scale_new(limits: &Limits, new: &Set, old: &[Set]) -> i32 {
    if new.replicas >= limits.replicas {
        return limits.replicas;
    }
    let counted = |set: &Set| set.replicas.max(set.current);
    let total: i32 = counted(new) + old.iter().map(counted).sum::<i32>();
    let room = limits.replicas + limits.max_surge - total;
    new.replicas + room.clamp(0, limits.replicas - new.replicas)
}

/// What each old set (oldest first) should be asked to run now: first the
/// pods that are not available go, then available ones, never taking the
/// available count below `replicas - maxUnavailable`. A set counts for
/// what it is asked to run, as Kubernetes counts it: pods it still has
/// beyond that are already on their way out, and counting them again
/// would take the next step's pods from those that stay.
pub fn scale_old(limits: &Limits, new: &Set, old: &[Set]) -> Vec<i32> {
    let mut targets: Vec<i32> = old.iter().map(|s| s.replicas).collect();
    let old_pods: i32 = old.iter().map(|s| s.current).sum();
    if old_pods == 0 {
        return targets;
    }
    let all_pods = new.replicas + targets.iter().sum::<i32>();
    let min_available = limits.replicas - limits.max_unavailable;
    let new_unavailable = (new.replicas - new.available).max(0);
    let max_scaled_down = all_pods - min_available - new_unavailable;
    if max_scaled_down <= 0 {
        return targets;
    }
    // Unhealthy pods of old sets count against nothing: they go first.
    let mut cleaned = 0;
    for (target, set) in targets.iter_mut().zip(old) {
        if cleaned >= max_scaled_down {
            break;
        }
        let unhealthy = (*target - set.available).max(0);
        let scaled = unhealthy.min(max_scaled_down - cleaned);
        *target -= scaled;
        cleaned += scaled;
    }
    // Then available ones, while enough stay available.
    let staying = |s: &Set| s.available.min(s.replicas);
    let available: i32 = new.available + old.iter().map(staying).sum::<i32>();
    let mut to_remove = available - min_available;
    for target in &mut targets {
        if to_remove <= 0 {
            break;
        }
        let scaled = (*target).min(to_remove);
        *target -= scaled;
        to_remove -= scaled;
    }
    targets
}

#[cfg(test)]
mod tests {
    use super::*;

    fn int(n: i32) -> IntOrString {
        IntOrString::Int(n)
    }

    fn percent(p: i32) -> IntOrString {
        IntOrString::String(format!("{p}%"))
    }

    #[test]
    fn limits_resolve_as_kubernetes_rounds_them() {
        let l = Limits::new(10, None, None).unwrap();
        assert_eq!((l.max_surge, l.max_unavailable), (3, 2));
        let l = Limits::new(1, Some(&int(0)), Some(&int(0))).unwrap();
        assert_eq!((l.max_surge, l.max_unavailable), (0, 1));
        let l = Limits::new(3, Some(&percent(50)), Some(&percent(50))).unwrap();
        assert_eq!((l.max_surge, l.max_unavailable), (2, 1));
        assert!(Limits::new(3, Some(&IntOrString::String("lots".into())), None).is_err());
    }

    /// A small deterministic generator, so that every run sees the same
    /// interleavings.
    struct Rng(u64);

    impl Rng {
        fn below(&mut self, bound: i32) -> i32 {
            self.0 ^= self.0 << 13;
            self.0 ^= self.0 >> 7;
            self.0 ^= self.0 << 17;
            (self.0 % u64::try_from(bound.max(1)).unwrap()) as i32
        }
    }

    /// Runs a whole rollout from one fully available old set to the new
    /// one, with pods becoming available at random moments, and checks
    /// Kubernetes' two promises after every step.
    fn roll(replicas: i32, surge: &IntOrString, unavailable: &IntOrString, seed: u64) {
        let limits = Limits::new(replicas, Some(surge), Some(unavailable)).unwrap();
        let mut rng = Rng(seed | 1);
        let mut new = Set::default();
        // Two old generations, the older one already scaled to zero.
        let mut old = vec![
            Set::default(),
            Set {
                replicas,
                current: replicas,
                available: replicas,
            },
        ];
        let context = format!(
            "replicas {replicas}, surge {surge:?}, unavailable {unavailable:?}, seed {seed}"
        );
        for _ in 0..10_000 {
            if new.available == replicas && old.iter().all(|s| s.current == 0) {
                return;
            }
            let grown = scale_new(&limits, &new, &old);
            if grown != new.replicas {
                new.replicas = grown;
            } else {
                let targets = scale_old(&limits, &new, &old);
                for (set, target) in old.iter_mut().zip(targets) {
                    set.replicas = target;
                }
            }
            // The ReplicaSet controller: creates (unavailable) and deletes
            // (unavailable pods first), each set in its own time: a set
            // may lag its target for a step or more, as a controller that
            // has not yet seen or acted on a change does.
            for set in std::iter::once(&mut new).chain(old.iter_mut()) {
                if rng.below(2) == 0 {
                    continue;
                }
                if set.current < set.replicas {
                    set.current = set.replicas;
                }
                while set.current > set.replicas {
                    set.current -= 1;
                    set.available = set.available.min(set.current);
                }
            }
            // Some pods become available.
            for set in std::iter::once(&mut new).chain(old.iter_mut()) {
                let waiting = set.current - set.available;
                set.available += rng.below(waiting + 1);
            }
            let total = new.current + old.iter().map(|s| s.current).sum::<i32>();
            let available = new.available + old.iter().map(|s| s.available).sum::<i32>();
            assert!(
                total <= replicas + limits.max_surge,
                "{total} pods: {context}"
            );
            assert!(
                available >= replicas - limits.max_unavailable,
                "{available} available: {context}"
            );
        }
        panic!("the rollout did not finish: {context}");
    }

    #[test]
    fn rolling_updates_stay_within_surge_and_unavailability() {
        let bounds = [
            int(0),
            int(1),
            int(2),
            percent(10),
            percent(25),
            percent(50),
            percent(100),
        ];
        for replicas in 0..=12 {
            for surge in &bounds {
                for unavailable in &bounds {
                    for seed in 0..4 {
                        roll(replicas, surge, unavailable, seed * 7_919 + 1);
                    }
                }
            }
        }
    }
}
