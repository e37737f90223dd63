package keycache

import "sync"

// unknown remembers, for a while, imported-style secrets the keystore did
// not know, so that a client retrying a wrong or revoked token of another
// system costs one keystore lookup per TTL, not one per request. It is
// bounded: when full, a sample of entries is looked at, the expired ones
// forgotten and, if none had expired, the oldest of the sample (as Redis
// evicts), so a spray of distinct tokens costs a bounded step each.
// Keygate-prefixed secrets never get here: they are checked by format and
// followed by the change stream.
type unknown struct {
	ttl int64 // ns
	max int

	mu    sync.Mutex
	until map[digest]int64 // Unix ns when each is forgotten
}

func newUnknown(ttl int64, max int) *unknown {
	return &unknown{ttl: ttl, max: max, until: map[digest]int64{}}
}

// has reports whether h was found unknown less than the TTL before now.
func (u *unknown) has(h digest, now int64) bool {
	u.mu.Lock()
	defer u.mu.Unlock()
	t, ok := u.until[h]
	if ok && now >= t {
		delete(u.until, h)
		ok = false
	}
	return ok
}

// add remembers h as unknown from now.
func (u *unknown) add(h digest, now int64) {
	u.mu.Lock()
	defer u.mu.Unlock()
	if _, ok := u.until[h]; !ok && len(u.until) >= u.max {
		u.evict(now)
	}
	u.until[h] = now + u.ttl
}

// forget drops h: the keystore now knows it.
func (u *unknown) forget(h digest) {
	u.mu.Lock()
	delete(u.until, h)
	u.mu.Unlock()
}

// evictSample is how many entries evict looks at.
const evictSample = 32

// evict forgets the expired entries of a sample (map order is random), or
// failing that the oldest of it. Called with mu held.
func (u *unknown) evict(now int64) {
	var oldest digest
	first, seen := int64(-1), 0
	for h, t := range u.until {
		if seen++; seen > evictSample {
			break
		}
		if now >= t {
			delete(u.until, h)
			continue
		}
		if first < 0 || t < first {
			oldest, first = h, t
		}
	}
	if len(u.until) >= u.max && first >= 0 {
		delete(u.until, oldest)
	}
}

func (u *unknown) len() int {
	u.mu.Lock()
	defer u.mu.Unlock()
	return len(u.until)
}

func (u *unknown) clear() {
	u.mu.Lock()
	clear(u.until)
	u.mu.Unlock()
}
