//! Token buckets: per socket (owned by its worker, so their state lives and
//! dies with the socket) and per client address (a bounded map, pruned of
//! buckets that have refilled, so its state never grows without bound); and
//! counts per client address (sockets, TCP connections).
//!
//! Every per-address structure counts by [`ip_key`]: an IPv6 client usually
//! holds a whole /64 (SLAAC, privacy addresses), so counting single IPv6
//! addresses would give one client 2^64 fresh allowances.

use std::collections::HashMap;
use std::net::{IpAddr, Ipv6Addr};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::time::Instant;

/// The key every per-address limit counts `ip` by: an IPv4 address as it
/// is, an IPv4-mapped IPv6 address (`::ffff:1.2.3.4`, what a dual-stack
/// listener reports for IPv4 clients) as that IPv4 address, and any other
/// IPv6 address as its /64 (the rest set to zero).
pub fn ip_key(ip: IpAddr) -> IpAddr {
    match ip {
        IpAddr::V4(_) => ip,
        IpAddr::V6(v6) => match v6.to_ipv4_mapped() {
            Some(v4) => IpAddr::V4(v4),
            None => IpAddr::V6(Ipv6Addr::from(v6.to_bits() & !u128::from(u64::MAX))),
        },
    }
}

/// A rate: `burst` at once, refilled at `per_sec`. A zero rate means unlimited.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Rate {
    pub per_sec: f64,
    pub burst: f64,
}

impl Rate {
    pub const UNLIMITED: Rate = Rate {
        per_sec: 0.0,
        burst: 0.0,
    };

    /// `per_min` per minute, with a burst of ten seconds' worth (at least 5).
    pub fn per_minute(per_min: u32) -> Self {
        let per_sec = f64::from(per_min) / 60.0;
        Self {
            per_sec,
            burst: (per_sec * 10.0).max(5.0),
        }
    }

    /// As [`Rate::per_minute`], where the setting's `0` means no limit.
    pub fn per_minute_or_unlimited(per_min: u32) -> Self {
        if per_min == 0 {
            Self::UNLIMITED
        } else {
            Self::per_minute(per_min)
        }
    }

    /// `per_sec` per second with a burst of `burst`, where the setting's `0`
    /// means no limit.
    pub fn per_second_or_unlimited(per_sec: u32, burst: u32) -> Self {
        if per_sec == 0 {
            Self::UNLIMITED
        } else {
            Self {
                per_sec: f64::from(per_sec),
                burst: f64::from(burst),
            }
        }
    }

    pub fn is_unlimited(&self) -> bool {
        self.per_sec <= 0.0
    }
}

/// One bucket.
#[derive(Debug, Clone)]
pub struct Bucket {
    tokens: f64,
    updated: Instant,
}

impl Bucket {
    pub fn new(rate: Rate) -> Self {
        Self {
            tokens: rate.burst,
            updated: Instant::now(),
        }
    }

    /// Takes a token, or says how long until one is available.
    pub fn take(&mut self, rate: Rate, now: Instant) -> Result<(), Duration> {
        if rate.is_unlimited() {
            return Ok(());
        }
        self.refill(rate, now);
        if self.tokens >= 1.0 {
            self.tokens -= 1.0;
            Ok(())
        } else {
            Err(Duration::from_secs_f64((1.0 - self.tokens) / rate.per_sec))
        }
    }

    fn refill(&mut self, rate: Rate, now: Instant) {
        let elapsed = now.saturating_duration_since(self.updated).as_secs_f64();
        self.tokens = (self.tokens + elapsed * rate.per_sec).min(rate.burst);
        self.updated = now;
    }

    fn is_full(&mut self, rate: Rate, now: Instant) -> bool {
        self.refill(rate, now);
        self.tokens >= rate.burst
    }
}

/// Most client IPs tracked by one limiter; past it, full buckets are pruned
/// and, if none is full, new IPs share one overflow bucket (fail closed).
const MAX_TRACKED_IPS: usize = 100_000;

