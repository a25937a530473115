//! Crash reports, service side: reads what a dead host's fault handler left in its crash memfd
//! (`plughost_sys::crash_report`), unwinds the stack copy with the plugin library's CFI (`.eh_frame`) and
//! names each frame from the library's DWARF (function, file:line) or, without debug info, its
//! symbol table (`libx.so+0x1234`, nearest symbol).
//!
//! Everything in the memfd is untrusted (the plugin can write it): every field is bounded, the walk
//! is bounded ([`MAX_FRAMES`], strictly increasing stack pointer), names are cleaned of control
//! characters and truncated, and the whole text stays under [`MAX_TEXT`] bytes. The library bytes
//! are the verified ones (the service's sealed copy). A forged report can only lie about the
//! plugin's own crash.
//!
//! Frames in other libraries (libc's `abort`, a `strlen` given NULL) are unwound with that
//! library's CFI when it is a root-owned regular file under the system library directories whose
//! code size matches what the host mapped ([`system_library`]); otherwise the walk scans the stack
//! copy for the next plausible return address into the plugin. It stops when it leaves the plugin
//! for the host's code that called it.

use std::fmt::Write as _;
use std::os::fd::{AsFd, OwnedFd};
use std::path::PathBuf;

use plughost_sys::crash_report::layout;

mod image;
use image::Image;

/// Most frames a report lists.
pub const MAX_FRAMES: usize = 24;
/// Most bytes of a report's text (the log and `plugins --json`).
pub const MAX_TEXT: usize = 4096;
/// Longest function or file name shown.
const MAX_NAME: usize = 160;
const RIP: usize = 16;
const RSP: usize = 7;
const RBP: usize = 6;

/// Where the service reads the plugin library's bytes back (the ones it verified).
pub(crate) enum LibrarySource {
    /// The sealed memfd the host loaded.
    Sealed(OwnedFd),
    /// The checked path (when memfds cannot be executable here).
    Path(PathBuf),
}

/// Where a host died, as far as its report tells.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CrashReport {
    pub signal: i32,
    /// The faulting address (SIGSEGV, SIGBUS, SIGILL, SIGFPE raised by the CPU).
    pub address: Option<u64>,
    /// Innermost first.
    pub frames: Vec<Frame>,
}

/// One frame of a crash report.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Frame {
    pub pc: u64,
    /// `plugin.so`, `libc.so.6`, or `?`.
    pub module: String,
    /// Offset of `pc` in the module's file addresses.
    pub offset: u64,
    /// Set for frames of the plugin library.
    pub in_plugin: bool,
    pub function: Option<String>,
    /// File name and line, from DWARF.
    pub location: Option<(String, u32)>,
}

impl Frame {
    fn place(&self) -> String {
        format!("{}+{:#x}", self.module, self.offset)
    }

    /// `parse_config (x.c:42)`, `on_vm_started (x.so+0x1139)`, `x.so+0x1139`.
    fn short(&self) -> String {
        match (&self.function, &self.location) {
            (Some(function), Some((file, line))) => format!("{function} ({}:{line})", base(file)),
            (Some(function), None) => format!("{function} ({})", self.place()),
            (None, _) => self.place(),
        }
    }
}

fn base(path: &str) -> &str {
    path.rsplit('/').next().unwrap_or(path)
}

impl CrashReport {
    /// ` (address 0x0) in parse_config (x.c:42), called from on_vm_started (x.c:88)`: what follows
    /// `killed by signal SIGSEGV` in the error. Names the innermost two frames of the plugin that are
    /// not the Rust runtime's; empty when the report has none.
    pub fn summary(&self) -> String {
        let mut text = String::new();
        if let Some(address) = self.address {
            let _ = write!(text, " (address {address:#x})");
        }
        let mut own = self.frames.iter().filter(|f| f.in_plugin && !runtime(f));
        if let Some(first) = own.next() {
            let _ = write!(text, " in {}", first.short());
            if let Some(caller) = own.next() {
                let _ = write!(text, ", called from {}", caller.short());
            }
        } else if let Some(first) = self.frames.first() {
            let _ = write!(text, " in {}", first.short());
        }
        text
    }

