package window

import "sync"

// Alerts before the wall. After an admitted request, each of an entity's
// day limits, token cap, budget and credits is compared with the alert
// thresholds (percentages); the first time in a period that usage reaches
// one, a Crossing is queued for the limiter to raise (internal/alertbox).
// An entity remembers what it queued, so the check costs a few compares
// per request; a replica that starts the entity afresh queues them again
// and the outbox's create-if-absent keeps each alert once per period per
// threshold.

// alertMark is one threshold already queued for one limit in one period.
type alertMark struct {
	kind      Kind
	model     string
	period    PeriodID
	threshold int32
}

// Crossing is a limit whose usage reached a threshold for the first time
// in its period.
type Crossing struct {
	Entity    string
	Level     Level
	Kind      Kind
	Model     string
	Threshold int32
	Limit     int64
	Used      int64
	Period    PeriodID
}

// alertQueue holds the crossings not yet taken by Crossings.
type alertQueue struct {
	mu    sync.Mutex
	items []Crossing
}

// maxQueued bounds the queue; crossings beyond it are dropped until the
// next request that crosses again (the entity does not mark them).
const maxQueued = 4096

// Crossings takes the crossings queued since the last call.
func (t *Table) Crossings() []Crossing {
	t.alerts.mu.Lock()
	defer t.alerts.mu.Unlock()
	out := t.alerts.items
	t.alerts.items = nil
	return out
}

// Unmark forgets that a crossing was queued (its raise failed), so the
// next request that still finds it crossed queues it again.
func (t *Table) Unmark(c Crossing) {
	ks := t.lookup(c.Entity, false)
	if ks == nil {
		return
	}
	ks.mu.Lock()
	defer ks.mu.Unlock()
	for i, m := range ks.alerted {
		if m.kind == c.Kind && m.model == c.Model && m.period == c.Period && m.threshold == c.Threshold {
			ks.alerted = append(ks.alerted[:i], ks.alerted[i+1:]...)
			return
		}
	}
}

// crossings queues the thresholds r's entity has reached; ks is locked.
func (t *Table) crossings(ks *keyState, ms *modelScope, c *clock, r *Request) {
	if len(r.Alerts) == 0 {
		return
	}
	day := PeriodID{Kind: PeriodDaily, N: c.day}
	ks.dropOldMarks(c)
	check := func(k Kind, model string, limit, used int64, p PeriodID) {
		if limit <= 0 {
			return
		}
		for _, th := range r.Alerts {
			if th > 0 && used*100 >= int64(th)*limit {
				t.cross(ks, r, alertMark{kind: k, model: model, period: p, threshold: th}, limit, used)
			}
		}
	}
	check(KindRPD, "", r.Global.RPD, ks.global.day.req, day)
	check(KindTPD, "", r.Global.TPD, ks.global.day.tok, day)
	if ms != nil {
		check(KindRPD, ms.name, r.ModelLimits.RPD, ms.day.req, day)
		check(KindTPD, ms.name, r.ModelLimits.TPD, ms.day.tok, day)
	}
	check(KindTokenCap, "", r.TokenCap, ks.tokens.used, ks.tokens.id)
	check(KindBudget, "", r.BudgetMicros, ks.cost.used, ks.cost.id)
	if r.Credits {
		check(KindCredits, "", r.CreditMicros, ks.credit, PeriodID{Kind: PeriodNever})
	}
}

func (t *Table) cross(ks *keyState, r *Request, m alertMark, limit, used int64) {
	for _, x := range ks.alerted {
		if x == m {
			return
		}
	}
	t.alerts.mu.Lock()
	defer t.alerts.mu.Unlock()
	if len(t.alerts.items) >= maxQueued {
		return
	}
	ks.alerted = append(ks.alerted, m)
	cr := Crossing{Entity: r.Key, Level: r.Level, Kind: m.kind, Model: m.model, Threshold: m.threshold, Limit: limit, Used: used, Period: m.period}
	t.alerts.items = append(t.alerts.items, cr)
}

// dropOldMarks forgets marks of periods that have ended.
func (ks *keyState) dropOldMarks(c *clock) {
	kept := ks.alerted[:0]
	for _, m := range ks.alerted {
		if end := periodEnd(m.period); end == 0 || end > c.now {
			kept = append(kept, m)
		}
	}
	clear(ks.alerted[len(kept):])
	ks.alerted = kept
}
