//! The command line, as clap types. Doc comments are the help text. Commands turn these into
//! `Settings` before any work starts; engines never see clap types.

use std::path::PathBuf;

use clap::parser::ValueSource;
use clap::{ArgMatches, Args, Parser, Subcommand, ValueEnum};

pub mod interleaved;

/// Mirror Python source trees to test workers and run pytest there: the replacement for
/// pytest-xdist's `--rsyncdir` / `--tx`.
#[derive(Debug, Parser)]
#[command(
    name = "rdist",
    version,
    propagate_version = true,
    max_term_width = 100
)]
pub struct Cli {
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Mirror the sync roots into every worker's directory.
    Sync(SyncArgs),
    /// Pre-flight checks on every worker host: reachability, Python, pytest and plugins,
    /// package drift, disk, clock, and the project's test layout (same options as `run`).
    Check(CheckArgs),
    /// Sync, then run pytest on the workers and report like pytest (unknown arguments go to
    /// pytest: `rdist run -n 4 -k slow tests/`).
    Run(RunArgs),
    /// Serve one side of the sync protocol on stdin/stdout (what the controller starts on a
    /// worker host).
    Agent(AgentArgs),
    /// Accept `socket=HOST:PORT` workers over TCP: the replacement for execnet's socketserver,
    /// with token authentication and one confined directory per session.
    Serve(ServeArgs),
    /// Translate pytest-xdist's rsync settings (`rsyncdirs`, `rsyncignore`, `--tx`, ... in the
    /// pytest config, `PYTEST_ADDOPTS` or a command line) to rdist: a preview by default.
    Migrate(MigrateArgs),
}

impl Command {
    /// Records which shared options `matches` (this subcommand's) got from the command line or
    /// the environment rather than from their defaults: those the configuration file does not
    /// override.
    pub fn note_explicit(&mut self, matches: &ArgMatches) {
        let common = match self {
            Command::Sync(a) => &mut a.common,
            Command::Run(a) => &mut a.common,
            Command::Check(a) => &mut a.run.common,
            _ => return,
        };
        common.explicit = matches
            .ids()
            .filter(|id| {
                matches!(
                    matches.value_source(id.as_str()),
                    Some(ValueSource::CommandLine | ValueSource::EnvVariable)
                )
            })
            .map(|id| id.as_str().to_owned())
            .collect();
    }
}

#[derive(Debug, Args)]
pub struct MigrateArgs {
    /// A pytest command line to translate as well, as shell text (from a CI script):
    /// `--command 'pytest -d --tx ssh=host --rsyncdir src tests'`.
    #[arg(long, value_name = "COMMAND")]
    pub command: Option<String>,

    /// Write `rdist.toml` next to the pytest config file (refused if a different one exists)
    /// and edit the legacy config file, all or nothing.
    #[arg(long, conflicts_with = "check")]
    pub write: bool,

    /// Where rdist's settings go: `rdist.toml`, or `[tool.rdist]` tables at the end of the
    /// project's `pyproject.toml`.
    #[arg(long, value_enum, value_name = "FILE", default_value = "rdist-toml")]
    pub into: ConfigTarget,

    /// List the legacy rsync settings that remain and exit 1 if there are any (for CI).
    #[arg(long)]
    pub check: bool,

    /// Print the migration as JSON on stdout.
    #[arg(long)]
    pub json: bool,
}

#[derive(Debug, Args)]
pub struct ServeArgs {
    /// Address to listen on. Loopback by default; anything else is reachable by others.
    #[arg(long, value_name = "HOST:PORT", default_value = "127.0.0.1:8888")]
    pub listen: String,

    /// Directory under which every session gets its own directory.
    #[arg(long, value_name = "DIR", default_value_os_t = crate::commands::serve::default_root())]
    pub root: PathBuf,

    /// File holding the shared token (created with a new token if missing). Without it,
    /// `RDIST_TOKEN` is used, else a token is generated and printed once.
    #[arg(long, value_name = "FILE")]
    pub token_file: Option<PathBuf>,

    /// Sessions served at once; more are refused.
    #[arg(long, value_name = "N", default_value_t = 64)]
    pub max_sessions: usize,
}

/// Where `rdist migrate` writes rdist's settings.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum ConfigTarget {
    /// `rdist.toml` in the project root.
    RdistToml,
    /// `[tool.rdist.sync]` / `[tool.rdist.run]` in the project root's `pyproject.toml`.
    Pyproject,
}

/// How roots are placed in the worker directory.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum Layout {
    /// At their path relative to the project root, so test ids match the local ones.
    Rdist,
    /// At `<chdir>/<basename(root)>`, as pytest-xdist placed them.
    Xdist,
}

