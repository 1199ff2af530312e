//! A real single-node Apache Kafka broker (`KRaft`, combined broker+controller) for the
//! integration tests: fetches the broker jars once with Maven, starts one broker per test
//! process on free loopback ports, and makes sure it dies with the test process.

use std::collections::hash_map::RandomState;
use std::ffi::OsString;
use std::fs;
use std::hash::{BuildHasher, Hasher};
use std::io::Write;
use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::OnceLock;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::ClientConfig;

/// Must match a `kafka_2.13` release on Maven Central; passed to Maven as `-Dkafka.version`.
pub const KAFKA_VERSION: &str = "4.1.1";

const POM: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/broker/pom.xml");
const MARKER: &str = ".complete";
const READY_TIMEOUT: Duration = Duration::from_secs(90);
const LOG_TAIL_LINES: usize = 60;

/// The log4j2 config: everything to stdout, which the launcher redirects into the log file.
const LOG4J2: &str = "\
status = warn
appender.out.type = Console
appender.out.name = OUT
appender.out.layout.type = PatternLayout
appender.out.layout.pattern = [%d] %p %m (%c)%n
rootLogger.level = INFO
rootLogger.appenderRef.out.ref = OUT
";

/// Runs java in the background and polls (once a second) whether the test process is still
/// alive; statics are never dropped in Rust, so this is what stops the broker when the test
/// binary exits. SIGKILL rather than a graceful stop: its data is thrown away anyway, and a
/// lingering shutdown would compete for CPU with the next test binary's broker.
/// Arguments: $1 test pid, $2 log file, $3 scratch dir, $4 "1" to keep that dir (set
/// `IPM_KAFKA_KEEP_DIR` to inspect a run afterwards), then the java command line.
const WATCHDOG: &str = r#"
parent=$1; log=$2; dir=$3; keep=$4; shift 4
"$@" >"$log" 2>&1 </dev/null &
java=$!
echo "$java" >"$dir/java.pid"
while kill -0 "$parent" 2>/dev/null && kill -0 "$java" 2>/dev/null; do sleep 1; done
kill -9 "$java" 2>/dev/null
wait "$java" 2>/dev/null
[ "$keep" = 1 ] || rm -rf "$dir"
"#;

/// A running broker. Lives until the test process exits.
pub struct Broker {
    /// `host:port` of the PLAINTEXT listener, for `bootstrap.servers`.
    pub bootstrap: String,
    log: PathBuf,
}

impl Broker {
    /// The broker's combined stdout/stderr/log4j output.
    pub fn log_path(&self) -> &Path {
        &self.log
    }
}

/// The broker shared by every test in this test binary, started on first use.
///
/// If starting fails, every later caller gets the same error instead of retrying for 90 s.
pub fn shared() -> &'static Broker {
    static BROKER: OnceLock<Result<Broker, String>> = OnceLock::new();
    match BROKER.get_or_init(start) {
        Ok(broker) => broker,
        Err(e) => panic!("{e}"),
    }
}

fn start() -> Result<Broker, String> {
    let started = Instant::now();
    let setup = Setup::new()?;
    let launcher = setup.launch(false)?;
    // From here on the watchdog owns the directory: it removes it once java is gone, which a
    // TempDir in a never-dropped static could not do.
    let _ = setup.dir.keep();
    wait_ready(&setup.bootstrap, launcher, &setup.log)?;
    note(&format!(
        "Kafka {KAFKA_VERSION} broker ready at {} in {:.1}s (log: {})",
        setup.bootstrap,
        started.elapsed().as_secs_f64(),
        setup.log.display()
    ));
    Ok(Broker { bootstrap: setup.bootstrap, log: setup.log })
}

/// A formatted broker directory on fixed ports, ready to launch (again).
struct Setup {
    dir: tempfile::TempDir,
    java: OsString,
    classpath: OsString,
    props: PathBuf,
    log4j: PathBuf,
    log: PathBuf,
    bootstrap: String,
}