    /// The whole stack, one line per frame, at most `MAX_TEXT` bytes.
    pub fn stack(&self) -> String {
        let mut text = String::new();
        for (i, frame) in self.frames.iter().enumerate() {
            let mut line = format!("#{i} {:#018x} ", frame.pc);
            match &frame.function {
                Some(function) => {
                    let _ = write!(line, "{function}");
                }
                None => line.push('?'),
            }
            if let Some((file, number)) = &frame.location {
                let _ = write!(line, " at {file}:{number}");
            }
            let _ = writeln!(line, " [{}]", frame.place());
            if text.len() + line.len() > MAX_TEXT {
                text.push_str("...\n");
                break;
            }
            text.push_str(&line);
        }
        text
    }
}

/// Frames of the Rust runtime (the abort and panic machinery), skipped by the summary.
fn runtime(frame: &Frame) -> bool {
    frame.function.as_deref().is_some_and(|f| {
        [
            "std::",
            "core::",
            "alloc::",
            "__rust",
            "rust_panic",
            "panic_abort::",
        ]
        .iter()
        .any(|prefix| f.starts_with(prefix))
    })
}

/// Reads `memfd` and, when it holds a complete report, unwinds and names it.
pub(crate) fn read_report(
    memfd: &OwnedFd,
    library: &LibrarySource,
    library_name: &str,
) -> Option<CrashReport> {
    let mut bytes = vec![0u8; layout::SIZE];
    let mut filled = 0;
    while filled < bytes.len() {
        match rustix::io::pread(memfd.as_fd(), &mut bytes[filled..], filled as u64) {
            Ok(0) => break,
            Ok(n) => filled += n,
            Err(rustix::io::Errno::INTR) => {}
            Err(_) => return None,
        }
    }
    let raw = Raw::parse(&bytes[..filled])?;
    let image = match library {
        LibrarySource::Sealed(fd) => read_all(fd),
        LibrarySource::Path(path) => std::fs::read(path).ok(),
    };
    Some(raw.symbolize(image.as_deref(), library_name))
}

fn read_all(fd: &OwnedFd) -> Option<Vec<u8>> {
    let len = usize::try_from(rustix::fs::fstat(fd).ok()?.st_size).ok()?;
    let mut bytes = vec![0u8; len];
    let mut filled = 0;
    while filled < len {
        match rustix::io::pread(fd, &mut bytes[filled..], filled as u64) {
            Ok(0) => return None,
            Ok(n) => filled += n,
            Err(rustix::io::Errno::INTR) => {}
            Err(_) => return None,
        }
    }
    Some(bytes)
}

struct Module {
    start: u64,
    end: u64,
    bias: u64,
    plugin: bool,
    /// The path the host's dynamic linker gave (untrusted), cleaned.
    path: String,
}

impl Module {
    fn name(&self) -> &str {
        base(&self.path)
    }
}

/// Most bytes of a system library read to unwind through it.
const MAX_SYSTEM_LIBRARY: u64 = 64 << 20;

/// The bytes of the system library at `path` as the host named it, if it is one: an absolute path
/// under the system library directories, without `..`, resolving to a root-owned regular file
/// there, no larger than [`MAX_SYSTEM_LIBRARY`]. (The path comes from the plugin's process: it must
/// not make the service read anything else, or block on a FIFO.)
fn system_library(path: &str) -> Option<Vec<u8>> {
    use std::os::unix::fs::MetadataExt;
    const DIRS: [&str; 5] = [
        "/lib/",
        "/lib64/",
        "/usr/lib/",
        "/usr/lib64/",
        "/usr/local/lib/",
    ];
    let under = |p: &str| DIRS.iter().any(|dir| p.starts_with(dir));
    if !under(path) || path.split('/').any(|c| c == "..") {
        return None;
    }
    let real = std::fs::canonicalize(path).ok()?;
    let meta = std::fs::metadata(&real).ok()?;
    if !under(real.to_str()?)
        || !meta.is_file()
        || meta.uid() != 0
        || meta.len() > MAX_SYSTEM_LIBRARY
    {
        return None;
    }
    std::fs::read(real).ok()
}

/// The report as the handler wrote it, bounds-checked.
struct Raw<'a> {
    signal: i32,
    code: i64,
    address: u64,
    regs: [u64; layout::REG_COUNT],
    stack_start: u64,
    stack: &'a [u8],
    modules: Vec<Module>,
}

fn u64_at(bytes: &[u8], at: usize) -> Option<u64> {
    let field = bytes.get(at..at + 8)?;
    Some(u64::from_le_bytes(field.try_into().ok()?))
}

