//! A restricted pickle reader for `torch.save` files. It interprets the opcodes that PyTorch
//! emits (protocols 2–5) into plain values and never executes anything: the only callables it
//! knows are tensor rebuilding and `OrderedDict`, and any other global is refused by name.

use std::collections::HashMap;

/// Element type of a torch storage, as named by its legacy storage class.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StorageKind {
    F32,
    F16,
    BF16,
    F64,
    /// An integer or boolean storage: readable as metadata, never as features.
    Other(usize),
}

impl StorageKind {
    /// Bytes per element.
    pub fn size(self) -> usize {
        match self {
            StorageKind::F16 | StorageKind::BF16 => 2,
            StorageKind::F32 => 4,
            StorageKind::F64 => 8,
            StorageKind::Other(s) => s,
        }
    }
}

/// A value the reader can build.
#[derive(Debug, Clone, PartialEq)]
pub enum Value {
    None,
    Bool(bool),
    Int(i64),
    Float(f64),
    Str(String),
    Bytes(Vec<u8>),
    List(Vec<Value>),
    Tuple(Vec<Value>),
    Dict(Vec<(Value, Value)>),
    /// A known global (`module.name`) not yet called.
    Global(String),
    /// A storage reference from a persistent id: element kind, archive key, element count.
    Storage {
        kind: StorageKind,
        key: String,
        numel: usize,
    },
    /// A rebuilt tensor: a strided view into a storage.
    Tensor {
        kind: StorageKind,
        key: String,
        storage_numel: usize,
        offset: usize,
        shape: Vec<usize>,
        strides: Vec<usize>,
    },
}

/// Globals the reader accepts; everything else is refused.
const ALLOWED: &[&str] = &[
    "torch._utils._rebuild_tensor_v2",
    "torch._utils._rebuild_parameter",
    "collections.OrderedDict",
    "torch.FloatStorage",
    "torch.HalfStorage",
    "torch.BFloat16Storage",
    "torch.DoubleStorage",
    "torch.LongStorage",
    "torch.IntStorage",
    "torch.ShortStorage",
    "torch.CharStorage",
    "torch.ByteStorage",
    "torch.BoolStorage",
];

fn storage_kind(global: &str) -> Option<StorageKind> {
    Some(match global {
        "torch.FloatStorage" => StorageKind::F32,
        "torch.HalfStorage" => StorageKind::F16,
        "torch.BFloat16Storage" => StorageKind::BF16,
        "torch.DoubleStorage" => StorageKind::F64,
        "torch.LongStorage" => StorageKind::Other(8),
        "torch.IntStorage" => StorageKind::Other(4),
        "torch.ShortStorage" => StorageKind::Other(2),
        "torch.CharStorage" | "torch.ByteStorage" | "torch.BoolStorage" => StorageKind::Other(1),
        _ => return None,
    })
}

/// Limits that keep a hostile pickle from exhausting memory.
const MAX_STACK: usize = 1 << 16;
const MAX_MEMO: usize = 1 << 20;
const MAX_ITEMS: usize = 1 << 24;

enum Item {
    Mark,
    V(Value),
}

struct Reader<'a> {
    b: &'a [u8],
    pos: usize,
}

impl<'a> Reader<'a> {
    fn take(&mut self, n: usize) -> Result<&'a [u8], String> {
        let end = self
            .pos
            .checked_add(n)
            .filter(|&e| e <= self.b.len())
            .ok_or("truncated pickle")?;
        let s = &self.b[self.pos..end];
        self.pos = end;
        Ok(s)
    }
    fn u8(&mut self) -> Result<u8, String> {
        Ok(self.take(1)?[0])
    }
    fn u16(&mut self) -> Result<u16, String> {
        Ok(u16::from_le_bytes(self.take(2)?.try_into().expect("2")))
    }
    fn u32(&mut self) -> Result<u32, String> {
        Ok(u32::from_le_bytes(self.take(4)?.try_into().expect("4")))
    }
    fn u64(&mut self) -> Result<u64, String> {
        Ok(u64::from_le_bytes(self.take(8)?.try_into().expect("8")))
    }
    fn line(&mut self) -> Result<&'a str, String> {
        let rest = &self.b[self.pos..];
        let nl = rest
            .iter()
            .position(|&c| c == b'\n')
            .ok_or("truncated pickle")?;
        self.pos += nl + 1;
        std::str::from_utf8(&rest[..nl]).map_err(|_| "bad text in pickle".to_string())
    }
    fn string(&mut self, n: usize) -> Result<String, String> {
        String::from_utf8(self.take(n)?.to_vec()).map_err(|_| "bad utf-8 in pickle".into())
    }
}