impl Setup {
    fn new() -> Result<Setup, String> {
        let jars = ensure_jars()?;
        let java = require_tool("java", "-version")?;
        let dir = tempfile::Builder::new()
            .prefix("ipm-kafka-")
            .tempdir()
            .map_err(|e| format!("cannot create broker temp dir: {e}"))?;
        let root = dir.path();
        let (port, controller_port) = free_ports()?;
        let props = root.join("server.properties");
        let log4j = root.join("log4j2.properties");
        let log = root.join("broker.log");
        write(&props, &server_properties(root, port, controller_port))?;
        write(&log4j, LOG4J2)?;
        let mut classpath = jars.into_os_string();
        classpath.push("/*");

        let format = Command::new(&java)
            .arg("-cp")
            .arg(&classpath)
            .args(["-Xmx256m", "-XX:TieredStopAtLevel=1", "kafka.tools.StorageTool", "format"])
            .arg("--config")
            .arg(&props)
            .arg("--cluster-id")
            .arg(cluster_id())
            .stdin(Stdio::null())
            .output()
            .map_err(|e| format!("cannot run the Kafka storage tool: {e}"))?;
        if !format.status.success() {
            return Err(format!(
                "formatting Kafka storage failed ({}):\n{}{}",
                format.status,
                String::from_utf8_lossy(&format.stdout),
                String::from_utf8_lossy(&format.stderr)
            ));
        }
        let bootstrap = format!("127.0.0.1:{port}");
        Ok(Setup { dir, java, classpath, props, log4j, log, bootstrap })
    }

    /// Starts java under the watchdog. With `keep`, the directory outlives java, so the broker
    /// can be started again on the same data.
    fn launch(&self, keep: bool) -> Result<std::process::Child, String> {
        let mut log4j_opt = OsString::from("-Dlog4j2.configurationFile=");
        log4j_opt.push(&self.log4j);
        let keep = keep || std::env::var_os("IPM_KAFKA_KEEP_DIR").is_some();
        Command::new("sh")
            .arg("-c")
            .arg(WATCHDOG)
            .arg("sh")
            .arg(std::process::id().to_string())
            .arg(&self.log)
            .arg(self.dir.path())
            .arg(if keep { "1" } else { "0" })
            .arg(&self.java)
            // Small heap, serial GC and C1-only JIT: a test broker wants fast startup, not
            // peak throughput, and several test binaries may each run one on a 2-core machine.
            .args(["-Xms64m", "-Xmx512m", "-XX:+UseSerialGC", "-XX:TieredStopAtLevel=1"])
            .args(["-XX:+ExitOnOutOfMemoryError", "-Djava.awt.headless=true"])
            .arg(log4j_opt)
            .arg("-cp")
            .arg(&self.classpath)
            .arg("kafka.Kafka")
            .arg(&self.props)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .map_err(|e| format!("cannot spawn the Kafka broker via sh: {e}"))
    }
}

/// Waits until the broker at `bootstrap` answers a metadata request.
fn wait_ready(
    bootstrap: &str,
    mut launcher: std::process::Child,
    log: &Path,
) -> Result<(), String> {
    let launched = Instant::now();
    let probe: BaseConsumer = ClientConfig::new()
        .set("bootstrap.servers", bootstrap)
        .set("socket.connection.setup.timeout.ms", "2000")
        .set("reconnect.backoff.max.ms", "500")
        .create()
        .map_err(|e| format!("cannot create the readiness probe client: {e}"))?;
    loop {
        if let Ok(Some(status)) = launcher.try_wait() {
            return Err(failure(log, &format!("Kafka broker exited during startup ({status})")));
        }
        let brokers =
            probe.fetch_metadata(None, Duration::from_secs(2)).map_or(0, |m| m.brokers().len());
        if brokers > 0 {
            return Ok(());
        }
        if launched.elapsed() > READY_TIMEOUT {
            return Err(failure(
                log,
                &format!("Kafka broker not ready at {bootstrap} after {READY_TIMEOUT:?}"),
            ));
        }
        std::thread::sleep(Duration::from_millis(200));
    }
}

/// A broker of one test's own, which the test can stop and start again on the same ports and
/// data, to see what a client does while its cluster is down.
pub struct OwnBroker {
    pub bootstrap: String,
    setup: Setup,
}

impl OwnBroker {
    /// Formats and starts a broker; panics with its log if it does not come up.
    pub fn start() -> OwnBroker {
        let setup = Setup::new().unwrap_or_else(|e| panic!("{e}"));
        let broker = OwnBroker { bootstrap: setup.bootstrap.clone(), setup };
        broker.resume();
        broker
    }

