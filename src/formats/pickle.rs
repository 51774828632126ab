//! A restricted pickle reader for `torch.save` files. It interprets the opcodes that PyTorch
//! emits (protocols 2–5) into plain values and never executes anything: the only callables it
//! knows are tensor rebuilding and `OrderedDict`, and any other global is refused by name.

use std::collections::HashMap;
use std::rc::Rc;

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

/// A value the reader can build. Containers and strings are shared (`Rc`), as in Python: a memo
/// reference (`BINGET`) costs one pointer, never a copy, so a pickle that refers to one list a
/// million times stays small in memory.
#[derive(Debug, Clone, PartialEq)]
pub enum Value {
    None,
    Bool(bool),
    Int(i64),
    Float(f64),
    Str(Rc<str>),
    Bytes(Rc<[u8]>),
    List(Rc<Vec<Value>>),
    Tuple(Rc<Vec<Value>>),
    Dict(Rc<Vec<(Value, Value)>>),
    /// A known global (`module.name`) not yet called.
    Global(Rc<str>),
    /// A storage reference from a persistent id: element kind, archive key, element count.
    Storage {
        kind: StorageKind,
        key: Rc<str>,
        numel: usize,
    },
    /// A rebuilt tensor: a strided view into a storage.
    Tensor {
        kind: StorageKind,
        key: Rc<str>,
        storage_numel: usize,
        offset: usize,
        shape: Vec<usize>,
        strides: Vec<usize>,
    },
}

impl Value {
    /// A short description for error messages (never the value itself, which may be huge).
    pub fn kind_name(&self) -> &'static str {
        match self {
            Value::None => "None",
            Value::Bool(_) => "a bool",
            Value::Int(_) => "an int",
            Value::Float(_) => "a float",
            Value::Str(_) => "a string",
            Value::Bytes(_) => "bytes",
            Value::List(_) => "a list",
            Value::Tuple(_) => "a tuple",
            Value::Dict(_) => "a dict",
            Value::Global(_) => "a global",
            Value::Storage { .. } => "a storage",
            Value::Tensor { .. } => "a tensor",
        }
    }
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

/// Limits that keep a hostile pickle from exhausting memory, time or the thread stack.
const MAX_STACK: usize = 1 << 16;
const MAX_MEMO: usize = 1 << 20;
/// Objects a value may contain, counting every shared reference as a copy (what a walk over
/// it would visit).
const MAX_WEIGHT: u64 = 1 << 24;
/// Nesting depth of containers; torch's pickles nest a handful of levels.
const MAX_DEPTH: u32 = 64;
/// Elements copied (copy-on-write of a shared container) and keys compared, over the whole load.
const MAX_WORK: u64 = 1 << 27;
/// Dimensions of a tensor (torch's own limit is 64).
const MAX_RANK: usize = 64;

/// A value on the stack or in the memo, with what walking it would cost.
#[derive(Clone)]
struct Node {
    v: Value,
    /// Objects reachable, counting shared ones each time they are referenced.
    weight: u64,
    /// Container nesting depth (0 for scalars).
    depth: u32,
}

impl Node {
    fn leaf(v: Value) -> Node {
        Node {
            v,
            weight: 1,
            depth: 0,
        }
    }

    /// A container holding `children`, checked against the limits.
    fn parent(children: &[Node], make: impl FnOnce(Vec<Value>) -> Value) -> Result<Node, String> {
        let mut weight = 1u64;
        let mut depth = 0u32;
        for c in children {
            weight = weight.saturating_add(c.weight);
            depth = depth.max(c.depth + 1);
        }
        let n = Node {
            v: make(children.iter().map(|c| c.v.clone()).collect()),
            weight,
            depth,
        };
        n.check()?;
        Ok(n)
    }

    fn check(&self) -> Result<(), String> {
        if self.weight > MAX_WEIGHT {
            return Err(format!(
                "pickle expands to more than {MAX_WEIGHT} objects (shared references counted); refusing"
            ));
        }
        if self.depth > MAX_DEPTH {
            return Err(format!(
                "pickle nests containers deeper than {MAX_DEPTH} levels; refusing"
            ));
        }
        Ok(())
    }

    /// Adds children to this node's weight and depth.
    fn grow(&mut self, children: &[Node]) -> Result<(), String> {
        for c in children {
            self.weight = self.weight.saturating_add(c.weight);
            self.depth = self.depth.max(c.depth + 1);
        }
        self.check()
    }
}