/// Parses a pickle into a [`Value`]. Errors are plain messages; the caller adds the path.
pub fn load(bytes: &[u8]) -> Result<Value, String> {
    let mut r = Reader { b: bytes, pos: 0 };
    let mut stack: Vec<Item> = Vec::new();
    let mut memo: HashMap<u32, Value> = HashMap::new();
    let push = |stack: &mut Vec<Item>, v: Value| -> Result<(), String> {
        if stack.len() >= MAX_STACK {
            return Err("pickle stack too deep".into());
        }
        stack.push(Item::V(v));
        Ok(())
    };
    fn pop(stack: &mut Vec<Item>) -> Result<Value, String> {
        match stack.pop() {
            Some(Item::V(v)) => Ok(v),
            _ => Err("malformed pickle (stack underflow)".into()),
        }
    }
    fn pop_mark(stack: &mut Vec<Item>) -> Result<Vec<Value>, String> {
        let mut out = Vec::new();
        loop {
            match stack.pop() {
                Some(Item::Mark) => break,
                Some(Item::V(v)) => out.push(v),
                None => return Err("malformed pickle (no mark)".into()),
            }
        }
        out.reverse();
        Ok(out)
    }
    fn top(stack: &mut [Item]) -> Result<&mut Value, String> {
        match stack.last_mut() {
            Some(Item::V(v)) => Ok(v),
            _ => Err("malformed pickle (empty stack)".into()),
        }
    }
    fn memo_put(memo: &mut HashMap<u32, Value>, k: u32, v: Value) -> Result<(), String> {
        if memo.len() >= MAX_MEMO {
            return Err("pickle memo too large".into());
        }
        memo.insert(k, v);
        Ok(())
    }
    fn extend(target: &mut Value, items: Vec<Value>) -> Result<(), String> {
        match target {
            Value::List(l) => {
                if l.len() + items.len() > MAX_ITEMS {
                    return Err("pickle list too long".into());
                }
                l.extend(items);
                Ok(())
            }
            _ => Err("APPEND to a non-list".into()),
        }
    }
    fn set_items(target: &mut Value, items: Vec<Value>) -> Result<(), String> {
        if !items.len().is_multiple_of(2) {
            return Err("odd SETITEMS".into());
        }
        match target {
            Value::Dict(d) => {
                let mut it = items.into_iter();
                while let (Some(k), Some(v)) = (it.next(), it.next()) {
                    if let Some(slot) = d.iter_mut().find(|(kk, _)| *kk == k) {
                        slot.1 = v;
                    } else {
                        d.push((k, v));
                    }
                }
                Ok(())
            }
            _ => Err("SETITEM on a non-dict".into()),
        }
    }

    loop {
        let op = r.u8()?;
        match op {
            0x80 => {
                let proto = r.u8()?;
                if proto > 5 {
                    return Err(format!("unsupported pickle protocol {proto}"));
                }
            }
            0x95 => {
                r.u64()?; // FRAME: length hint only
            }
            b'.' => return pop(&mut stack),
            b'(' => stack.push(Item::Mark),
            b'}' => push(&mut stack, Value::Dict(Vec::new()))?,
            b']' => push(&mut stack, Value::List(Vec::new()))?,
            b')' => push(&mut stack, Value::Tuple(Vec::new()))?,
            b'N' => push(&mut stack, Value::None)?,
            0x88 => push(&mut stack, Value::Bool(true))?,
            0x89 => push(&mut stack, Value::Bool(false))?,
            b'K' => {
                let v = r.u8()? as i64;
                push(&mut stack, Value::Int(v))?
            }
            b'M' => {
                let v = r.u16()? as i64;
                push(&mut stack, Value::Int(v))?
            }
            b'J' => {
                let v = r.u32()? as i32 as i64;
                push(&mut stack, Value::Int(v))?
            }
            0x8a => {
                let n = r.u8()? as usize;
                let b = r.take(n)?;
                if n > 8 {
                    return Err("integer too large".into());
                }
                let mut buf = if b.last().is_some_and(|&x| x & 0x80 != 0) {
                    [0xffu8; 8]
                } else {
                    [0u8; 8]
                };
                buf[..n].copy_from_slice(b);
                push(&mut stack, Value::Int(i64::from_le_bytes(buf)))?
            }
            b'G' => {
                let v = f64::from_be_bytes(r.take(8)?.try_into().expect("8"));
                push(&mut stack, Value::Float(v))?
            }
            b'X' => {
                let n = r.u32()? as usize;
                let s = r.string(n)?;
                push(&mut stack, Value::Str(s))?
            }
            0x8c => {
                let n = r.u8()? as usize;
                let s = r.string(n)?;
                push(&mut stack, Value::Str(s))?
            }
            0x8d => {
                let n = r.u64()? as usize;
                let s = r.string(n)?;
                push(&mut stack, Value::Str(s))?
            }
            b'C' => {
                let n = r.u8()? as usize;
                let b = r.take(n)?.to_vec();
                push(&mut stack, Value::Bytes(b))?
            }
            b'B' => {
                let n = r.u32()? as usize;
                let b = r.take(n)?.to_vec();
                push(&mut stack, Value::Bytes(b))?
            }
            b'q' => {
                let k = r.u8()? as u32;
                let v = top(&mut stack)?.clone();
                memo_put(&mut memo, k, v)?
            }
            b'r' => {
                let k = r.u32()?;
                let v = top(&mut stack)?.clone();
                memo_put(&mut memo, k, v)?
            }
            0x94 => {
                let k = memo.len() as u32;
                let v = top(&mut stack)?.clone();
                memo_put(&mut memo, k, v)?
            }
            b'h' => {
                let k = r.u8()? as u32;
                let v = memo.get(&k).cloned().ok_or("bad memo reference")?;
                push(&mut stack, v)?
            }
            b'j' => {
                let k = r.u32()?;
                let v = memo.get(&k).cloned().ok_or("bad memo reference")?;
                push(&mut stack, v)?
            }
            b'c' => {
                let module = r.line()?.to_string();
                let name = r.line()?.to_string();
                push(&mut stack, global(&module, &name)?)?
            }
            0x93 => {
                let name = pop(&mut stack)?;
                let module = pop(&mut stack)?;
                match (module, name) {
                    (Value::Str(m), Value::Str(n)) => push(&mut stack, global(&m, &n)?)?,
                    _ => return Err("malformed STACK_GLOBAL".into()),
                }
            }
            b't' => {
                let items = pop_mark(&mut stack)?;
                push(&mut stack, Value::Tuple(items))?
            }
            0x85 => {
                let a = pop(&mut stack)?;
                push(&mut stack, Value::Tuple(vec![a]))?
            }
            0x86 => {
                let b = pop(&mut stack)?;
                let a = pop(&mut stack)?;
                push(&mut stack, Value::Tuple(vec![a, b]))?
            }
            0x87 => {
                let c = pop(&mut stack)?;
                let b = pop(&mut stack)?;
                let a = pop(&mut stack)?;
                push(&mut stack, Value::Tuple(vec![a, b, c]))?
            }
            b'l' => {
                let items = pop_mark(&mut stack)?;
                push(&mut stack, Value::List(items))?
            }
            b'd' => {
                let items = pop_mark(&mut stack)?;
                let mut d = Value::Dict(Vec::new());
                set_items(&mut d, items)?;
                push(&mut stack, d)?
            }
            b'a' => {
                let v = pop(&mut stack)?;
                extend(top(&mut stack)?, vec![v])?
            }
            b'e' => {
                let items = pop_mark(&mut stack)?;
                extend(top(&mut stack)?, items)?
            }
            b's' => {
                let v = pop(&mut stack)?;
                let k = pop(&mut stack)?;
                set_items(top(&mut stack)?, vec![k, v])?
            }
            b'u' => {
                let items = pop_mark(&mut stack)?;
                set_items(top(&mut stack)?, items)?
            }
            b'Q' => {
                let pid = pop(&mut stack)?;
                push(&mut stack, persistent(pid)?)?
            }
            b'R' => {
                let args = pop(&mut stack)?;
                let f = pop(&mut stack)?;
                push(&mut stack, reduce(f, args)?)?
            }
            b'b' => {
                // BUILD: setting state on an object; only an (ignored) empty state on dicts.
                let _state = pop(&mut stack)?;
                top(&mut stack)?;
            }
            other => {
                return Err(format!(
                    "unsupported pickle opcode 0x{other:02x} at byte {}",
                    r.pos - 1
                ));
            }
        }
    }
}