impl<'a> Raw<'a> {
    fn parse(bytes: &'a [u8]) -> Option<Raw<'a>> {
        if bytes.get(..8)? != layout::MAGIC || u64_at(bytes, layout::STATE_AT)? != layout::COMPLETE
        {
            return None;
        }
        let mut regs = [0u64; layout::REG_COUNT];
        for (i, reg) in regs.iter_mut().enumerate() {
            *reg = u64_at(bytes, layout::REGS_AT + i * 8)?;
        }
        let stack_len = usize::try_from(u64_at(bytes, layout::STACK_LEN_AT)?)
            .ok()?
            .min(layout::STACK_MAX);
        let count = usize::try_from(u64_at(bytes, layout::MODULE_COUNT_AT)?)
            .ok()?
            .min(layout::MAX_MODULES);
        let modules = (0..count)
            .filter_map(|i| {
                let at = layout::MODULES_AT + i * layout::MODULE_LEN;
                let entry = bytes.get(at..at + layout::MODULE_LEN)?;
                let name = &entry[32..];
                let name = &name[..name.iter().position(|&b| b == 0).unwrap_or(name.len())];
                Some(Module {
                    start: u64_at(entry, 0)?,
                    end: u64_at(entry, 8)?,
                    bias: u64_at(entry, 16)?,
                    plugin: u64_at(entry, 24)? & layout::MODULE_IS_PLUGIN != 0,
                    path: clean_path(&String::from_utf8_lossy(name)),
                })
            })
            .filter(|m| m.start < m.end)
            .collect();
        Some(Raw {
            signal: i32::try_from(u64_at(bytes, layout::SIGNAL_AT)?).ok()?,
            code: u64_at(bytes, layout::CODE_AT)? as i64,
            address: u64_at(bytes, layout::ADDRESS_AT)?,
            regs,
            stack_start: u64_at(bytes, layout::STACK_START_AT)?,
            stack: bytes.get(layout::STACK_AT..layout::STACK_AT + stack_len)?,
            modules,
        })
    }

    /// The word at `address` in the stack copy.
    fn stack_word(&self, address: u64) -> Option<u64> {
        let offset = usize::try_from(address.checked_sub(self.stack_start)?).ok()?;
        u64_at(self.stack, offset)
    }

    fn stack_end(&self) -> u64 {
        self.stack_start.saturating_add(self.stack.len() as u64)
    }

    fn module_of(&self, pc: u64) -> Option<usize> {
        self.modules
            .iter()
            .position(|m| (m.start..m.end).contains(&pc))
    }

    fn symbolize(&self, plugin_bytes: Option<&[u8]>, library_name: &str) -> CrashReport {
        // Other libraries' bytes, read only where a frame may be in one.
        let system: Vec<Option<Vec<u8>>> = self
            .modules
            .iter()
            .map(|m| {
                let used = self.regs[RIP] != 0 && !m.plugin;
                used.then(|| system_library(&m.path)).flatten()
            })
            .collect();
        let images: Vec<Option<Image<'_>>> = self
            .modules
            .iter()
            .zip(&system)
            .map(|(m, bytes)| {
                let bytes = if m.plugin {
                    plugin_bytes
                } else {
                    bytes.as_deref()
                };
                // The file must be what the host mapped: the same span of code.
                bytes
                    .and_then(Image::new)
                    .filter(|image| m.plugin || image.code_span() == Some(m.end - m.start))
            })
            .collect();
        let pcs = self.unwind(&images);
        let frames = pcs
            .into_iter()
            .flat_map(|(pc, caller)| self.frames_at(pc, caller, &images, library_name))
            .take(MAX_FRAMES)
            .collect();
        // The kernel's si_code is positive for a fault it raised; then si_addr is the address.
        let faulted = self.code > 0
            && [libc::SIGSEGV, libc::SIGBUS, libc::SIGILL, libc::SIGFPE].contains(&self.signal);
        CrashReport {
            signal: self.signal,
            address: faulted.then_some(self.address),
            frames,
        }
    }

    /// The frames at `pc` (more than one where DWARF shows inlined calls).
    fn frames_at(
        &self,
        pc: u64,
        caller: bool,
        images: &[Option<Image<'_>>],
        library_name: &str,
    ) -> Vec<Frame> {
        let Some(index) = self.module_of(pc) else {
            return vec![Frame {
                pc,
                module: "?".into(),
                offset: pc,
                in_plugin: false,
                function: None,
                location: None,
            }];
        };
        let module = &self.modules[index];
        let offset = pc.wrapping_sub(module.bias);
        let frame = Frame {
            pc,
            module: if module.plugin {
                clean(library_name)
            } else {
                module.name().to_owned()
            },
            offset,
            in_plugin: module.plugin,
            function: None,
            location: None,
        };
        match &images[index] {
            // A return address is after its call: look up the call itself.
            Some(image) => image.describe(frame, offset.wrapping_sub(u64::from(caller))),
            None => vec![frame],
        }
    }

    /// Program counters innermost first, each with whether it is a return address.
    fn unwind(&self, images: &[Option<Image<'_>>]) -> Vec<(u64, bool)> {
        let mut regs: [Option<u64>; layout::REG_COUNT] = self.regs.map(Some);
        let mut pcs = Vec::new();
        let mut seen_plugin = false;
        while pcs.len() < MAX_FRAMES {
            let (Some(pc), Some(sp)) = (regs[RIP], regs[RSP]) else {
                break;
            };
            if pc == 0 {
                break;
            }
            let module = self.module_of(pc);
            let in_plugin = module.is_some_and(|i| self.modules[i].plugin);
            if seen_plugin && !in_plugin {
                break; // back in the host's code that called the plugin
            }
            let caller = !pcs.is_empty();
            pcs.push((pc, caller));
            seen_plugin |= in_plugin;
            let stepped = module.and_then(|i| {
                let image = images[i].as_ref()?;
                let probe = pc.wrapping_sub(self.modules[i].bias) - u64::from(caller);
                image.step(&regs, probe, |address| self.stack_word(address))
            });
            match stepped {
                Some(next) if next[RSP].is_some_and(|next_sp| next_sp > sp) => regs = next,
                _ => match self.scan(sp, regs[RBP], images) {
                    Some((at, ra)) => {
                        let rbp = regs[RBP].filter(|&rbp| rbp > at && rbp < self.stack_end());
                        regs = [None; layout::REG_COUNT];
                        regs[RIP] = Some(ra);
                        regs[RSP] = Some(at + 8);
                        regs[RBP] = rbp;
                    }
                    None => break,
                },
            }
        }
        pcs
    }

    /// The first word at or above `sp` that looks like a return address into the plugin's code
    /// (for a frame without usable CFI): where it is and its value. A stack holds stale return
    /// addresses too, so a candidate must follow a call instruction and, where the library has CFI,
    /// unwind one step further to code.
    fn scan(&self, sp: u64, rbp: Option<u64>, images: &[Option<Image<'_>>]) -> Option<(u64, u64)> {
        let index = self.modules.iter().position(|m| m.plugin)?;
        let plugin = &self.modules[index];
        let image = images[index].as_ref();
        let mut at = sp;
        while at < self.stack_end() {
            let word = self.stack_word(at)?;
            if (plugin.start..plugin.end).contains(&word)
                && image.is_none_or(|image| self.plausible(image, plugin, at, word, rbp))
            {
                return Some((at, word));
            }
            at += 8;
        }
        None
    }

    fn plausible(
        &self,
        image: &Image<'_>,
        plugin: &Module,
        at: u64,
        ra: u64,
        rbp: Option<u64>,
    ) -> bool {
        let offset = ra.wrapping_sub(plugin.bias);
        if !image.follows_call(offset) {
            return false;
        }
        let mut regs = [None; layout::REG_COUNT];
        regs[RIP] = Some(ra);
        regs[RSP] = Some(at + 8);
        regs[RBP] = rbp.filter(|&rbp| rbp > at);
        match image.step(&regs, offset - 1, |address| self.stack_word(address)) {
            Some(next) => next[RIP].is_some_and(|pc| self.module_of(pc).is_some()),
            // No CFI for it, or it needs a register the scan cannot know: the call must do.
            None => true,
        }
    }
}

/// Control characters become `?` (a name must not forge a log line); at most [`MAX_NAME`] chars.
fn clean(text: &str) -> String {
    text.chars()
        .take(MAX_NAME)
        .map(|c| if c.is_control() { '?' } else { c })
        .collect()
}

/// Like [`clean`], keeping the end of a long path.
fn clean_path(path: &str) -> String {
    let chars: Vec<char> = path.chars().collect();
    let skip = chars.len().saturating_sub(MAX_NAME);
    clean(&chars[skip..].iter().collect::<String>())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn report(extra: impl FnOnce(&mut Vec<u8>)) -> Vec<u8> {
        let mut bytes = vec![0u8; layout::SIZE];
        bytes[..8].copy_from_slice(&layout::MAGIC);
        bytes[layout::STATE_AT..][..8].copy_from_slice(&layout::COMPLETE.to_le_bytes());
        bytes[layout::SIGNAL_AT..][..8].copy_from_slice(&11u64.to_le_bytes());
        extra(&mut bytes);
        bytes
    }

    #[test]
    fn an_incomplete_report_is_ignored() {
        let mut bytes = report(|_| {});
        bytes[layout::STATE_AT] = 0;
        assert!(Raw::parse(&bytes).is_none());
        assert!(Raw::parse(&bytes[..100]).is_none());
    }

    #[test]
    fn hostile_lengths_and_names_are_bounded() {
        let bytes = report(|b| {
            b[layout::STACK_LEN_AT..][..8].copy_from_slice(&u64::MAX.to_le_bytes());
            b[layout::MODULE_COUNT_AT..][..8].copy_from_slice(&u64::MAX.to_le_bytes());
            let m = layout::MODULES_AT;
            b[m..m + 8].copy_from_slice(&0x1000u64.to_le_bytes());
            b[m + 8..m + 16].copy_from_slice(&0x2000u64.to_le_bytes());
            b[m + 24] = 1; // the plugin
            b[m + 32..m + 40].copy_from_slice(b"a\nb\x1bc\0\0\0");
            // A stack of self-referencing "return addresses" into the module.
            b[layout::REGS_AT + RIP * 8..][..8].copy_from_slice(&0x1500u64.to_le_bytes());
            b[layout::REGS_AT + RSP * 8..][..8].copy_from_slice(&0x10_0000u64.to_le_bytes());
            b[layout::STACK_START_AT..][..8].copy_from_slice(&0x10_0000u64.to_le_bytes());
            for at in (layout::STACK_AT..layout::SIZE).step_by(8) {
                b[at..at + 8].copy_from_slice(&0x1800u64.to_le_bytes());
            }
        });
        let raw = Raw::parse(&bytes).expect("complete");
        assert_eq!(raw.stack.len(), layout::STACK_MAX);
        assert_eq!(raw.modules.len(), 1);
        assert_eq!(raw.modules[0].name(), "a?b?c");
        let report = raw.symbolize(None, "x\n.so");
        assert_eq!(report.frames.len(), MAX_FRAMES);
        assert!(report.stack().len() <= MAX_TEXT);
        assert!(!report.stack().contains("x\n"));
        assert_eq!(report.frames[0].place(), "x?.so+0x1500");
        assert_eq!(report.frames[1].place(), "x?.so+0x1800");
        assert_eq!(
            report.summary(),
            " in x?.so+0x1500, called from x?.so+0x1800"
        );
    }

    #[test]
    fn only_root_owned_system_libraries_are_read() {
        for path in [
            "/etc/passwd",
            "/lib/../etc/passwd",
            "lib/libc.so.6",
            "/tmp/libc.so.6",
            "/usr/lib/",
            "/proc/self/mem",
        ] {
            assert!(system_library(path).is_none(), "{path}");
        }
        // A link out of the library directories is refused after resolving it.
        let dir = tempfile::tempdir().expect("tempdir");
        let link = dir.path().join("libfake.so");
        std::os::unix::fs::symlink("/etc/passwd", &link).expect("symlink");
        assert!(system_library(&link.to_string_lossy()).is_none());
    }

    proptest::proptest! {
        #![proptest_config(proptest::prelude::ProptestConfig::with_cases(256))]

        /// Any bytes in the memfd (a complete header, then anything): bounded, no panic.
        #[test]
        fn any_report_bytes_are_bounded(
            body in proptest::collection::vec(proptest::prelude::any::<u8>(), 0..layout::SIZE),
            rip_in_module in proptest::prelude::any::<bool>(),
        ) {
            let mut bytes = report(|_| {});
            let n = body.len().min(bytes.len() - 16);
            bytes[16..16 + n].copy_from_slice(&body[..n]);
            if rip_in_module {
                bytes[layout::MODULE_COUNT_AT..][..8].copy_from_slice(&1u64.to_le_bytes());
                let m = layout::MODULES_AT;
                bytes[m..m + 8].copy_from_slice(&0u64.to_le_bytes());
                bytes[m + 8..m + 16].copy_from_slice(&u64::MAX.to_le_bytes());
                bytes[m + 24] = 1;
            }
            if let Some(raw) = Raw::parse(&bytes) {
                let report = raw.symbolize(None, "x.so");
                proptest::prop_assert!(report.frames.len() <= MAX_FRAMES);
                proptest::prop_assert!(report.stack().len() <= MAX_TEXT + 4);
                proptest::prop_assert!(report.summary().len() < 2 * MAX_TEXT);
            }
        }
    }
}
