package window

import (
	"time"

	limiterv1 "github.com/keygate/keygate/gen/keygate/limiter/v1"
)

// Handover. A key's whole state (rolling buckets, day and period counters,
// open reservations) can leave a table with Export and enter another with
// Import, so that a key changing owner keeps its windows. Export fences
// the key: the exporting table no longer decides it (Check returns
// ErrMoved, Finish names the new holder) until an Import installs state
// again. Export and every decision take the key's lock, so a decision
// happens either before the export (and is in the exported state) or is
// refused: no two tables decide a key from the same state.

// Export hands over the state of keys to newOwner: the keys this table
// holds are exported (states) and fenced; the keys it had already handed
// over are reported with their holder (moved). Keys it never held, or
// holds unseeded, are in neither list.
//
// A request repeated with the same non-empty requestID by the same
// newOwner gets the states exported to it again: an answer lost on the
// way does not lose the keys.
func (t *Table) Export(now time.Time, keys []string, newOwner, requestID string) (states []*limiterv1.KeySnapshot, moved []*limiterv1.Moved) {
	for _, key := range keys {
		for {
			ks := t.lookup(key, false)
			if ks == nil {
				break
			}
			ks.mu.Lock()
			if ks.dead {
				ks.mu.Unlock()
				continue
			}
			switch {
			case ks.moved != nil && ks.moved.owner == newOwner && requestID != "" && ks.moved.req == requestID && ks.moved.snap != nil:
				states = append(states, ks.moved.snap)
			case ks.moved != nil:
				moved = append(moved, &limiterv1.Moved{Key: key, Owner: ks.moved.owner})
			case ks.seeded:
				st := ks.export(key)
				states = append(states, st)
				ks.fence(newOwner, now)
				if requestID != "" {
					ks.moved.req, ks.moved.snap = requestID, st
				}
			}
			ks.mu.Unlock()
			break
		}
	}
	return states, moved
}

// ExportAll exports and fences every key this table holds, each to the
// owner that owner(key) names; keys for which it returns "" stay.
func (t *Table) ExportAll(now time.Time, owner func(key string) string) map[string][]*limiterv1.KeySnapshot {
	out := map[string][]*limiterv1.KeySnapshot{}
	for i := range t.shards {
		sh := &t.shards[i]
		sh.mu.RLock()
		for key, ks := range sh.keys {
			ks.mu.Lock()
			if !ks.dead && ks.moved == nil && ks.seeded {
				if o := owner(key); o != "" {
					out[o] = append(out[o], ks.export(key))
					ks.fence(o, now)
				}
			}
			ks.mu.Unlock()
		}
		sh.mu.RUnlock()
	}
	return out
}

// Import installs handed-over states. A key this table already holds
// (seeded and not fenced) keeps its own state; it returns how many were
// installed.
func (t *Table) Import(states []*limiterv1.KeySnapshot) int {
	n := 0
	for _, st := range states {
		if st.GetKey() != "" && t.installFree(st, nil) {
			n++
		}
	}
	return n
}

// installFree installs st unless this table holds the key (seeded and not
// fenced), then lets adjust (if any) change it; it reports whether it
// installed.
func (t *Table) installFree(st *limiterv1.KeySnapshot, adjust func(*keyState)) bool {
	ks := t.lockLive(st.GetKey())
	defer ks.mu.Unlock()
	if ks.seeded && ks.moved == nil {
		return false
	}
	ks.install(st)
	if adjust != nil {
		adjust(ks)
	}
	t.changed(st.GetKey(), ks)
	return true
}

// Held reports whether this table decides key: it has its state, seeded
// and not handed over.
func (t *Table) Held(key string) bool {
	ks := t.lookup(key, false)
	if ks == nil {
		return false
	}
	ks.mu.Lock()
	defer ks.mu.Unlock()
	return !ks.dead && ks.seeded && ks.moved == nil
}

// MovedTo returns the replica key was handed over to, or "".
func (t *Table) MovedTo(key string) string {
	ks := t.lookup(key, false)
	if ks == nil {
		return ""
	}
	ks.mu.Lock()
	defer ks.mu.Unlock()
	if ks.dead {
		return ""
	}
	if ks.moved == nil {
		return ""
	}
	return ks.moved.owner
}

// HeldCount returns how many keys this table decides.
func (t *Table) HeldCount() int {
	n := 0
	for i := range t.shards {
		sh := &t.shards[i]
		sh.mu.RLock()
		for _, ks := range sh.keys {
			ks.mu.Lock()
			if !ks.dead && ks.seeded && ks.moved == nil {
				n++
			}
			ks.mu.Unlock()
		}
		sh.mu.RUnlock()
	}
	return n
}

// fence marks the key handed over and frees its state; lastTouch dates
// the fence for Sweep.
func (ks *keyState) fence(owner string, now time.Time) {
	ks.clear()
	ks.moved, ks.lastTouch = &fence{owner: owner}, now.UnixNano()
}

