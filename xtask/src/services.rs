//! `cargo xtask services start|stop|status`: the servers the tests and
//! benchmarks talk to, on loopback, with throw-away data under
//! `<target>/services/`.
//!
//! Every service is an entry of [`SERVICES`]: a name, the environment
//! variables it exports, an `install` step that adds what is missing on the
//! machine, and a `start` step that launches its processes on free
//! loopback ports, waits until they answer and returns the environment
//! variables the tests read. The services start in parallel:
//!
//! - `redis`: one standalone `redis-server` and a 3-master Redis Cluster,
//!   from Debian's `redis-server`/`redis-tools`, exported as
//!   `HIGHWATER_REDIS_URL=redis://127.0.0.1:P/` and
//!   `HIGHWATER_REDIS_CLUSTER=redis://127.0.0.1:P1/,redis://127.0.0.1:P2/,…`.
//! - `s3`: moto's S3 server from PyPI (`moto[server]`, installed with pip
//!   when `python3 -m moto.server` is missing), with the bucket `highwater`
//!   created, exported as `HIGHWATER_S3_URL=s3://highwater/` plus
//!   `AWS_ENDPOINT=http://127.0.0.1:P`, `AWS_ALLOW_HTTP=true`,
//!   `AWS_ACCESS_KEY_ID`, `AWS_SECRET_ACCESS_KEY` and `AWS_REGION`, which
//!   `object_store` reads.
//! - `azure`: azurite's Blob service from npm (installed into
//!   `<target>/tools/azurite` when missing), with the container `highwater`
//!   created by a request signed with the emulator's published development
//!   account, exported as `HIGHWATER_AZURE_URL=az://highwater/` plus
//!   `AZURE_STORAGE_USE_EMULATOR=true` and
//!   `AZURITE_BLOB_STORAGE_URL=http://127.0.0.1:P`.
//!
//! There is no GCS entry: no GCS emulator installs from the registries this
//! project can reach (fake-gcs-server is a Go binary published outside
//! them), so GCS is tested for its configuration only.
//!
//! `start` writes two files into `<target>/services/`:
//!
//! - `env`: `NAME=VALUE` lines, the variables above;
//! - `processes`: one line per started process, `PIDFILE<TAB>MARKER`, where
//!   the marker is a string the process's command line must contain.
//!
//! `stop` kills exactly the PIDs named in those pid files (never by process
//! name), after checking that `/proc/PID/cmdline` still carries the marker
//! so a recycled PID is never killed, then removes the directories.
//!
//! A service counts as running when every process under its directory is
//! alive and the environment file has all its variables. `start` starts
//! only the services that are not running (so a checkout that gained a
//! service keeps the servers it already had), and [`with_services`] (used
//! by `cargo xtask test` and `cargo xtask bench`) reuses running services
//! and leaves them running; the ones it started itself it stops afterwards
//! on every path, failures and panics included.

use std::io::Write as _;
use std::net::{Ipv4Addr, SocketAddrV4, TcpListener};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use crate::util::{Error, Result, Workspace, bail, io_context, render, run};

/// The environment variable with the standalone Redis URL.
pub const REDIS_URL_VAR: &str = "HIGHWATER_REDIS_URL";
/// The environment variable with the comma-separated cluster node URLs.
pub const REDIS_CLUSTER_VAR: &str = "HIGHWATER_REDIS_CLUSTER";
/// The environment variable with the S3 bucket URL (`s3://highwater/`).
pub const S3_URL_VAR: &str = "HIGHWATER_S3_URL";
/// The environment variable with the Azure container URL (`az://highwater/`).
pub const AZURE_URL_VAR: &str = "HIGHWATER_AZURE_URL";

/// One kind of server the tests need.
struct Service {
    /// Short name, also the name of its directory under `<target>/services`.
    name: &'static str,
    /// The environment variables its `start` returns.
    vars: &'static [&'static str],
    /// Installs what is missing on this machine (tools that are not
    /// system packages go under `tools`, `<target>/tools`); a no-op when
    /// present.
    install: fn(tools: &Path) -> Result,
    /// Starts the service's processes with their data under `dir` (fresh
    /// and empty) and returns what was started.
    start: fn(dir: &Path, tools: &Path) -> Result<Started>,
}

/// What a service's `start` launched.
#[derive(Debug, Default)]
struct Started {
    /// Environment variables for the tests.
    env: Vec<(String, String)>,
    /// The processes, to stop later.
    processes: Vec<Process>,
}

/// A started process: its pid file and a string its command line contains.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Process {
    pid_file: PathBuf,
    marker: String,
}

/// Every service. They install and start in parallel.
const SERVICES: &[Service] = &[
    Service {
        name: "redis",
        vars: &[REDIS_URL_VAR, REDIS_CLUSTER_VAR],
        install: redis::install,
        start: redis::start,
    },
    Service {
        name: "s3",
        vars: &[
            S3_URL_VAR,
            "AWS_ENDPOINT",
            "AWS_ALLOW_HTTP",
            "AWS_ACCESS_KEY_ID",
            "AWS_SECRET_ACCESS_KEY",
            "AWS_REGION",
        ],
        install: moto::install,
        start: moto::start,
    },
    Service {
        name: "azure",
        vars: &[
            AZURE_URL_VAR,
            "AZURE_STORAGE_USE_EMULATOR",
            "AZURITE_BLOB_STORAGE_URL",
        ],
        install: azurite::install,
        start: azurite::start,
    },
];

