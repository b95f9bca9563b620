//! A log-linear latency histogram that merges across worker processes.
//!
//! Values are nanoseconds. Below [`SUB`] each value has its own bucket;
//! above, every power of two is split into [`SUB`] equal buckets, so a
//! recorded value is known to within 1/[`SUB`] (about 3 %). The histogram
//! travels between processes as a sparse `index:count,...` string.

/// Buckets per power of two (and the count of exact buckets below it).
const SUB: u64 = 32;
/// `log2(SUB)`.
const SUB_BITS: u32 = SUB.trailing_zeros();
/// Enough buckets for every `u64`.
const BUCKETS: usize = (SUB + (64 - SUB_BITS as u64) * SUB) as usize;

/// Counts of values per bucket.
#[derive(Clone)]
pub struct Histogram {
    counts: Vec<u64>,
    total: u64,
}

impl Default for Histogram {
    /// An empty histogram.
    fn default() -> Self {
        Histogram { counts: vec![0; BUCKETS], total: 0 }
    }
}

impl Histogram {
    /// Records one value, in nanoseconds.
    pub fn record(&mut self, ns: u64) {
        self.counts[index_of(ns)] += 1;
        self.total += 1;
    }

    /// Number of values recorded.
    #[cfg(test)]
    pub fn len(&self) -> u64 {
        self.total
    }

    /// Adds every value of `other`.
    pub fn merge(&mut self, other: &Histogram) {
        for (c, o) in self.counts.iter_mut().zip(&other.counts) {
            *c += o;
        }
        self.total += other.total;
    }

    /// The value at quantile `q` (0.0..=1.0), as the upper edge of its
    /// bucket (never understated), or 0 when empty.
    pub fn quantile(&self, q: f64) -> u64 {
        if self.total == 0 {
            return 0;
        }
        let rank = ((q * self.total as f64).ceil() as u64).clamp(1, self.total);
        let mut seen = 0;
        for (i, &c) in self.counts.iter().enumerate() {
            seen += c;
            if seen >= rank {
                return upper_edge(i);
            }
        }
        upper_edge(BUCKETS - 1)
    }

    /// The sparse text form: `index:count` pairs joined by commas, `-` when
    /// empty.
    pub fn encode(&self) -> String {
        let pairs: Vec<String> =
            self.counts.iter().enumerate().filter(|(_, &c)| c > 0).map(|(i, c)| format!("{i}:{c}")).collect();
        if pairs.is_empty() {
            "-".into()
        } else {
            pairs.join(",")
        }
    }

    /// Parses [`Histogram::encode`]'s form.
    pub fn decode(text: &str) -> Result<Histogram, String> {
        let mut h = Histogram::default();
        if text == "-" {
            return Ok(h);
        }
        for pair in text.split(',') {
            let (i, c) = pair.split_once(':').ok_or_else(|| format!("bad histogram pair {pair:?}"))?;
            let i: usize = i.parse().map_err(|_| format!("bad histogram index {i:?}"))?;
            let c: u64 = c.parse().map_err(|_| format!("bad histogram count {c:?}"))?;
            *h.counts.get_mut(i).ok_or_else(|| format!("histogram index {i} out of range"))? += c;
            h.total += c;
        }
        Ok(h)
    }
}

/// The bucket of `ns`.
fn index_of(ns: u64) -> usize {
    if ns < SUB {
        return ns as usize;
    }
    let exp = 63 - ns.leading_zeros(); // >= SUB_BITS
    let sub = (ns >> (exp - SUB_BITS)) & (SUB - 1);
    (SUB + u64::from(exp - SUB_BITS) * SUB + sub) as usize
}

/// The largest value that falls in bucket `i`.
fn upper_edge(i: usize) -> u64 {
    let i = i as u64;
    if i < SUB {
        return i;
    }
    let exp = (i - SUB) / SUB + u64::from(SUB_BITS);
    let sub = (i - SUB) % SUB;
    let width = 1u64 << (exp - u64::from(SUB_BITS));
    ((SUB + sub) * width).saturating_add(width - 1)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn buckets_bound_their_values() {
        for ns in [0, 1, 31, 32, 33, 63, 64, 1000, 123_456, 10_000_000, u64::MAX / 3, u64::MAX] {
            let i = index_of(ns);
            assert!(upper_edge(i) >= ns, "{ns}");
            assert!(i == 0 || upper_edge(i - 1) < ns, "{ns}");
        }
    }

    #[test]
    fn quantiles_and_round_trip() {
        let mut h = Histogram::default();
        for v in 1..=1000u64 {
            h.record(v * 1000);
        }
        let h = Histogram::decode(&h.encode()).unwrap();
        assert_eq!(h.len(), 1000);
        let p50 = h.quantile(0.5);
        assert!((500_000..=516_000).contains(&p50), "{p50}");
        assert!(h.quantile(1.0) >= 1_000_000);
        assert_eq!(Histogram::decode("-").unwrap().quantile(0.5), 0);
    }
}
