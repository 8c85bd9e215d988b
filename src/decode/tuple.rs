//! A row's column values: one shared payload and where each value lies in it.
//!
//! A tuple holds its bytes once (no reference count per value) and a small table of slots;
//! [`Datum`]s are borrowed views into it.

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
/// Every slot lies inside the payload: the constructors check it, so reading a value never
/// fails.
#[derive(Clone, Default)]
pub struct Tuple {
    payload: Bytes,
    slots: Vec<Slot>,
}

impl Tuple {
    /// A tuple whose values lie in `payload` at `slots`; `None` if a slot is out of its bounds.
    pub fn from_slots(payload: Bytes, slots: Vec<Slot>) -> Option<Tuple> {
        let fits = |start: usize, end: usize| start <= end && end <= payload.len();
        let ok = slots.iter().all(|s| match *s {
            Slot::Null | Slot::Unchanged => true,
            Slot::Text { start, end } | Slot::Binary { start, end } => fits(start, end),
        });
        ok.then_some(Tuple { payload, slots })
    }

    /// A tuple of slots the caller has just read from `payload` with bounds checks.
    pub(super) fn from_checked_slots(payload: Bytes, slots: Vec<Slot>) -> Tuple {
        debug_assert!(Tuple::from_slots(payload.clone(), slots.clone()).is_some());
        Tuple { payload, slots }
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
        Tuple { payload: Bytes::from(payload), slots }
    }

    /// Number of columns.
    #[inline]
    pub fn len(&self) -> usize {
        self.slots.len()
    }

    /// Whether the tuple has no columns.
    #[inline]
    pub fn is_empty(&self) -> bool {
        self.slots.is_empty()
    }

    /// Column `i`'s value.
    #[inline]
    pub fn get(&self, i: usize) -> Option<Datum<'_>> {
        self.slots.get(i).map(|s| datum(&self.payload, s))
    }

    /// The values in column order.
    #[inline]
    pub fn iter(&self) -> Iter<'_> {
        Iter { payload: &self.payload, slots: self.slots.iter() }
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
    payload: &'a [u8],
    slots: std::slice::Iter<'a, Slot>,
}

impl<'a> Iterator for Iter<'a> {
    type Item = Datum<'a>;

    #[inline]
    fn next(&mut self) -> Option<Datum<'a>> {
        self.slots.next().map(|s| datum(self.payload, s))
    }

    #[inline]
    fn size_hint(&self) -> (usize, Option<usize>) {
        self.slots.size_hint()
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
