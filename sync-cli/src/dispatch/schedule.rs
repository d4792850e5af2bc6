//! The scheduling policy: which test indices go to which worker, and when a worker is told to
//! shut down. A pure state machine fed with events (started, ran, crashed, restarted), returning
//! actions; the dispatcher owns the processes and the I/O.
//!
//! A worker runs a test only once it knows the next one (so module and class fixtures tear down
//! at the right moment) or has been told to shut down, so every live worker is kept at least at
//! [`PREFETCH`] queued tests while there is work, and is sent `Shutdown` once there is none.
//!
//! Tests go out in chunks, as xdist's do, so that a worker never waits for the controller's
//! answer between two quick tests and the controller sends one message per chunk, not per test:
//! a worker's queue is filled up to its share, a quarter of the remaining tests per worker
//! ([`target`], at most [`MAX_CHUNK`], at least [`PREFETCH`]), and refilled once half of it has
//! run. Shares shrink as the work runs out, so the last tests are still spread evenly
//! (guided self-scheduling). A queue also holds at most [`QUEUE_TIME`] of expected work (known
//! durations, or the mean of the tests run so far): a worker cannot give queued tests back, so
//! when the others run out of work, what it still has queued decides the end of the run. `each`
//! has nothing to balance and always uses the largest chunk.

use std::collections::{HashMap, VecDeque};

/// The fewest tests a worker with work left has queued: the one running and the next (known
/// before the running one ends, for the fixtures' teardown).
pub const PREFETCH: usize = 2;

/// The most expected work (seconds) queued on one worker, beyond [`PREFETCH`] tests.
pub const QUEUE_TIME: f64 = 0.05;

/// The most tests queued on one worker.
pub const MAX_CHUNK: usize = 64;

/// How many tests a worker's queue is filled up to, with `remaining` tests not handed out yet,
/// `live` workers taking them, and `per_test` seconds expected for each of the next ones (0:
/// unknown).
pub fn target(remaining: usize, live: usize, per_test: f64) -> usize {
    let share = remaining.div_ceil(2 * live.max(1));
    // One more than the time allows, so that short tests never wait for a refill.
    let by_time = if per_test > 0.0 {
        (QUEUE_TIME / per_test).ceil() as usize + 1
    } else {
        MAX_CHUNK
    };
    share.min(by_time).clamp(PREFETCH, MAX_CHUNK)
}

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
    /// Nothing more is coming: run what is queued, then exit.
    Shutdown(usize),
    /// Drop what is queued, then exit (`-x`/`--maxfail` reached).
    Stop(usize),
}

