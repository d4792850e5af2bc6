//! The scheduling policy: which test indices go to which worker, and when a worker is told to
//! shut down. A pure state machine fed with events (started, ran, crashed, restarted), returning
//! actions; the dispatcher owns the processes and the I/O.
//!
//! A worker runs a test only once it knows the next one (so module and class fixtures tear down
//! at the right moment) or has been told to shut down, so every live worker is kept at
//! [`PREFETCH`] queued tests while there is work, and is sent `Shutdown` once there is none.

use std::collections::{HashMap, VecDeque};

/// Tests queued per worker.
pub const PREFETCH: usize = 2;

/// How tests are distributed (pytest-xdist's `--dist` modes).
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Mode {
    /// Any test to any worker, longest known tests first.
    Load,
    /// Tests of one module or class stay on one worker.
    Loadscope,
    /// Tests of one file stay on one worker.
    Loadfile,
    /// Tests with the same `xdist_group` mark stay on one worker.
    Loadgroup,
    /// As `load`: idle workers take the next test, so nothing waits behind a long one.
    Worksteal,
    /// Every test on every worker (for example one per platform).
    Each,
    /// One worker runs everything.
    No,
}

/// What the dispatcher must do.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Action {
    Run(usize, Vec<usize>),
    Shutdown(usize),
}

/// The scheduler's state.
#[derive(Debug)]
pub struct Scheduler {
    mode: Mode,
    /// Work not yet handed out: units of tests that go to one worker together.
    shared: VecDeque<Vec<usize>>,
    /// `each`: every worker's own remaining tests.
    own: Vec<VecDeque<usize>>,
    in_flight: Vec<VecDeque<usize>>,
    shutdown: Vec<bool>,
    alive: Vec<bool>,
}

/// The unit a test belongs to under `mode`: its file, its module or class, its group.
fn unit_key(mode: Mode, nodeid: &str, group: Option<&str>, index: usize) -> String {
    match mode {
        Mode::Loadfile => nodeid.split("::").next().unwrap_or(nodeid).to_owned(),
        Mode::Loadscope => match nodeid.rsplit_once("::") {
            Some((scope, _)) => scope.to_owned(),
            None => nodeid.to_owned(),
        },
        Mode::Loadgroup => match group {
            Some(g) => format!("group:{g}"),
            None => format!("test:{index}"),
        },
        _ => format!("test:{index}"),
    }
}

impl Scheduler {
    /// A schedule for `ids` (with their `xdist_group` names) over `workers` workers. `order`
    /// ranks tests: higher first (known durations); ties keep collection order.
    pub fn new(
        mode: Mode,
        ids: &[String],
        groups: &[Option<String>],
        workers: usize,
        order: &dyn Fn(usize) -> f64,
    ) -> Scheduler {
        let workers = if mode == Mode::No { 1 } else { workers.max(1) };
        let mut idx: Vec<usize> = (0..ids.len()).collect();
        let mut own = vec![VecDeque::new(); workers];
        let mut shared = VecDeque::new();
        if mode == Mode::Each {
            for q in &mut own {
                q.extend(idx.iter().copied());
            }
        } else {
            // Units in order of their first member; units ranked by their total expected time.
            let mut units: Vec<Vec<usize>> = Vec::new();
            let mut slot: HashMap<String, usize> = HashMap::new();
            for &i in &idx {
                let key = unit_key(mode, &ids[i], groups.get(i).and_then(|g| g.as_deref()), i);
                let at = *slot.entry(key).or_insert_with(|| {
                    units.push(Vec::new());
                    units.len() - 1
                });
                units[at].push(i);
            }
            let weight = |u: &Vec<usize>| u.iter().map(|&i| order(i)).sum::<f64>();
            let mut ranked: Vec<(usize, f64)> = units
                .iter()
                .enumerate()
                .map(|(k, u)| (k, weight(u)))
                .collect();
            ranked.sort_by(|a, b| {
                b.1.partial_cmp(&a.1)
                    .unwrap_or(std::cmp::Ordering::Equal)
                    .then(a.0.cmp(&b.0))
            });
            let mut units: Vec<Option<Vec<usize>>> = units.into_iter().map(Some).collect();
            for (k, _) in ranked {
                shared.push_back(units[k].take().expect("each unit once"));
            }
            idx.clear();
        }
        Scheduler {
            mode,
            shared,
            own,
            in_flight: vec![VecDeque::new(); workers],
            shutdown: vec![false; workers],
            alive: vec![true; workers],
        }
    }

    /// How many workers the schedule uses.
    pub fn workers(&self) -> usize {
        self.in_flight.len()
    }

    /// The first actions, once every worker has collected.
    pub fn start(&mut self) -> Vec<Action> {
        (0..self.workers()).flat_map(|w| self.top_up(w)).collect()
    }