/// The running services' environment, as recorded in `<target>/services/env`.
#[derive(Debug, Clone, Default)]
pub struct Env {
    vars: Vec<(String, String)>,
}

impl Env {
    /// Adds the variables to a command.
    pub fn apply<'a>(&self, cmd: &'a mut Command) -> &'a mut Command {
        cmd.envs(self.vars.iter().map(|(k, v)| (k, v)))
    }
}

fn services_dir(ws: &Workspace) -> PathBuf {
    ws.target_dir.join("services")
}

fn env_file(ws: &Workspace) -> PathBuf {
    services_dir(ws).join("env")
}

fn processes_file(ws: &Workspace) -> PathBuf {
    services_dir(ws).join("processes")
}

/// Where tools that are not system packages are installed (azurite).
fn tools_dir(ws: &Workspace) -> PathBuf {
    ws.target_dir.join("tools")
}

/// True when `service` runs: it has recorded processes, all alive, and
/// the environment has every variable it exports.
fn is_up(ws: &Workspace, service: &Service, env: &Env, processes: &[Process]) -> bool {
    let dir = services_dir(ws).join(service.name);
    let mine: Vec<&Process> = processes
        .iter()
        .filter(|p| p.pid_file.starts_with(&dir))
        .collect();
    !mine.is_empty()
        && mine.iter().all(|p| live_pid(p).is_some())
        && service
            .vars
            .iter()
            .all(|v| env.vars.iter().any(|(k, _)| k == v))
}

/// `cargo xtask services start`: starts every service that is not
/// running, and prints the variables to export.
pub fn start(ws: &Workspace) -> Result<Env> {
    start_missing(ws).map(|(env, _)| env)
}

/// Starts the services that are not running; returns the environment of
/// all of them and the names of those started now.
fn start_missing(ws: &Workspace) -> Result<(Env, Vec<&'static str>)> {
    let recorded_env = read_env(ws)?.unwrap_or_default();
    let recorded = read_processes(ws)?;
    let missing: Vec<&Service> = SERVICES
        .iter()
        .filter(|s| !is_up(ws, s, &recorded_env, &recorded))
        .collect();
    if missing.is_empty() {
        println!(
            "xtask: services are already running (see {}); stop them with `cargo xtask services stop`",
            ws.display_path(&env_file(ws))
        );
        print_exports(&recorded_env);
        return Ok((recorded_env, Vec::new()));
    }
    if missing.len() == SERVICES.len() {
        // Left-overs of an interrupted run: stop whatever is still alive.
        stop(ws)?;
    } else {
        for service in &missing {
            stop_service(ws, service)?;
        }
    }
    let dir = services_dir(ws);
    std::fs::create_dir_all(&dir).map_err(io_context("create", &dir))?;
    let tools = tools_dir(ws);
    // What keeps running, then what starts now.
    let mut env = read_env(ws)?.unwrap_or_default();
    let mut processes = read_processes(ws)?;
    let started_at = Instant::now();
    let results: Vec<(&Service, Result<Started>, Duration)> = std::thread::scope(|scope| {
        let handles: Vec<_> = missing
            .iter()
            .map(|service| {
                let (dir, tools) = (&dir, &tools);
                scope.spawn(move || {
                    let t = Instant::now();
                    let result = (service.install)(tools).and_then(|()| {
                        let sdir = dir.join(service.name);
                        std::fs::create_dir_all(&sdir).map_err(io_context("create", &sdir))?;
                        println!("xtask: starting service {}", service.name);
                        (service.start)(&sdir, tools)
                    });
                    (*service, result, t.elapsed())
                })
            })
            .collect();
        handles
            .into_iter()
            .zip(&missing)
            .map(|(h, service)| {
                h.join().unwrap_or_else(|_| {
                    (
                        *service,
                        Err(Error::from(format!("starting {} panicked", service.name))),
                        Duration::ZERO,
                    )
                })
            })
            .collect()
    });
    let mut failures = Vec::new();
    for (service, result, took) in results {
        match result {
            Ok(started) => {
                println!(
                    "xtask: service {} is up ({:.1} s)",
                    service.name,
                    took.as_secs_f64()
                );
                env.vars.extend(started.env);
                processes.extend(started.processes);
            }
            Err(e) => {
                // A half-started service may have left processes behind
                // that are not recorded yet: its start function records
                // pid files as it goes into the service directory.
                processes.extend(pid_files_under(&dir.join(service.name)));
                failures.push(format!("service {} failed to start: {e}", service.name));
            }
        }
    }
    // Recorded before anything else can fail, so whatever must be stopped
    // is on disk.
    write_processes(ws, &processes)?;
    if !failures.is_empty() {
        for service in &missing {
            let _ = stop_service(ws, service);
        }
        bail!("{}", failures.join("; "));
    }
    write_env(ws, &env)?;
    println!(
        "xtask: services are up in {:.1} s; environment in {}",
        started_at.elapsed().as_secs_f64(),
        ws.display_path(&env_file(ws))
    );
    print_exports(&env);
    Ok((env, missing.iter().map(|s| s.name).collect()))
}