/// Options `rdist sync`, `rdist run` and `rdist check` share. A list given on the command line
/// replaces the configuration file's list (as pytest's `-o` does); other options override it.
#[derive(Debug, Clone, Args)]
pub struct CommonArgs {
    /// A directory (or file) to mirror; repeatable; replaces `roots` of `rdist.toml`. Relative
    /// to the current directory and inside the project root. `rdist run` syncs the whole
    /// project root by default.
    #[arg(long = "rsyncdir", value_name = "DIR", help_heading = "What to sync")]
    pub rsyncdir: Vec<PathBuf>,

    /// Leave out entries matching GLOB; repeatable; replaces `ignore` of `rdist.toml`. A
    /// pattern without `/` matches a name at any depth (`*.log`, `build`); one with `/` matches
    /// the path from the project root (`pkg/data`, `docs/**/*.png`). A trailing `/` matches
    /// directories only. `.*`, `*.pyc`, `*.pyo` and `*~` are always ignored. Ignored names that
    /// exist only on a worker (a `.venv`) are never deleted there.
    #[arg(
        long = "rsyncignore",
        value_name = "GLOB",
        help_heading = "What to sync"
    )]
    pub rsyncignore: Vec<String>,

    /// A worker, as an xdist spec; repeatable; replaces `tx` of `rdist.toml`.
    /// `popen//chdir=DIR` (a local directory), `ssh=HOST//chdir=DIR` (through the system `ssh`:
    /// `~/.ssh/config`, keys, agents and ProxyJump apply; `ssh=-p 2222 user@host` takes OpenSSH
    /// options; later runs reuse the connection, see `--ssh-reuse`), `socket=HOST:PORT` (an
    /// `rdist serve`), `2*...` for several workers, `via=NAME` for a `--px` proxy,
    /// `python=EXE` for the interpreter. Workers with the same host and directory are synced
    /// once. Remote workers without `chdir=` use a per-project directory
    /// in rdist's cache on the host.
    #[arg(long = "tx", value_name = "SPEC", help_heading = "Workers")]
    pub tx: Vec<String>,

    /// A proxy, as an xdist spec with an id: `id=NAME//ssh=HOST` or `id=NAME//socket=HOST:PORT`;
    /// workers reach it with `via=NAME` and are synced on its host. Replaces `px` of
    /// `rdist.toml`.
    #[arg(long = "px", value_name = "SPEC", help_heading = "Workers")]
    pub px: Vec<String>,

    /// Seconds to wait for a worker host to answer before reporting it as failed.
    #[arg(
        long,
        value_name = "SECS",
        default_value_t = 15.0,
        env = "RDIST_CONNECT_TIMEOUT",
        help_heading = "Workers"
    )]
    pub connect_timeout: f64,

    /// Keep each ssh connection open for SECS after its last use, so the next run to the same
    /// host skips the login (OpenSSH's ControlMaster/ControlPersist; the control socket is in
    /// rdist's cache). 0 turns it off. Left to you when your ssh options, `~/.ssh/config` or
    /// `RDIST_SSH` set up connection sharing themselves.
    #[arg(
        long,
        value_name = "SECS",
        default_value_t = 60,
        env = "RDIST_SSH_REUSE",
        help_heading = "Workers"
    )]
    pub ssh_reuse: u64,

    /// Compress manifests and file data with zstd on the way to remote workers (`ssh=`,
    /// `socket=`), as rsync's `-z` does: worth it on a slow link, a cost on a fast one. Local
    /// workers never compress.
    #[arg(short = 'z', long, help_heading = "Workers")]
    pub compress: bool,

    /// File holding the token of `rdist serve` for `socket=` workers (or set `RDIST_TOKEN`).
    #[arg(long, value_name = "FILE", help_heading = "Workers")]
    pub token_file: Option<PathBuf>,

    /// Read settings from FILE instead of the project's `rdist.toml` or `[tool.rdist]` in
    /// `pyproject.toml` (a file named `pyproject.toml` is read for `[tool.rdist]`).
    #[arg(long, value_name = "FILE", help_heading = "Configuration")]
    pub config: Option<PathBuf>,

    /// Ignore the configuration file.
    #[arg(long, conflicts_with = "config", help_heading = "Configuration")]
    pub no_config: bool,

    /// Where rdist keeps its caches.
    #[arg(
        long,
        value_name = "DIR",
        env = "RDIST_CACHE_DIR",
        help_heading = "Configuration"
    )]
    pub cache_dir: Option<PathBuf>,

    /// Settings only the configuration file gives.
    #[arg(skip)]
    pub from_config: ConfigOnly,

    /// Ids of the options given on the command line or by an environment variable (filled in
    /// by [`Command::note_explicit`]), which the configuration file does not override.
    #[arg(skip)]
    pub explicit: Vec<String>,
}

