//! One ELF library (the plugin, or a system library on the crash path) parsed for unwinding
//! (`.eh_frame` CFI, through gimli) and naming (DWARF through addr2line, else the symbol table).

use std::borrow::Cow;

use addr2line::gimli::{
    self, BaseAddresses, CfaRule, EhFrame, EndianSlice, LittleEndian, Register, RegisterRule,
    UnwindContext, UnwindSection,
};
use object::{Object, ObjectSection, ObjectSegment, ObjectSymbol};
use plughost_sys::crash_report::layout;

use super::{clean, clean_path, Frame, RBP, RSP};

/// A library, parsed for unwinding and naming.
pub(super) struct Image<'a> {
    eh_frame: Option<(EhFrame<EndianSlice<'a, LittleEndian>>, BaseAddresses)>,
    dwarf: Option<addr2line::Context<EndianSlice<'a, LittleEndian>>>,
    symbols: Vec<(u64, String)>,
    /// Code sections: file address, bytes.
    code: Vec<(u64, &'a [u8])>,
    /// Lowest and highest file address of the executable `PT_LOAD` segments.
    executable: Option<(u64, u64)>,
}

impl<'a> Image<'a> {
    pub(super) fn new(bytes: &'a [u8]) -> Option<Image<'a>> {
        let file = object::File::parse(bytes).ok()?;
        if !file.is_little_endian() || !file.is_64() {
            return None;
        }
        let section = |name: &str| {
            file.section_by_name(name)
                .and_then(|s| Some((s.address(), s.data().ok()?)))
        };
        let eh_frame = section(".eh_frame").map(|(address, data)| {
            let mut bases = BaseAddresses::default().set_eh_frame(address);
            if let Some((text, _)) = section(".text") {
                bases = bases.set_text(text);
            }
            if let Some((got, _)) = section(".got") {
                bases = bases.set_got(got);
            }
            (EhFrame::new(data, LittleEndian), bases)
        });
        let dwarf = gimli::Dwarf::load(|id| -> Result<_, gimli::Error> {
            let data = section(id.name()).map_or(&[][..], |(_, data)| data);
            Ok(EndianSlice::new(data, LittleEndian))
        })
        .ok()
        .and_then(|dwarf| addr2line::Context::from_dwarf(dwarf).ok());
        let mut symbols: Vec<(u64, String)> = file
            .symbols()
            .chain(file.dynamic_symbols())
            .filter(|s| s.kind() == object::SymbolKind::Text && s.address() != 0)
            .filter_map(|s| Some((s.address(), s.name().ok()?.to_owned())))
            .collect();
        symbols.sort();
        symbols.dedup_by_key(|s| s.0);
        let code = file
            .sections()
            .filter(|s| s.kind() == object::SectionKind::Text)
            .filter_map(|s| Some((s.address(), s.data().ok()?)))
            .collect();
        let executable = file
            .segments()
            .filter(|segment| match segment.flags() {
                object::SegmentFlags::Elf { p_flags } => p_flags & object::elf::PF_X != 0,
                _ => false,
            })
            .map(|segment| (segment.address(), segment.address() + segment.size()))
            .reduce(|(a, b), (c, d)| (a.min(c), b.max(d)));
        Some(Image {
            eh_frame,
            dwarf,
            symbols,
            code,
            executable,
        })
    }

    /// The span of the executable segments, as the host computed it from the program headers.
    pub(super) fn code_span(&self) -> Option<u64> {
        self.executable.map(|(start, end)| end - start)
    }

    /// Whether the bytes before file address `offset` are an x86_64 call instruction (`call rel32`,
    /// or `call r/m64` in its register, indirect, disp8, disp32 and SIB forms).
    pub(super) fn follows_call(&self, offset: u64) -> bool {
        let Some((start, bytes)) = self
            .code
            .iter()
            .find(|(start, bytes)| (*start..*start + bytes.len() as u64).contains(&offset))
        else {
            return false;
        };
        let Ok(end) = usize::try_from(offset - start) else {
            return false;
        };
        let before = |n: usize| end.checked_sub(n).map(|i| &bytes[i..end]);
        let modrm_is_call = |modrm: u8| (modrm >> 3) & 7 == 2;
        if before(5).is_some_and(|b| b[0] == 0xe8) {
            return true;
        }
        // FF /2 with ModRM length: 2 (register or [reg]), 3 (disp8 or SIB), 4 (SIB+disp8),
        // 6 (disp32 or rip-relative), 7 (SIB+disp32); an optional REX prefix before it.
        [2usize, 3, 4, 6, 7].iter().any(|&n| {
            [n, n + 1].iter().any(|&len| {
                before(len).is_some_and(|b| {
                    let b = if len > n { &b[1..] } else { b };
                    let rex_ok =
                        len == n || (0x40..=0x4f).contains(&before(len).map_or(0, |x| x[0]));
                    rex_ok && b[0] == 0xff && modrm_is_call(b[1])
                })
            })
        })
    }

    /// One CFI step from `regs` at file address `probe`: the caller's registers.
    pub(super) fn step(
        &self,
        regs: &[Option<u64>; layout::REG_COUNT],
        probe: u64,
        read: impl Fn(u64) -> Option<u64>,
    ) -> Option<[Option<u64>; layout::REG_COUNT]> {
        let (eh_frame, bases) = self.eh_frame.as_ref()?;
        let mut context = Box::new(UnwindContext::new());
        let row = eh_frame
            .unwind_info_for_address(bases, &mut context, probe, EhFrame::cie_from_offset)
            .ok()?;
        let cfa = match row.cfa() {
            CfaRule::RegisterAndOffset { register, offset } => regs
                .get(usize::from(register.0))
                .copied()
                .flatten()?
                .checked_add_signed(*offset)?,
            CfaRule::Expression(_) => return None,
        };
        let mut next = [None; layout::REG_COUNT];
        // Callee-saved registers keep their value unless the row says where they were saved.
        for i in [3, RBP, 12, 13, 14, 15] {
            next[i] = regs[i];
        }
        for i in (0..layout::REG_COUNT).filter(|&i| i != RSP) {
            let register = Register(u16::try_from(i).ok()?);
            next[i] = match row.register(register) {
                RegisterRule::Undefined => next[i],
                RegisterRule::SameValue => regs[i],
                RegisterRule::Offset(offset) => read(cfa.checked_add_signed(offset)?),
                RegisterRule::ValOffset(offset) => cfa.checked_add_signed(offset),
                RegisterRule::Register(other) => regs.get(usize::from(other.0)).copied().flatten(),
                _ => None,
            };
        }
        next[RSP] = Some(cfa);
        Some(next)
    }

    /// Names `frame` at file address `probe`: DWARF frames (inlined ones first), else the nearest
    /// symbol.
    pub(super) fn describe(&self, frame: Frame, probe: u64) -> Vec<Frame> {
        let mut frames = Vec::new();
        if let Some(dwarf) = &self.dwarf {
            if let Ok(mut iter) = dwarf.find_frames(probe).skip_all_loads() {
                while let Ok(Some(found)) = iter.next() {
                    let function = found
                        .function
                        .as_ref()
                        .and_then(|f| f.demangle().ok())
                        .map(|name| clean(&name));
                    let location = found
                        .location
                        .as_ref()
                        .and_then(|l| Some((clean_path(l.file?), l.line?)));
                    if function.is_some() || location.is_some() {
                        frames.push(Frame {
                            function,
                            location,
                            ..frame.clone()
                        });
                    }
                }
            }
        }
        if frames.is_empty() {
            let index = self
                .symbols
                .partition_point(|(address, _)| *address <= probe);
            let function = index
                .checked_sub(1)
                .and_then(|i| self.symbols.get(i))
                .map(|(_, name)| clean(&addr2line::demangle_auto(Cow::from(name.as_str()), None)));
            frames.push(Frame { function, ..frame });
        }
        frames
    }
}
