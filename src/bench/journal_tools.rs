//! `ringex bench journal-tools`: the journal toolkit's throughput on a journal of many
//! commands, beside `cat` and `sha256sum` of the same files in the same run (the page
//! cache warm for all of them): `verify --deep`, `export --format jsonl` and `events`.
//! `verify` reads what the disk holds (it drops the segments' cached pages first, as the
//! start does), so `cat` is also timed from the disk, its pages dropped the same way.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::time::Instant;

use ringex_engine::codec::{encode_command_vec, CODEC_VERSION};
use ringex_journal::{Durability, Journal};
use ringex_tools::journal::{format::Format, verbs, Filter};

#[derive(Clone, Debug)]
pub struct JournalToolsBenchArgs {
    /// Commands in the journal (the generator's setup and book prefill included).
    pub commands: usize,
    /// A scratch directory; its `journal/` is replaced.
    pub dir: PathBuf,
    pub seed: u64,
}

/// Counts the lines written through it, writing nothing.
struct Lines(u64);

impl Write for Lines {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0 += buf.iter().filter(|&&b| b == b'\n').count() as u64;
        Ok(buf.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

/// CPU seconds (user + system) of this process, or of its waited-for children.
fn cpu_s(children: bool) -> f64 {
    // SAFETY: an all-zero rusage is a valid value; getrusage writes into it.
    let mut u: libc::rusage = unsafe { std::mem::zeroed() };
    let who = if children {
        libc::RUSAGE_CHILDREN
    } else {
        libc::RUSAGE_SELF
    };
    // SAFETY: getrusage writes into the struct it is given.
    unsafe { libc::getrusage(who, &mut u) };
    let s = |t: libc::timeval| t.tv_sec as f64 + t.tv_usec as f64 / 1e6;
    s(u.ru_utime) + s(u.ru_stime)
}

/// (wall seconds, CPU seconds) of `f`: CPU of this process, or of its children.
fn timed(children: bool, f: impl FnOnce() -> Result<(), String>) -> Result<(f64, f64), String> {
    let (t, c) = (Instant::now(), cpu_s(children));
    f()?;
    Ok((t.elapsed().as_secs_f64(), cpu_s(children) - c))
}

fn shell(what: &str, files: &[PathBuf]) -> Result<(), String> {
    let status = std::process::Command::new(what)
        .args(files)
        .stdout(std::process::Stdio::null())
        .status()
        .map_err(|e| format!("cannot run {what}: {e}"))?;
    if !status.success() {
        return Err(format!("{what} failed: {status}"));
    }
    Ok(())
}

/// Drops the files' clean pages from the page cache, as `verify` does before it reads.
fn drop_cache(files: &[PathBuf]) -> Result<(), String> {
    use std::os::fd::AsRawFd;
    for path in files {
        let f = std::fs::File::open(path).map_err(|e| format!("{}: {e}", path.display()))?;
        // SAFETY: plain syscall on an open descriptor.
        unsafe { libc::posix_fadvise(f.as_raw_fd(), 0, 0, libc::POSIX_FADV_DONTNEED) };
    }
    Ok(())
}

fn write_journal(dir: &Path, args: &JournalToolsBenchArgs) -> Result<u64, String> {
    let w = super::engine::generate(10, args.commands, args.seed);
    let mut cfg = ringex_journal::Config::new(dir);
    cfg.durability = Durability::Async {
        flush_interval_ms: 200,
    };
    cfg.low_space_threshold_bytes = 0;
    let mut journal = Journal::open(cfg).map_err(|e| e.to_string())?;
    let mut buf = Vec::with_capacity(128);
    let t0 = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos() as u64);
    let mut n = 0u64;
    for c in w.setup.iter().chain(&w.prefill).chain(&w.commands) {
        buf.clear();
        encode_command_vec(c, &mut buf);
        // A microsecond apart: a journal of ten million spans ten seconds.
        journal
            .append(
                ringex_tools::journal::format::RECORD_COMMAND,
                u16::from(CODEC_VERSION),
                t0 + n * 1_000,
                &buf,
            )
            .map_err(|e| e.to_string())?;
        n += 1;
    }
    journal.close().map_err(|e| e.to_string())?;
    Ok(n)
}

/// Writes the journal, then times each reader over it and prints one table.
pub fn run(args: &JournalToolsBenchArgs) -> Result<(), String> {
    let dir = args.dir.join("journal");
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).map_err(|e| format!("{}: {e}", dir.display()))?;
    let t = Instant::now();
    let records = write_journal(&dir, args)?;
    eprintln!(
        "wrote {records} records in {:.1} s",
        t.elapsed().as_secs_f64()
    );
    let files: Vec<PathBuf> = ringex_journal::list_segments(&dir)
        .map_err(|e| e.to_string())?
        .into_iter()
        .map(|s| s.path)
        .collect();
    let bytes: u64 = files
        .iter()
        .map(|p| std::fs::metadata(p).map_or(0, |m| m.len()))
        .sum();
    drop_cache(&files)?;
    let cat_disk = timed(true, || shell("cat", &files))?;
    // Warm the page cache: every reader below reads from memory, but `verify`, which
    // drops the pages and reads the disk.
    shell("cat", &files)?;
    let cat = timed(true, || shell("cat", &files))?;
    let sha = timed(true, || shell("sha256sum", &files))?;
    let deep = timed(false, || {
        crate::journal_cli::verify_deep_text(&dir).map(|_| ())
    })?;
    let mut out = std::io::BufWriter::with_capacity(
        1 << 16,
        std::fs::File::create("/dev/null").map_err(|e| e.to_string())?,
    );
    let export = timed(false, || {
        verbs::export(&dir, Filter::default(), Format::Jsonl, &mut out)
    })?;
    let mut lines = Lines(0);
    let events = timed(false, || {
        verbs::events(&dir, Filter::default(), None, Format::Jsonl, &mut lines)
    })?;
    let mb = bytes as f64 / 1e6;
    println!(
        "journal of {records} commands, {} segment file(s), {:.0} MB (files as the writer \
         preallocated them); {}",
        files.len(),
        mb,
        super::cpu_model()
    );
    println!(
        "| reader | wall s | CPU s | MB/s (wall) | records/s (wall) | MB/s (CPU) | \
         records/s (CPU) | share of cat's (wall / CPU) |"
    );
    println!("|---|---:|---:|---:|---:|---:|---:|---:|");
    for (name, (wall, cpu)) in [
        ("cat FILES > /dev/null", cat),
        (
            "cat FILES > /dev/null, from the disk (pages dropped first)",
            cat_disk,
        ),
        ("sha256sum FILES", sha),
        ("ringex journal verify --deep", deep),
        ("ringex journal export --format jsonl > /dev/null", export),
        ("ringex journal events --format jsonl (replay)", events),
    ] {
        let cpu = cpu.max(1e-3);
        println!(
            "| {name} | {wall:.2} | {cpu:.2} | {:.0} | {:.0} | {:.0} | {:.0} | {:.0}% / {:.0}% |",
            mb / wall,
            records as f64 / wall,
            mb / cpu,
            records as f64 / cpu,
            100.0 * cat.0 / wall,
            100.0 * cat.1.max(1e-3) / cpu
        );
    }
    println!(
        "verify --deep against cat from the disk: {:.0}% (wall) / {:.0}% (CPU)",
        100.0 * cat_disk.0 / deep.0,
        100.0 * cat_disk.1.max(1e-3) / deep.1.max(1e-3)
    );
    println!(
        "events: {} lines, {:.0} events/s (wall)",
        lines.0,
        lines.0 as f64 / events.0
    );
    Ok(())
}
