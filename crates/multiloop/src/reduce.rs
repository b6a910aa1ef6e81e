//! Map-reduce folded in the workers: the [`Reducer`] trait, the built-in
//! reducers, and the registry that lets a worker find a reducer's code.
//!
//! Each worker folds the results of each chunk it runs into an accumulator
//! and sends back that one partial instead of every result; the parent
//! merges the partials. A chunk's partial is all or nothing: if the worker
//! dies before sending it, the chunk runs again, so nothing is counted
//! twice or lost.

use std::any::type_name;
use std::cmp::Reverse;
use std::collections::{BTreeMap, BinaryHeap, HashMap};
use std::marker::PhantomData;
use std::sync::OnceLock;

use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};

use crate::error::Error;

/// How to combine task results: a starting value, a fold of one result into
/// an accumulator, and a merge of two accumulators.
///
/// `fold` runs in the workers, `merge` in the workers and the parent. The
/// reducer value itself is serialized and sent with the work, so it can
/// carry settings (like `k` for a top-k). Every concrete reducer type must
/// be registered once with [`register_reducer!`](crate::register_reducer),
/// so that workers can find its code by name; the built-in reducers are
/// registered for the primitive number types.
///
/// ```
/// use serde::{Deserialize, Serialize};
///
/// /// Counts even and odd results.
/// #[derive(Serialize, Deserialize)]
/// struct Parity;
///
/// impl multiloop::Reducer for Parity {
///     type Item = u64;
///     type Acc = (u64, u64);
///     fn identity(&self) -> (u64, u64) {
///         (0, 0)
///     }
///     fn fold(&self, acc: &mut (u64, u64), item: u64) {
///         if item % 2 == 0 { acc.0 += 1 } else { acc.1 += 1 }
///     }
///     fn merge(&self, acc: &mut (u64, u64), other: (u64, u64)) {
///         acc.0 += other.0;
///         acc.1 += other.1;
///     }
/// }
///
/// multiloop::register_reducer!(Parity);
/// # fn main() {}
/// ```
pub trait Reducer: Serialize + DeserializeOwned + Send + Sync + 'static {
    /// One task result (the task's `Output`).
    type Item: Serialize + DeserializeOwned + Send + 'static;
    /// The accumulated value.
    type Acc: Serialize + DeserializeOwned + Send + 'static;
    /// The accumulator before any result.
    fn identity(&self) -> Self::Acc;
    /// Folds one result into the accumulator.
    fn fold(&self, acc: &mut Self::Acc, item: Self::Item);
    /// Merges another accumulator into this one.
    fn merge(&self, acc: &mut Self::Acc, other: Self::Acc);
}

/// What [`Pool::map_reduce`](crate::Pool::map_reduce) returns: the merged
/// value and the tasks that failed.
#[derive(Debug)]
pub struct Reduced<A> {
    /// Every successful result, folded and merged.
    pub value: A,
    /// The tasks that failed (their own error, a panic, a timeout, a crash
    /// after their last attempt), by input index, in completion order.
    pub errors: Vec<(u64, Error)>,
    /// How many results were folded into `value`.
    pub folded: u64,
}

/// One piece of a map-reduce's outcome, as
/// [`MapReduce::partials`](crate::MapReduce::partials) yields it.
#[derive(Debug)]
pub enum Partial<A> {
    /// A worker's fold of some of the call's results (one chunk's).
    Folded {
        /// The folded results.
        value: A,
        /// How many results it folds.
        tasks: u64,
    },
    /// A task that failed (its own error, a panic, a timeout, a crash
    /// after its last attempt); it is in no [`Partial::Folded`].
    Failed {
        /// The task's input index.
        index: u64,
        /// Why it failed.
        error: Error,
    },
}

/// A registered reducer, as the worker finds it. Made by
/// `register_reducer!`; not meant to be used directly.
#[doc(hidden)]
pub struct ReducerEntry {
    name: fn() -> &'static str,
    make: MakeFold,
}

