//! cgroup v2 device rules as eBPF, assembled here (no clang, no C
//! library): the program a `BPF_PROG_TYPE_CGROUP_DEVICE` hook runs on every
//! device access of the container, in the layout runc generates
//! (`opencontainers/cgroups` `devices/devicefilter.go`).
//!
//! The context is `struct bpf_cgroup_dev_ctx { u32 access_type; u32 major;
//! u32 minor; }`: the low 16 bits of `access_type` are the device type
//! (char 2, block 1), the high 16 the access (mknod 1, read 2, write 4).
//! Every attached program must allow an access, so the hook widens each
//! one: [`widen`] puts exact allow rules for our nodes (`c M:m rw`, no
//! wildcard, no mknod) in front of a program's own instructions, which then
//! run unchanged for everything else.

/// One 8-byte eBPF instruction.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Insn {
    pub code: u8,
    pub dst: u8,
    pub src: u8,
    pub off: i16,
    pub imm: i32,
}

impl Insn {
    pub fn to_bytes(self) -> [u8; 8] {
        let mut out = [0; 8];
        out[0] = self.code;
        out[1] = (self.dst & 0x0f) | (self.src << 4);
        out[2..4].copy_from_slice(&self.off.to_le_bytes());
        out[4..8].copy_from_slice(&self.imm.to_le_bytes());
        out
    }

    pub fn from_bytes(bytes: &[u8]) -> Insn {
        Insn {
            code: bytes[0],
            dst: bytes[1] & 0x0f,
            src: bytes[1] >> 4,
            off: i16::from_le_bytes([bytes[2], bytes[3]]),
            imm: i32::from_le_bytes([bytes[4], bytes[5], bytes[6], bytes[7]]),
        }
    }
}

const LDX_W: u8 = 0x61; // BPF_LDX | BPF_MEM | BPF_W
const AND32_K: u8 = 0x54; // BPF_ALU | BPF_AND | BPF_K
const RSH32_K: u8 = 0x74; // BPF_ALU | BPF_RSH | BPF_K
const MOV32_K: u8 = 0xb4; // BPF_ALU | BPF_MOV | BPF_K
const MOV32_X: u8 = 0xbc; // BPF_ALU | BPF_MOV | BPF_X
const MOV64_X: u8 = 0xbf; // BPF_ALU64 | BPF_MOV | BPF_X
const JNE_K: u8 = 0x55; // BPF_JMP | BPF_JNE | BPF_K
const JA: u8 = 0x05; // BPF_JMP | BPF_JA
const EXIT: u8 = 0x95; // BPF_JMP | BPF_EXIT

pub const TYPE_BLOCK: i32 = 1;
pub const TYPE_CHAR: i32 = 2;
pub const ACCESS_MKNOD: i32 = 1;
pub const ACCESS_READ: i32 = 2;
pub const ACCESS_WRITE: i32 = 4;

fn insn(code: u8, dst: u8, src: u8, off: i16, imm: i32) -> Insn {
    Insn {
        code,
        dst,
        src,
        off,
        imm,
    }
}

/// R6 = ctx, R2 = type, R3 = access, R4 = major, R5 = minor.
fn prologue() -> Vec<Insn> {
    vec![
        insn(MOV64_X, 6, 1, 0, 0),
        insn(LDX_W, 2, 1, 0, 0),
        insn(AND32_K, 2, 0, 0, 0xffff),
        insn(LDX_W, 3, 1, 0, 0),
        insn(RSH32_K, 3, 0, 0, 16),
        insn(LDX_W, 4, 1, 4, 0),
        insn(LDX_W, 5, 1, 8, 0),
    ]
}

/// One rule of an OCI `linux.resources.devices` list, or one of ours.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Rule {
    pub allow: bool,
    /// `None`: any type (`a`).
    pub device_type: Option<i32>,
    /// `None`: any (`*`).
    pub major: Option<u32>,
    pub minor: Option<u32>,
    /// `MKNOD | READ | WRITE` bits.
    pub access: i32,
}

impl Rule {
    /// `c major:minor rw`: what an injected node needs.
    pub fn allow_char(major: u32, minor: u32) -> Rule {
        Rule {
            allow: true,
            device_type: Some(TYPE_CHAR),
            major: Some(major),
            minor: Some(minor),
            access: ACCESS_READ | ACCESS_WRITE,
        }
    }

