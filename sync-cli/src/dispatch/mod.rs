//! Distributed pytest: workers (`worker`), the scheduling policy (`schedule`, pure), the pytest
//! style report (`report`), and the dispatcher loop here: one thread owns the run state and turns
//! events (plugin messages, closed workers, the clock, Ctrl-C) into actions.

pub mod bar;
pub mod junit;
pub mod lastfailed;
pub mod report;
pub mod schedule;
pub mod worker;

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use report::{Platform, Reporter};
use schedule::{Action, Mode, Scheduler};
use worker::{Event, Worker, WorkerMsg, WorkerSpec};

/// Everything a test session needs.
pub struct SessionConfig {
    pub mode: Mode,
    pub workers: Vec<WorkerSpec>,
    pub pytest_args: Vec<String>,
    pub plugin_dir: PathBuf,
    pub run_id: String,
    pub max_restarts: usize,
    pub heartbeat: Duration,
    /// Known test durations from earlier runs, in seconds.
    pub durations: HashMap<String, f64>,
    /// Stop handing out tests after this many failures and errors (`-x`, `--maxfail`); 0: never.
    pub maxfail: usize,
}

/// How a session ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Ending {
    /// Every test ran; `failed` tells whether any failed or errored.
    Ran {
        failed: bool,
    },
    NoTests,
    CollectionErrors,
    CollectionMismatch,
    /// No worker could collect.
    WorkersFailed,
    /// pytest refused its arguments (its own message).
    Usage(String),
    Interrupted,
    /// `-x` / `--maxfail` reached.
    StoppedAfter(usize),
}

