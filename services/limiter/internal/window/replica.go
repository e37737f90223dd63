package window

import (
	"sync"
	"time"

	limiterv1 "github.com/keygate/keygate/gen/keygate/limiter/v1"
)

// Replication. With Config.Track set, every change to a key the table
// holds (a decision, a settlement or release, a seed, an import) queues
// the key once until the next Changed call exports it. The owner sends
// those snapshots to each key's next owner, which keeps them (Replicas)
// and starts a key from its replica when the holder crashes (Restore).
// The cost grows with the keys that changed between two calls, not with
// the requests.

// changed queues key for the next Changed call; the caller holds ks.mu.
func (t *Table) changed(key string, ks *keyState) {
	if !t.cfg.Track || ks.queued {
		return
	}
	ks.queued = true
	sh := t.shard(key)
	sh.qmu.Lock()
	sh.queue = append(sh.queue, key)
	sh.qmu.Unlock()
}

// Changed exports the keys that changed since the last call and that this
// table still holds, without fencing them.
func (t *Table) Changed() []*limiterv1.KeySnapshot {
	var out []*limiterv1.KeySnapshot
	for i := range t.shards {
		sh := &t.shards[i]
		sh.qmu.Lock()
		keys := sh.queue
		sh.queue = nil
		sh.qmu.Unlock()
		for _, key := range keys {
			ks := t.lookup(key, false)
			if ks == nil {
				continue
			}
			ks.mu.Lock()
			ks.queued = false
			if !ks.dead && ks.seeded && ks.moved == nil {
				out = append(out, ks.export(key))
			}
			ks.mu.Unlock()
		}
	}
	return out
}

// ChangeAll queues every key the table holds, for instance when the ring
// changed and some keys have a new next owner.
func (t *Table) ChangeAll() {
	for i := range t.shards {
		sh := &t.shards[i]
		sh.mu.RLock()
		for key, ks := range sh.keys {
			t.queueHeld(key, ks)
		}
		sh.mu.RUnlock()
	}
}

// Restore starts a key nobody holds from a replica of its crashed
// holder's state. The ledger's totals (taken for day, tokens and cost)
// raise the replica's day and period counters where the replica is older
// than the ledger, so a stale replica never counts less than the ledger.
// A key this table holds keeps its own state.
func (t *Table) Restore(st *limiterv1.KeySnapshot, day int64, tokens, cost PeriodID, totals []Totals) {
	t.installFree(st, func(ks *keyState) { ks.raise(day, tokens, cost, totals) })
}

// raise lifts the day and period counters to at least the ledger's.
func (ks *keyState) raise(day int64, tokens, cost PeriodID, totals []Totals) {
	for i := range totals {
		tt := &totals[i]
		if tt.Model == "" {
			ks.global.day.raise(day, tt.RequestsToday, tt.TokensToday)
			ks.tokens.raise(tokens, tt.PeriodTokens)
			ks.cost.raise(cost, tt.PeriodCostMicros)
			ks.credit = max(ks.credit, tt.CreditSpentMicros)
			continue
		}
		ms := ks.model(tt.Model)
		if ms == nil {
			ms = &modelScope{name: tt.Model}
			ks.models = append(ks.models, ms)
		}
		ms.seeded = true
		ms.day.raise(day, tt.RequestsToday, tt.TokensToday)
	}
}

func (d *dayCounter) raise(day, req, tok int64) {
	if d.day != day {
		*d = dayCounter{day: day, req: req, tok: tok}
		return
	}
	d.req, d.tok = max(d.req, req), max(d.tok, tok)
}

func (p *periodCounter) raise(id PeriodID, used int64) {
	if p.id != id {
		*p = periodCounter{id: id, used: used}
		return
	}
	p.used = max(p.used, used)
}

// Replicas holds the latest snapshot each holder sent of its keys, for
// the keys whose next owner this replica is. It is safe for concurrent
// use.
type Replicas struct {
	mu   sync.Mutex
	keys map[string]replica
}

type replica struct {
	st       *limiterv1.KeySnapshot
	received time.Time
}

// NewReplicas returns an empty store.
func NewReplicas() *Replicas { return &Replicas{keys: map[string]replica{}} }

// Put keeps states received at now.
func (r *Replicas) Put(now time.Time, states []*limiterv1.KeySnapshot) {
	r.mu.Lock()
	defer r.mu.Unlock()
	for _, st := range states {
		if st.GetKey() != "" {
			r.keys[st.GetKey()] = replica{st: st, received: now}
		}
	}
}

// Take removes and returns key's replica, or nil.
func (r *Replicas) Take(key string) *limiterv1.KeySnapshot {
	r.mu.Lock()
	defer r.mu.Unlock()
	rep, ok := r.keys[key]
	if !ok {
		return nil
	}
	delete(r.keys, key)
	return rep.st
}

// Sweep forgets replicas not refreshed since before.
func (r *Replicas) Sweep(before time.Time) {
	r.mu.Lock()
	defer r.mu.Unlock()
	for k, rep := range r.keys {
		if rep.received.Before(before) {
			delete(r.keys, k)
		}
	}
}

// Len returns how many keys have a replica here.
func (r *Replicas) Len() int {
	r.mu.Lock()
	defer r.mu.Unlock()
	return len(r.keys)
}

// Requeue queues keys again, for instance after their replicas could not
// be sent.
func (t *Table) Requeue(keys []string) {
	for _, key := range keys {
		if ks := t.lookup(key, false); ks != nil {
			t.queueHeld(key, ks)
		}
	}
}

// queueHeld queues key if this table holds it.
func (t *Table) queueHeld(key string, ks *keyState) {
	ks.mu.Lock()
	if !ks.dead && ks.seeded && ks.moved == nil {
		t.changed(key, ks)
	}
	ks.mu.Unlock()
}

// Peek returns key's replica without removing it, or nil.
func (r *Replicas) Peek(key string) *limiterv1.KeySnapshot {
	r.mu.Lock()
	defer r.mu.Unlock()
	return r.keys[key].st
}