    /// A rule of config.json (`{"allow": true, "type": "c", "major": 195,
    /// "minor": 0, "access": "rwm"}`); `None` when it is malformed.
    pub fn from_oci(value: &serde_json::Value) -> Option<Rule> {
        let allow = value.get("allow")?.as_bool()?;
        let device_type = match value.get("type").and_then(|t| t.as_str()).unwrap_or("a") {
            "a" => None,
            "c" => Some(TYPE_CHAR),
            "b" => Some(TYPE_BLOCK),
            _ => return None,
        };
        let number = |key: &str| match value.get(key) {
            None | Some(serde_json::Value::Null) => Some(None),
            Some(n) => {
                let n = n.as_i64()?;
                Some((n >= 0).then_some(n as u32))
            }
        };
        let access_text = value
            .get("access")
            .and_then(|a| a.as_str())
            .unwrap_or("rwm");
        let mut access = 0;
        for c in access_text.chars() {
            access |= match c {
                'r' => ACCESS_READ,
                'w' => ACCESS_WRITE,
                'm' => ACCESS_MKNOD,
                _ => return None,
            };
        }
        Some(Rule {
            allow,
            device_type,
            major: number("major")?,
            minor: number("minor")?,
            access,
        })
    }

    /// The block that returns `allow` when the access matches this rule,
    /// and falls through otherwise.
    fn block(&self) -> Vec<Insn> {
        let mut checks: Vec<Insn> = Vec::new();
        if let Some(device_type) = self.device_type {
            checks.push(insn(JNE_K, 2, 0, 0, device_type));
        }
        let full = ACCESS_READ | ACCESS_WRITE | ACCESS_MKNOD;
        if self.access & full != full {
            // The asked access must be a subset of the rule's.
            checks.push(insn(MOV32_X, 1, 3, 0, 0));
            checks.push(insn(AND32_K, 1, 0, 0, !self.access));
            checks.push(insn(JNE_K, 1, 0, 0, 0));
        }
        if let Some(major) = self.major {
            checks.push(insn(JNE_K, 4, 0, 0, major as i32));
        }
        if let Some(minor) = self.minor {
            checks.push(insn(JNE_K, 5, 0, 0, minor as i32));
        }
        let body = [
            insn(MOV32_K, 0, 0, 0, i32::from(self.allow)),
            insn(EXIT, 0, 0, 0, 0),
        ];
        let total = checks.len() + body.len();
        // Each JNE skips to the end of this block.
        for (index, check) in checks.iter_mut().enumerate() {
            if check.code == JNE_K {
                check.off = (total - index - 1) as i16;
            }
        }
        checks.extend(body);
        checks
    }
}

/// `program` (a device program's own instructions, as read back) with an
/// exact allow for each of `rules` in front of it. The program's code runs
/// unchanged for every other access: its jumps are relative, and R1 holds
/// the context again when it starts.
pub fn widen(program: &[Insn], rules: &[Rule]) -> Vec<Insn> {
    let mut out = prologue();
    for rule in rules {
        out.extend(rule.block());
    }
    out.push(insn(MOV64_X, 1, 6, 0, 0));
    out.extend_from_slice(program);
    out
}

/// A whole device program from an OCI rule list (runc's semantics: the
/// last matching rule decides, nothing matching is denied), with `extra`
/// rules that win over all of them: what replaces a program that could
/// not be read back.
pub fn from_rules(oci: &[Rule], extra: &[Rule]) -> Vec<Insn> {
    let mut out = prologue();
    for rule in extra.iter().chain(oci.iter().rev()) {
        out.extend(rule.block());
    }
    out.push(insn(MOV32_K, 0, 0, 0, 0));
    out.push(insn(EXIT, 0, 0, 0, 0));
    out
}

/// The instructions as the bytes `BPF_PROG_LOAD` takes.
pub fn to_bytes(program: &[Insn]) -> Vec<u8> {
    program.iter().flat_map(|i| i.to_bytes()).collect()
}

/// Decodes read-back instructions (`xlated_prog_insns`).
pub fn from_bytes(bytes: &[u8]) -> Vec<Insn> {
    bytes.chunks_exact(8).map(Insn::from_bytes).collect()
}