impl CommonArgs {
    /// Whether the option with id `id` (the field name) was given, not defaulted.
    pub fn is_explicit(&self, id: &str) -> bool {
        self.explicit.iter().any(|e| e == id)
    }
}

/// Settings that have no command-line option: `[run] python` and `dir` of `rdist.toml`.
#[derive(Debug, Clone, Default)]
pub struct ConfigOnly {
    /// The interpreter of workers whose spec has no `python=`.
    pub python: Option<String>,
    /// The directory of remote workers whose spec has no `chdir=`.
    pub dir: Option<String>,
}

#[derive(Debug, Clone, Args)]
pub struct SyncArgs {
    #[command(flatten)]
    pub common: CommonArgs,

    /// Where roots land in the worker directory.
    #[arg(long, value_enum, default_value_t = Layout::Rdist, help_heading = "What to sync")]
    pub layout: Layout,

    /// Mirror into a non-empty directory that rdist did not create (its other entries are
    /// deleted).
    #[arg(long, help_heading = "Workers")]
    pub adopt: bool,

    /// List what would change without changing anything.
    #[arg(short = 'n', long, help_heading = "Behaviour")]
    pub dry_run: bool,

    /// fsync every written file before its rename (survives power loss; slower).
    #[arg(long, help_heading = "Behaviour")]
    pub fsync: bool,

    /// Seconds to wait for another sync to the same directory to finish.
    #[arg(
        long,
        value_name = "SECS",
        default_value_t = 60.0,
        env = "RDIST_LOCK_WAIT",
        help_heading = "Behaviour"
    )]
    pub lock_wait: f64,

    /// Print each transferred and deleted path.
    #[arg(short, long, help_heading = "Output")]
    pub verbose: bool,

    /// Print a JSON summary on stdout.
    #[arg(long, help_heading = "Output")]
    pub json: bool,
}

#[derive(Debug, Args)]
pub struct AgentArgs {
    /// Speak the protocol on stdin/stdout.
    #[arg(long, required = true)]
    pub stdio: bool,
}

/// `rdist run`'s options. Its command line may mix them with pytest's in any order, as
/// pytest-xdist's did (see [`interleaved`]).
#[derive(Debug, Clone, Args)]
pub struct RunArgs {
    #[command(flatten)]
    pub common: CommonArgs,

    /// Local workers run in place (no sync): a number, or `auto` for one per CPU. Replaces
    /// `--tx`, as in pytest-xdist.
    #[arg(
        short = 'n',
        long = "numprocesses",
        value_name = "N|auto",
        help_heading = "Workers"
    )]
    pub numprocesses: Option<String>,

    /// How tests are distributed.
    #[arg(
        long = "dist",
        value_enum,
        default_value = "load",
        help_heading = "Workers"
    )]
    pub dist: crate::dispatch::schedule::Mode,

    /// Accepted for pytest-xdist compatibility (`-d` = distribute over `--tx`); no effect.
    #[arg(short = 'd', help_heading = "Workers")]
    pub distribute: bool,

    /// Restarts of crashed workers before their tests are given up.
    #[arg(long, value_name = "N", default_value_t = 4, help_heading = "Workers")]
    pub max_worker_restart: usize,

    /// Seconds without any sign of life after which a worker is stopped.
    #[arg(
        long,
        value_name = "SECS",
        default_value_t = 60.0,
        env = "RDIST_HEARTBEAT_TIMEOUT",
        help_heading = "Workers"
    )]
    pub heartbeat_timeout: f64,

    /// Print a line per test (`[gw0] [ 50%] PASSED tests/test_x.py::test_a`).
    #[arg(short, long, action = clap::ArgAction::Count, help_heading = "Output")]
    pub verbose: u8,

    /// Print results as JSON on stdout (the pytest-style report goes to stderr).
    #[arg(long, help_heading = "Output")]
    pub json: bool,

    /// Write JUnit XML results to PATH, one testsuite per worker.
    #[arg(long, value_name = "PATH", help_heading = "Output")]
    pub junitxml: Option<PathBuf>,

    /// Skip the pre-flight check (interpreter, pytest and plugins, packages the code imports,
    /// destination) that runs after the sync.
    #[arg(long, help_heading = "Workers")]
    pub no_check: bool,

    /// Arguments for pytest (test paths, `-k`, `-m`, `-x`, ...), before, after or between
    /// rdist's options; everything after `--` goes to pytest.
    #[arg(
        trailing_var_arg = true,
        allow_hyphen_values = true,
        value_name = "PYTEST ARGS"
    )]
    pub pytest_args: Vec<String>,
}

#[derive(Debug, Clone, Args)]
pub struct CheckArgs {
    /// Create the missing `__init__.py` files in test directories (after listing them).
    #[arg(long, help_heading = "Check")]
    pub fix: bool,

    #[command(flatten)]
    pub run: RunArgs,
}
