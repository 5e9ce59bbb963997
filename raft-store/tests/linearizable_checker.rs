//! Tests of the linearizability checker in `support/linearizable.rs`: known
//! good and bad histories, lost answers, and a generated 2,000-operation
//! history that must pass quickly (and fail once corrupted).

#[path = "support/linearizable.rs"]
mod linearizable;

use linearizable::{Input, Operation, Output, check};

fn get(key: &str) -> Input {
    Input::Get { key: key.into() }
}

fn put(key: &str, value: &str) -> Input {
    Input::Put {
        key: key.into(),
        value: value.into(),
    }
}

fn read(value: Option<&str>, mod_revision: i64) -> Output {
    Output::Read {
        value: value.map(Into::into),
        mod_revision,
    }
}

fn op(client: u64, input: Input, output: Output, invoke_time: u64, return_time: u64) -> Operation {
    Operation {
        client,
        input,
        output,
        invoke_time,
        return_time,
    }
}

#[test]
fn a_stale_read_after_a_completed_write_is_rejected() {
    let history = [
        op(1, put("x", "1"), Output::Written { revision: 2 }, 0, 10),
        op(2, get("x"), read(None, 0), 20, 30),
    ];
    let violation = check(&history).expect_err("stale read");
    assert_eq!(violation.key, b"x");
}

#[test]
fn concurrent_operations_may_be_ordered_either_way() {
    // Two overlapping puts; readers during the overlap see either value,
    // but once one reader saw the later state, no later reader goes back.
    let history = [
        op(1, put("x", "a"), Output::Written { revision: 2 }, 0, 100),
        op(2, put("x", "b"), Output::Written { revision: 3 }, 10, 90),
        op(3, get("x"), read(Some("a"), 2), 20, 30),
        op(4, get("x"), read(Some("b"), 3), 40, 50),
        op(3, get("x"), read(Some("b"), 3), 110, 120),
    ];
    check(&history).expect("linearizable");

    let going_back = [
        op(1, put("x", "a"), Output::Written { revision: 2 }, 0, 100),
        op(2, put("x", "b"), Output::Written { revision: 3 }, 10, 90),
        op(4, get("x"), read(Some("b"), 3), 40, 50),
        op(3, get("x"), read(Some("a"), 2), 60, 70),
    ];
    check(&going_back).expect_err("revision 3 was seen, then revision 2");
}

#[test]
fn two_swaps_from_the_same_revision_cannot_both_succeed() {
    let cas = |new: &str| Input::CompareAndSwapRevision {
        key: "obj".into(),
        expected_mod_revision: 2,
        new: new.into(),
    };
    let swapped = |revision| Output::Swapped {
        succeeded: true,
        revision,
    };
    let create = op(0, put("obj", "v1"), Output::Written { revision: 2 }, 0, 5);
    let lost_update = [
        create.clone(),
        op(1, cas("a"), swapped(3), 10, 20),
        op(2, cas("b"), swapped(4), 12, 22),
    ];
    check(&lost_update).expect_err("a lost update");
    let conflict = [
        create,
        op(1, cas("a"), swapped(3), 10, 20),
        op(
            2,
            cas("b"),
            Output::Swapped {
                succeeded: false,
                revision: 0,
            },
            12,
            22,
        ),
        op(3, get("obj"), read(Some("a"), 3), 30, 40),
    ];
    check(&conflict).expect("one winner");
}

#[test]
fn value_swaps_and_deletes() {
    let history = [
        op(1, put("k", "1"), Output::Written { revision: 2 }, 0, 1),
        op(
            1,
            Input::CompareAndSwapValue {
                key: "k".into(),
                expected: "1".into(),
                new: "2".into(),
            },
            Output::Swapped {
                succeeded: true,
                revision: 3,
            },
            2,
            3,
        ),
        op(
            2,
            Input::Delete { key: "k".into() },
            Output::Deleted { deleted: true },
            4,
            5,
        ),
        op(
            2,
            Input::Delete { key: "k".into() },
            Output::Deleted { deleted: true },
            6,
            7,
        ),
    ];
    check(&history).expect_err("a second delete of the same key deleted nothing");
    check(&history[..3]).expect("valid prefix");
}

#[test]
fn lost_answers_may_or_may_not_have_happened() {
    let lost_put = op(1, put("x", "maybe"), Output::Unknown, 0, 0);
    let took_effect = [
        lost_put.clone(),
        op(2, get("x"), read(Some("maybe"), 9), 50, 60),
    ];
    check(&took_effect).expect("the lost put happened");
    let never = [lost_put.clone(), op(2, get("x"), read(None, 0), 50, 60)];
    check(&never).expect("the lost put did not happen (yet)");
    let too_early = [
        op(2, get("x"), read(Some("maybe"), 9), 0, 5),
        op(1, put("x", "maybe"), Output::Unknown, 10, 0),
    ];
    check(&too_early).expect_err("read before the put was invoked");
    // A swap after a lost put: the revision is pinned by what it expected.
    let pinned = [
        lost_put,
        op(
            2,
            Input::CompareAndSwapRevision {
                key: "x".into(),
                expected_mod_revision: 9,
                new: "next".into(),
            },
            Output::Swapped {
                succeeded: true,
                revision: 10,
            },
            20,
            30,
        ),
        op(3, get("x"), read(Some("next"), 10), 40, 50),
    ];
    check(&pinned).expect("lost put at 9, then the swap");
}

/// A small seeded generator (xorshift64*), so the history is the same on
/// every run.
struct Rng(u64);

impl Rng {
    fn below(&mut self, bound: u64) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_f491_4f6c_dd1d) % bound
    }
}

