package window

import (
	"math/rand/v2"
	"sort"
	"testing"
	"time"

	"github.com/stretchr/testify/require"
)

// refModel is the reference: a log of every admitted event, from which
// each window is totalled from scratch on every decision.
type refModel struct {
	timeout time.Duration
	events  []*refEvent
}

type refEvent struct {
	key, model, id string
	inModel        bool
	at             int64 // unix nanos of the Check
	req, tok, cost int64
	tokPID         PeriodID
	costPID        PeriodID
	known          bool
}

func (e *refEvent) sec() int64 { return floorDiv(e.at, secNanos) }
func (e *refEvent) day() int64 { return floorDiv(e.sec(), daySecs) }

type refWindow struct {
	kind  Kind
	model bool
	limit int64
	used  int64
	est   int64
	wait  time.Duration // -1: never within the period
	reset time.Duration
}

func (m *refModel) windows(now int64, r *Request) []refWindow {
	sec := floorDiv(now, secNanos)
	day := floorDiv(sec, daySecs)
	dayReset := time.Duration((day+1)*daySecs*secNanos - now)
	var out []refWindow
	scope := func(l Limits, model bool) {
		in := func(e *refEvent) bool {
			return e.key == r.Key && (!model || (e.inModel && e.model == r.Model))
		}
		rolling := func(limit int64, get func(*refEvent) int64, est int64) (used int64, wait, reset time.Duration) {
			var secs []int64
			var newest int64 = -1 << 62
			var any int64
			for _, e := range m.events {
				if in(e) && e.sec() > sec-Buckets && e.sec() <= sec {
					used += get(e)
					secs = append(secs, e.sec())
					newest = max(newest, e.sec())
					any += e.req + e.tok
				}
			}
			if any > 0 {
				reset = time.Duration((newest+Buckets)*secNanos - now)
			}
			est = max(est, 1)
			if est > limit {
				return used, -1, reset
			}
			sort.Slice(secs, func(i, j int) bool { return secs[i] < secs[j] })
			for _, s := range secs {
				var after int64
				for _, e := range m.events {
					if in(e) && e.sec() > s && e.sec() <= sec {
						after += get(e)
					}
				}
				if after+est <= limit {
					return used, time.Duration((s+Buckets)*secNanos - now), reset
				}
			}
			return used, -1, reset
		}
		daily := func(get func(*refEvent) int64) (used int64) {
			for _, e := range m.events {
				if in(e) && e.day() == day {
					used += get(e)
				}
			}
			return used
		}
		dayWaitRef := func(limit, est int64) time.Duration {
			if max(est, 1) > limit {
				return -1
			}
			return dayReset
		}
		req := func(e *refEvent) int64 { return e.req }
		tok := func(e *refEvent) int64 { return e.tok }
		if l.RPM > 0 {
			u, w, rs := rolling(l.RPM, req, 1)
			out = append(out, refWindow{KindRPM, model, l.RPM, u, 1, w, rs})
		}
		if l.RPD > 0 {
			out = append(out, refWindow{KindRPD, model, l.RPD, daily(req), 1, dayWaitRef(l.RPD, 1), dayReset})
		}
		if l.TPM > 0 {
			u, w, rs := rolling(l.TPM, tok, r.Tokens)
			out = append(out, refWindow{KindTPM, model, l.TPM, u, r.Tokens, w, rs})
		}
		if l.TPD > 0 {
			out = append(out, refWindow{KindTPD, model, l.TPD, daily(tok), r.Tokens, dayWaitRef(l.TPD, r.Tokens), dayReset})
		}
	}
	scope(r.Global, false)
	if r.ModelLimits.Any() {
		scope(r.ModelLimits, true)
	}
	at := time.Unix(0, now)
	period := func(kind Kind, limit int64, p Period, get func(*refEvent) (int64, PeriodID), est int64) {
		if limit <= 0 {
			return
		}
		id := PeriodOf(at, p)
		var used int64
		for _, e := range m.events {
			if v, pid := get(e); e.key == r.Key && pid == id {
				used += v
			}
		}
		var reset time.Duration
		if end := periodEnd(id); end != 0 {
			reset = time.Duration(end - now)
		}
		out = append(out, refWindow{kind, false, limit, used, est, -1, reset})
	}
	period(KindTokenCap, r.TokenCap, r.TokenPeriod, func(e *refEvent) (int64, PeriodID) { return e.tok, e.tokPID }, r.Tokens)
	period(KindBudget, r.BudgetMicros, r.BudgetPeriod, func(e *refEvent) (int64, PeriodID) { return e.cost, e.costPID }, r.CostMicros)
	return out
}

// order is the order in which Check reports denials, for tie-breaking.
func order(w refWindow) int {
	base := map[Kind]int{KindRPM: 0, KindTPM: 1, KindRPD: 2, KindTPD: 3, KindTokenCap: 8, KindBudget: 9}[w.kind]
	if w.model {
		base += 4
	}
	return base
}

