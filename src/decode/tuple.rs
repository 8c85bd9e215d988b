//! A row's column values: its bytes held once, and where each value lies in them.
//!
//! A small decoded row is one allocation: its wire bytes copied behind a byte per column
//! saying where that column starts. Any other tuple shares a payload (no reference count per
//! value) and has a table of slots. [`Datum`]s are borrowed views into either.

use bytes::Bytes;

/// One column value, borrowed from its [`Tuple`].
#[derive(Clone, Copy, PartialEq, Eq)]
pub enum Datum<'a> {
    /// 'n': SQL NULL.
    Null,
    /// 'u': an unchanged TOASTed value the server did not send.
    Unchanged,
    /// 't': the value in the type's text output format.
    Text(&'a [u8]),
    /// 'b': the value in binary format (only with the `binary` option, which walcast does not use).
    Binary(&'a [u8]),
}

impl std::fmt::Debug for Datum<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Datum::Null => f.write_str("Null"),
            Datum::Unchanged => f.write_str("Unchanged"),
            Datum::Text(b) => write!(f, "Text(b\"{}\")", b.escape_ascii()),
            Datum::Binary(b) => write!(f, "Binary(b\"{}\")", b.escape_ascii()),
        }
    }
}

/// Where one column value lies in its tuple's payload (`start..end`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Slot {
    /// SQL NULL.
    Null,
    /// An unchanged TOASTed value the server did not send.
    Unchanged,
    /// A text-format value.
    Text {
        /// First byte.
        start: usize,
        /// One past the last byte.
        end: usize,
    },
    /// A binary-format value.
    Binary {
        /// First byte.
        start: usize,
        /// One past the last byte.
        end: usize,
    },
}

/// The column values of one row (or old key), in table order.
///
/// Every value lies inside the tuple's bytes: the constructors check it, so reading a value
/// never fails.
#[derive(Clone)]
pub struct Tuple {
    repr: Repr,
}

/// How a tuple holds its values.
#[derive(Clone)]
enum Repr {
    /// A small row as the server sent it (per column a kind byte, then for a value its Int32
    /// length and bytes), copied out of its message behind one byte per column: where that
    /// column's kind byte lies in the row. One allocation per row, and no reference count.
    Wire {
        /// `columns` table bytes, then the row's bytes (at most [`WIRE_MAX`]).
        buf: Box<[u8]>,
        /// Number of columns (the table's length).
        columns: usize,
    },
    /// Values anywhere in a shared payload, where `slots` say.
    Slots {
        /// The bytes the slots point into.
        payload: Bytes,
        /// One slot per column.
        slots: Vec<Slot>,
    },
}

/// The longest row [`Tuple::from_wire`] copies: every kind byte then lies at an offset a
/// `u8` holds.
pub(super) const WIRE_MAX: usize = 256;

impl Default for Tuple {
    fn default() -> Self {
        Tuple { repr: Repr::Slots { payload: Bytes::new(), slots: Vec::new() } }
    }
}

impl Tuple {
    /// A tuple whose values lie in `payload` at `slots`; `None` if a slot is out of its bounds.
    pub fn from_slots(payload: Bytes, slots: Vec<Slot>) -> Option<Tuple> {
        let fits = |start: usize, end: usize| start <= end && end <= payload.len();
        let ok = slots.iter().all(|s| match *s {
            Slot::Null | Slot::Unchanged => true,
            Slot::Text { start, end } | Slot::Binary { start, end } => fits(start, end),
        });
        ok.then_some(Tuple { repr: Repr::Slots { payload, slots } })
    }

    /// A copy of `row`, pgoutput TupleData after its column count, which the caller has read
    /// with bounds checks; `kinds` is where each column's kind byte lies in it. `None` if it is
    /// longer than [`WIRE_MAX`] or a kind offset is past its end. Inlined: a tuple returned
    /// through memory is read back before its stores have landed, which stalls.
    #[inline(always)]
    pub(super) fn from_wire(kinds: &[u8], row: &[u8]) -> Option<Tuple> {
        if row.len() > WIRE_MAX || kinds.iter().any(|&k| usize::from(k) >= row.len()) {
            return None;
        }
        let mut buf = Vec::with_capacity(kinds.len() + row.len());
        buf.extend_from_slice(kinds);
        buf.extend_from_slice(row);
        Some(Tuple { repr: Repr::Wire { buf: buf.into_boxed_slice(), columns: kinds.len() } })
    }

    /// A tuple sharing `row`, pgoutput TupleData of `columns` columns after its column count,
    /// which the caller has read with bounds checks (a malformed column reads as Null).
    #[inline(never)]
    pub(super) fn from_shared_wire(row: Bytes, columns: usize) -> Tuple {
        let mut slots = Vec::with_capacity(columns.min(row.len()));
        let mut at = 0;
        for _ in 0..columns {
            let (slot, next) = wire_slot(&row, at);
            slots.push(slot);
            at = next;
        }
        Tuple { repr: Repr::Slots { payload: row, slots } }
    }