/// Builds a reducer's fold from its serialized value.
type MakeFold = fn(&[u8]) -> Result<Box<dyn Fold>, String>;

impl ReducerEntry {
    #[doc(hidden)]
    pub const fn new<R: Reducer>() -> Self {
        ReducerEntry {
            name: type_name::<R>,
            make: make_fold::<R>,
        }
    }
}

/// Every reducer registered in the executable (see `crate::worker::TASKS`).
#[doc(hidden)]
#[linkme::distributed_slice]
pub static REDUCERS: [ReducerEntry];

/// The registry key of reducer type `R`: its type name, which is the same
/// in every process of one executable.
pub(crate) fn reducer_name<R: Reducer>() -> &'static str {
    type_name::<R>()
}

impl ReducerEntry {
    /// The registry key, with the registry's lifetime.
    #[cfg(feature = "cluster")]
    pub(crate) fn name(&self) -> &'static str {
        (self.name)()
    }
}

pub(crate) fn lookup(name: &str) -> Option<&'static ReducerEntry> {
    static BY_NAME: OnceLock<HashMap<&'static str, &'static ReducerEntry>> = OnceLock::new();
    BY_NAME
        .get_or_init(|| REDUCERS.iter().map(|e| ((e.name)(), e)).collect())
        .get(name)
        .copied()
}

/// A reducer at work in a worker: folds serialized results.
pub(crate) trait Fold {
    /// Folds one serialized result.
    fn fold_bytes(&mut self, item: &[u8]) -> Result<(), String>;
    /// Appends the serialized accumulator to `out`.
    fn finish(&mut self, out: &mut Vec<u8>) -> Result<(), String>;
    /// Merges a serialized accumulator (another partial of the same chunk,
    /// on a cluster host whose local pool split the chunk).
    #[cfg(feature = "cluster")]
    fn merge_bytes(&mut self, acc: &[u8]) -> Result<(), String>;
}

pub(crate) fn make(entry: &ReducerEntry, config: &[u8]) -> Result<Box<dyn Fold>, String> {
    (entry.make)(config)
}

struct Folder<R: Reducer> {
    reducer: R,
    acc: Option<R::Acc>,
}

fn make_fold<R: Reducer>(config: &[u8]) -> Result<Box<dyn Fold>, String> {
    let reducer: R = postcard::from_bytes(config).map_err(|e| {
        format!(
            "could not deserialize the reducer `{}`: {e}",
            type_name::<R>()
        )
    })?;
    let acc = Some(reducer.identity());
    Ok(Box::new(Folder { reducer, acc }))
}

impl<R: Reducer> Fold for Folder<R> {
    fn fold_bytes(&mut self, item: &[u8]) -> Result<(), String> {
        let item: R::Item = postcard::from_bytes(item).map_err(|e| {
            format!(
                "could not deserialize a result as `{}`: {e}",
                type_name::<R::Item>()
            )
        })?;
        if let Some(acc) = &mut self.acc {
            self.reducer.fold(acc, item);
        }
        Ok(())
    }

    #[cfg(feature = "cluster")]
    fn merge_bytes(&mut self, acc: &[u8]) -> Result<(), String> {
        let other: R::Acc = postcard::from_bytes(acc).map_err(|e| {
            format!(
                "could not deserialize an accumulator as `{}`: {e}",
                type_name::<R::Acc>()
            )
        })?;
        let acc = self.acc.get_or_insert_with(|| self.reducer.identity());
        self.reducer.merge(acc, other);
        Ok(())
    }

    fn finish(&mut self, out: &mut Vec<u8>) -> Result<(), String> {
        let acc = self.acc.take().unwrap_or_else(|| self.reducer.identity());
        crate::wire::append_value(out, &acc).map_err(|e| {
            format!(
                "could not serialize the accumulator `{}`: {e}",
                type_name::<R::Acc>()
            )
        })
    }
}