    /// Worker `w` finished test `index`.
    pub fn ran(&mut self, w: usize, index: usize) -> Vec<Action> {
        if let Some(pos) = self.in_flight[w].iter().position(|&i| i == index) {
            self.in_flight[w].remove(pos);
        }
        self.top_up(w)
    }

    /// Worker `w` died. Returns the test it was running, if any; its other queued tests go back
    /// to be handed out again (to its replacement, for `each`).
    pub fn crashed(&mut self, w: usize) -> Option<usize> {
        self.alive[w] = false;
        let mut queued = std::mem::take(&mut self.in_flight[w]);
        let running = queued.pop_front();
        if self.mode == Mode::Each {
            for i in queued.into_iter().rev() {
                self.own[w].push_front(i);
            }
        } else if !queued.is_empty() {
            self.shared.push_front(queued.into_iter().collect());
        }
        running
    }

    /// Worker `w` died and will not come back: its own remaining tests (for `each`) are
    /// returned, never to run; shared work goes to the others.
    pub fn abandon(&mut self, w: usize) -> (Vec<usize>, Vec<Action>) {
        self.alive[w] = false;
        let lost: Vec<usize> = std::mem::take(&mut self.own[w]).into_iter().collect();
        let actions = (0..self.workers()).flat_map(|k| self.top_up(k)).collect();
        (lost, actions)
    }

    /// A replacement for worker `w` has collected and is ready.
    pub fn restarted(&mut self, w: usize) -> Vec<Action> {
        self.alive[w] = true;
        self.shutdown[w] = false;
        self.top_up(w)
    }

    /// Tests not yet handed out (shared work) when no worker can take more: every worker is
    /// dead or already told to shut down (a crash returned work after the others finished).
    pub fn stranded(&self) -> Vec<usize> {
        if self
            .alive
            .iter()
            .zip(&self.shutdown)
            .any(|(&a, &s)| a && !s)
        {
            return Vec::new();
        }
        self.shared.iter().flatten().copied().collect()
    }

    /// Hands out nothing more (`-x`/`--maxfail` reached); returns the shutdowns to send.
    pub fn stop(&mut self) -> Vec<Action> {
        self.shared.clear();
        for q in &mut self.own {
            q.clear();
        }
        let mut actions = Vec::new();
        for w in 0..self.workers() {
            if self.alive[w] && !self.shutdown[w] {
                self.shutdown[w] = true;
                actions.push(Action::Shutdown(w));
            }
        }
        actions
    }