/// The scheduler's state.
#[derive(Debug)]
pub struct Scheduler {
    mode: Mode,
    /// Work not yet handed out: units of tests that go to one worker together.
    shared: VecDeque<Vec<usize>>,
    /// How many tests `shared` holds.
    shared_tests: usize,
    /// `each`: every worker's own remaining tests.
    own: Vec<VecDeque<usize>>,
    in_flight: Vec<VecDeque<usize>>,
    shutdown: Vec<bool>,
    alive: Vec<bool>,
    /// Expected seconds of each test (0: unknown).
    cost: Vec<f64>,
    /// Seconds and count of the tests run so far, for tests of unknown duration.
    observed: (f64, usize),
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
    /// gives each test's expected seconds (0: unknown), and ranks tests: higher first; ties keep
    /// collection order.
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
            cost: (0..ids.len()).map(order).collect(),
            observed: (0.0, 0),
            shared_tests: shared.iter().map(Vec::len).sum(),
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
        self.deal()
    }

    /// A test took `seconds`: the estimate for tests of unknown duration.
    pub fn observed(&mut self, seconds: f64) {
        self.observed.0 += seconds.max(0.0);
        self.observed.1 += 1;
    }

    /// Expected seconds per test of the next unit to hand out (0: unknown).
    fn next_cost(&self) -> f64 {
        let known = self.shared.front().map_or(0.0, |u| {
            u.iter().map(|&i| self.cost[i]).sum::<f64>() / u.len().max(1) as f64
        });
        match self.observed {
            _ if known > 0.0 => known,
            (sum, n) if n > 0 => sum / n as f64,
            _ => 0.0,
        }
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
            self.shared_tests += queued.len();
            if matches!(self.mode, Mode::Load | Mode::Worksteal) {
                // Single tests again, so they spread over the workers left.
                for i in queued.into_iter().rev() {
                    self.shared.push_front(vec![i]);
                }
            } else {
                self.shared.push_front(queued.into_iter().collect());
            }
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

    /// Hands out nothing more and drops what is queued (`-x`/`--maxfail` reached); returns the
    /// stops to send, to every live worker with tests queued or not yet told to shut down.
    pub fn stop(&mut self) -> Vec<Action> {
        self.shared.clear();
        self.shared_tests = 0;
        for q in &mut self.own {
            q.clear();
        }
        let mut actions = Vec::new();
        for w in 0..self.workers() {
            if self.alive[w] && (!self.shutdown[w] || !self.in_flight[w].is_empty()) {
                self.shutdown[w] = true;
                actions.push(Action::Stop(w));
            }
        }
        actions
    }

    /// How many tests a worker's queue is filled up to now.
    fn want(&self) -> usize {
        if self.mode == Mode::Each {
            return MAX_CHUNK;
        }
        let live = (0..self.workers())
            .filter(|&k| self.alive[k] && !self.shutdown[k])
            .count();
        target(self.shared_tests, live, self.next_cost())
    }

    /// Moves the next unit of work into worker `w`'s queue; returns it.
    fn take(&mut self, w: usize) -> Option<Vec<usize>> {
        let unit = if self.mode == Mode::Each {
            vec![self.own[w].pop_front()?]
        } else {
            let unit = self.shared.pop_front()?;
            self.shared_tests -= unit.len();
            unit
        };
        self.in_flight[w].extend(unit.iter().copied());
        Some(unit)
    }

    /// Whether work is left for worker `w`.
    fn more(&self, w: usize) -> bool {
        if self.mode == Mode::Each {
            !self.own[w].is_empty()
        } else {
            !self.shared.is_empty()
        }
    }

    /// `Run` for what `w` was given, `Shutdown` if nothing is left for it.
    fn actions(&mut self, w: usize, give: Vec<usize>) -> Vec<Action> {
        let mut actions = Vec::new();
        if !give.is_empty() {
            actions.push(Action::Run(w, give));
        }
        if !self.more(w) {
            self.shutdown[w] = true;
            actions.push(Action::Shutdown(w));
        }
        actions
    }

    /// The first hand-out: units dealt one at a time to each worker in turn (so that the longest
    /// tests go to different workers) until every queue has its share.
    fn deal(&mut self) -> Vec<Action> {
        let n = self.workers();
        let mut give = vec![Vec::new(); n];
        loop {
            let mut dealt = false;
            for (w, g) in give.iter_mut().enumerate() {
                if self.alive[w]
                    && !self.shutdown[w]
                    && self.in_flight[w].len() < self.want()
                    && let Some(unit) = self.take(w)
                {
                    g.extend(unit);
                    dealt = true;
                }
            }
            if !dealt {
                break;
            }
        }
        let mut actions = Vec::new();
        for (w, g) in give.into_iter().enumerate() {
            if self.alive[w] && !self.shutdown[w] {
                actions.extend(self.actions(w, g));
            }
        }
        actions
    }

    fn top_up(&mut self, w: usize) -> Vec<Action> {
        if !self.alive[w] || self.shutdown[w] {
            return Vec::new();
        }
        let want = self.want();
        let mut give = Vec::new();
        // Refill once half the queue has run (one message per half chunk), and while the worker
        // still has a test to go on with after the one it is running.
        if self.in_flight[w].len() < (want / 2).max(PREFETCH + 1) {
            while self.in_flight[w].len() < want {
                match self.take(w) {
                    Some(unit) => give.extend(unit),
                    None => break,
                }
            }
        }
        self.actions(w, give)
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
        drain_counting(s).0
    }

    /// As `drain`, also counting the `Run` messages sent.
    fn drain_counting(s: &mut Scheduler) -> (Vec<Vec<usize>>, usize) {
        let mut ran = vec![Vec::new(); s.workers()];
        let mut queue: Vec<VecDeque<usize>> = vec![VecDeque::new(); s.workers()];
        let mut actions = s.start();
        let mut runs = 0;
        loop {
            for a in actions.drain(..) {
                if let Action::Run(w, v) = a {
                    runs += 1;
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
                return (ran, runs);
            }
        }
    }

    #[test]
    fn load_hands_out_longest_first_and_shuts_everyone_down() {
        let t = ids(&["a", "b", "c", "d", "e"]);
        let dur = [0.1, 5.0, 0.1, 3.0, 0.1];
        let mut s = Scheduler::new(Mode::Load, &t, &[], 2, &|i| dur[i]);
        // The two longest tests go to different workers.
        assert_eq!(
            s.start(),
            vec![Action::Run(0, vec![1, 0]), Action::Run(1, vec![3, 2])]
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
        // Dealt: `a`, `c` to worker 0 and `b`, `d` to worker 1; both told to shut down. Worker 1
        // finishes everything it had.
        s.ran(1, 1);
        s.ran(1, 3);
        assert!(s.shutdown[1]);
        // Worker 0 crashes while running `a`, with `c` queued: `c` has nowhere to go.
        assert_eq!(s.crashed(0), Some(0));
        assert_eq!(s.stranded(), vec![2]);
    }

    #[test]
    fn stop_reaches_every_live_worker_with_work_and_hands_out_nothing() {
        let t = ids(&["a", "b", "c", "d", "e", "f"]);
        let mut s = Scheduler::new(Mode::Load, &t, &[], 2, &|_| 0.0);
        s.start();
        assert_eq!(s.stop(), vec![Action::Stop(0), Action::Stop(1)]);
        assert!(s.ran(0, 0).is_empty());
        // Told to shut down already, but still with tests queued: stopped too.
        let t = ids(&["a", "b", "c", "d"]);
        let mut s = Scheduler::new(Mode::Load, &t, &[], 2, &|_| 0.0);
        assert_eq!(
            s.start(),
            vec![
                Action::Run(0, vec![0, 2]),
                Action::Shutdown(0),
                Action::Run(1, vec![1, 3]),
                Action::Shutdown(1)
            ]
        );
        s.ran(1, 1);
        s.ran(1, 3);
        assert_eq!(s.stop(), vec![Action::Stop(0)]);
    }

    #[test]
    fn share_is_a_quarter_of_the_rest_per_worker_within_count_and_time_bounds() {
        // (tests left, live workers, expected seconds per test, queue size)
        for (remaining, live, per_test, want) in [
            (0, 2, 0.0, PREFETCH),
            (5, 2, 0.0, PREFETCH),
            (100, 2, 0.0, 25),
            (101, 2, 0.0, 26),
            (2000, 2, 0.0, MAX_CHUNK),
            (10, 0, 0.0, 5),
            // At most QUEUE_TIME of expected work, and never fewer than PREFETCH tests.
            (2000, 2, 0.0005, MAX_CHUNK),
            (2000, 2, 0.001, 51),
            (2000, 2, 0.02, 4),
            (200, 2, 0.4, PREFETCH),
        ] {
            assert_eq!(
                target(remaining, live, per_test),
                want,
                "{remaining} tests, {live} workers, {per_test} s each"
            );
        }
    }

    #[test]
    fn quick_tests_go_out_in_chunks_refilled_at_half() {
        let t: Vec<String> = (0..1000).map(|i| format!("t{i}")).collect();
        let mut s = Scheduler::new(Mode::Load, &t, &[], 2, &|_| 0.0);
        let first = s.start();
        assert!(
            matches!(&first[..], [Action::Run(0, a), Action::Run(1, b)] if a.len() == MAX_CHUNK && b.len() == MAX_CHUNK),
            "{first:?}"
        );
        let Action::Run(0, given) = &first[0] else {
            unreachable!()
        };
        // Nothing more until half the chunk has run, then a top-up to the full share.
        for &i in &given[..MAX_CHUNK / 2] {
            assert!(s.ran(0, i).is_empty());
        }
        let refill = s.ran(0, given[MAX_CHUNK / 2]);
        assert!(
            matches!(&refill[..], [Action::Run(0, v)] if v.len() == MAX_CHUNK / 2 + 1),
            "{refill:?}"
        );
        // A whole run takes a few dozen messages, not one per test.
        let mut s = Scheduler::new(Mode::Load, &t, &[], 2, &|_| 0.0);
        let (ran, runs) = drain_counting(&mut s);
        assert_eq!(ran.concat().len(), 1000);
        assert!(runs < 80, "{runs} run messages");
    }

    #[test]
    fn the_last_tests_go_out_in_small_chunks() {
        let t: Vec<String> = (0..20).map(|i| format!("t{i}")).collect();
        let mut s = Scheduler::new(Mode::Load, &t, &[], 2, &|_| 0.0);
        let sizes: Vec<usize> = s
            .start()
            .iter()
            .filter_map(|a| match a {
                Action::Run(_, v) => Some(v.len()),
                Action::Shutdown(_) | Action::Stop(_) => None,
            })
            .collect();
        // 20 tests dealt one at a time to each worker in turn, while a worker has fewer than a
        // quarter of the tests left per worker: 4 each.
        assert_eq!(sizes, vec![4, 4]);
    }

    #[test]
    fn a_crashed_workers_queue_is_spread_again_in_load_mode() {
        let t: Vec<String> = (0..200).map(|i| format!("t{i}")).collect();
        let mut s = Scheduler::new(Mode::Load, &t, &[], 2, &|_| 0.0);
        s.start();
        // Dealt in turn: worker 0 has the even tests queued, worker 1 the odd ones. Worker 0
        // dies running test 0.
        let mine = s.in_flight[1].clone();
        let returned = s.in_flight[0].len() - 1;
        let units = s.shared.len();
        assert_eq!(s.crashed(0), Some(0));
        // Back as single tests, not as one block that would go to one worker whole.
        assert_eq!(s.shared.len(), units + returned);
        // Worker 1 runs down to its refill point and then takes the returned tests first.
        let refill = mine
            .iter()
            .map(|&i| s.ran(1, i))
            .find(|a| !a.is_empty())
            .expect("a refill");
        let [Action::Run(1, v)] = &refill[..] else {
            panic!("{refill:?}")
        };
        assert_eq!(v[..3], [2, 4, 6]);
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
        assert_eq!(left, vec![2, 3, 4]);
    }
}