/// Stops the processes of one service, removes its directory and drops
/// its processes and variables from the recorded files.
fn stop_service(ws: &Workspace, service: &Service) -> Result {
    let sdir = services_dir(ws).join(service.name);
    let recorded = read_processes(ws)?;
    let (mine, others): (Vec<Process>, Vec<Process>) = recorded
        .into_iter()
        .partition(|p| p.pid_file.starts_with(&sdir));
    let mut mine = mine;
    for p in pid_files_under(&sdir) {
        if !mine.iter().any(|q| q.pid_file == p.pid_file) {
            mine.push(p);
        }
    }
    let mut failures = Vec::new();
    for p in &mine {
        if let Err(e) = stop_process(p) {
            failures.push(e.to_string());
        }
    }
    if !failures.is_empty() {
        bail!(
            "could not stop every process of service {}: {}",
            service.name,
            failures.join("; ")
        );
    }
    if services_dir(ws).exists() {
        write_processes(ws, &others)?;
        if let Some(mut env) = read_env(ws)? {
            env.vars
                .retain(|(k, _)| !service.vars.iter().any(|v| v == k));
            write_env(ws, &env)?;
        }
    }
    if sdir.exists() {
        std::fs::remove_dir_all(&sdir).map_err(io_context("remove", &sdir))?;
    }
    Ok(())
}

/// `cargo xtask services stop`: stops every recorded process by its PID
/// and removes `<target>/services`. Stopping nothing is not an error.
pub fn stop(ws: &Workspace) -> Result {
    let dir = services_dir(ws);
    if !dir.exists() {
        return Ok(());
    }
    let mut processes = read_processes(ws)?;
    // Pid files written by a start that died before recording them.
    for p in pid_files_under(&dir) {
        if !processes.iter().any(|q| q.pid_file == p.pid_file) {
            processes.push(p);
        }
    }
    let mut failures = Vec::new();
    for p in &processes {
        if let Err(e) = stop_process(p) {
            failures.push(e.to_string());
        }
    }
    if !failures.is_empty() {
        bail!(
            "could not stop every service process (the directory {} is kept): {}",
            dir.display(),
            failures.join("; ")
        );
    }
    std::fs::remove_dir_all(&dir).map_err(io_context("remove", &dir))?;
    println!("xtask: services stopped");
    Ok(())
}

/// `cargo xtask services status`: says what runs and whether it answers.
/// Fails when services are recorded but some process is gone.
pub fn status(ws: &Workspace) -> Result {
    let processes = read_processes(ws)?;
    if processes.is_empty() {
        println!("xtask: no services are running");
        return Ok(());
    }
    let mut dead = 0;
    for p in &processes {
        match live_pid(p) {
            Some(pid) => println!("  running  pid {pid:<8} {}", ws.display_path(&p.pid_file)),
            None => {
                dead += 1;
                println!("  STOPPED  {:<12} {}", "", ws.display_path(&p.pid_file));
            }
        }
    }
    if let Some(env) = read_env(ws)? {
        print_exports(&env);
    }
    if dead > 0 {
        bail!(
            "{dead} service process(es) are not running: run `cargo xtask services stop` and start again"
        );
    }
    Ok(())
}

/// Runs `f` while the services are up, passing their environment.
///
/// Services that are already running are reused and left running;
/// otherwise they are started first and stopped after `f` on every path out
/// of it (an error, or a panic, which is resumed after stopping).
pub fn with_services<T>(ws: &Workspace, f: impl FnOnce(&Env) -> Result<T>) -> Result<T> {
    if let Some(env) = running(ws)? {
        println!("xtask: using the services already running (they stay up)");
        return f(&env);
    }
    let (env, started) = start_missing(ws)?;
    let outcome = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| f(&env)));
    let stopped = if started.len() == SERVICES.len() {
        stop(ws)
    } else {
        SERVICES
            .iter()
            .filter(|s| started.contains(&s.name))
            .try_for_each(|s| stop_service(ws, s))
    };
    match outcome {
        Ok(Ok(value)) => stopped.map(|()| value),
        Ok(Err(e)) => {
            if let Err(stop_err) = stopped {
                eprintln!("xtask: also failed to stop the services: {stop_err}");
            }
            Err(e)
        }
        Err(panic) => {
            if let Err(stop_err) = stopped {
                eprintln!("xtask: also failed to stop the services: {stop_err}");
            }
            std::panic::resume_unwind(panic)
        }
    }
}

/// The environment of the running services, if every service is up (see
/// [`is_up`]).
fn running(ws: &Workspace) -> Result<Option<Env>> {
    let Some(env) = read_env(ws)? else {
        return Ok(None);
    };
    let processes = read_processes(ws)?;
    Ok(SERVICES
        .iter()
        .all(|s| is_up(ws, s, &env, &processes))
        .then_some(env))
}

fn print_exports(env: &Env) {
    for (k, v) in &env.vars {
        println!("export {k}={v}");
    }
}

fn write_env(ws: &Workspace, env: &Env) -> Result {
    let text: String = env.vars.iter().map(|(k, v)| format!("{k}={v}\n")).collect();
    write_atomic(&env_file(ws), &text)
}

fn read_env(ws: &Workspace) -> Result<Option<Env>> {
    let path = env_file(ws);
    let text = match std::fs::read_to_string(&path) {
        Ok(t) => t,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(io_context("read", &path)(e)),
    };
    let vars = text
        .lines()
        .filter_map(|l| l.split_once('='))
        .map(|(k, v)| (k.to_owned(), v.to_owned()))
        .collect();
    Ok(Some(Env { vars }))
}