/// Runs a device program on one access, for tests: the subset of eBPF that
/// device programs use (32/64-bit moves, and, shift, loads from the
/// context, conditional and plain jumps, exit). `None`: an instruction
/// outside that subset, or running off the end.
pub fn evaluate(
    program: &[Insn],
    device_type: i32,
    access: i32,
    major: u32,
    minor: u32,
) -> Option<i32> {
    let context = [(access << 16 | device_type) as u32, major, minor];
    let mut registers = [0u64; 11];
    let mut pc = 0usize;
    let mut steps = 0;
    while steps < 100_000 {
        steps += 1;
        let i = *program.get(pc)?;
        let (dst, src) = (i.dst as usize, i.src as usize);
        pc += 1;
        match i.code {
            MOV64_X => registers[dst] = registers[src],
            MOV32_X => registers[dst] = registers[src] & 0xffff_ffff,
            MOV32_K => registers[dst] = u64::from(i.imm as u32),
            LDX_W => {
                // R1 (or a copy) holds the context: offsets 0, 4, 8.
                let index = usize::try_from(i.off).ok()? / 4;
                registers[dst] = u64::from(*context.get(index)?);
            }
            AND32_K => registers[dst] = (registers[dst] as u32 & i.imm as u32) as u64,
            RSH32_K => registers[dst] = ((registers[dst] as u32) >> i.imm) as u64,
            0x45 => {
                // JSET K (runc uses it for the access check)
                if registers[dst] as u32 & i.imm as u32 != 0 {
                    pc = (pc as i64 + i64::from(i.off)) as usize;
                }
            }
            JNE_K => {
                if registers[dst] as u32 != i.imm as u32 {
                    pc = (pc as i64 + i64::from(i.off)) as usize;
                }
            }
            0x15 => {
                // JEQ K
                if registers[dst] as u32 == i.imm as u32 {
                    pc = (pc as i64 + i64::from(i.off)) as usize;
                }
            }
            JA => pc = (pc as i64 + i64::from(i.off)) as usize,
            EXIT => return Some(registers[0] as i32),
            _ => return None,
        }
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    const RW: i32 = ACCESS_READ | ACCESS_WRITE;

    /// A program like runc's for a spec that denies everything and then
    /// allows `/dev/null` (c 1:3 rwm).
    fn runc_like() -> Vec<Insn> {
        let deny_all = Rule {
            allow: false,
            device_type: None,
            major: None,
            minor: None,
            access: 7,
        };
        let null = Rule {
            allow: true,
            device_type: Some(TYPE_CHAR),
            major: Some(1),
            minor: Some(3),
            access: 7,
        };
        from_rules(&[deny_all, null], &[])
    }

    #[test]
    fn rules_from_oci_follow_runc_last_match_wins() {
        let program = runc_like();
        assert_eq!(evaluate(&program, TYPE_CHAR, RW, 1, 3), Some(1));
        assert_eq!(evaluate(&program, TYPE_CHAR, RW, 195, 0), Some(0));
        assert_eq!(evaluate(&program, TYPE_BLOCK, RW, 1, 3), Some(0));
    }

    #[test]
    fn widening_allows_exactly_the_nodes_and_keeps_the_rest() {
        let program = widen(
            &runc_like(),
            &[Rule::allow_char(195, 0), Rule::allow_char(195, 255)],
        );
        // Ours: read and write, not mknod, and only these numbers.
        assert_eq!(evaluate(&program, TYPE_CHAR, RW, 195, 0), Some(1));
        assert_eq!(
            evaluate(&program, TYPE_CHAR, ACCESS_READ, 195, 255),
            Some(1)
        );
        assert_eq!(evaluate(&program, TYPE_CHAR, ACCESS_MKNOD, 195, 0), Some(0));
        assert_eq!(evaluate(&program, TYPE_CHAR, RW, 195, 1), Some(0));
        assert_eq!(evaluate(&program, TYPE_BLOCK, RW, 195, 0), Some(0));
        // The program's own rules still hold.
        assert_eq!(evaluate(&program, TYPE_CHAR, RW, 1, 3), Some(1));
        assert_eq!(evaluate(&program, TYPE_CHAR, RW, 5, 1), Some(0));
        // Encoding round-trips.
        assert_eq!(from_bytes(&to_bytes(&program)), program);
    }

    #[test]
    fn oci_rules_parse_as_runc_reads_them() {
        let rule = Rule::from_oci(&serde_json::json!({"allow": true, "type": "c", "major": 195, "minor": 0, "access": "rw"})).unwrap();
        assert_eq!(rule, Rule::allow_char(195, 0));
        let all = Rule::from_oci(&serde_json::json!({"allow": false, "access": "rwm"})).unwrap();
        assert_eq!((all.device_type, all.major, all.access), (None, None, 7));
        assert!(Rule::from_oci(&serde_json::json!({"allow": true, "type": "x"})).is_none());
    }
}