/// A finished session.
pub struct SessionResult {
    pub ending: Ending,
    pub collected: usize,
    /// Durations of the tests that ran, for the next run's ordering.
    pub durations: HashMap<String, f64>,
    /// pytest's rootdir on a worker, and its cache directory relative to it.
    pub cache_dir: Option<(String, String)>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum State {
    Collecting,
    /// Collected, waiting for the others.
    Ready,
    Running,
    Done,
    Dead,
}

struct Slot {
    worker: Option<Worker>,
    state: State,
    restarts: usize,
    last_seen: Instant,
    ids: Option<Vec<String>>,
    groups: Vec<Option<String>>,
    /// Set while a replacement collects: it joins the running schedule when ready.
    replacement: bool,
    /// How the worker process ended, once it did.
    exit: Option<(Option<i32>, String)>,
    /// The current process has sent something.
    heard: bool,
}

/// The least time a worker gets to send its first message.
const STARTUP: Duration = Duration::from_secs(60);

/// Runs a test session on `cfg.workers`, reporting through `rep`. `stop` is raised by Ctrl-C.
pub fn run_session(cfg: &SessionConfig, rep: &mut Reporter, stop: &AtomicBool) -> SessionResult {
    let n = cfg.workers.len();
    let (tx, rx) = mpsc::channel::<Event>();
    let spawn = |w: usize| {
        Worker::spawn(
            w,
            n,
            &cfg.workers[w],
            &cfg.run_id,
            &cfg.plugin_dir,
            &cfg.pytest_args,
            tx.clone(),
        )
    };
    let mut slots: Vec<Slot> = (0..n)
        .map(|w| {
            let (worker, state) = match spawn(w) {
                Ok(wk) => (Some(wk), State::Collecting),
                Err(e) => {
                    rep.line(&format!(
                        "[gw{w}] cannot start `{}`: {e}",
                        cfg.workers[w].python
                    ));
                    (None, State::Dead)
                }
            };
            Slot {
                worker,
                state,
                restarts: 0,
                last_seen: Instant::now(),
                ids: None,
                groups: Vec::new(),
                replacement: false,
                exit: None,
                heard: false,
            }
        })
        .collect();
    let mut collect_errors: Vec<(usize, String, String)> = Vec::new();
    let mut sched: Option<Scheduler> = None;
    let mut ids: Vec<String> = Vec::new();
    let mut durations: HashMap<String, f64> = HashMap::new();
    let mut cache_dir: Option<(String, String)> = None;
    let mut interrupted = false;
    let mut stopped_after: Option<usize> = None;

    let mut leftover_spawns = 0;
    loop {
        if slots
            .iter()
            .all(|s| matches!(s.state, State::Done | State::Dead))
        {
            // Work a crash returned after the others had finished: a fresh worker takes it, in
            // a slot whose old process is fully gone (its last event seen).
            let leftovers = sched.as_ref().is_some_and(|s| !s.stranded().is_empty())
                && !interrupted
                && stopped_after.is_none()
                && leftover_spawns < n * 2;
            if !leftovers {
                break;
            }
            match slots
                .iter()
                .position(|s| s.state == State::Done && s.exit.is_some())
            {
                Some(w) => match spawn(w) {
                    Ok(wk) => {
                        leftover_spawns += 1;
                        let slot = &mut slots[w];
                        slot.worker = Some(wk);
                        slot.state = State::Collecting;
                        slot.replacement = true;
                        slot.exit = None;
                        slot.heard = false;
                        slot.last_seen = Instant::now();
                        continue;
                    }
                    Err(_) => break,
                },
                // Wait for a finished worker's process to be reaped.
                None if slots.iter().any(|s| s.state == State::Done) => {}
                None => break,
            }
        }
        if stop.load(Ordering::Relaxed) {
            interrupted = true;
            for s in &mut slots {
                if let Some(wk) = &mut s.worker {
                    wk.kill();
                }
            }
            break;
        }
        // Output is flushed whenever the dispatcher has caught up, not once per test.
        let next = match rx.try_recv() {
            Ok(ev) => Ok(ev),
            Err(mpsc::TryRecvError::Empty) => {
                rep.flush();
                rx.recv_timeout(Duration::from_millis(200))
            }
            Err(mpsc::TryRecvError::Disconnected) => Err(mpsc::RecvTimeoutError::Disconnected),
        };
        let ev = match next {
            Ok(ev) => ev,
            Err(mpsc::RecvTimeoutError::Timeout) => {
                let now = Instant::now();
                for (w, s) in slots.iter_mut().enumerate() {
                    // Until a worker's first message (interpreter and pytest starting on a busy
                    // machine), it gets at least a minute.
                    let limit = if s.heard {
                        cfg.heartbeat
                    } else {
                        cfg.heartbeat.max(STARTUP)
                    };
                    if matches!(s.state, State::Running | State::Collecting | State::Ready)
                        && now.duration_since(s.last_seen) > limit
                        && let Some(wk) = &mut s.worker
                    {
                        rep.line(&format!(
                            "[gw{w}] no sign of life for {:.0} s: stopping it",
                            cfg.heartbeat.as_secs_f64()
                        ));
                        wk.kill();
                        s.last_seen = now;
                    }
                }
                continue;
            }
            Err(mpsc::RecvTimeoutError::Disconnected) => break,
        };
        let w = match &ev {
            Event::Msg(w, _) | Event::Garbage(w, _) | Event::Closed(w) => *w,
        };
        slots[w].last_seen = Instant::now();
        slots[w].heard = true;
        match ev {
            Event::Msg(_, WorkerMsg::Beat) => {}
            Event::Garbage(_, _) => {}
            Event::Msg(
                _,
                WorkerMsg::Collected {
                    ids: got,
                    groups,
                    platform,
                    python,
                    implementation,
                    executable,
                    rootdir,
                    cache_dir: reported,
                },
            ) => {
                if cache_dir.is_none() {
                    cache_dir = reported.map(|rel| (rootdir, rel));
                }
                rep.platforms.insert(
                    w,
                    Platform {
                        platform,
                        python,
                        implementation,
                        executable,
                    },
                );
                let slot = &mut slots[w];
                slot.ids = Some(got);
                slot.groups = groups;
                if !slot.replacement {
                    slot.state = State::Ready;
                } else {
                    // A replacement must see the same tests as the worker it replaces.
                    if slot.ids.as_ref() != Some(&ids) && cfg.mode != Mode::Each {
                        rep.line(&format!(
                            "[gw{w}] replacement collected different tests; not using it"
                        ));
                        if let Some(wk) = &mut slot.worker {
                            wk.kill();
                        }
                        slot.state = State::Dead;
                    } else {
                        slot.replacement = false;
                        slot.state = State::Running;
                        if let Some(s) = &mut sched {
                            let actions = s.restarted(w);
                            apply(&mut slots, actions);
                        }
                    }
                    continue;
                }
            }
            Event::Msg(_, WorkerMsg::CollectError { nodeid, longrepr }) => {
                collect_errors.push((w, nodeid, longrepr));
            }
            Event::Msg(_, WorkerMsg::Report(r)) => {
                take_report(cfg, rep, w, &r, &mut stopped_after, &mut sched, &mut slots);
            }
            Event::Msg(
                _,
                WorkerMsg::Ran {
                    index,
                    seconds,
                    reports,
                },
            ) => {
                let id = slots[w]
                    .ids
                    .as_ref()
                    .and_then(|v| v.get(index))
                    .or(ids.get(index))
                    .cloned();
                for mut r in reports {
                    if r.nodeid.is_empty()
                        && let Some(id) = &id
                    {
                        r.nodeid.clone_from(id);
                    }
                    take_report(cfg, rep, w, &r, &mut stopped_after, &mut sched, &mut slots);
                }
                if let Some(id) = id {
                    durations.insert(id, seconds);
                }
                if let Some(s) = &mut sched {
                    s.observed(seconds);
                    let actions = s.ran(w, index);
                    apply(&mut slots, actions);
                }
            }
            Event::Msg(_, WorkerMsg::Warning { when, nodeid, text }) => {
                rep.warning(&when, &nodeid, &text);
            }
            Event::Msg(_, WorkerMsg::Done { .. }) => {
                slots[w].state = State::Done;
            }
            Event::Closed(_) => {
                let slot = &mut slots[w];
                let code = slot.worker.as_mut().and_then(Worker::wait);
                let tail = slot
                    .worker
                    .as_ref()
                    .map(Worker::stderr_text)
                    .unwrap_or_default();
                slot.exit = Some((code, tail.clone()));
                if matches!(slot.state, State::Done | State::Dead) {
                    continue;
                }
                let was = slot.state;
                slot.state = State::Dead;
                let why = match code {
                    Some(c) => format!("exit code {c}"),
                    None => "killed by a signal".to_owned(),
                };
                if matches!(was, State::Collecting | State::Ready) && sched.is_none() {
                    rep.line(&format!(
                        "[gw{w}] exited before collecting ({why}): {}",
                        last_lines(&tail, 5)
                    ));
                    continue;
                }
                // A crash mid-run: blame the running test, hand the rest on, maybe restart.
                if let Some(s) = &mut sched
                    && let Some(i) = s.crashed(w)
                {
                    let text = format!(
                        "worker gw{w} crashed while running this test ({why})\n{}",
                        last_lines(&tail, 20)
                    );
                    rep.crashed(w, &ids[i], &text);
                }
                if slots[w].restarts < cfg.max_restarts {
                    slots[w].restarts += 1;
                    rep.line(&format!(
                        "[gw{w}] restarting worker ({} of {})",
                        slots[w].restarts, cfg.max_restarts
                    ));
                    match spawn(w) {
                        Ok(wk) => {
                            slots[w].worker = Some(wk);
                            slots[w].state = State::Collecting;
                            slots[w].replacement = true;
                            slots[w].heard = false;
                            slots[w].exit = None;
                            slots[w].last_seen = Instant::now();
                        }
                        Err(e) => rep.line(&format!("[gw{w}] cannot restart: {e}")),
                    }
                } else if let Some(s) = &mut sched {
                    rep.line(&format!(
                        "[gw{w}] crashed too often; not restarting (--max-worker-restart {})",
                        cfg.max_restarts
                    ));
                    let (lost, actions) = s.abandon(w);
                    for i in lost {
                        rep.crashed(w, &ids[i], "not run: its worker crashed too often");
                    }
                    apply(&mut slots, actions);
                }
            }
        }
        // Start the schedule once every worker that is alive has collected.
        if sched.is_none() && !slots.iter().any(|s| s.state == State::Collecting) {
            let ready: Vec<usize> = (0..n)
                .filter(|&w| slots[w].ids.is_some() && slots[w].state != State::Dead)
                .collect();
            if !collect_errors.is_empty() {
                for (w, nodeid, text) in &collect_errors {
                    rep.collect_error(*w, nodeid, text);
                }
                print_collect_errors(rep, &collect_errors);
                rep.flush();
                stop_all(&mut slots);
                return SessionResult {
                    ending: Ending::CollectionErrors,
                    collected: 0,
                    durations,
                    cache_dir,
                };
            }
            if ready.is_empty() {
                let ending = match usage_error(&slots) {
                    Some(msg) => Ending::Usage(msg),
                    None => Ending::WorkersFailed,
                };
                return SessionResult {
                    ending,
                    collected: 0,
                    durations,
                    cache_dir,
                };
            }
            let first = ready[0];
            ids = slots[first].ids.clone().unwrap_or_default();
            if cfg.mode != Mode::Each
                && let Some(&other) = ready.iter().find(|&&w| slots[w].ids.as_ref() != Some(&ids))
            {
                print_mismatch(
                    rep,
                    first,
                    &ids,
                    other,
                    slots[other].ids.as_deref().unwrap_or(&[]),
                );
                rep.flush();
                stop_all(&mut slots);
                return SessionResult {
                    ending: Ending::CollectionMismatch,
                    collected: ids.len(),
                    durations,
                    cache_dir,
                };
            }
            rep.line(&format!("{} workers [{} items]", ready.len(), ids.len()));
            if ids.is_empty() {
                rep.flush();
                stop_all(&mut slots);
                // pytest reports bad arguments (a test path that does not exist) after an empty
                // collection, and exits 4.
                let ending = match usage_error(&slots) {
                    Some(msg) => Ending::Usage(msg),
                    None => Ending::NoTests,
                };
                return SessionResult {
                    ending,
                    collected: 0,
                    durations,
                    cache_dir,
                };
            }
            let known: Vec<f64> = ids
                .iter()
                .filter_map(|id| cfg.durations.get(id).copied())
                .collect();
            let mean = if known.is_empty() {
                0.0
            } else {
                known.iter().sum::<f64>() / known.len() as f64
            };
            let order = |i: usize| cfg.durations.get(&ids[i]).copied().unwrap_or(mean);
            let groups = slots[first].groups.clone();
            let mut s = Scheduler::new(cfg.mode, &ids, &groups, n, &order);
            let live = (0..s.workers())
                .filter(|&w| slots[w].state != State::Dead)
                .count();
            rep.set_total(if cfg.mode == Mode::Each {
                ids.len() * live
            } else {
                ids.len()
            });
            for (w, slot) in slots.iter_mut().enumerate() {
                if slot.state == State::Dead {
                    // Never collected: its share goes to the others.
                    if w < s.workers() {
                        s.crashed(w);
                        let _ = s.abandon(w);
                    }
                } else if w >= s.workers() {
                    // `--dist no` uses one worker; the others have nothing to do.
                    if let Some(wk) = &mut slot.worker {
                        wk.shutdown();
                    }
                } else {
                    slot.state = State::Running;
                }
            }
            let actions = s.start();
            apply(&mut slots, actions);
            sched = Some(s);
        }
    }
    if let Some(s) = &sched {
        for i in s.stranded() {
            rep.crashed(0, &ids[i], "not run: no worker left to run it");
        }
    }
    // The last results show while the workers finish their sessions and exit.
    rep.flush();
    let deadline = Instant::now() + worker::EXIT_WAIT;
    for s in &mut slots {
        if let Some(wk) = &mut s.worker {
            if interrupted {
                wk.kill();
            }
            wk.wait_until(deadline);
        }
    }
    let ending = if interrupted {
        Ending::Interrupted
    } else if let Some(n) = stopped_after {
        Ending::StoppedAfter(n)
    } else if sched.is_none() {
        match usage_error(&slots) {
            Some(msg) => Ending::Usage(msg),
            None => Ending::WorkersFailed,
        }
    } else {
        let c = rep.counts();
        Ending::Ran {
            failed: c.get("failed").copied().unwrap_or(0) + c.get("error").copied().unwrap_or(0)
                > 0,
        }
    };
    SessionResult {
        ending,
        collected: ids.len(),
        durations,
        cache_dir,
    }
}

fn apply(slots: &mut [Slot], actions: Vec<Action>) {
    for a in actions {
        match a {
            Action::Run(w, v) => {
                if let Some(wk) = &mut slots[w].worker {
                    wk.run(&v);
                }
            }
            Action::Shutdown(w) => {
                if let Some(wk) = &mut slots[w].worker {
                    wk.shutdown();
                }
            }
            Action::Stop(w) => {
                if let Some(wk) = &mut slots[w].worker {
                    wk.stop();
                }
            }
        }
    }
}

/// One phase report: printed, counted, and `-x`/`--maxfail` applied.
fn take_report(
    cfg: &SessionConfig,
    rep: &mut Reporter,
    w: usize,
    r: &worker::TestReport,
    stopped_after: &mut Option<usize>,
    sched: &mut Option<Scheduler>,
    slots: &mut [Slot],
) {
    rep.report(w, r);
    if cfg.maxfail > 0 && stopped_after.is_none() {
        let bad = rep.bad();
        if bad >= cfg.maxfail {
            *stopped_after = Some(bad);
            if let Some(s) = sched {
                let actions = s.stop();
                apply(slots, actions);
            }
        }
    }
}

fn stop_all(slots: &mut [Slot]) {
    let deadline = Instant::now() + worker::EXIT_WAIT;
    for s in slots {
        if let Some(wk) = &mut s.worker
            && s.exit.is_none()
        {
            wk.shutdown();
            let code = wk.wait_until(deadline);
            s.exit = Some((code, wk.stderr_text()));
        }
        s.state = State::Done;
    }
}

/// pytest's own usage error (exit code 4 and its `ERROR:` lines), if every worker that ended
/// ended with one.
fn usage_error(slots: &[Slot]) -> Option<String> {
    let exits: Vec<&(Option<i32>, String)> = slots.iter().filter_map(|s| s.exit.as_ref()).collect();
    if exits.is_empty() || !exits.iter().all(|(code, _)| *code == Some(4)) {
        return None;
    }
    let lines: Vec<&str> = exits[0]
        .1
        .lines()
        .filter(|l| l.starts_with("ERROR:") || l.contains("error:"))
        .collect();
    Some(if lines.is_empty() {
        last_lines(&exits[0].1, 3)
    } else {
        lines.join("\n")
    })
}

fn last_lines(text: &str, n: usize) -> String {
    let lines: Vec<&str> = text.lines().collect();
    lines[lines.len().saturating_sub(n)..].join("\n")
}

fn print_collect_errors(rep: &mut Reporter, errors: &[(usize, String, String)]) {
    rep.line(&report::rule('=', "ERRORS", 80));
    let mut seen = std::collections::HashSet::new();
    for (w, nodeid, text) in errors {
        if !seen.insert((nodeid.clone(), text.clone())) {
            continue;
        }
        rep.line(&report::rule(
            '_',
            &format!("ERROR collecting {nodeid}"),
            80,
        ));
        rep.line(&rep.worker_line(*w));
        rep.line(text.trim_end());
    }
}

/// xdist's diagnostic: which workers differ, and the first ids that differ.
fn print_mismatch(rep: &mut Reporter, a: usize, ids_a: &[String], b: usize, ids_b: &[String]) {
    rep.line(&format!(
        "Different tests were collected between gw{a} and gw{b}. The difference is:"
    ));
    let only_a: Vec<&String> = ids_a
        .iter()
        .filter(|i| !ids_b.contains(i))
        .take(10)
        .collect();
    let only_b: Vec<&String> = ids_b
        .iter()
        .filter(|i| !ids_a.contains(i))
        .take(10)
        .collect();
    for i in &only_a {
        rep.line(&format!("--- gw{a}: {i}"));
    }
    for i in &only_b {
        rep.line(&format!("+++ gw{b}: {i}"));
    }
    if only_a.is_empty() && only_b.is_empty() {
        let k = ids_a
            .iter()
            .zip(ids_b)
            .position(|(x, y)| x != y)
            .unwrap_or(0);
        rep.line(&format!(
            "same tests in another order; first difference at item {k}"
        ));
    }
}