    /// A tuple holding a copy of `datums`.
    pub fn from_datums<'a>(datums: impl IntoIterator<Item = Datum<'a>>) -> Tuple {
        let mut payload = Vec::new();
        let mut slots = Vec::new();
        for d in datums {
            let mut put = |b: &[u8]| {
                let start = payload.len();
                payload.extend_from_slice(b);
                (start, payload.len())
            };
            slots.push(match d {
                Datum::Null => Slot::Null,
                Datum::Unchanged => Slot::Unchanged,
                Datum::Text(b) => {
                    let (start, end) = put(b);
                    Slot::Text { start, end }
                }
                Datum::Binary(b) => {
                    let (start, end) = put(b);
                    Slot::Binary { start, end }
                }
            });
        }
        Tuple { repr: Repr::Slots { payload: Bytes::from(payload), slots } }
    }

    /// Number of columns.
    #[inline]
    pub fn len(&self) -> usize {
        match &self.repr {
            Repr::Wire { columns, .. } => *columns,
            Repr::Slots { slots, .. } => slots.len(),
        }
    }

    /// Whether the tuple has no columns.
    #[inline]
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Column `i`'s value.
    #[inline]
    pub fn get(&self, i: usize) -> Option<Datum<'_>> {
        match &self.repr {
            Repr::Wire { buf, columns } => {
                let (kinds, row) = buf.split_at((*columns).min(buf.len()));
                kinds.get(i).map(|&k| wire_datum(row, k))
            }
            Repr::Slots { payload, slots } => slots.get(i).map(|s| datum(payload, s)),
        }
    }

    /// The values in column order.
    #[inline]
    pub fn iter(&self) -> Iter<'_> {
        match &self.repr {
            Repr::Wire { buf, columns } => {
                let (kinds, row) = buf.split_at((*columns).min(buf.len()));
                Iter { inner: IterRepr::Wire { row, kinds: kinds.iter() } }
            }
            Repr::Slots { payload, slots } => Iter { inner: IterRepr::Slots { payload, slots: slots.iter() } },
        }
    }

    /// This tuple with column `i`'s value replaced (a copy; out of range: unchanged).
    pub fn with(&self, i: usize, value: Datum<'_>) -> Tuple {
        Tuple::from_datums(self.iter().enumerate().map(|(j, d)| if j == i { value } else { d }))
    }
}

#[inline]
fn datum<'a>(payload: &'a [u8], slot: &Slot) -> Datum<'a> {
    match *slot {
        Slot::Null => Datum::Null,
        Slot::Unchanged => Datum::Unchanged,
        // In bounds by construction; an empty value otherwise rather than a panic.
        Slot::Text { start, end } => Datum::Text(payload.get(start..end).unwrap_or_default()),
        Slot::Binary { start, end } => Datum::Binary(payload.get(start..end).unwrap_or_default()),
    }
}

/// The value of the column whose kind byte is at `at` in a checked row ([`Repr::Wire`]).
#[inline]
fn wire_datum(row: &[u8], at: u8) -> Datum<'_> {
    let at = usize::from(at);
    match row.get(at) {
        Some(b't') => Datum::Text(wire_value(row, at)),
        Some(b'b') => Datum::Binary(wire_value(row, at)),
        Some(b'u') => Datum::Unchanged,
        _ => Datum::Null,
    }
}

/// The bytes after the length that follows the kind byte at `at` (empty if they do not fit,
/// which a checked row rules out).
#[inline]
fn wire_value(row: &[u8], at: usize) -> &[u8] {
    let Some(&[a, b, c, d]) = row.get(at + 1..at + 5) else { return &[] };
    let start = at + 5;
    row.get(start..start.saturating_add(u32::from_be_bytes([a, b, c, d]) as usize)).unwrap_or_default()
}

/// The slot of the column whose kind byte is at `at` in a checked row, and where the next
/// column starts.
fn wire_slot(row: &[u8], at: usize) -> (Slot, usize) {
    let (start, end) = match row.get(at + 1..at + 5) {
        Some(&[a, b, c, d]) => (at + 5, (at + 5).saturating_add(u32::from_be_bytes([a, b, c, d]) as usize).min(row.len())),
        _ => (at + 1, at + 1),
    };
    match row.get(at) {
        Some(b't') => (Slot::Text { start, end }, end),
        Some(b'b') => (Slot::Binary { start, end }, end),
        Some(b'u') => (Slot::Unchanged, at + 1),
        _ => (Slot::Null, at + 1),
    }
}

impl PartialEq for Tuple {
    fn eq(&self, other: &Self) -> bool {
        self.iter().eq(other.iter())
    }
}

impl Eq for Tuple {}

impl std::fmt::Debug for Tuple {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_list().entries(self.iter()).finish()
    }
}

impl<'a> FromIterator<Datum<'a>> for Tuple {
    fn from_iter<I: IntoIterator<Item = Datum<'a>>>(iter: I) -> Self {
        Tuple::from_datums(iter)
    }
}

/// The values of a [`Tuple`], in column order.
#[derive(Clone)]
pub struct Iter<'a> {
    inner: IterRepr<'a>,
}

#[derive(Clone)]
enum IterRepr<'a> {
    Wire { row: &'a [u8], kinds: std::slice::Iter<'a, u8> },
    Slots { payload: &'a [u8], slots: std::slice::Iter<'a, Slot> },
}

impl<'a> Iterator for Iter<'a> {
    type Item = Datum<'a>;

    #[inline]
    fn next(&mut self) -> Option<Datum<'a>> {
        match &mut self.inner {
            IterRepr::Wire { row, kinds } => kinds.next().map(|&k| wire_datum(row, k)),
            IterRepr::Slots { payload, slots } => slots.next().map(|s| datum(payload, s)),
        }
    }

    #[inline]
    fn size_hint(&self) -> (usize, Option<usize>) {
        match &self.inner {
            IterRepr::Wire { kinds, .. } => kinds.size_hint(),
            IterRepr::Slots { slots, .. } => slots.size_hint(),
        }
    }
}

impl ExactSizeIterator for Iter<'_> {}

impl<'a> IntoIterator for &'a Tuple {
    type Item = Datum<'a>;
    type IntoIter = Iter<'a>;

    fn into_iter(self) -> Iter<'a> {
        self.iter()
    }
}