/// Registers reducer types so that workers can run them: once per concrete
/// type, at the top level of any module of the executable.
///
/// ```
/// # use serde::{Deserialize, Serialize};
/// # #[derive(Serialize, Deserialize)] struct Longest;
/// # impl multiloop::Reducer for Longest {
/// #     type Item = String; type Acc = String;
/// #     fn identity(&self) -> String { String::new() }
/// #     fn fold(&self, acc: &mut String, s: String) { if s.len() > acc.len() { *acc = s } }
/// #     fn merge(&self, acc: &mut String, o: String) { self.fold(acc, o) }
/// # }
/// multiloop::register_reducer!(Longest, multiloop::reduce::Sum<u128>);
/// # fn main() {}
/// ```
#[macro_export]
macro_rules! register_reducer {
    ($($reducer:ty),+ $(,)?) => {
        $(
            const _: () = {
                #[$crate::__private::linkme::distributed_slice($crate::__private::REDUCERS)]
                #[linkme(crate = $crate::__private::linkme)]
                static ENTRY: $crate::__private::ReducerEntry = $crate::__private::ReducerEntry::new::<$reducer>();
            };
        )+
    };
}

/// Adds the results.
#[derive(Debug, Serialize, Deserialize)]
#[serde(bound = "")]
pub struct Sum<T>(PhantomData<T>);

/// Counts the successful results.
#[derive(Debug, Serialize, Deserialize)]
#[serde(bound = "")]
pub struct Count<T>(PhantomData<T>);

/// The smallest result (`None` when there was none).
#[derive(Debug, Serialize, Deserialize)]
#[serde(bound = "")]
pub struct Min<T>(PhantomData<T>);

/// The largest result (`None` when there was none).
#[derive(Debug, Serialize, Deserialize)]
#[serde(bound = "")]
pub struct Max<T>(PhantomData<T>);

/// The `k` largest results, largest first.
#[derive(Debug, Serialize, Deserialize)]
#[serde(bound = "")]
pub struct TopK<T> {
    k: usize,
    #[serde(skip)]
    _item: PhantomData<T>,
}

/// Results that are `(key, value)` pairs, gathered into a map from each key
/// to all its values.
#[derive(Debug, Serialize, Deserialize)]
#[serde(bound = "")]
pub struct GroupBy<K, V>(PhantomData<(K, V)>);

macro_rules! unit_constructor {
    ($($name:ident),*) => {$(
        impl<T> $name<T> {
            /// The reducer.
            pub fn new() -> Self {
                $name(PhantomData)
            }
        }
        impl<T> Default for $name<T> {
            fn default() -> Self {
                Self::new()
            }
        }
    )*};
}
unit_constructor!(Sum, Count, Min, Max);

impl<T> TopK<T> {
    /// Keeps the `k` largest results.
    pub fn new(k: usize) -> Self {
        TopK {
            k,
            _item: PhantomData,
        }
    }
}

impl<K, V> GroupBy<K, V> {
    /// The reducer.
    pub fn new() -> Self {
        GroupBy(PhantomData)
    }
}

impl<K, V> Default for GroupBy<K, V> {
    fn default() -> Self {
        Self::new()
    }
}

/// Numbers the built-in reducers work on.
pub trait Number:
    Serialize + DeserializeOwned + Copy + PartialOrd + Default + Send + Sync + 'static
{
    /// `self + other` (wrapping for integers, so a sum never panics).
    fn add(self, other: Self) -> Self;
}

macro_rules! numbers {
    (int: $($t:ty),*; float: $($f:ty),*) => {
        $(impl Number for $t { fn add(self, o: Self) -> Self { self.wrapping_add(o) } })*
        $(impl Number for $f { fn add(self, o: Self) -> Self { self + o } })*
    };
}
numbers!(int: u8, u16, u32, u64, u128, usize, i8, i16, i32, i64, i128, isize; float: f32, f64);

