//! `cargo xtask services start|stop|status`: the servers the tests and
//! benchmarks talk to, on loopback, with throw-away data under
//! `<target>/services/`.
//!
//! Every service is an entry of [`SERVICES`]: a name, an `install` step
//! that adds what is missing on the machine (Debian packages, and later
//! PyPI's moto or npm's azurite), and a `start` step that launches its
//! processes on free loopback ports, waits until they answer and returns
//! the environment variables the tests read. Today there is one entry:
//!
//! - `redis`: one standalone `redis-server` and a 3-master Redis Cluster,
//!   from Debian's `redis-server`/`redis-tools`, exported as
//!   `HIGHWATER_REDIS_URL=redis://127.0.0.1:P/` and
//!   `HIGHWATER_REDIS_CLUSTER=redis://127.0.0.1:P1/,redis://127.0.0.1:P2/,…`.
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
//! [`with_services`] (used by `cargo xtask test` and `cargo xtask bench`)
//! reuses services that are already up (started by hand with `cargo xtask
//! services start`) and leaves them running; otherwise it starts them before
//! its closure and stops them afterwards on every path, failures and panics
//! included.

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

/// One kind of server the tests need.
struct Service {
    /// Short name, also the name of its directory under `<target>/services`.
    name: &'static str,
    /// Installs what is missing on this machine; a no-op when present.
    install: fn() -> Result,
    /// Starts the service's processes with their data under `dir` (fresh
    /// and empty) and returns what was started.
    start: fn(dir: &Path) -> Result<Started>,
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

/// Every service, in start order. Add an S3 server (moto) or azurite as
/// further entries: an install function (pip / npm) and a start function
/// returning their endpoints.
const SERVICES: &[Service] = &[Service {
    name: "redis",
    install: redis::install,
    start: redis::start,
}];

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

/// `cargo xtask services start`: starts every service unless all are
/// already running, and prints the variables to export.
pub fn start(ws: &Workspace) -> Result<Env> {
    if let Some(env) = running(ws)? {
        println!(
            "xtask: services are already running (see {}); stop them with `cargo xtask services stop`",
            ws.display_path(&env_file(ws))
        );
        print_exports(&env);
        return Ok(env);
    }
    // Left-overs of an interrupted run: stop whatever is still alive.
    stop(ws)?;
    let dir = services_dir(ws);
    std::fs::create_dir_all(&dir).map_err(io_context("create", &dir))?;
    let mut env = Env::default();
    let mut processes = Vec::new();
    for service in SERVICES {
        let result = (service.install)().and_then(|()| {
            let sdir = dir.join(service.name);
            std::fs::create_dir_all(&sdir).map_err(io_context("create", &sdir))?;
            println!("xtask: starting service {}", service.name);
            (service.start)(&sdir)
        });
        match result {
            Ok(started) => {
                env.vars.extend(started.env);
                processes.extend(started.processes);
                // Recorded after every service, so a failure later still
                // leaves what must be stopped on disk.
                write_processes(ws, &processes)?;
            }
            Err(e) => {
                // A half-started service may have left processes behind
                // that are not recorded yet: its start function records
                // pid files as it goes into the service directory.
                processes.extend(pid_files_under(&dir.join(service.name)));
                let _ = write_processes(ws, &processes);
                let _ = stop(ws);
                bail!("service {} failed to start: {e}", service.name);
            }
        }
    }
    write_env(ws, &env)?;
    println!(
        "xtask: services are up; environment in {}",
        ws.display_path(&env_file(ws))
    );
    print_exports(&env);
    Ok(env)
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
    let env = start(ws)?;
    let outcome = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| f(&env)));
    let stopped = stop(ws);
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

/// The environment of the running services, if every recorded process is
/// alive and the environment file is complete.
fn running(ws: &Workspace) -> Result<Option<Env>> {
    let processes = read_processes(ws)?;
    if processes.is_empty() || !processes.iter().all(|p| live_pid(p).is_some()) {
        return Ok(None);
    }
    read_env(ws)
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
fn on_path(program: &str) -> bool {
    std::env::var_os("PATH").is_some_and(|paths| {
        std::env::split_paths(&paths)
            .any(|d| std::fs::metadata(d.join(program)).is_ok_and(|m| m.is_file()))
    })
}

/// Installs Debian packages non-interactively (`apt-get update` first).
fn apt_install(packages: &[&str]) -> Result {
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

/// A loopback port that is free now (bound and released), and for which
/// `port + offset` is free too (`offset` 0 means only `port`).
fn free_port(offset: u16, taken: &[u16]) -> Result<u16> {
    let bindable = |p: u16| TcpListener::bind(SocketAddrV4::new(Ipv4Addr::LOCALHOST, p)).is_ok();
    if offset == 0 {
        for _ in 0..64 {
            let listener = TcpListener::bind(SocketAddrV4::new(Ipv4Addr::LOCALHOST, 0))
                .map_err(|e| format!("bind a loopback port: {e}"))?;
            let port = listener
                .local_addr()
                .map_err(|e| format!("local address: {e}"))?
                .port();
            if !taken.contains(&port) {
                return Ok(port);
            }
        }
        bail!("no free loopback port");
    }
    // Both ports must fit below 65536: scan a range below the ephemeral
    // ports, starting at a spot that differs between processes.
    let span = 20_000u32;
    let start = std::process::id() * 7919 % span;
    for i in 0..span {
        let port = (20_000 + (start + i) % span) as u16;
        if !taken.contains(&port) && bindable(port) && bindable(port + offset) {
            return Ok(port);
        }
    }
    bail!("no free loopback port pair with offset {offset}")
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

    pub(super) fn install() -> Result {
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

    pub(super) fn start(dir: &Path) -> Result<Started> {
        let mut started = Started::default();
        let mut taken = Vec::new();

        let port = free_port(0, &taken)?;
        taken.push(port);
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
            let port = free_port(10_000, &taken)?;
            taken.push(port);
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn free_port_pairs_fit_below_65536() {
        let p = free_port(10_000, &[]).unwrap();
        assert!(u32::from(p) + 10_000 < 65_536);
        let q = free_port(0, &[p]).unwrap();
        assert_ne!(p, q);
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