func (m *refModel) check(now int64, r *Request) (allowed bool, by Kind, byModel bool, retry time.Duration, quotas []Quota) {
	ws := m.windows(now, r)
	allowed = true
	var best *refWindow
	byOrder := append([]refWindow(nil), ws...)
	sort.SliceStable(byOrder, func(i, j int) bool { return order(byOrder[i]) < order(byOrder[j]) })
	for i := range byOrder {
		w := &byOrder[i]
		if w.used+max(w.est, 1) <= w.limit {
			continue
		}
		allowed = false
		if best == nil || (best.wait >= 0 && (w.wait < 0 || w.wait > best.wait)) {
			best = w
		}
	}
	if !allowed {
		by, byModel, retry = best.kind, best.model, max(best.wait, 0)
	} else {
		at := time.Unix(0, now)
		m.events = append(m.events, &refEvent{
			key: r.Key, model: r.Model, id: r.ReservationID, inModel: r.ModelLimits.Any(),
			at: now, req: 1, tok: r.Tokens, cost: r.CostMicros,
			tokPID: PeriodOf(at, r.TokenPeriod), costPID: PeriodOf(at, r.BudgetPeriod),
			known: r.ReservationID != "",
		})
		ws = m.windows(now, r)
	}
	for _, w := range ws {
		quotas = append(quotas, Quota{Kind: w.kind, Model: w.model, Limit: w.limit, Remaining: max(w.limit-w.used, 0), ResetAfter: w.reset})
	}
	return allowed, by, byModel, retry, quotas
}

func (m *refModel) find(now int64, key, id string) *refEvent {
	for _, e := range m.events {
		if e.key == key && e.id == id && e.known {
			if now >= e.at+int64(m.timeout) {
				e.known = false // expired: stays counted at its estimate
				return nil
			}
			return e
		}
	}
	return nil
}

func TestMatchesReference(t *testing.T) {
	t.Parallel()
	for _, seed := range []uint64{1, 2, 3, 4} {
		t.Run("seed", func(t *testing.T) {
			t.Parallel()
			rng := rand.New(rand.NewPCG(seed, seed*7919))
			const timeout = 90 * time.Second
			tab := New(Config{ReservationTimeout: timeout})
			ref := &refModel{timeout: timeout}
			// Start just before the end of a Sunday that ends a month, so
			// that day, week and month boundaries are all crossed.
			now := time.Date(2023, 12, 31, 23, 57, 0, 0, time.UTC).UnixNano()
			keys := []string{"k1", "k2"}
			models := []string{"small", "large", "free"}
			policies := map[string]Request{
				"k1": {Global: Limits{RPM: 6, RPD: 25, TPM: 60, TPD: 180}, TokenCap: 1500, TokenPeriod: PeriodWeekly, BudgetMicros: 30000, BudgetPeriod: PeriodMonthly},
				"k2": {Global: Limits{RPM: 4, TPM: 40}, TokenCap: 400, TokenPeriod: PeriodDaily, BudgetMicros: 6000, BudgetPeriod: PeriodNever},
			}
			modelLimits := map[string]Limits{"small": {RPM: 3, TPM: 25, RPD: 12}, "large": {TPD: 70, RPM: 5}}
			var ids []string
			var nAllowed int
			nDenied := map[Kind]int{}
			defer func() { t.Logf("allowed %d denied %v", nAllowed, nDenied) }()
			var d Decision
			for step := range 4000 {
				switch op := rng.IntN(10); {
				case op < 5:
					key := keys[rng.IntN(len(keys))]
					r := policies[key]
					r.Key = key
					r.Model = models[rng.IntN(len(models))]
					r.ModelLimits = modelLimits[r.Model]
					r.Tokens = rng.Int64N(22)
					r.CostMicros = rng.Int64N(60)
					if rng.IntN(4) > 0 {
						r.ReservationID = "r" + string(rune('a'+step%26)) + time.Duration(step).String()
					}
					require.NoError(t, tab.Check(time.Unix(0, now), &r, &d))
					allowed, by, byModel, retry, quotas := ref.check(now, &r)
					require.Equal(t, allowed, d.Allowed, "step %d allowed", step)
					require.Equal(t, by, d.DeniedBy, "step %d denied by", step)
					require.Equal(t, byModel, d.DeniedModel, "step %d denied model", step)
					require.Equal(t, retry, d.RetryAfter, "step %d retry", step)
					require.Equal(t, quotas, d.Quotas[:d.N], "step %d quotas", step)
					if allowed {
						nAllowed++
					} else {
						nDenied[d.DeniedBy]++
					}
					if allowed && r.ReservationID != "" {
						ids = append(ids, key+"/"+r.ReservationID)
					}
				case op < 7 && len(ids) > 0:
					i := rng.IntN(len(ids))
					key, id := ids[i][:2], ids[i][3:]
					tok, cost := rng.Int64N(30), rng.Int64N(80)
					e := ref.find(now, key, id)
					got := tab.Settle(key, id, tok, cost)
					require.Equal(t, e != nil, got, "step %d settle", step)
					if e != nil {
						e.tok, e.cost, e.known = tok, cost, false
					}
				case op < 8 && len(ids) > 0:
					i := rng.IntN(len(ids))
					key, id := ids[i][:2], ids[i][3:]
					e := ref.find(now, key, id)
					require.Equal(t, e != nil, tab.Release(key, id), "step %d release", step)
					if e != nil {
						e.req, e.tok, e.cost, e.known = 0, 0, 0, false
					}
				default:
					switch rng.IntN(20) {
					case 0:
						now += int64(time.Duration(rng.IntN(48)) * time.Hour)
					case 1, 2:
						now += int64(time.Duration(rng.IntN(120)) * time.Second)
					default:
						now += rng.Int64N(int64(4 * time.Second))
					}
					// Expire reservations in both models at the same moments.
					for _, e := range ref.events {
						if e.known && now >= e.at+int64(timeout) {
							e.known = false
						}
					}
					tab.Sweep(time.Unix(0, now))
				}
			}
		})
	}
}