enum Item {
    Mark,
    V(Node),
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
    fn string(&mut self, n: usize) -> Result<Rc<str>, String> {
        std::str::from_utf8(self.take(n)?)
            .map(Rc::from)
            .map_err(|_| "bad utf-8 in pickle".into())
    }
}

/// The interpreter's state: stack, memo and the work spent so far.
struct Machine {
    stack: Vec<Item>,
    memo: HashMap<u32, Node>,
    work: u64,
}

impl Machine {
    fn spend(&mut self, units: u64) -> Result<(), String> {
        self.work = self.work.saturating_add(units);
        if self.work > MAX_WORK {
            return Err("pickle takes too much work to read (hostile or corrupt); refusing".into());
        }
        Ok(())
    }

    fn push_item(&mut self, item: Item) -> Result<(), String> {
        if self.stack.len() >= MAX_STACK {
            return Err("pickle stack too deep".into());
        }
        self.stack.push(item);
        Ok(())
    }

    fn push(&mut self, n: Node) -> Result<(), String> {
        self.push_item(Item::V(n))
    }

    fn leaf(&mut self, v: Value) -> Result<(), String> {
        self.push(Node::leaf(v))
    }

    fn pop(&mut self) -> Result<Node, String> {
        match self.stack.pop() {
            Some(Item::V(n)) => Ok(n),
            _ => Err("malformed pickle (stack underflow)".into()),
        }
    }

    fn pop_mark(&mut self) -> Result<Vec<Node>, String> {
        let mut out = Vec::new();
        loop {
            match self.stack.pop() {
                Some(Item::Mark) => break,
                Some(Item::V(n)) => out.push(n),
                None => return Err("malformed pickle (no mark)".into()),
            }
        }
        out.reverse();
        Ok(out)
    }

    fn top(&mut self) -> Result<&mut Node, String> {
        match self.stack.last_mut() {
            Some(Item::V(n)) => Ok(n),
            _ => Err("malformed pickle (empty stack)".into()),
        }
    }

    fn memo_put(&mut self, k: u32) -> Result<(), String> {
        if self.memo.len() >= MAX_MEMO {
            return Err("pickle memo too large".into());
        }
        let n = self.top()?.clone();
        self.memo.insert(k, n);
        Ok(())
    }

    fn memo_get(&mut self, k: u32) -> Result<(), String> {
        let n = self.memo.get(&k).cloned().ok_or("bad memo reference")?;
        self.push(n)
    }

    /// APPEND / APPENDS: the top of the stack must be a list.
    fn extend(&mut self, items: Vec<Node>) -> Result<(), String> {
        let top = match self.stack.last_mut() {
            Some(Item::V(n)) => n,
            _ => return Err("malformed pickle (empty stack)".into()),
        };
        let Value::List(l) = &mut top.v else {
            return Err("APPEND to a non-list".into());
        };
        let copied = if Rc::strong_count(l) > 1 { l.len() } else { 0 } as u64;
        Rc::make_mut(l).extend(items.iter().map(|n| n.v.clone()));
        top.grow(&items)?;
        self.spend(copied + items.len() as u64)
    }

    /// SETITEM / SETITEMS: the top of the stack must be a dict; keys are plain scalars.
    fn set_items(&mut self, items: Vec<Node>) -> Result<(), String> {
        if !items.len().is_multiple_of(2) {
            return Err("odd SETITEMS".into());
        }
        let top = match self.stack.last_mut() {
            Some(Item::V(n)) => n,
            _ => return Err("malformed pickle (empty stack)".into()),
        };
        let Value::Dict(d) = &mut top.v else {
            return Err("SETITEM on a non-dict".into());
        };
        let mut work = if Rc::strong_count(d) > 1 { d.len() } else { 0 } as u64;
        let d = Rc::make_mut(d);
        for pair in items.chunks(2) {
            let (k, v) = (&pair[0].v, &pair[1].v);
            let key_cost = match k {
                Value::Str(s) => 1 + s.len() as u64 / 64,
                Value::Int(_) | Value::Bool(_) | Value::None | Value::Float(_) => 1,
                other => return Err(format!("unsupported dict key ({})", other.kind_name())),
            };
            work = work.saturating_add(d.len() as u64 * key_cost);
            if let Some(slot) = d.iter_mut().find(|(kk, _)| kk == k) {
                slot.1 = v.clone();
            } else {
                d.push((k.clone(), v.clone()));
            }
        }
        top.grow(&items)?;
        self.spend(work)
    }
}

