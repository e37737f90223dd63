package window

import "time"

// State is one limit's live state, as Explain reports it.
type State struct {
	Level  Level
	Kind   Kind
	Model  bool
	Report bool
	// Rolling is set for rpm and tpm; Period is the calendar period of the
	// others (a day for rpd and tpd, never for credits).
	Rolling   bool
	Period    PeriodID
	Limit     int64
	Used      int64
	Reserved  int64
	Remaining int64
	// ResetAfter is when the window has fully refilled or the period
	// ends; 0 for never.
	ResetAfter time.Duration
}

// held is what an entity's open reservations hold, per window.
type held struct {
	roll, day, model, modelDay usage
	tokens, cost, credit       int64
}

type usage struct{ req, tok int64 }

func (ks *keyState) held(ms *modelScope) held {
	var h held
	for _, r := range ks.res {
		if ks.global.roll.inWindow(r.sec) {
			h.roll.req, h.roll.tok = h.roll.req+1, h.roll.tok+r.tokens
		}
		if ks.global.day.day == r.day {
			h.day.req, h.day.tok = h.day.req+1, h.day.tok+r.tokens
		}
		if ms != nil && r.inModel && r.model == ms.name {
			if ms.roll.inWindow(r.sec) {
				h.model.req, h.model.tok = h.model.req+1, h.model.tok+r.tokens
			}
			if ms.day.day == r.day {
				h.modelDay.req, h.modelDay.tok = h.modelDay.req+1, h.modelDay.tok+r.tokens
			}
		}
		if r.tokenPID == ks.tokens.id {
			h.tokens += r.tokens
		}
		if r.costPID == ks.cost.id {
			h.cost += r.cost
		}
		if r.credits {
			h.credit += r.cost
		}
	}
	return h
}

// Explain judges an item against its entities as CheckLevels would,
// charging nothing: d gets the decision it would make now, and the live
// state of every limit (enforced and report) is appended to out. Errors
// are as CheckLevels'.
func (t *Table) Explain(now time.Time, rs []Request, d *Decision, out []State) ([]State, int, error) {
	c := newClock(now)
	var st [MaxLevels]*keyState
	var ms [MaxLevels]*modelScope
	n := min(len(rs), MaxLevels)
	t.lockAll(rs[:n], st[:n])
	defer unlockAll(st[:n])
	for i := range n {
		var err error
		if ms[i], err = t.modelScopeOf(st[i], &rs[i]); err != nil {
			return out, i, err
		}
	}
	d.reset(true)
	for i := range n {
		st[i].touch(&c, &rs[i], ms[i])
		d.level = rs[i].Level
		judge(st[i], ms[i], &c, &rs[i], d)
		report(st[i], ms[i], &rs[i], d)
	}
	if d.RetryAfter < 0 {
		d.RetryAfter = 0
	}
	t.quotasAll(st[:n], ms[:n], &c, rs, d)
	for i := range n {
		out = st[i].explain(out, ms[i], &c, &rs[i])
	}
	return out, 0, nil
}

// explain appends the state of every limit r sets on this entity.
func (ks *keyState) explain(out []State, ms *modelScope, c *clock, r *Request) []State {
	h := ks.held(ms)
	day := PeriodID{Kind: PeriodDaily, N: c.day}
	add := func(s State, used, reserved int64) {
		if s.Limit <= 0 {
			return
		}
		s.Level, s.Used, s.Reserved, s.Remaining = r.Level, used, reserved, max(s.Limit-used, 0)
		out = append(out, s)
	}
	scope := func(l *Limits, sc *scope, model, rep bool, roll, dayHeld usage) {
		rr := sc.roll.resetAfter(c.now)
		add(State{Kind: KindRPM, Model: model, Report: rep, Rolling: true, Limit: l.RPM, ResetAfter: rr}, sc.roll.reqSum, roll.req)
		add(State{Kind: KindTPM, Model: model, Report: rep, Rolling: true, Limit: l.TPM, ResetAfter: rr}, sc.roll.tokSum, roll.tok)
		add(State{Kind: KindRPD, Model: model, Report: rep, Period: day, Limit: l.RPD, ResetAfter: c.dayReset}, sc.day.req, dayHeld.req)
		add(State{Kind: KindTPD, Model: model, Report: rep, Period: day, Limit: l.TPD, ResetAfter: c.dayReset}, sc.day.tok, dayHeld.tok)
	}
	for _, rep := range []bool{false, true} {
		g, m, tokenCap, budget := r.Global, r.ModelLimits, r.TokenCap, r.BudgetMicros
		if rep {
			g, m, tokenCap, budget = r.Report.Global, r.Report.ModelLimits, r.Report.TokenCap, r.Report.BudgetMicros
		}
		scope(&g, &ks.global, false, rep, h.roll, h.day)
		if ms != nil {
			scope(&m, &ms.scope, true, rep, h.model, h.modelDay)
		}
		add(State{Kind: KindTokenCap, Report: rep, Period: ks.tokens.id, Limit: tokenCap, ResetAfter: periodReset(ks.tokens.id, c.now)}, ks.tokens.used, h.tokens)
		add(State{Kind: KindBudget, Report: rep, Period: ks.cost.id, Limit: budget, ResetAfter: periodReset(ks.cost.id, c.now)}, ks.cost.used, h.cost)
	}
	if r.Credits {
		// Credits are enforced even when nothing is left: report the
		// granted amount, however small.
		s := State{Level: r.Level, Kind: KindCredits, Period: PeriodID{Kind: PeriodNever}, Limit: r.CreditMicros,
			Used: ks.credit, Reserved: h.credit, Remaining: max(r.CreditMicros-ks.credit, 0)}
		out = append(out, s)
	}
	return out
}
