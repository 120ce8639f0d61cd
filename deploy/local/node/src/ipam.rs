//! Pod IPs: each pod that does not use the host network gets its own loopback address
//! `127.0.X.Y` (Linux routes all of 127/8 to `lo`, so binding one needs no setup). Addresses are
//! handed out round-robin so a released one is not reused at once.

use std::collections::HashSet;
use std::net::Ipv4Addr;

/// Third octets used (127.0.0.0/24 and 127.0.1.0/24 hold well-known host addresses).
const X_RANGE: std::ops::RangeInclusive<u8> = 10..=254;
/// Fourth octets used.
const Y_RANGE: std::ops::RangeInclusive<u8> = 1..=254;

/// The address of the host (hostNetwork pods, `hostIP`).
pub const HOST_IP: Ipv4Addr = Ipv4Addr::LOCALHOST;

/// A pool of loopback pod IPs.
#[derive(Debug, Default)]
pub struct IpPool {
    used: HashSet<Ipv4Addr>,
    cursor: usize,
}

fn size() -> usize {
    X_RANGE.len() * Y_RANGE.len()
}

fn nth(i: usize) -> Ipv4Addr {
    let y_len = Y_RANGE.len();
    let x = *X_RANGE.start() as usize + i / y_len;
    let y = *Y_RANGE.start() as usize + i % y_len;
    Ipv4Addr::new(127, 0, x as u8, y as u8)
}

/// Whether `ip` is an address this pool hands out.
pub fn in_pool(ip: Ipv4Addr) -> bool {
    let [a, b, x, y] = ip.octets();
    a == 127 && b == 0 && X_RANGE.contains(&x) && Y_RANGE.contains(&y)
}

impl IpPool {
    /// The next free address, or `None` when all are taken.
    pub fn allocate(&mut self) -> Option<Ipv4Addr> {
        let n = size();
        for step in 0..n {
            let ip = nth((self.cursor + step) % n);
            if self.used.insert(ip) {
                self.cursor = (self.cursor + step + 1) % n;
                return Some(ip);
            }
        }
        None
    }

    /// Takes `ip` (a pod's address from before a restart) if it is in the pool and free.
    pub fn claim(&mut self, ip: Ipv4Addr) -> bool {
        in_pool(ip) && self.used.insert(ip)
    }

    /// Returns `ip` to the pool.
    pub fn release(&mut self, ip: Ipv4Addr) {
        self.used.remove(&ip);
    }

    /// How many addresses are in use.
    pub fn in_use(&self) -> usize {
        self.used.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn allocates_unique_round_robin() {
        let mut p = IpPool::default();
        let a = p.allocate().unwrap();
        let b = p.allocate().unwrap();
        assert_eq!(a, Ipv4Addr::new(127, 0, 10, 1));
        assert_eq!(b, Ipv4Addr::new(127, 0, 10, 2));
        p.release(a);
        assert_eq!(p.allocate().unwrap(), Ipv4Addr::new(127, 0, 10, 3));
        assert_eq!(p.in_use(), 2);
    }

    #[test]
    fn claims() {
        let mut p = IpPool::default();
        assert!(p.claim(Ipv4Addr::new(127, 0, 10, 1)));
        assert!(!p.claim(Ipv4Addr::new(127, 0, 10, 1)));
        assert!(!p.claim(Ipv4Addr::new(127, 0, 0, 1)));
        assert_eq!(p.allocate().unwrap(), Ipv4Addr::new(127, 0, 10, 2));
    }

    #[test]
    fn exhausts_and_wraps() {
        let mut p = IpPool::default();
        let n = size();
        let all: HashSet<_> = (0..n).map(|_| p.allocate().unwrap()).collect();
        assert_eq!(all.len(), n);
        assert!(all.iter().all(|ip| in_pool(*ip)));
        assert_eq!(p.allocate(), None);
        p.release(Ipv4Addr::new(127, 0, 20, 20));
        assert_eq!(p.allocate(), Some(Ipv4Addr::new(127, 0, 20, 20)));
    }
}