/// Parses a pickle into a [`Value`]. Errors are plain messages; the caller adds the path.
pub fn load(bytes: &[u8]) -> Result<Value, String> {
    let mut r = Reader { b: bytes, pos: 0 };
    let mut m = Machine {
        stack: Vec::new(),
        memo: HashMap::new(),
        work: 0,
    };
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
            b'.' => return m.pop().map(|n| n.v),
            b'(' => m.push_item(Item::Mark)?,
            b'}' => m.leaf(Value::Dict(Rc::default()))?,
            b']' => m.leaf(Value::List(Rc::default()))?,
            b')' => m.leaf(Value::Tuple(Rc::default()))?,
            b'N' => m.leaf(Value::None)?,
            0x88 => m.leaf(Value::Bool(true))?,
            0x89 => m.leaf(Value::Bool(false))?,
            b'K' => {
                let v = r.u8()? as i64;
                m.leaf(Value::Int(v))?
            }
            b'M' => {
                let v = r.u16()? as i64;
                m.leaf(Value::Int(v))?
            }
            b'J' => {
                let v = r.u32()? as i32 as i64;
                m.leaf(Value::Int(v))?
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
                m.leaf(Value::Int(i64::from_le_bytes(buf)))?
            }
            b'G' => {
                let v = f64::from_be_bytes(r.take(8)?.try_into().expect("8"));
                m.leaf(Value::Float(v))?
            }
            b'X' => {
                let n = r.u32()? as usize;
                let s = r.string(n)?;
                m.leaf(Value::Str(s))?
            }
            0x8c => {
                let n = r.u8()? as usize;
                let s = r.string(n)?;
                m.leaf(Value::Str(s))?
            }
            0x8d => {
                let n = usize::try_from(r.u64()?).map_err(|_| "truncated pickle")?;
                let s = r.string(n)?;
                m.leaf(Value::Str(s))?
            }
            b'C' => {
                let n = r.u8()? as usize;
                let b = Rc::from(r.take(n)?);
                m.leaf(Value::Bytes(b))?
            }
            b'B' => {
                let n = r.u32()? as usize;
                let b = Rc::from(r.take(n)?);
                m.leaf(Value::Bytes(b))?
            }
            b'q' => {
                let k = r.u8()? as u32;
                m.memo_put(k)?
            }
            b'r' => {
                let k = r.u32()?;
                m.memo_put(k)?
            }
            0x94 => {
                let k = m.memo.len() as u32;
                m.memo_put(k)?
            }
            b'h' => {
                let k = r.u8()? as u32;
                m.memo_get(k)?
            }
            b'j' => {
                let k = r.u32()?;
                m.memo_get(k)?
            }
            b'c' => {
                let module = r.line()?;
                let name = r.line()?;
                m.leaf(global(module, name)?)?
            }
            0x93 => {
                let name = m.pop()?;
                let module = m.pop()?;
                match (&module.v, &name.v) {
                    (Value::Str(mo), Value::Str(na)) => m.leaf(global(mo, na)?)?,
                    _ => return Err("malformed STACK_GLOBAL".into()),
                }
            }
            b't' => {
                let items = m.pop_mark()?;
                m.push(Node::parent(&items, |v| Value::Tuple(Rc::new(v)))?)?
            }
            0x85..=0x87 => {
                let k = (op - 0x84) as usize;
                let mut items = Vec::with_capacity(k);
                for _ in 0..k {
                    items.push(m.pop()?);
                }
                items.reverse();
                m.push(Node::parent(&items, |v| Value::Tuple(Rc::new(v)))?)?
            }
            b'l' => {
                let items = m.pop_mark()?;
                m.push(Node::parent(&items, |v| Value::List(Rc::new(v)))?)?
            }
            b'd' => {
                let items = m.pop_mark()?;
                m.leaf(Value::Dict(Rc::default()))?;
                m.set_items(items)?
            }
            b'a' => {
                let v = m.pop()?;
                m.extend(vec![v])?
            }
            b'e' => {
                let items = m.pop_mark()?;
                m.extend(items)?
            }
            b's' => {
                let v = m.pop()?;
                let k = m.pop()?;
                m.set_items(vec![k, v])?
            }
            b'u' => {
                let items = m.pop_mark()?;
                m.set_items(items)?
            }
            b'Q' => {
                let pid = m.pop()?;
                m.leaf(persistent(&pid.v)?)?
            }
            b'R' => {
                let args = m.pop()?;
                let f = m.pop()?;
                m.leaf(reduce(&f.v, &args.v)?)?
            }
            b'b' => {
                // BUILD: setting state on an object; only an (ignored) empty state on dicts.
                let _state = m.pop()?;
                m.top()?;
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
        Ok(Value::Global(Rc::from(full)))
    } else {
        Err(format!(
            "refusing pickle global {full}: prh reads tensors, numbers, strings, lists and dicts only and never runs code from a file"
        ))
    }
}