fn global(module: &str, name: &str) -> Result<Value, String> {
    let full = format!("{module}.{name}");
    if ALLOWED.contains(&full.as_str()) {
        Ok(Value::Global(full))
    } else {
        Err(format!(
            "refusing pickle global {full}: prh reads tensors, numbers, strings, lists and dicts only and never runs code from a file"
        ))
    }
}

fn as_usize(v: &Value) -> Result<usize, String> {
    match v {
        Value::Int(i) if *i >= 0 => Ok(*i as usize),
        _ => Err(format!("expected a non-negative integer, found {v:?}")),
    }
}

fn usize_tuple(v: &Value) -> Result<Vec<usize>, String> {
    match v {
        Value::Tuple(items) | Value::List(items) => items.iter().map(as_usize).collect(),
        _ => Err(format!("expected a tuple of integers, found {v:?}")),
    }
}

fn persistent(pid: Value) -> Result<Value, String> {
    let Value::Tuple(items) = pid else {
        return Err("unsupported persistent id".into());
    };
    match items.as_slice() {
        [
            Value::Str(tag),
            Value::Global(g),
            Value::Str(key),
            _location,
            numel,
        ] if tag == "storage" => {
            let kind = storage_kind(g).ok_or_else(|| format!("unknown storage type {g}"))?;
            Ok(Value::Storage {
                kind,
                key: key.clone(),
                numel: as_usize(numel)?,
            })
        }
        _ => Err("unsupported persistent id".into()),
    }
}