fn write_processes(ws: &Workspace, processes: &[Process]) -> Result {
    let text: String = processes
        .iter()
        .map(|p| format!("{}\t{}\n", p.pid_file.display(), p.marker))
        .collect();
    write_atomic(&processes_file(ws), &text)
}

fn read_processes(ws: &Workspace) -> Result<Vec<Process>> {
    let path = processes_file(ws);
    let text = match std::fs::read_to_string(&path) {
        Ok(t) => t,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(e) => return Err(io_context("read", &path)(e)),
    };
    Ok(text
        .lines()
        .filter_map(|l| l.split_once('\t'))
        .map(|(f, m)| Process {
            pid_file: PathBuf::from(f),
            marker: m.to_owned(),
        })
        .collect())
}

/// Every `*.pid` file below `dir` whose kind is known, with the marker its
/// process's command line must contain (`redis.pid`: `redis-server`). Pid
/// files of unknown kinds are skipped: a PID is only ever killed after its
/// command line was checked against a marker.
fn pid_files_under(dir: &Path) -> Vec<Process> {
    let mut out = Vec::new();
    let Ok(entries) = std::fs::read_dir(dir) else {
        return out;
    };
    for entry in entries.flatten() {
        let path = entry.path();
        if path.is_dir() {
            out.extend(pid_files_under(&path));
            continue;
        }
        let marker = match path.file_name().and_then(|n| n.to_str()) {
            Some("redis.pid") => "redis-server",
            Some("moto.pid") => moto::MARKER,
            Some("azurite.pid") => azurite::MARKER,
            _ => continue,
        };
        out.push(Process {
            pid_file: path,
            marker: marker.to_owned(),
        });
    }
    out
}

fn write_atomic(path: &Path, text: &str) -> Result {
    let tmp = path.with_extension("tmp");
    let mut f = std::fs::File::create(&tmp).map_err(io_context("create", &tmp))?;
    f.write_all(text.as_bytes())
        .map_err(io_context("write", &tmp))?;
    drop(f);
    std::fs::rename(&tmp, path).map_err(io_context("rename to", path))
}

/// The PID of `p` if its pid file names a live process whose command line
/// contains the marker.
fn live_pid(p: &Process) -> Option<u32> {
    let pid: u32 = std::fs::read_to_string(&p.pid_file)
        .ok()?
        .trim()
        .parse()
        .ok()?;
    if pid == 0 || p.marker.is_empty() {
        return None;
    }
    let cmdline = std::fs::read(format!("/proc/{pid}/cmdline")).ok()?;
    // A zombie has an empty command line: it is gone for our purposes.
    if cmdline.is_empty() {
        return None;
    }
    let cmdline = String::from_utf8_lossy(&cmdline).replace('\0', " ");
    cmdline.contains(&p.marker).then_some(pid)
}