    fn top_up(&mut self, w: usize) -> Vec<Action> {
        if !self.alive[w] || self.shutdown[w] {
            return Vec::new();
        }
        let mut give = Vec::new();
        while self.in_flight[w].len() + give.len() < PREFETCH {
            if self.mode == Mode::Each {
                match self.own[w].pop_front() {
                    Some(i) => give.push(i),
                    None => break,
                }
            } else {
                match self.shared.pop_front() {
                    Some(unit) => give.extend(unit),
                    None => break,
                }
            }
        }
        let mut actions = Vec::new();
        if !give.is_empty() {
            self.in_flight[w].extend(give.iter().copied());
            actions.push(Action::Run(w, give));
        }
        let more = if self.mode == Mode::Each {
            !self.own[w].is_empty()
        } else {
            !self.shared.is_empty()
        };
        if !more {
            self.shutdown[w] = true;
            actions.push(Action::Shutdown(w));
        }
        actions
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ids(v: &[&str]) -> Vec<String> {
        v.iter().map(|s| (*s).to_owned()).collect()
    }

    /// Drives a schedule to the end with instant tests, returning which worker ran what.
    fn drain(s: &mut Scheduler) -> Vec<Vec<usize>> {
        let mut ran = vec![Vec::new(); s.workers()];
        let mut queue: Vec<VecDeque<usize>> = vec![VecDeque::new(); s.workers()];
        let mut actions = s.start();
        loop {
            for a in actions.drain(..) {
                if let Action::Run(w, v) = a {
                    queue[w].extend(v);
                }
            }
            // Round-robin: each worker completes one test.
            let mut progressed = false;
            for w in 0..s.workers() {
                if let Some(i) = queue[w].pop_front() {
                    ran[w].push(i);
                    actions.extend(s.ran(w, i));
                    progressed = true;
                }
            }
            if !progressed && actions.is_empty() {
                return ran;
            }
        }
    }

    #[test]
    fn load_hands_out_longest_first_and_shuts_everyone_down() {
        let t = ids(&["a", "b", "c", "d", "e"]);
        let dur = [0.1, 5.0, 0.1, 3.0, 0.1];
        let mut s = Scheduler::new(Mode::Load, &t, &[], 2, &|i| dur[i]);
        assert_eq!(
            s.start(),
            vec![Action::Run(0, vec![1, 3]), Action::Run(1, vec![0, 2])]
        );
        let mut s = Scheduler::new(Mode::Load, &t, &[], 2, &|i| dur[i]);
        let ran = drain(&mut s);
        let mut all: Vec<usize> = ran.concat();
        all.sort();
        assert_eq!(all, vec![0, 1, 2, 3, 4]);
        assert!(s.shutdown.iter().all(|&x| x));
    }

    #[test]
    fn each_runs_everything_everywhere() {
        let t = ids(&["a", "b", "c"]);
        let mut s = Scheduler::new(Mode::Each, &t, &[], 3, &|_| 0.0);
        let ran = drain(&mut s);
        assert_eq!(ran, vec![vec![0, 1, 2]; 3]);
    }

    #[test]
    fn loadfile_and_loadscope_keep_units_together() {
        let t = ids(&[
            "f1.py::a",
            "f1.py::b",
            "f2.py::C::x",
            "f2.py::C::y",
            "f2.py::d",
        ]);
        let mut s = Scheduler::new(Mode::Loadfile, &t, &[], 2, &|_| 0.0);
        let ran = drain(&mut s);
        assert!(
            ran.contains(&vec![0, 1]) && ran.contains(&vec![2, 3, 4]),
            "{ran:?}"
        );
        let mut s = Scheduler::new(Mode::Loadscope, &t, &[], 3, &|_| 0.0);
        let ran = drain(&mut s);
        for unit in [vec![0, 1], vec![2, 3]] {
            assert!(
                ran.iter().any(|r| unit.iter().all(|i| r.contains(i))),
                "{ran:?}"
            );
        }
    }

    #[test]
    fn loadgroup_keeps_groups_together() {
        let t = ids(&["t::a", "t::b", "t::c", "t::d"]);
        let g = vec![Some("db".to_owned()), None, Some("db".to_owned()), None];
        let mut s = Scheduler::new(Mode::Loadgroup, &t, &g, 2, &|_| 0.0);
        let ran = drain(&mut s);
        assert!(
            ran.iter().any(|r| r.contains(&0) && r.contains(&2)),
            "{ran:?}"
        );
    }

    #[test]
    fn no_mode_uses_one_worker() {
        let t = ids(&["a", "b"]);
        let mut s = Scheduler::new(Mode::No, &t, &[], 4, &|_| 0.0);
        assert_eq!(s.workers(), 1);
        assert_eq!(drain(&mut s), vec![vec![0, 1]]);
    }

    #[test]
    fn crash_returns_queued_tests_and_reports_the_running_one() {
        let t = ids(&["a", "b", "c", "d"]);
        let mut s = Scheduler::new(Mode::Load, &t, &[], 1, &|_| 0.0);
        assert_eq!(s.start(), vec![Action::Run(0, vec![0, 1])]);
        assert_eq!(s.crashed(0), Some(0));
        assert_eq!(s.restarted(0), vec![Action::Run(0, vec![1, 2])]);
        assert_eq!(
            s.ran(0, 1),
            vec![Action::Run(0, vec![3]), Action::Shutdown(0)]
        );
    }

    #[test]
    fn each_crash_resumes_the_same_workers_list() {
        let t = ids(&["a", "b", "c"]);
        let mut s = Scheduler::new(Mode::Each, &t, &[], 2, &|_| 0.0);
        s.start();
        assert_eq!(s.crashed(1), Some(0));
        assert_eq!(
            s.restarted(1),
            vec![Action::Run(1, vec![1, 2]), Action::Shutdown(1)]
        );
        let (lost, _) = s.abandon(1);
        assert!(lost.is_empty());
    }

    #[test]
    fn work_returned_after_the_others_shut_down_is_stranded_not_lost() {
        let t = ids(&["a", "b", "c", "d"]);
        let mut s = Scheduler::new(Mode::Load, &t, &[], 2, &|_| 0.0);
        s.start();
        // Worker 1 finishes everything it had and is told to shut down.
        s.ran(1, 2);
        s.ran(1, 3);
        assert!(s.shutdown[1]);
        // Worker 0 crashes while running `a`, with `b` queued: `b` has nowhere to go.
        assert_eq!(s.crashed(0), Some(0));
        assert_eq!(s.stranded(), vec![1]);
    }

    #[test]
    fn stop_shuts_every_live_worker_down_and_hands_out_nothing() {
        let t = ids(&["a", "b", "c", "d", "e", "f"]);
        let mut s = Scheduler::new(Mode::Load, &t, &[], 2, &|_| 0.0);
        s.start();
        assert_eq!(s.stop(), vec![Action::Shutdown(0), Action::Shutdown(1)]);
        assert!(s.ran(0, 0).is_empty());
    }

    #[test]
    fn work_is_stranded_only_when_every_worker_is_gone() {
        let t = ids(&["a", "b", "c", "d", "e"]);
        let mut s = Scheduler::new(Mode::Load, &t, &[], 2, &|_| 0.0);
        s.start();
        s.crashed(0);
        assert!(s.stranded().is_empty());
        s.crashed(1);
        let mut left = s.stranded();
        left.sort();
        assert_eq!(left, vec![1, 3, 4]);
    }
}