// clear resets every field but the lock and dead.
func (ks *keyState) clear() {
	ks.seeded, ks.moved, ks.lastTouch = false, nil, 0
	ks.dayLimited, ks.capLimited, ks.budgetLimited = false, false, false
	ks.global, ks.models = scope{}, nil
	ks.tokens, ks.cost = periodCounter{}, periodCounter{}
	ks.credit, ks.res, ks.alerted = 0, nil, nil
}

func (ks *keyState) export(key string) *limiterv1.KeySnapshot {
	st := &limiterv1.KeySnapshot{
		Key: key, Global: exportScope(&ks.global),
		Tokens: exportPeriod(ks.tokens.id, ks.tokens.used), Cost: exportPeriod(ks.cost.id, ks.cost.used),
		LastTouch: ks.lastTouch, DayLimited: ks.dayLimited, CapLimited: ks.capLimited, BudgetLimited: ks.budgetLimited,
		CreditUsed: ks.credit,
	}
	for _, m := range ks.models {
		if m.seeded {
			st.Models = append(st.Models, &limiterv1.ModelState{Model: m.name, Scope: exportScope(&m.scope)})
		}
	}
	for id, r := range ks.res {
		st.Reservations = append(st.Reservations, &limiterv1.ReservationState{
			Id: id, Model: r.model, InModel: r.inModel, Second: r.sec, Day: r.day,
			TokenPeriod: exportPeriod(r.tokenPID, 0), CostPeriod: exportPeriod(r.costPID, 0),
			Tokens: r.tokens, CostMicros: r.cost, Expires: r.expires, Credits: r.credits,
		})
	}
	return st
}

func exportScope(s *scope) *limiterv1.ScopeState {
	out := &limiterv1.ScopeState{Head: s.roll.head, Last: s.roll.last, Day: s.day.day, DayRequests: s.day.req, DayTokens: s.day.tok}
	for sec := s.roll.head - Buckets + 1; sec <= s.roll.head; sec++ {
		i := ((sec % Buckets) + Buckets) % Buckets
		if s.roll.req[i] != 0 || s.roll.tok[i] != 0 {
			out.Buckets = append(out.Buckets, &limiterv1.BucketState{Second: sec, Requests: s.roll.req[i], Tokens: s.roll.tok[i]})
		}
	}
	return out
}

func exportPeriod(id PeriodID, used int64) *limiterv1.PeriodState {
	return &limiterv1.PeriodState{Period: int32(id.Kind), Number: id.N, Used: used}
}

func importPeriod(p *limiterv1.PeriodState) PeriodID {
	return PeriodID{Kind: Period(p.GetPeriod()), N: p.GetNumber()}
}

func importScope(s *scope, st *limiterv1.ScopeState) {
	*s = scope{day: dayCounter{day: st.GetDay(), req: st.GetDayRequests(), tok: st.GetDayTokens()}}
	s.roll.head, s.roll.last = st.GetHead(), st.GetLast()
	for _, b := range st.GetBuckets() {
		if !s.roll.inWindow(b.GetSecond()) {
			continue
		}
		i := ((b.GetSecond() % Buckets) + Buckets) % Buckets
		s.roll.req[i] += b.GetRequests()
		s.roll.tok[i] += b.GetTokens()
		s.roll.reqSum += b.GetRequests()
		s.roll.tokSum += b.GetTokens()
	}
}

func (ks *keyState) install(st *limiterv1.KeySnapshot) {
	ks.clear()
	ks.seeded, ks.lastTouch = true, st.GetLastTouch()
	ks.dayLimited, ks.capLimited, ks.budgetLimited = st.GetDayLimited(), st.GetCapLimited(), st.GetBudgetLimited()
	ks.tokens = periodCounter{id: importPeriod(st.GetTokens()), used: st.GetTokens().GetUsed()}
	ks.cost = periodCounter{id: importPeriod(st.GetCost()), used: st.GetCost().GetUsed()}
	ks.credit = st.GetCreditUsed()
	importScope(&ks.global, st.GetGlobal())
	for _, m := range st.GetModels() {
		ms := &modelScope{name: m.GetModel(), seeded: true}
		importScope(&ms.scope, m.GetScope())
		ks.models = append(ks.models, ms)
	}
	if len(st.GetReservations()) > 0 {
		ks.res = make(map[string]reservation, len(st.GetReservations()))
		for _, r := range st.GetReservations() {
			ks.res[r.GetId()] = reservation{
				model: r.GetModel(), inModel: r.GetInModel(), sec: r.GetSecond(), day: r.GetDay(),
				tokenPID: importPeriod(r.GetTokenPeriod()), costPID: importPeriod(r.GetCostPeriod()),
				tokens: r.GetTokens(), cost: r.GetCostMicros(), expires: r.GetExpires(), credits: r.GetCredits(),
			}
		}
	}
}