/// Buckets per client address ([`ip_key`]).
pub struct IpLimiter {
    rate: Rate,
    buckets: Mutex<HashMap<IpAddr, Bucket>>,
    overflow: Mutex<Bucket>,
}

impl IpLimiter {
    pub fn new(rate: Rate) -> Self {
        Self {
            rate,
            buckets: Mutex::new(HashMap::new()),
            overflow: Mutex::new(Bucket::new(rate)),
        }
    }

    /// Takes a token for `ip`'s address, or says how long until one is available.
    pub fn check(&self, ip: IpAddr) -> Result<(), Duration> {
        if self.rate.is_unlimited() {
            return Ok(());
        }
        let ip = ip_key(ip);
        let now = Instant::now();
        let mut buckets = self.buckets.lock().unwrap_or_else(|e| e.into_inner());
        if !buckets.contains_key(&ip) && buckets.len() >= MAX_TRACKED_IPS {
            buckets.retain(|_, b| !b.is_full(self.rate, now));
            if buckets.len() >= MAX_TRACKED_IPS {
                drop(buckets);
                return self
                    .overflow
                    .lock()
                    .unwrap_or_else(|e| e.into_inner())
                    .take(self.rate, now);
            }
        }
        buckets
            .entry(ip)
            .or_insert_with(|| Bucket::new(self.rate))
            .take(self.rate, now)
    }

    /// Drops buckets that have refilled (they hold nothing a new one would not).
    pub fn prune(&self) {
        let now = Instant::now();
        let mut buckets = self.buckets.lock().unwrap_or_else(|e| e.into_inner());
        buckets.retain(|_, b| !b.is_full(self.rate, now));
    }

    pub fn tracked(&self) -> usize {
        self.buckets.lock().unwrap_or_else(|e| e.into_inner()).len()
    }
}

/// Counts things (sockets, TCP connections) per client address
/// ([`ip_key`]). Its map holds only addresses with something counted, so it
/// is bounded by what it counts.
#[derive(Default)]
pub struct IpCounter {
    counts: Mutex<HashMap<IpAddr, usize>>,
}

impl IpCounter {
    /// Counts one more for `ip`'s address unless it already has `max` (0 = no limit).
    pub fn try_add(&self, ip: IpAddr, max: usize) -> bool {
        let mut counts = self.counts.lock().unwrap_or_else(|e| e.into_inner());
        let count = counts.entry(ip_key(ip)).or_insert(0);
        if max != 0 && *count >= max {
            return false;
        }
        *count += 1;
        true
    }

    /// As [`IpCounter::try_add`], as a slot that is given back when dropped.
    pub fn try_slot(self: &Arc<Self>, ip: IpAddr, max: usize) -> Option<AddressSlot> {
        self.try_add(ip, max).then(|| AddressSlot {
            counter: self.clone(),
            key: ip_key(ip),
        })
    }

    /// What `ip`'s address has counted.
    pub fn count(&self, ip: IpAddr) -> usize {
        let counts = self.counts.lock().unwrap_or_else(|e| e.into_inner());
        counts.get(&ip_key(ip)).copied().unwrap_or(0)
    }

    pub fn remove(&self, ip: IpAddr) {
        let ip = ip_key(ip);
        let mut counts = self.counts.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(count) = counts.get_mut(&ip) {
            *count -= 1;
            if *count == 0 {
                counts.remove(&ip);
            }
        }
    }

    pub fn total(&self) -> usize {
        self.counts
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .values()
            .sum()
    }
}

/// One thing counted against a client address in an [`IpCounter`]; the
/// count drops when the slot does, however its owner ends.
pub struct AddressSlot {
    counter: Arc<IpCounter>,
    key: IpAddr,
}

impl AddressSlot {
    /// The address ([`ip_key`]) it is counted against.
    pub fn key(&self) -> IpAddr {
        self.key
    }
}