fn reduce(f: Value, args: Value) -> Result<Value, String> {
    let Value::Global(g) = f else {
        return Err("REDUCE on something that is not a known callable".into());
    };
    let Value::Tuple(args) = args else {
        return Err("REDUCE arguments are not a tuple".into());
    };
    match g.as_str() {
        "collections.OrderedDict" => Ok(Value::Dict(Vec::new())),
        "torch._utils._rebuild_tensor_v2" => {
            if args.len() < 4 {
                return Err("_rebuild_tensor_v2 with too few arguments".into());
            }
            let Value::Storage { kind, key, numel } = &args[0] else {
                return Err("_rebuild_tensor_v2 without a storage".into());
            };
            let shape = usize_tuple(&args[2])?;
            let strides = usize_tuple(&args[3])?;
            if shape.len() != strides.len() {
                return Err("tensor shape and strides differ in length".into());
            }
            Ok(Value::Tensor {
                kind: *kind,
                key: key.clone(),
                storage_numel: *numel,
                offset: as_usize(&args[1])?,
                shape,
                strides,
            })
        }
        "torch._utils._rebuild_parameter" => args
            .into_iter()
            .next()
            .ok_or_else(|| "_rebuild_parameter without data".to_string()),
        other => Err(format!("{other} is not callable here")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_plain_containers() {
        // {'a': [1, 2.5, 'x'], 'b': (True, None)} at protocol 2.
        let p = b"\x80\x02}q\x00(X\x01\x00\x00\x00a]q\x01(K\x01G@\x04\x00\x00\x00\x00\x00\x00X\x01\x00\x00\x00xeX\x01\x00\x00\x00b\x88N\x86u.";
        let v = load(p).unwrap();
        assert_eq!(
            v,
            Value::Dict(vec![
                (
                    Value::Str("a".into()),
                    Value::List(vec![
                        Value::Int(1),
                        Value::Float(2.5),
                        Value::Str("x".into())
                    ])
                ),
                (
                    Value::Str("b".into()),
                    Value::Tuple(vec![Value::Bool(true), Value::None])
                ),
            ])
        );
    }

    #[test]
    fn refuses_unknown_globals() {
        let p = b"\x80\x02cos\nsystem\nX\x02\x00\x00\x00ls\x85R.";
        let e = load(p).unwrap_err();
        assert!(e.contains("refusing pickle global os.system"), "{e}");
    }

    #[test]
    fn truncated_and_garbage_fail_cleanly() {
        assert!(load(b"\x80\x02}q\x00(X\xff\xff\xff\x7f").is_err());
        assert!(load(b"").is_err());
        assert!(load(b"\x80\x02\xfe").is_err());
        assert!(load(b"\x80\x02a.").is_err());
    }
}
