// Package ring assigns keys to the live limiter replicas: members register
// in etcd under a lease, a Watcher follows the membership, and rendezvous
// (highest random weight) hashing picks each key's owner, so a member
// joining or leaving moves only the keys it gains or loses.
package ring

import (
	"slices"
	"strings"
)

// DefaultPrefix is where limiter replicas register: <prefix><id> -> address.
const DefaultPrefix = "/keygate/limiter/members/"

// Member is one live replica.
type Member struct {
	ID   string
	Addr string
}

// Ring is an immutable set of members. The zero value and nil are empty.
type Ring struct {
	members []Member
	seeds   []uint64
}

// New returns a ring of members (duplicates by ID keep the last).
func New(members []Member) *Ring {
	byID := make(map[string]Member, len(members))
	for _, m := range members {
		byID[m.ID] = m
	}
	r := &Ring{}
	for _, m := range byID {
		r.members = append(r.members, m)
	}
	slices.SortFunc(r.members, func(a, b Member) int { return strings.Compare(a.ID, b.ID) })
	r.seeds = make([]uint64, len(r.members))
	for i, m := range r.members {
		r.seeds[i] = mix(hash(m.ID))
	}
	return r
}

// Len returns the number of members.
func (r *Ring) Len() int {
	if r == nil {
		return 0
	}
	return len(r.members)
}

// Members returns the members sorted by ID; the caller must not modify it.
func (r *Ring) Members() []Member {
	if r == nil {
		return nil
	}
	return r.members
}

// Member returns the member with the given ID.
func (r *Ring) Member(id string) (Member, bool) {
	for _, m := range r.Members() {
		if m.ID == id {
			return m, true
		}
	}
	return Member{}, false
}

// Owner returns the member that owns key, or false on an empty ring.
func (r *Ring) Owner(key string) (Member, bool) {
	return r.OwnerExcept(key, nil)
}

// OwnerExcept returns the owner of key among the members not in skip: the
// next owner in rendezvous order when those in skip cannot answer.
func (r *Ring) OwnerExcept(key string, skip map[string]bool) (Member, bool) {
	if r.Len() == 0 {
		return Member{}, false
	}
	k := hash(key)
	best, bestScore := -1, uint64(0)
	for i, s := range r.seeds {
		if skip != nil && skip[r.members[i].ID] {
			continue
		}
		if sc := mix(k ^ s); best < 0 || sc > bestScore {
			best, bestScore = i, sc
		}
	}
	if best < 0 {
		return Member{}, false
	}
	return r.members[best], true
}

// hash is 64-bit FNV-1a, inline so that the hot path does not allocate.
func hash(s string) uint64 {
	h := uint64(14695981039346656037)
	for i := 0; i < len(s); i++ {
		h ^= uint64(s[i])
		h *= 1099511628211
	}
	return h
}

// mix is the splitmix64 finalizer: it spreads FNV's weak high bits so
// that scores for different members are independent.
func mix(x uint64) uint64 {
	x ^= x >> 30
	x *= 0xbf58476d1ce4e5b9
	x ^= x >> 27
	x *= 0x94d049bb133111eb
	x ^= x >> 31
	return x
}
