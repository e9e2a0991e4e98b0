//! Fuzz targets of scst-accel (docs/fuzzing.md): one `target(data: &[u8])` per input the
//! project does not control. Each target reads its input through [`arbitrary::Unstructured`]
//! and checks invariants beyond "no panic" with [`check!`], which panics, so a violated
//! invariant is a crash to AFL++ as much as an index out of bounds.
//!
//! The same functions run three ways: under AFL++ (`src/bin/afl_*.rs`, feature `afl`, driven
//! by `fuzz/run.sh`), over the seed corpus and a bounded number of seeded random inputs in
//! `cargo test` (`tests/replay.rs`), and as the structured random fallback of `fuzz/run.sh`
//! when AFL++ is not available ([`random_run`]).

pub mod config;
mod device;
pub mod loopback;
pub mod nvme;
pub mod sca1;
pub mod scsi;
pub mod tcmu_netlink;

/// An invariant of a target: panics (a crash to the fuzzer) with the message when it is false.
#[macro_export]
macro_rules! check {
    ($cond:expr, $($msg:tt)+) => {
        if !$cond {
            panic!("invariant violated: {}: {}", stringify!($cond), format_args!($($msg)+));
        }
    };
}

/// A fuzz target.
pub type Target = fn(&[u8]);

/// Every target, by the name its corpus directory (`fuzz/corpus/<name>`) and AFL binary
/// (`afl_<name>`) carry.
pub const TARGETS: &[(&str, Target)] = &[
    ("scsi", scsi::target),
    ("config", config::target),
    ("sca1", sca1::target),
    ("nvme", nvme::target),
    ("loopback", loopback::target),
    ("tcmu_netlink", tcmu_netlink::target),
];

/// The target named `name`.
pub fn target(name: &str) -> Option<Target> {
    TARGETS.iter().find(|(n, _)| *n == name).map(|&(_, t)| t)
}

/// A small deterministic generator (xorshift64*) for the structured random mode: no coverage
/// guidance, but the same inputs on every run with the same seed.
#[derive(Clone, Debug)]
pub struct Rng(u64);

impl Rng {
    /// A generator from `seed` (any value; 0 is remapped).
    pub fn new(seed: u64) -> Self {
        Self(seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1)
    }

    /// The next 64 random bits.
    pub fn next_u64(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }

    /// Fill `out` with random bytes.
    pub fn fill(&mut self, out: &mut [u8]) {
        for chunk in out.chunks_mut(8) {
            let bytes = self.next_u64().to_le_bytes();
            chunk.copy_from_slice(&bytes[..chunk.len()]);
        }
    }
}

/// One structured random input: either fresh random bytes, or a seed from `corpus` with a few
/// bytes overwritten, inserted or removed (cheap mutations, so seeds that reach deep paths keep
/// being explored). `max_len` bounds the length.
pub fn random_input(rng: &mut Rng, corpus: &[Vec<u8>], max_len: usize, out: &mut Vec<u8>) {
    out.clear();
    let pick = rng.next_u64();
    if corpus.is_empty() || pick.is_multiple_of(4) {
        let len = (rng.next_u64() as usize) % (max_len + 1);
        out.resize(len, 0);
        rng.fill(out);
        return;
    }
    out.extend_from_slice(&corpus[(pick >> 8) as usize % corpus.len()]);
    let edits = 1 + rng.next_u64() % 8;
    for _ in 0..edits {
        let r = rng.next_u64();
        let at = if out.is_empty() {
            0
        } else {
            (r >> 16) as usize % out.len()
        };
        match r % 4 {
            0 | 1 if !out.is_empty() => out[at] = (r >> 8) as u8,
            2 if out.len() < max_len => out.insert(at, (r >> 40) as u8),
            3 if !out.is_empty() => {
                out.remove(at);
            }
            _ => out.push((r >> 24) as u8),
        }
    }
    out.truncate(max_len);
}

/// What a structured random run did.
#[derive(Clone, Copy, Debug, Default)]
pub struct RandomRun {
    /// Inputs run.
    pub executions: u64,
}

/// Run `target` on `iterations` structured random inputs from `seed` (or until `deadline`),
/// mutating `corpus`. A violated invariant or any panic propagates: the caller reports it with
/// the input, which `on_input` is given before each run (to save it).
pub fn random_run(
    target: Target,
    corpus: &[Vec<u8>],
    seed: u64,
    iterations: u64,
    deadline: Option<std::time::Instant>,
    mut on_input: impl FnMut(&[u8]),
) -> RandomRun {
    let mut rng = Rng::new(seed);
    let mut input = Vec::new();
    let mut run = RandomRun::default();
    while run.executions < iterations && deadline.is_none_or(|d| std::time::Instant::now() < d) {
        random_input(&mut rng, corpus, 4096, &mut input);
        on_input(&input);
        target(&input);
        run.executions += 1;
    }
    run
}

/// The seed corpus of `name`: every file of `fuzz/corpus/<name>`, sorted by name.
///
/// # Errors
/// When the directory cannot be read.
pub fn corpus(name: &str) -> std::io::Result<Vec<(String, Vec<u8>)>> {
    let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("corpus")
        .join(name);
    let mut files = Vec::new();
    for entry in std::fs::read_dir(&dir)? {
        let path = entry?.path();
        if path.is_file() {
            let name = path
                .file_name()
                .map(|n| n.to_string_lossy().into_owned())
                .unwrap_or_default();
            files.push((name, std::fs::read(&path)?));
        }
    }
    files.sort();
    Ok(files)
}