/// Sends SIGTERM to the process of `p` and waits for it to exit, then
/// SIGKILL if it does not within five seconds.
fn stop_process(p: &Process) -> Result {
    let Some(pid) = live_pid(p) else {
        return Ok(());
    };
    for (signal, wait) in [
        ("-TERM", Duration::from_secs(5)),
        ("-KILL", Duration::from_secs(5)),
    ] {
        let _ = Command::new("kill")
            .args([signal, &pid.to_string()])
            .stderr(Stdio::null())
            .status();
        let deadline = Instant::now() + wait;
        while Instant::now() < deadline {
            if live_pid(p).is_none() {
                return Ok(());
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }
    bail!("process {pid} ({}) does not exit", p.pid_file.display())
}

/// True when `program` is an executable file in a `PATH` directory.
pub(crate) fn on_path(program: &str) -> bool {
    std::env::var_os("PATH").is_some_and(|paths| {
        std::env::split_paths(&paths)
            .any(|d| std::fs::metadata(d.join(program)).is_ok_and(|m| m.is_file()))
    })
}

/// Installs Debian packages non-interactively (`apt-get update` first).
pub(crate) fn apt_install(packages: &[&str]) -> Result {
    let mut update = Command::new("apt-get");
    update
        .arg("update")
        .env("DEBIAN_FRONTEND", "noninteractive");
    run(&mut update)?;
    let mut install = Command::new("apt-get");
    install
        .args(["install", "-y", "--no-install-recommends"])
        .args(packages)
        .env("DEBIAN_FRONTEND", "noninteractive");
    run(&mut install)
}

/// Every port [`free_port`] has handed out in this process. The services
/// start in parallel threads, and a port that was free when one thread
/// looked stays free until its server binds it: without this record, two
/// services could be handed the same port (a CI run once started redis and
/// azurite both on one port, and azurite exited).
static HANDED_OUT: std::sync::Mutex<Vec<u16>> = std::sync::Mutex::new(Vec::new());

/// The first port of the range [`free_port`] scans; the range ends below
/// Linux's default ephemeral ports (32768), so an outgoing connection of
/// another process is not given a port between our look and the server's
/// bind.
const SCAN_FROM: u32 = 20_000;
/// How many ports [`free_port`] scans.
const SCAN_SPAN: u32 = 12_000;

/// A loopback port that is free now (bound and released) and that no other
/// call in this process has been handed, and for which `port + offset` is
/// free and not handed out too (`offset` 0 means only `port`). Both are
/// recorded as handed out.
fn free_port(offset: u16) -> Result<u16> {
    let bindable = |p: u16| TcpListener::bind(SocketAddrV4::new(Ipv4Addr::LOCALHOST, p)).is_ok();
    let mut handed = HANDED_OUT
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner);
    // Start at a spot that differs between processes, so two xtask runs
    // at once (a developer's and a test's) do not probe the same ports.
    let start = std::process::id().wrapping_mul(7919) % SCAN_SPAN;
    for i in 0..SCAN_SPAN {
        let port = (SCAN_FROM + (start + i) % SCAN_SPAN) as u16;
        let pair = port + offset;
        let wanted = [port, pair];
        if wanted.iter().any(|p| handed.contains(p)) {
            continue;
        }
        if bindable(port) && (offset == 0 || bindable(pair)) {
            handed.extend_from_slice(if offset == 0 { &wanted[..1] } else { &wanted });
            return Ok(port);
        }
    }
    bail!(
        "no free loopback port (with offset {offset}) in {SCAN_FROM}..{}",
        SCAN_FROM + SCAN_SPAN
    )
}

/// Runs `program args` and returns its stdout when it exits successfully.
fn output(program: &str, args: &[&str]) -> Option<String> {
    let out = Command::new(program)
        .args(args)
        .stdin(Stdio::null())
        .stderr(Stdio::null())
        .output()
        .ok()?;
    out.status
        .success()
        .then(|| String::from_utf8_lossy(&out.stdout).into_owned())
}

/// Polls `ready` every 50 ms until it is true or `timeout` passes.
fn wait_until(what: &str, timeout: Duration, mut ready: impl FnMut() -> bool) -> Result {
    let deadline = Instant::now() + timeout;
    loop {
        if ready() {
            return Ok(());
        }
        if Instant::now() >= deadline {
            bail!("{what} not ready after {timeout:?}");
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// The `redis` service: a standalone server and a 3-master cluster.
mod redis {
    use super::*;

    const CLUSTER_NODES: usize = 3;

    pub(super) fn install(_tools: &Path) -> Result {
        if on_path("redis-server") && on_path("redis-cli") {
            return Ok(());
        }
        println!("xtask: redis-server is not installed; installing it from Debian packages");
        apt_install(&["redis-server", "redis-tools"])?;
        if !on_path("redis-server") || !on_path("redis-cli") {
            bail!(
                "redis-server or redis-cli is still not on PATH after installing redis-server and redis-tools"
            );
        }
        Ok(())
    }

    pub(super) fn start(dir: &Path, _tools: &Path) -> Result<Started> {
        let mut started = Started::default();
        let port = free_port(0)?;
        let sdir = dir.join("standalone");
        started.processes.push(launch(&sdir, port, false)?);
        wait_ping(&sdir, port)?;
        started.env.push((
            REDIS_URL_VAR.to_owned(),
            format!("redis://127.0.0.1:{port}/"),
        ));

        let mut ports = Vec::new();
        for i in 1..=CLUSTER_NODES {
            // The cluster bus listens on port + 10000.
            let port = free_port(10_000)?;
            let ndir = dir.join(format!("cluster-{i}"));
            started.processes.push(launch(&ndir, port, true)?);
            ports.push(port);
        }
        for (i, port) in ports.iter().enumerate() {
            wait_ping(&dir.join(format!("cluster-{}", i + 1)), *port)?;
        }
        let mut create = Command::new("redis-cli");
        create.args(["--cluster", "create"]);
        for port in &ports {
            create.arg(format!("127.0.0.1:{port}"));
        }
        create
            .args(["--cluster-replicas", "0", "--cluster-yes"])
            .stdin(Stdio::null())
            .stdout(Stdio::null());
        run(&mut create)?;
        for port in &ports {
            let p = port.to_string();
            wait_until(
                &format!("redis cluster node 127.0.0.1:{port}"),
                Duration::from_secs(30),
                || {
                    output("redis-cli", &["-p", &p, "cluster", "info"])
                        .is_some_and(|o| o.lines().any(|l| l.trim() == "cluster_state:ok"))
                },
            )?;
        }
        let urls: Vec<String> = ports
            .iter()
            .map(|p| format!("redis://127.0.0.1:{p}/"))
            .collect();
        started
            .env
            .push((REDIS_CLUSTER_VAR.to_owned(), urls.join(",")));
        Ok(started)
    }

    /// Starts one daemonized, non-persistent redis-server in `dir` (fresh).
    fn launch(dir: &Path, port: u16, cluster: bool) -> Result<Process> {
        if dir.exists() {
            std::fs::remove_dir_all(dir).map_err(io_context("remove", dir))?;
        }
        std::fs::create_dir_all(dir).map_err(io_context("create", dir))?;
        let pid_file = dir.join("redis.pid");
        let d = dir.display().to_string();
        let mut cmd = Command::new("redis-server");
        cmd.args(["--bind", "127.0.0.1", "--port", &port.to_string()])
            .args(["--save", "", "--appendonly", "no"])
            .args(["--dir", &d, "--daemonize", "yes"])
            .arg("--pidfile")
            .arg(&pid_file)
            .arg("--logfile")
            .arg(dir.join("redis.log"));
        if cluster {
            cmd.args(["--cluster-enabled", "yes", "--cluster-node-timeout", "5000"])
                .arg("--cluster-config-file")
                .arg(dir.join("nodes.conf"));
        }
        cmd.stdin(Stdio::null());
        run(&mut cmd)?;
        let process = Process {
            pid_file,
            marker: "redis-server".to_owned(),
        };
        wait_until(
            &format!("pid file of redis-server on port {port}"),
            Duration::from_secs(10),
            || live_pid(&process).is_some(),
        )
        .map_err(|e| format!("{e} (log: {}/redis.log; command: {})", d, render(&cmd)))?;
        Ok(process)
    }

    fn wait_ping(dir: &Path, port: u16) -> Result {
        let p = port.to_string();
        wait_until(
            &format!("redis-server on 127.0.0.1:{port}"),
            Duration::from_secs(10),
            || output("redis-cli", &["-p", &p, "ping"]).is_some_and(|o| o.trim() == "PONG"),
        )
        .map_err(|e| Error::from(format!("{e} (log: {})", dir.join("redis.log").display())))
    }
}

/// Starts `cmd` in the background, in its own process group (so a Ctrl-C
/// at the terminal that ran xtask does not reach it), with its output in
/// `log`, and writes its PID to `pid_file`. The child handle is for
/// [`wait_http`]; dropping it leaves the process running (it outlives
/// xtask and is stopped by its PID).
fn spawn_background(
    cmd: &mut Command,
    log: &Path,
    pid_file: &Path,
    marker: &str,
) -> Result<(Process, std::process::Child)> {
    use std::os::unix::process::CommandExt as _;
    let out = std::fs::File::create(log).map_err(io_context("create", log))?;
    let err = out.try_clone().map_err(io_context("open", log))?;
    println!("$ {} &", render(cmd));
    let child = cmd
        .stdin(Stdio::null())
        .stdout(out)
        .stderr(err)
        .process_group(0)
        .spawn()
        .map_err(|e| format!("cannot start `{}`: {e}", render(cmd)))?;
    write_atomic(pid_file, &format!("{}\n", child.id()))?;
    Ok((
        Process {
            pid_file: pid_file.to_path_buf(),
            marker: marker.to_owned(),
        },
        child,
    ))
}

/// Sends a bodiless HTTP/1.1 request to `127.0.0.1:port` and returns the
/// status of the answer, or `None` when nothing answers.
fn http_status(port: u16, method: &str, path: &str) -> Option<u16> {
    use std::io::Read as _;
    let mut s = std::net::TcpStream::connect((Ipv4Addr::LOCALHOST, port)).ok()?;
    s.set_read_timeout(Some(Duration::from_secs(5))).ok()?;
    write!(
        s,
        "{method} {path} HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nContent-Length: 0\r\nConnection: close\r\n\r\n"
    )
    .ok()?;
    let mut head = [0u8; 12];
    s.read_exact(&mut head).ok()?;
    std::str::from_utf8(&head[9..12]).ok()?.parse().ok()
}

/// Waits until `child` answers HTTP on `port`; fails early (pointing at
/// its log) when it exits. The child handle, not `/proc`, says whether it
/// exited: while a launcher `exec`s its way to the real program,
/// `/proc/PID/cmdline` can briefly read empty.
fn wait_http(what: &str, child: &mut std::process::Child, port: u16, log: &Path) -> Result {
    let mut exited = None;
    wait_until(what, Duration::from_secs(60), || {
        if let Ok(Some(status)) = child.try_wait() {
            exited = Some(status);
            return true;
        }
        http_status(port, "GET", "/").is_some()
    })
    .and_then(|()| match exited {
        Some(status) => bail!("{what} exited during start-up ({status})"),
        None => Ok(()),
    })
    .map_err(|e| Error::from(format!("{e} (log: {})", log.display())))
}

/// The `s3` service: moto's S3 server with the bucket `highwater`.
mod moto {
    use super::*;

    /// What moto's command line contains.
    pub(super) const MARKER: &str = "moto.server";
    const BUCKET: &str = "highwater";

    /// Runs moto's server (`moto.server.main`) with its conditional writes
    /// made atomic. moto checks `If-None-Match: *` and then writes, in two
    /// steps, on a threaded server: two concurrent create-only puts of one
    /// key can both succeed, which S3 never allows (the store conformance
    /// suite's `concurrent_commits_single_winner` caught it in CI on
    /// 2026-12-06: "2 of 8 concurrent commits succeeded"; moto 5.2.1's
    /// `S3Response.put_object`). The two handlers that check a condition
    /// and write (a put; a multipart completion) run under one lock; other
    /// requests stay concurrent. A moto without them fails to start here
    /// rather than serve non-atomic creates.
    const SERVE: &str = "\
import sys, threading
import moto.server
from moto.s3.responses import S3Response
lock = threading.Lock()
def atomic(handler):
    def run(self, *args, **kwargs):
        with lock:
            return handler(self, *args, **kwargs)
    return run
S3Response.put_object = atomic(S3Response.put_object)
S3Response._key_response_post = atomic(S3Response._key_response_post)
moto.server.main(sys.argv[1:])
";

    fn installed() -> bool {
        Command::new("python3")
            .args(["-c", "import moto.server, flask"])
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status()
            .is_ok_and(|s| s.success())
    }

    pub(super) fn install(_tools: &Path) -> Result {
        if installed() {
            return Ok(());
        }
        println!("xtask: moto's S3 server is not installed; installing moto[server] from PyPI");
        let mut pip = Command::new("python3");
        pip.args(["-m", "pip", "install", "--quiet", "moto[server]>=5,<6"]);
        if run(&mut pip).is_err() {
            // A Debian-managed interpreter refuses user installs (PEP 668).
            let mut pip = Command::new("python3");
            pip.args([
                "-m",
                "pip",
                "install",
                "--quiet",
                "--break-system-packages",
                "moto[server]>=5,<6",
            ]);
            run(&mut pip)?;
        }
        if !installed() {
            bail!("python3 still cannot import moto.server after installing moto[server]");
        }
        Ok(())
    }

    pub(super) fn start(dir: &Path, _tools: &Path) -> Result<Started> {
        let port = free_port(0)?;
        let log = dir.join("moto.log");
        // The interpreter itself, not a launcher (pyenv's shims exec a
        // chain of scripts), so the recorded PID runs moto from the start.
        let python = output("python3", &["-c", "import sys; print(sys.executable)"])
            .map(|p| p.trim().to_owned())
            .filter(|p| !p.is_empty())
            .unwrap_or_else(|| "python3".to_owned());
        let mut cmd = Command::new(python);
        cmd.args(["-c", SERVE, "-H", "127.0.0.1", "-p", &port.to_string()]);
        let (process, mut child) = spawn_background(&mut cmd, &log, &dir.join("moto.pid"), MARKER)?;
        wait_http(&format!("moto on 127.0.0.1:{port}"), &mut child, port, &log)?;
        // moto accepts an unauthenticated bucket creation.
        match http_status(port, "PUT", &format!("/{BUCKET}")) {
            Some(200) => {}
            other => bail!("moto did not create the bucket {BUCKET}: status {other:?}"),
        }
        let endpoint = format!("http://127.0.0.1:{port}");
        Ok(Started {
            env: vec![
                (S3_URL_VAR.to_owned(), format!("s3://{BUCKET}/")),
                ("AWS_ENDPOINT".to_owned(), endpoint),
                ("AWS_ALLOW_HTTP".to_owned(), "true".to_owned()),
                ("AWS_ACCESS_KEY_ID".to_owned(), "test".to_owned()),
                ("AWS_SECRET_ACCESS_KEY".to_owned(), "test".to_owned()),
                ("AWS_REGION".to_owned(), "us-east-1".to_owned()),
            ],
            processes: vec![process],
        })
    }
}

/// The `azure` service: azurite's Blob service with the container
/// `highwater`.
mod azurite {
    use super::*;

    /// What azurite's command line contains.
    pub(super) const MARKER: &str = "azurite-blob";
    /// The version installed; azurite follows the Blob REST API closely, so
    /// it is pinned for reproducible runs.
    const VERSION: &str = "3.35.0";
    const CONTAINER: &str = "highwater";

    /// Creates a container with a request signed (Shared Key) with the
    /// emulator's published development account; azurite refuses
    /// unauthenticated creation and object_store does not create
    /// containers. Node's own crypto does the HMAC. Exits 0 when the
    /// container was created or exists.
    const CREATE_CONTAINER_JS: &str = r#"
const http = require('http'), crypto = require('crypto');
const [port, container] = process.argv.slice(2);
const account = 'devstoreaccount1';
const key = Buffer.from('Eby8vdM02xNOcqFlqUwJPLlmEtlCDXJ1OUzFT50uSRZ6IFsuFq2UVErCz4I6tq/K1SZFPTOtr/KBHBeksoGMGw==', 'base64');
const date = new Date().toUTCString(), version = '2021-08-06';
const path = `/${account}/${container}`;
const toSign = ['PUT', '', '', '', '', '', '', '', '', '', '', '',
  `x-ms-date:${date}`, `x-ms-version:${version}`,
  `/${account}${path}\nrestype:container`].join('\n');
const sig = crypto.createHmac('sha256', key).update(toSign, 'utf8').digest('base64');
const req = http.request({host: '127.0.0.1', port, method: 'PUT', path: `${path}?restype=container`,
  headers: {'x-ms-date': date, 'x-ms-version': version, 'Content-Length': 0,
            'Authorization': `SharedKey ${account}:${sig}`}}, res => {
  let body = ''; res.on('data', d => body += d);
  res.on('end', () => {
    if (res.statusCode === 201 || res.statusCode === 409) process.exit(0);
    console.error(`create container ${container}: HTTP ${res.statusCode} ${body}`);
    process.exit(1);
  });
});
req.on('error', e => { console.error(`create container ${container}: ${e.message}`); process.exit(1); });
req.end();
"#;

    fn binary(tools: &Path) -> PathBuf {
        tools
            .join("azurite")
            .join("node_modules")
            .join(".bin")
            .join("azurite-blob")
    }

    pub(super) fn install(tools: &Path) -> Result {
        if binary(tools).is_file() {
            return Ok(());
        }
        if !on_path("npm") || !on_path("node") {
            println!("xtask: node and npm are not installed; installing them from Debian packages");
            apt_install(&["nodejs", "npm"])?;
        }
        let dir = tools.join("azurite");
        std::fs::create_dir_all(&dir).map_err(io_context("create", &dir))?;
        println!(
            "xtask: azurite is not installed; installing azurite@{VERSION} from npm into {}",
            dir.display()
        );
        let mut npm = Command::new("npm");
        npm.args([
            "install",
            "--no-audit",
            "--no-fund",
            "--loglevel=error",
            "--prefix",
        ])
        .arg(&dir)
        .arg(format!("azurite@{VERSION}"))
        .stdin(Stdio::null());
        run(&mut npm)?;
        if !binary(tools).is_file() {
            bail!("{} is missing after npm install", binary(tools).display());
        }
        Ok(())
    }

    pub(super) fn start(dir: &Path, tools: &Path) -> Result<Started> {
        let port = free_port(0)?;
        let log = dir.join("azurite.log");
        let mut cmd = Command::new(binary(tools));
        cmd.args(["--blobHost", "127.0.0.1", "--blobPort", &port.to_string()])
            .args(["--inMemoryPersistence", "--disableTelemetry"])
            .args(["--skipApiVersionCheck", "--loose"])
            // In-memory persistence refuses --location; keep azurite's
            // debug files out of the working directory.
            .current_dir(dir);
        let (process, mut child) =
            spawn_background(&mut cmd, &log, &dir.join("azurite.pid"), MARKER)?;
        wait_http(
            &format!("azurite on 127.0.0.1:{port}"),
            &mut child,
            port,
            &log,
        )?;
        let script = dir.join("create-container.js");
        write_atomic(&script, CREATE_CONTAINER_JS)?;
        let mut create = Command::new("node");
        create
            .arg(&script)
            .args([&port.to_string(), CONTAINER])
            .stdin(Stdio::null());
        run(&mut create)?;
        Ok(Started {
            env: vec![
                (AZURE_URL_VAR.to_owned(), format!("az://{CONTAINER}/")),
                ("AZURE_STORAGE_USE_EMULATOR".to_owned(), "true".to_owned()),
                (
                    "AZURITE_BLOB_STORAGE_URL".to_owned(),
                    format!("http://127.0.0.1:{port}"),
                ),
            ],
            processes: vec![process],
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn free_port_pairs_fit_below_65536() {
        let p = free_port(10_000).unwrap();
        assert!(u32::from(p) + 10_000 < 65_536);
        let q = free_port(0).unwrap();
        assert_ne!(p, q);
        assert_ne!(p + 10_000, q);
    }

    /// Regression: services start in parallel threads, and a CI run once
    /// handed redis and azurite the same port.
    #[test]
    fn ports_handed_to_parallel_threads_are_distinct() {
        let ports: Vec<u16> = std::thread::scope(|s| {
            let threads: Vec<_> = (0..4)
                .map(|t| {
                    s.spawn(move || {
                        (0..16)
                            .map(|_| free_port(if t == 0 { 10_000 } else { 0 }).unwrap())
                            .flat_map(|p| if t == 0 { vec![p, p + 10_000] } else { vec![p] })
                            .collect::<Vec<_>>()
                    })
                })
                .collect();
            threads
                .into_iter()
                .flat_map(|h| h.join().unwrap())
                .collect()
        });
        let mut distinct = ports.clone();
        distinct.sort_unstable();
        distinct.dedup();
        assert_eq!(
            distinct.len(),
            ports.len(),
            "a port was handed out twice: {ports:?}"
        );
    }

    #[test]
    fn pid_files_of_every_service_kind_are_found_with_their_marker() {
        let dir = std::env::temp_dir().join(format!("xtask-services-pids-{}", std::process::id()));
        for (sub, file) in [
            ("redis/standalone", "redis.pid"),
            ("s3", "moto.pid"),
            ("azure", "azurite.pid"),
            ("azure", "other.pid"),
        ] {
            std::fs::create_dir_all(dir.join(sub)).unwrap();
            std::fs::write(dir.join(sub).join(file), "1").unwrap();
        }
        let mut found: Vec<(String, String)> = pid_files_under(&dir)
            .into_iter()
            .map(|p| {
                let name = p
                    .pid_file
                    .file_name()
                    .unwrap()
                    .to_string_lossy()
                    .into_owned();
                (name, p.marker)
            })
            .collect();
        found.sort();
        assert_eq!(
            found,
            [
                ("azurite.pid".to_owned(), "azurite-blob".to_owned()),
                ("moto.pid".to_owned(), "moto.server".to_owned()),
                ("redis.pid".to_owned(), "redis-server".to_owned()),
            ]
        );
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn services_have_distinct_names_and_variables() {
        let mut names: Vec<&str> = SERVICES.iter().map(|s| s.name).collect();
        let mut vars: Vec<&str> = SERVICES
            .iter()
            .flat_map(|s| s.vars.iter().copied())
            .collect();
        let (n, v) = (names.len(), vars.len());
        names.sort_unstable();
        names.dedup();
        vars.sort_unstable();
        vars.dedup();
        assert_eq!((names.len(), vars.len()), (n, v));
        assert!(SERVICES.iter().all(|s| !s.vars.is_empty()));
    }

    #[test]
    fn a_dead_pid_file_is_not_live() {
        let dir = std::env::temp_dir().join(format!("xtask-services-test-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let pid_file = dir.join("x.pid");
        // Our own PID with a marker our command line does not contain.
        std::fs::write(&pid_file, std::process::id().to_string()).unwrap();
        let p = Process {
            pid_file: pid_file.clone(),
            marker: "definitely-not-in-the-command-line".into(),
        };
        assert_eq!(live_pid(&p), None);
        std::fs::write(&pid_file, "not a pid").unwrap();
        assert_eq!(live_pid(&p), None);
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