    /// Kills the broker (SIGKILL, like a lost node) and waits until its port is closed.
    pub fn kill(&self) {
        let pid_file = self.setup.dir.path().join("java.pid");
        if let Ok(pid) = fs::read_to_string(&pid_file) {
            let _ = Command::new("kill").arg("-9").arg(pid.trim()).status();
            let _ = fs::remove_file(&pid_file);
        }
        let deadline = Instant::now() + Duration::from_secs(30);
        while std::net::TcpStream::connect(&self.bootstrap).is_ok() {
            assert!(Instant::now() < deadline, "broker at {} did not stop", self.bootstrap);
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    /// Starts the broker again on its data; panics with its log if it does not come up.
    pub fn resume(&self) {
        let launcher = self.setup.launch(true).unwrap_or_else(|e| panic!("{e}"));
        wait_ready(&self.bootstrap, launcher, &self.setup.log).unwrap_or_else(|e| panic!("{e}"));
    }
}

impl Drop for OwnBroker {
    fn drop(&mut self) {
        self.kill();
    }
}

fn server_properties(root: &Path, port: u16, controller_port: u16) -> String {
    format!(
        "\
process.roles=broker,controller
node.id=1
controller.quorum.voters=1@127.0.0.1:{controller_port}
listeners=PLAINTEXT://127.0.0.1:{port},CONTROLLER://127.0.0.1:{controller_port}
advertised.listeners=PLAINTEXT://127.0.0.1:{port}
listener.security.protocol.map=PLAINTEXT:PLAINTEXT,CONTROLLER:PLAINTEXT
controller.listener.names=CONTROLLER
inter.broker.listener.name=PLAINTEXT
log.dirs={data}
num.partitions=1
auto.create.topics.enable=false
offsets.topic.replication.factor=1
offsets.topic.num.partitions=1
transaction.state.log.replication.factor=1
transaction.state.log.min.isr=1
transaction.state.log.num.partitions=1
share.coordinator.state.topic.replication.factor=1
share.coordinator.state.topic.min.isr=1
group.initial.rebalance.delay.ms=0
num.network.threads=2
num.io.threads=2
background.threads=2
log.segment.bytes=16777216
log.cleaner.dedupe.buffer.size=16777216
log.cleaner.backoff.ms=1000
",
        data = root.join("data").display()
    )
}

/// The directory holding the broker jars, fetched with Maven on first use.
fn ensure_jars() -> Result<PathBuf, String> {
    let (dir, user_supplied) = match std::env::var_os("IPM_KAFKA_JARS") {
        Some(d) if !d.is_empty() => (PathBuf::from(d), true),
        _ => (default_cache_dir(), false),
    };
    if dir.join(MARKER).is_file() {
        return Ok(dir);
    }
    // A directory someone filled by hand (e.g. a Kafka distribution's libs/) is taken as is.
    if user_supplied && has_kafka_jar(&dir) {
        return Ok(dir);
    }
    let mvn = require_tool("mvn", "-v")?;
    let parent = dir.parent().ok_or_else(|| format!("bad jar dir {}", dir.display()))?;
    fs::create_dir_all(parent).map_err(|e| format!("cannot create {}: {e}", parent.display()))?;

    // Copy into a private directory and rename it into place, so two test processes
    // fetching at once never see each other's half-copied jars.
    let staging = parent.join(format!(".kafka-jars-{}-{}", std::process::id(), nanos()));
    note(&format!(
        "fetching Apache Kafka {KAFKA_VERSION} broker jars with Maven (first run only) into {}",
        dir.display()
    ));
    let fetched = Instant::now();
    let out = Command::new(&mvn)
        .args(["-B", "-q", "-Dstyle.color=never", "-f", POM])
        .arg(format!("-Dkafka.version={KAFKA_VERSION}"))
        .args(["dependency:copy-dependencies", "-DincludeScope=runtime"])
        .arg(format!("-DoutputDirectory={}", staging.display()))
        .stdin(Stdio::null())
        .output()
        .map_err(|e| format!("cannot run mvn: {e}"))?;
    if !out.status.success() || !has_kafka_jar(&staging) {
        let _ = fs::remove_dir_all(&staging);
        return Err(format!(
            "Maven could not fetch the Kafka {KAFKA_VERSION} broker jars ({}):\n{}{}",
            out.status,
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        ));
    }
    write(&staging.join(MARKER), KAFKA_VERSION)?;

    let mut renamed = fs::rename(&staging, &dir);
    if renamed.is_err() && !dir.join(MARKER).is_file() && !user_supplied {
        // A leftover from an interrupted run without the marker: ours to replace.
        let _ = fs::remove_dir_all(&dir);
        renamed = fs::rename(&staging, &dir);
    }
    if renamed.is_err() {
        let _ = fs::remove_dir_all(&staging);
    }
    if !dir.join(MARKER).is_file() {
        return Err(format!(
            "could not put the Kafka jars into {} ({renamed:?}); empty or remove that directory",
            dir.display()
        ));
    }
    note(&format!("fetched Kafka jars in {:.1}s", fetched.elapsed().as_secs_f64()));
    Ok(dir)
}

fn default_cache_dir() -> PathBuf {
    let manifest = Path::new(env!("CARGO_MANIFEST_DIR"));
    let target = match std::env::var_os("CARGO_TARGET_DIR") {
        Some(t) if !t.is_empty() => manifest.join(t),
        _ => manifest.join("target"),
    };
    target.join("kafka-broker").join(KAFKA_VERSION)
}

fn has_kafka_jar(dir: &Path) -> bool {
    fs::read_dir(dir).is_ok_and(|entries| {
        entries.flatten().any(|e| e.file_name().to_string_lossy().starts_with("kafka_2.13-"))
    })
}

/// Checks that `tool` runs at all, so a missing JDK or Maven is reported as such rather than
/// as an obscure spawn error halfway through startup.
fn require_tool(tool: &str, version_flag: &str) -> Result<OsString, String> {
    let found = Command::new(tool)
        .arg(version_flag)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status();
    match found {
        Ok(_) => Ok(OsString::from(tool)),
        Err(e) => Err(format!(
            "`{tool}` is needed to run the Kafka broker for the integration tests but could not \
             be run ({e}). Install a Java 17+ JDK and Maven (Debian: `apt-get install \
             openjdk-17-jdk-headless maven`; .ci/run installs them)."
        )),
    }
}

/// Two distinct free loopback ports; both are held while the second is picked.
fn free_ports() -> Result<(u16, u16), String> {
    let bind = || TcpListener::bind("127.0.0.1:0").and_then(|l| Ok((l.local_addr()?.port(), l)));
    let (a, _la) = bind().map_err(|e| format!("cannot bind a loopback port: {e}"))?;
    let (b, _lb) = bind().map_err(|e| format!("cannot bind a loopback port: {e}"))?;
    Ok((a, b))
}

/// A random Kafka cluster id: 16 bytes as unpadded base64url (22 chars), as `Uuid.toString`
/// prints it. Kafka's own generator avoids a leading '-', which command lines mistake for a flag.
fn cluster_id() -> String {
    const ALPHABET: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_";
    loop {
        let mut bytes = Vec::with_capacity(16);
        for i in 0..2u64 {
            let mut h = RandomState::new().build_hasher();
            h.write_u64(i);
            h.write_u128(nanos());
            h.write_u32(std::process::id());
            bytes.extend_from_slice(&h.finish().to_le_bytes());
        }
        let mut id = String::with_capacity(22);
        for chunk in bytes.chunks(3) {
            let n = chunk.iter().fold(0u32, |acc, &b| acc << 8 | u32::from(b))
                << (8 * (3 - chunk.len()));
            for k in 0..=chunk.len() {
                id.push(char::from(ALPHABET[(n >> (18 - 6 * k) & 63) as usize]));
            }
        }
        if !id.starts_with('-') {
            return id;
        }
    }
}

fn nanos() -> u128 {
    SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| d.as_nanos())
}

fn write(path: &Path, contents: &str) -> Result<(), String> {
    fs::write(path, contents).map_err(|e| format!("cannot write {}: {e}", path.display()))
}

fn failure(log: &Path, what: &str) -> String {
    let text = fs::read_to_string(log).unwrap_or_else(|e| format!("(no log: {e})"));
    let lines: Vec<&str> = text.lines().collect();
    let tail = lines[lines.len().saturating_sub(LOG_TAIL_LINES)..].join("\n");
    format!("{what}\n--- last {LOG_TAIL_LINES} lines of {} ---\n{tail}", log.display())
}

/// Progress messages go straight to stderr: libtest captures `eprintln!`, and a silent
/// minute-long first run looks like a hang.
fn note(msg: &str) {
    let _ = writeln!(std::io::stderr(), "[kafka-broker] {msg}");
}