impl<T: Number> Reducer for Sum<T> {
    type Item = T;
    type Acc = T;
    fn identity(&self) -> T {
        T::default()
    }
    fn fold(&self, acc: &mut T, item: T) {
        *acc = acc.add(item);
    }
    fn merge(&self, acc: &mut T, other: T) {
        *acc = acc.add(other);
    }
}

impl<T: Serialize + DeserializeOwned + Send + Sync + 'static> Reducer for Count<T> {
    type Item = T;
    type Acc = u64;
    fn identity(&self) -> u64 {
        0
    }
    fn fold(&self, acc: &mut u64, _: T) {
        *acc += 1;
    }
    fn merge(&self, acc: &mut u64, other: u64) {
        *acc += other;
    }
}

impl<T: Number> Reducer for Min<T> {
    type Item = T;
    type Acc = Option<T>;
    fn identity(&self) -> Option<T> {
        None
    }
    fn fold(&self, acc: &mut Option<T>, item: T) {
        if acc.is_none_or(|a| item < a) {
            *acc = Some(item);
        }
    }
    fn merge(&self, acc: &mut Option<T>, other: Option<T>) {
        if let Some(o) = other {
            self.fold(acc, o);
        }
    }
}

impl<T: Number> Reducer for Max<T> {
    type Item = T;
    type Acc = Option<T>;
    fn identity(&self) -> Option<T> {
        None
    }
    fn fold(&self, acc: &mut Option<T>, item: T) {
        if acc.is_none_or(|a| item > a) {
            *acc = Some(item);
        }
    }
    fn merge(&self, acc: &mut Option<T>, other: Option<T>) {
        if let Some(o) = other {
            self.fold(acc, o);
        }
    }
}

impl<T: Serialize + DeserializeOwned + Ord + Send + Sync + 'static> Reducer for TopK<T> {
    type Item = T;
    /// Largest first.
    type Acc = Vec<T>;
    fn identity(&self) -> Vec<T> {
        Vec::new()
    }
    fn fold(&self, acc: &mut Vec<T>, item: T) {
        self.merge(acc, vec![item]);
    }
    fn merge(&self, acc: &mut Vec<T>, other: Vec<T>) {
        let mut heap: BinaryHeap<Reverse<T>> = acc.drain(..).chain(other).map(Reverse).collect();
        while heap.len() > self.k {
            heap.pop();
        }
        *acc = heap
            .into_sorted_vec()
            .into_iter()
            .map(|Reverse(t)| t)
            .collect();
    }
}

impl<K, V> Reducer for GroupBy<K, V>
where
    K: Serialize + DeserializeOwned + Ord + Send + Sync + 'static,
    V: Serialize + DeserializeOwned + Send + Sync + 'static,
{
    type Item = (K, V);
    type Acc = BTreeMap<K, Vec<V>>;
    fn identity(&self) -> Self::Acc {
        BTreeMap::new()
    }
    fn fold(&self, acc: &mut Self::Acc, (k, v): (K, V)) {
        acc.entry(k).or_default().push(v);
    }
    fn merge(&self, acc: &mut Self::Acc, other: Self::Acc) {
        for (k, mut vs) in other {
            acc.entry(k).or_default().append(&mut vs);
        }
    }
}

macro_rules! register_builtin {
    ($($t:ty),*) => {$(
        crate::register_reducer!(Sum<$t>, Count<$t>, Min<$t>, Max<$t>);
    )*};
}
register_builtin!(
    u8, u16, u32, u64, u128, usize, i8, i16, i32, i64, i128, isize, f32, f64
);
crate::register_reducer!(
    TopK<u8>, TopK<u16>, TopK<u32>, TopK<u64>, TopK<usize>, TopK<i32>, TopK<i64>, TopK<String>,
    Count<String>, Count<()>, Count<bool>, GroupBy<String, u64>, GroupBy<u64, u64>, GroupBy<String, String>
);