fn as_usize(v: &Value) -> Result<usize, String> {
    match v {
        Value::Int(i) if *i >= 0 => Ok(*i as usize),
        _ => Err(format!(
            "expected a non-negative integer, found {}",
            v.kind_name()
        )),
    }
}

fn usize_tuple(v: &Value) -> Result<Vec<usize>, String> {
    match v {
        Value::Tuple(items) | Value::List(items) if items.len() <= MAX_RANK => {
            items.iter().map(as_usize).collect()
        }
        Value::Tuple(_) | Value::List(_) => {
            Err(format!("a tensor with more than {MAX_RANK} dimensions"))
        }
        _ => Err(format!(
            "expected a tuple of integers, found {}",
            v.kind_name()
        )),
    }
}

fn persistent(pid: &Value) -> Result<Value, String> {
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
        ] if &**tag == "storage" => {
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

fn reduce(f: &Value, args: &Value) -> Result<Value, String> {
    let Value::Global(g) = f else {
        return Err("REDUCE on something that is not a known callable".into());
    };
    let Value::Tuple(args) = args else {
        return Err("REDUCE arguments are not a tuple".into());
    };
    match &**g {
        "collections.OrderedDict" => Ok(Value::Dict(Rc::default())),
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
        // Only a tensor passes through: the result is a leaf, so it may not carry a container.
        "torch._utils._rebuild_parameter" => match args.first() {
            Some(t @ Value::Tensor { .. }) => Ok(t.clone()),
            _ => Err("_rebuild_parameter without a tensor".to_string()),
        },
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
            Value::Dict(Rc::new(vec![
                (
                    Value::Str("a".into()),
                    Value::List(Rc::new(vec![
                        Value::Int(1),
                        Value::Float(2.5),
                        Value::Str("x".into())
                    ]))
                ),
                (
                    Value::Str("b".into()),
                    Value::Tuple(Rc::new(vec![Value::Bool(true), Value::None]))
                ),
            ]))
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

    /// Protocol-2 pickle: `n` list-doublings of one memoised list (the "billion laughs"
    /// shape): each step builds `[prev, prev]` from two memo references.
    fn doubling_bomb(n: u32) -> Vec<u8> {
        let mut p = b"\x80\x02]q\x00".to_vec(); // [] memo 0
        for i in 0..n {
            // MARK, GET i, GET i, LIST, PUT i+1
            p.push(b'(');
            p.push(b'j');
            p.extend_from_slice(&i.to_le_bytes());
            p.push(b'j');
            p.extend_from_slice(&i.to_le_bytes());
            p.push(b'l');
            p.push(b'r');
            p.extend_from_slice(&(i + 1).to_le_bytes());
        }
        p.push(b'.');
        p
    }

    #[test]
    fn memo_doubling_bomb_is_refused_without_allocating() {
        // 40 doublings = 2^40 objects if references were copies.
        let e = load(&doubling_bomb(40)).unwrap_err();
        assert!(e.contains("expands to more than"), "{e}");
        // A few doublings are fine and share memory.
        assert!(load(&doubling_bomb(10)).is_ok());
    }

    #[test]
    fn marks_count_against_the_stack_limit() {
        let mut p = b"\x80\x02".to_vec();
        p.extend(std::iter::repeat_n(b'(', 1 << 20));
        p.push(b'.');
        let e = load(&p).unwrap_err();
        assert!(e.contains("stack too deep"), "{e}");
    }

    #[test]
    fn deep_nesting_is_refused_not_a_stack_overflow() {
        // 150,000 nested 1-tuples: N, then TUPLE1 over and over.
        let mut p = b"\x80\x02N".to_vec();
        p.extend(std::iter::repeat_n(0x85u8, 150_000));
        p.push(b'.');
        let e = load(&p).unwrap_err();
        assert!(e.contains("deeper than"), "{e}");
    }

    #[test]
    fn copy_on_write_appends_are_bounded_in_work() {
        // A list of 60,000 items memoised, then PUT + APPEND pairs: each APPEND after a PUT
        // would copy the whole list.
        let mut p = b"\x80\x02](".to_vec();
        p.extend(std::iter::repeat_n(b'N', 60_000));
        p.push(b'e');
        for _ in 0..5_000 {
            p.extend_from_slice(b"q\x00N");
            p.push(b'a');
        }
        p.push(b'.');
        let e = load(&p).unwrap_err();
        assert!(e.contains("too much work"), "{e}");
    }
}