impl Drop for AddressSlot {
    fn drop(&mut self) {
        self.counter.remove(self.key);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test(start_paused = true)]
    async fn a_bucket_allows_its_burst_then_refills_at_its_rate() {
        let rate = Rate {
            per_sec: 10.0,
            burst: 3.0,
        };
        let mut b = Bucket::new(rate);
        for _ in 0..3 {
            assert!(b.take(rate, Instant::now()).is_ok());
        }
        let wait = b.take(rate, Instant::now()).unwrap_err();
        assert!(wait <= Duration::from_millis(100), "{wait:?}");
        tokio::time::advance(Duration::from_millis(100)).await;
        assert!(b.take(rate, Instant::now()).is_ok());
        assert!(b.take(rate, Instant::now()).is_err());
    }

    #[tokio::test(start_paused = true)]
    async fn ip_limiter_state_is_pruned_once_buckets_refill() {
        let limiter = IpLimiter::new(Rate::per_minute(60));
        for i in 0..100u8 {
            limiter.check(IpAddr::from([10, 0, 0, i])).unwrap();
        }
        assert_eq!(limiter.tracked(), 100);
        tokio::time::advance(Duration::from_secs(60)).await;
        limiter.prune();
        assert_eq!(limiter.tracked(), 0);
    }

    #[test]
    fn ip_counter_enforces_the_cap_and_forgets_empty_ips() {
        let c = IpCounter::default();
        let ip = IpAddr::from([127, 0, 0, 1]);
        assert!(c.try_add(ip, 2));
        assert!(c.try_add(ip, 2));
        assert!(!c.try_add(ip, 2));
        c.remove(ip);
        c.remove(ip);
        assert_eq!(c.total(), 0);
        assert!(c.try_add(ip, 0), "0 means no limit");
    }

    #[test]
    fn ip_keys_are_ipv4_as_is_mapped_ipv4_as_ipv4_and_ipv6_by_its_64() {
        let key = |s: &str| ip_key(s.parse().unwrap()).to_string();
        assert_eq!(key("192.0.2.7"), "192.0.2.7");
        assert_eq!(key("::ffff:192.0.2.7"), "192.0.2.7");
        assert_eq!(key("2001:db8:1:2:aaaa:bbbb:cccc:dddd"), "2001:db8:1:2::");
        assert_eq!(key("2001:db8:1:2::1"), key("2001:db8:1:2:ffff:ffff:ffff:ffff"));
        assert_ne!(key("2001:db8:1:2::1"), key("2001:db8:1:3::1"));
        assert_eq!(key("::1"), "::");
        // Not mapped: the IPv4-compatible form is an ordinary IPv6 address.
        assert_eq!(key("::192.0.2.7"), "::");
    }

    #[test]
    fn two_addresses_of_one_ipv6_64_share_every_count() {
        let a: IpAddr = "2001:db8:0:1::a".parse().unwrap();
        let b: IpAddr = "2001:db8:0:1:8000::b".parse().unwrap();
        let other: IpAddr = "2001:db8:0:2::a".parse().unwrap();
        let counter = Arc::new(IpCounter::default());
        let slot = counter.try_slot(a, 2).unwrap();
        assert!(counter.try_add(b, 2));
        assert!(!counter.try_add(a, 2), "a and b share one count of 2");
        assert!(counter.try_add(other, 2), "another /64 has its own");
        drop(slot);
        assert_eq!(counter.count(b), 1);
        let limiter = IpLimiter::new(Rate {
            per_sec: 0.001,
            burst: 1.0,
        });
        assert!(limiter.check(a).is_ok());
        assert!(limiter.check(b).is_err(), "one bucket for the /64");
        assert!(limiter.check(other).is_ok());
    }

    #[test]
    fn an_address_slot_gives_its_count_back_when_dropped() {
        let counter = Arc::new(IpCounter::default());
        let ip = IpAddr::from([10, 0, 0, 1]);
        let slots: Vec<_> = (0..3).map(|_| counter.try_slot(ip, 3).unwrap()).collect();
        assert!(counter.try_slot(ip, 3).is_none());
        assert_eq!(slots[0].key(), ip);
        drop(slots);
        assert_eq!(counter.total(), 0);
        assert!(counter.try_slot(ip, 3).is_some());
    }
}