/// Runs `count` operations against a true register, one linearization
/// point every 10 time units, each op's interval stretching up to 60 units
/// around its point, so several overlap at any time.
fn generated_history(seed: u64, count: usize) -> Vec<Operation> {
    use std::collections::HashMap;
    let mut rng = Rng(seed);
    let mut store: HashMap<String, (String, i64)> = HashMap::new();
    let mut revision = 1;
    let mut history = Vec::with_capacity(count);
    for i in 0..count {
        let key = format!("k{}", rng.below(4));
        let point = 1_000 + 10 * i as u64;
        let invoke_time = point - rng.below(60);
        let return_time = point + rng.below(60);
        let current = store.get(&key).cloned();
        let (input, output) = match rng.below(5) {
            0 | 1 => (
                get(&key),
                match &current {
                    Some((value, mod_revision)) => read(Some(value), *mod_revision),
                    None => read(None, 0),
                },
            ),
            2 => {
                revision += 1;
                let value = format!("v{i}");
                store.insert(key.clone(), (value.clone(), revision));
                (put(&key, &value), Output::Written { revision })
            }
            3 => {
                let deleted = store.remove(&key).is_some();
                if deleted {
                    revision += 1;
                }
                (
                    Input::Delete {
                        key: key.clone().into(),
                    },
                    Output::Deleted { deleted },
                )
            }
            _ => {
                let expected_mod_revision = match (&current, rng.below(2)) {
                    (Some((_, mod_revision)), 0) => *mod_revision,
                    _ => rng.below(revision as u64 + 1) as i64,
                };
                let holds = current.as_ref().map_or(0, |(_, r)| *r) == expected_mod_revision;
                let new = format!("c{i}");
                let output = if holds {
                    revision += 1;
                    store.insert(key.clone(), (new.clone(), revision));
                    Output::Swapped {
                        succeeded: true,
                        revision,
                    }
                } else {
                    Output::Swapped {
                        succeeded: false,
                        revision: 0,
                    }
                };
                let input = Input::CompareAndSwapRevision {
                    key: key.clone().into(),
                    expected_mod_revision,
                    new: new.into(),
                };
                (input, output)
            }
        };
        history.push(op(i as u64 % 8, input, output, invoke_time, return_time));
    }
    history
}

/// Makes the last read return the first value ever put to its key, after
/// checking that another write on that key (with a different, unique
/// value) ran entirely between that put and the read.
fn make_last_read_stale(history: &mut [Operation]) {
    let read_index = history
        .iter()
        .rposition(|operation| matches!(operation.input, Input::Get { .. }))
        .expect("the generator reads");
    let key = history[read_index].input.key().to_vec();
    let read_start = history[read_index].invoke_time;
    let (first_index, first) = history
        .iter()
        .enumerate()
        .find(|(_, operation)| {
            matches!(operation.input, Input::Put { .. }) && operation.input.key() == key
        })
        .expect("the key was put");
    let (first_value, first_end) = match (&first.input, &first.output) {
        (Input::Put { value, .. }, Output::Written { revision }) => {
            ((value.clone(), *revision), first.return_time)
        }
        other => panic!("unexpected {other:?}"),
    };
    let overwritten = history.iter().any(|operation| {
        let writes = match (&operation.input, &operation.output) {
            (Input::Put { .. }, Output::Written { .. }) => true,
            (Input::CompareAndSwapRevision { .. }, Output::Swapped { succeeded, .. }) => *succeeded,
            (Input::Delete { .. }, Output::Deleted { deleted }) => *deleted,
            _ => false,
        };
        writes
            && operation.input.key() == key
            && operation.invoke_time > first_end
            && operation.return_time < read_start
    });
    assert!(
        overwritten,
        "put {first_index} was overwritten before the read"
    );
    history[read_index].output = Output::Read {
        value: Some(first_value.0),
        mod_revision: first_value.1,
    };
}

#[test]
fn a_generated_history_of_two_thousand_operations_checks_fast() {
    for seed in [1, 2, 3] {
        let history = generated_history(seed, 2_000);
        let started = std::time::Instant::now();
        check(&history).unwrap_or_else(|violation| panic!("seed {seed}: {violation}"));
        // Lose some answers: still linearizable.
        let mut lossy = history.clone();
        for operation in lossy.iter_mut().step_by(37) {
            operation.output = Output::Unknown;
        }
        check(&lossy).unwrap_or_else(|violation| panic!("seed {seed} with losses: {violation}"));
        // A read of a value nobody wrote is caught. (Proving that a history
        // with many lost answers is NOT linearizable is an exhaustive search
        // over where each lost write took effect, so the corruption is made
        // in the history without losses.)
        let mut corrupted = history;
        let read_index = corrupted
            .iter()
            .rposition(|operation| matches!(operation.input, Input::Get { .. }))
            .expect("the generator reads");
        corrupted[read_index].output = read(Some("never written"), 1);
        let violation = check(&corrupted).expect_err("corrupted read");
        assert_eq!(violation.key, corrupted[read_index].input.key());
        assert!(
            violation.message.contains("no operation wrote"),
            "{violation}"
        );
        // A read of an old value (written, but overwritten before the read
        // began) needs the search to be rejected.
        let mut stale = generated_history(seed, 2_000);
        make_last_read_stale(&mut stale);
        let violation = check(&stale).expect_err("stale read");
        assert!(
            violation.message.contains("no linearization"),
            "{violation}"
        );
        assert!(
            started.elapsed() < std::time::Duration::from_secs(20),
            "seed {seed} took {:?}",
            started.elapsed()
        );
    }
}
