// Package window keeps the admission windows of the keys one limiter
// replica owns and decides requests against them, atomically per key.
//
// Windows:
//   - rpm and tpm: a rolling 60-second window of 1-second buckets. At time
//     t the window holds the current second's bucket and the 59 before it,
//     so an event charged in second s leaves the window at (s+60) seconds.
//   - rpd and tpd: the UTC calendar day.
//   - token cap and cost budget: the policy's reset period (never, daily,
//     weekly from Monday, monthly), UTC.
//
// A request is admitted only if every applicable limit (global and the
// model's) admits it; a denied request changes nothing. A limit L with used
// u admits an estimate e when u + max(e, 1) <= L, so a spent window (u = L)
// refuses even zero-token estimates.
//
// Reservations: an admitted Check charges 1 request and its estimated
// tokens and cost to the buckets, day and periods current at that moment
// and remembers where. Settle moves those same counters by (actual -
// estimate) if they are still current; Release takes the request, tokens
// and cost back. An unsettled reservation stays charged at its estimate and
// is forgotten after the reservation timeout.
//
// Overshoot bound. Request limits are exact. Token and cost limits admit
// against estimates, so a window's final total can exceed its limit only by
// what settlements add above their estimates: for a window with limit L,
//
//	total <= L + Σ max(0, actual_i - estimate_i)
//
// over the reservations admitted in that window and settled in it. Callers
// that bound actual usage by the estimate (max_tokens, priced up front)
// never overshoot.
package window

import (
	"sync"
	"time"

	limiterv1 "github.com/keygate/keygate/gen/keygate/limiter/v1"
	"github.com/keygate/keygate/internal/period"
)

// Kind names a limit; values match keygate.limiter.v1.LimitKind.
type Kind uint8

// The limits.
const (
	KindNone Kind = iota
	KindRPM
	KindRPD
	KindTPM
	KindTPD
	KindTokenCap
	KindBudget
	KindCredits
)

// Level is where a limit is set; values match keygate.type.v1.LimitLevel.
type Level uint8

// The levels.
const (
	LevelNone Level = iota
	LevelKey
	LevelMember
	LevelWorkspace
)

// Period is a reset period (package period owns their arithmetic).
type Period = period.Kind

// The reset periods.
const (
	PeriodUnspecified = period.Unspecified
	PeriodNever       = period.Never
	PeriodDaily       = period.Daily
	PeriodWeekly      = period.Weekly
	PeriodMonthly     = period.Monthly
)

const (
	// Buckets is the number of 1-second buckets of a rolling window.
	Buckets = 60
	// Span is the length of a rolling window.
	Span = Buckets * time.Second

	secNanos = int64(time.Second)
	daySecs  = 86400
)

// Limits are one scope's request and token windows; zero means unlimited.
type Limits struct {
	RPM, RPD, TPM, TPD int64
}

// Any reports whether any limit is set.
func (l Limits) Any() bool { return l.RPM > 0 || l.RPD > 0 || l.TPM > 0 || l.TPD > 0 }

// Request is one entity's part of an item to decide (CheckLevels decides
// several at once). Strings are retained only for admitted reservations.
type Request struct {
	// Key names the entity (internal/limitkey).
	Key   string
	Level Level
	Model string
	// ReservationID names the reservation; "" admits without one (nothing
	// to settle or release).
	ReservationID string
	Global        Limits
	// ModelLimits are the limits of Model; zero when it has none.
	ModelLimits  Limits
	TokenCap     int64
	TokenPeriod  Period
	BudgetMicros int64
	BudgetPeriod Period
	Tokens       int64
	CostMicros   int64
	// Report holds the limits in report mode: judged, never denying.
	Report Report
	// Credits draws the cost from a prepaid balance: CreditMicros is what
	// was granted (all time).
	Credits      bool
	CreditMicros int64
	// Alerts are percentages of the day limits, cap, budget and credits
	// whose first crossing in a period is reported by Crossings.
	Alerts []int32
}

// Report is a level's limits in report mode.
type Report struct {
	Global, ModelLimits Limits
	TokenCap            int64
	BudgetMicros        int64
}

// any reports whether any report-mode limit is set.
func (r *Report) any() bool {
	return r.Global.Any() || r.ModelLimits.Any() || r.TokenCap > 0 || r.BudgetMicros > 0
}

// Quota is one window's state after a decision.
type Quota struct {
	Level Level
	Kind  Kind
	// Model reports a per-model window.
	Model      bool
	Limit      int64
	Remaining  int64
	ResetAfter time.Duration
}

// MaxLevels is the most entities one item is decided against.
const MaxLevels = 3

// MaxQuotas is the most windows one request can have: per level 4 global,
// 4 per-model, a token cap and a budget, and the workspace's credits.
const MaxQuotas = MaxLevels*10 + 1

// Reported is a report-mode limit that would have denied.
type Reported struct {
	Level Level
	Kind  Kind
	Model bool
}

// Decision is the answer to one Request. It is a value the caller reuses.
type Decision struct {
	Allowed bool
	// DeniedBy is the refusing limit that frees up last, at DeniedLevel.
	DeniedBy    Kind
	DeniedLevel Level
	DeniedModel bool
	// RetryAfter is when a retry can succeed; 0 when no wait helps within
	// the period (caps, budgets, estimates above a limit).
	RetryAfter time.Duration
	Quotas     [MaxQuotas]Quota
	N          int
	// Requests and Tokens index the tightest request and token windows in
	// Quotas, or -1.
	Requests, Tokens int
	// Reported lists the report-mode limits that would have denied.
	Reported [MaxQuotas]Reported
	NR       int
	// level is the level being judged.
	level Level
}

// PeriodID identifies one reset period.
type PeriodID = period.ID

// Totals are usage totals from the ledger that seed a key's state.
type Totals struct {
	// Model is "" for the key's own totals.
	Model            string
	RequestsToday    int64
	TokensToday      int64
	PeriodTokens     int64
	PeriodCostMicros int64
	// CreditSpentMicros is a workspace's credit spend (all time).
	CreditSpentMicros int64
}

// Config configures a Table.
type Config struct {
	// ReservationTimeout after which an unsettled reservation is forgotten
	// (and stays counted at its estimate). Default 10 minutes.
	ReservationTimeout time.Duration
	// Seeded makes every key refuse decisions (ErrNotSeeded) until Seed
	// has supplied its day and period totals; it also lets Sweep drop idle
	// keys whose day or period totals are still current, since they will
	// be seeded again.
	Seeded bool
	// Retain is how long an idle key is kept; default 60 s (the longest
	// rolling window). Seeded tables should retain longer than the ledger
	// lags behind.
	Retain time.Duration
	// Track queues every key that changes for Changed (replication).
	Track bool
}

// Table holds the state of many keys.
type Table struct {
	cfg    Config
	shards [shardCount]shard
	alerts alertQueue
}

const shardCount = 64

type shard struct {
	mu   sync.RWMutex
	keys map[string]*keyState
	// queue lists the keys changed since the last Changed (with Track).
	qmu   sync.Mutex
	queue []string
}

// New returns an empty table.
func New(cfg Config) *Table {
	if cfg.ReservationTimeout <= 0 {
		cfg.ReservationTimeout = 10 * time.Minute
	}
	if cfg.Retain < Span {
		cfg.Retain = Span
	}
	t := &Table{cfg: cfg}
	for i := range t.shards {
		t.shards[i].keys = make(map[string]*keyState)
	}
	return t
}

// ErrNotSeeded means the key (or the model's windows) must be seeded with
// Seed before it can be decided.
var ErrNotSeeded = notSeeded{}

type notSeeded struct{}

func (notSeeded) Error() string { return "limiter: key state not seeded yet" }

// ErrMoved means the key's state was handed over to another replica
// (MovedTo names it): this table does not decide it.
var ErrMoved = moved{}

type moved struct{}

func (moved) Error() string { return "limiter: key state handed over to another replica" }

func (t *Table) shard(key string) *shard {
	// FNV-1a; inlined to keep the hot path free of hash.Hash allocations.
	h := uint32(2166136261)
	for i := 0; i < len(key); i++ {
		h ^= uint32(key[i])
		h *= 16777619
	}
	return &t.shards[h%shardCount]
}

func (t *Table) lookup(key string, create bool) *keyState {
	sh := t.shard(key)
	sh.mu.RLock()
	ks := sh.keys[key]
	sh.mu.RUnlock()
	if ks != nil || !create {
		return ks
	}
	sh.mu.Lock()
	defer sh.mu.Unlock()
	if ks = sh.keys[key]; ks == nil {
		ks = &keyState{seeded: !t.cfg.Seeded}
		sh.keys[key] = ks
	}
	return ks
}

// lockLive returns key's state, created if missing, locked and live.
func (t *Table) lockLive(key string) *keyState {
	for {
		ks := t.lookup(key, true)
		ks.mu.Lock()
		if !ks.dead {
			return ks
		}
		ks.mu.Unlock()
	}
}

// keyState is everything about one key. Its own mutex makes each decision
// atomic across all of the key's windows.
type keyState struct {
	mu     sync.Mutex
	dead   bool // removed from the table; lookups must retry
	seeded bool
	queued bool // in its shard's queue for Changed
	// moved is set once the key's state was handed over: this table no
	// longer decides the key (Check returns ErrMoved) until an Import
	// installs state again.
	moved     *fence
	lastTouch int64
	// What the latest policy limits; only those totals keep an idle key.
	dayLimited, capLimited, budgetLimited bool
	global                                scope
	models                                []*modelScope
	tokens                                periodCounter
	cost                                  periodCounter
	// credit is a workspace's credit spend, all time.
	credit int64
	res    map[string]reservation
	// alerted remembers the thresholds already reported in their period.
	alerted []alertMark
}

// fence records where a key's state went: the replica, and the handover
// request and the state it was given, for a caller that asks again (its
// answer was lost).
type fence struct {
	owner string
	req   string
	snap  *limiterv1.KeySnapshot
}

type modelScope struct {
	name   string
	seeded bool
	scope
}

type scope struct {
	roll rolling
	day  dayCounter
}

type dayCounter struct {
	day      int64
	req, tok int64
}

type periodCounter struct {
	id   PeriodID
	used int64
}

type reservation struct {
	model    string
	sec      int64
	day      int64
	tokenPID PeriodID
	costPID  PeriodID
	tokens   int64
	cost     int64
	expires  int64
	inModel  bool
	credits  bool
}

// rolling is a ring of 1-second buckets; head is the unix second of the
// newest bucket.
type rolling struct {
	head   int64
	last   int64 // second of the newest charge
	reqSum int64
	tokSum int64
	req    [Buckets]int64
	tok    [Buckets]int64
}

func (r *rolling) advance(sec int64) {
	if sec <= r.head {
		return
	}
	if sec-r.head >= Buckets {
		r.req = [Buckets]int64{}
		r.tok = [Buckets]int64{}
		r.reqSum, r.tokSum = 0, 0
	} else {
		for s := r.head + 1; s <= sec; s++ {
			i := s % Buckets
			r.reqSum -= r.req[i]
			r.tokSum -= r.tok[i]
			r.req[i], r.tok[i] = 0, 0
		}
	}
	r.head = sec
}

// inWindow reports whether second s is still inside the window.
func (r *rolling) inWindow(s int64) bool { return s <= r.head && s > r.head-Buckets }

// waitFor returns how long until at least need units of the given buckets
// have left the window, or -1 if they never will.
func (r *rolling) waitFor(b *[Buckets]int64, need int64, now int64) time.Duration {
	var freed int64
	for s := r.head - Buckets + 1; s <= r.head; s++ {
		freed += b[((s%Buckets)+Buckets)%Buckets]
		if freed >= need {
			return time.Duration((s+Buckets)*secNanos - now)
		}
	}
	return -1
}

func (r *rolling) resetAfter(now int64) time.Duration {
	if r.reqSum == 0 && r.tokSum == 0 || !r.inWindow(r.last) {
		return 0
	}
	return time.Duration((r.last+Buckets)*secNanos - now)
}

// clock is the time of one decision in the units the windows use.
type clock struct {
	now      int64 // unix nanoseconds
	sec      int64
	day      int64
	nextDay  int64 // unix nanoseconds of the next UTC midnight
	dayReset time.Duration
	// periods caches the period of each kind containing now, and its
	// end: a decision over several levels works them out once.
	periods [PeriodMonthly + 1]struct {
		ok  bool
		id  PeriodID
		end int64
	}
}

// period is the period of kind k containing now.
func (c *clock) period(k Period) PeriodID {
	if k > PeriodMonthly {
		k = PeriodNever
	}
	p := &c.periods[k]
	if !p.ok {
		p.ok, p.id = true, PeriodOf(time.Unix(0, c.now), k)
		p.end = periodEnd(p.id)
	}
	return p.id
}

// reset is how long until the period id ends (0: never).
func (c *clock) reset(id PeriodID) time.Duration {
	if id.Kind <= PeriodMonthly {
		if p := &c.periods[id.Kind]; p.ok && p.id == id {
			if p.end == 0 {
				return 0
			}
			return time.Duration(p.end - c.now)
		}
	}
	return periodReset(id, c.now)
}

func newClock(now time.Time) clock {
	n := now.UnixNano()
	sec := floorDiv(n, secNanos)
	day := period.DayOfUnix(sec)
	next := (day + 1) * daySecs * secNanos
	return clock{now: n, sec: sec, day: day, nextDay: next, dayReset: time.Duration(next - n)}
}

func floorDiv(a, b int64) int64 {
	q := a / b
	if a%b != 0 && a < 0 {
		q--
	}
	return q
}

// DayOf returns the UTC day number of t (days since 1970-01-01).
func DayOf(t time.Time) int64 { return period.Day(t) }

// PeriodOf returns the period p containing t.
func PeriodOf(t time.Time, p Period) PeriodID { return period.Of(t, p) }

// periodEnd returns the unix nanoseconds at which the period ends, or 0
// (never).
func periodEnd(id PeriodID) int64 {
	end := id.End()
	if end.IsZero() {
		return 0
	}
	return end.UnixNano()
}

func (s *scope) advance(c *clock) {
	s.roll.advance(c.sec)
	if s.day.day != c.day {
		s.day = dayCounter{day: c.day}
	}
}

func (p *periodCounter) roll(id PeriodID) {
	if p.id != id {
		*p = periodCounter{id: id}
	}
}

// admits reports whether used + max(est, 1) fits in limit.
func admits(limit, used, est int64) bool {
	return used+max(est, 1) <= limit
}

func (ks *keyState) model(name string) *modelScope {
	for _, m := range ks.models {
		if m.name == name {
			return m
		}
	}
	return nil
}

// Check decides r at now and writes the answer to d. It returns
// ErrNotSeeded, changing nothing, when the key must be seeded first.
func (t *Table) Check(now time.Time, r *Request, d *Decision) error {
	rs := [1]Request{*r}
	_, err := t.CheckLevels(now, rs[:], d)
	return err
}

// CheckLevels decides one item against several entities at once: rs[0] is
// the key's part, the others its levels (member, workspace). The item is
// admitted only if every level admits it, and then charged to all; a
// denial charges nothing anywhere. Every entity is locked for the whole
// decision, in name order, so no other decision interleaves. On
// ErrNotSeeded or ErrMoved it changes nothing and returns the index of the
// entity concerned.
func (t *Table) CheckLevels(now time.Time, rs []Request, d *Decision) (int, error) {
	c := newClock(now)
	var st [MaxLevels]*keyState
	var ms [MaxLevels]*modelScope
	n := min(len(rs), MaxLevels)
	t.lockAll(rs[:n], st[:n])
	defer unlockAll(st[:n])
	for i := range n {
		var err error
		if ms[i], err = t.modelScopeOf(st[i], &rs[i]); err != nil {
			return i, err
		}
	}
	for i := range n {
		st[i].touch(&c, &rs[i], ms[i])
	}
	d.reset(true)
	if _, dup := st[0].res[rs[0].ReservationID]; dup && rs[0].ReservationID != "" {
		// A retried Check of an admitted reservation: admit again without
		// charging twice.
		t.quotasAll(st[:n], ms[:n], &c, rs, d)
		return 0, nil
	}
	for i := range n {
		d.level = rs[i].Level
		judge(st[i], ms[i], &c, &rs[i], d)
		report(st[i], ms[i], &rs[i], d)
	}
	if d.Allowed {
		for i := range n {
			t.charge(st[i], ms[i], &c, &rs[i])
			t.changed(rs[i].Key, st[i])
		}
	} else if d.RetryAfter < 0 {
		d.RetryAfter = 0
	}
	t.quotasAll(st[:n], ms[:n], &c, rs, d)
	if d.Allowed {
		for i := range n {
			t.crossings(st[i], ms[i], &c, &rs[i])
		}
	}
	return 0, nil
}

// lockAll locks the live state of each request's entity, in name order.
func (t *Table) lockAll(rs []Request, st []*keyState) {
	var order [MaxLevels]int
	for i := range rs {
		order[i] = i
		for j := i; j > 0 && rs[order[j]].Key < rs[order[j-1]].Key; j-- {
			order[j], order[j-1] = order[j-1], order[j]
		}
	}
	for _, i := range order[:len(rs)] {
		st[i] = t.lockLive(rs[i].Key)
	}
}

func unlockAll(st []*keyState) {
	for _, ks := range st {
		ks.mu.Unlock()
	}
}

func (t *Table) quotasAll(st []*keyState, ms []*modelScope, c *clock, rs []Request, d *Decision) {
	for i := range st {
		d.level = rs[i].Level
		t.quotas(st[i], ms[i], c, &rs[i], d)
	}
}

// modelScopeOf returns the scope of r's model when r has model limits (nil
// otherwise), or why the key cannot be decided here: handed over, or not
// seeded yet.
func (t *Table) modelScopeOf(ks *keyState, r *Request) (*modelScope, error) {
	if ks.moved != nil {
		return nil, ErrMoved
	}
	var ms *modelScope
	if r.ModelLimits.Any() || r.Report.ModelLimits.Any() {
		if ms = ks.model(r.Model); ms == nil {
			ms = &modelScope{name: r.Model, seeded: !t.cfg.Seeded}
			ks.models = append(ks.models, ms)
		}
		if !ms.seeded {
			return nil, ErrNotSeeded
		}
	}
	if !ks.seeded {
		return nil, ErrNotSeeded
	}
	return ms, nil
}

// touch records the time and what the policy limits, and moves the
// windows and periods on to c.
func (ks *keyState) touch(c *clock, r *Request, ms *modelScope) {
	ks.lastTouch = c.now
	g, m := r.Global, r.ModelLimits
	rg, rm := r.Report.Global, r.Report.ModelLimits
	ks.dayLimited = g.RPD > 0 || g.TPD > 0 || m.RPD > 0 || m.TPD > 0 || rg.RPD > 0 || rg.TPD > 0 || rm.RPD > 0 || rm.TPD > 0
	ks.capLimited = r.TokenCap > 0 || r.Report.TokenCap > 0
	ks.budgetLimited = r.BudgetMicros > 0 || r.Report.BudgetMicros > 0 || r.Credits
	ks.global.advance(c)
	if ms != nil {
		ms.advance(c)
	}
	ks.tokens.roll(c.period(r.TokenPeriod))
	ks.cost.roll(c.period(r.BudgetPeriod))
}

// judge denies d for every limit r would exceed.
func judge(ks *keyState, ms *modelScope, c *clock, r *Request, d *Decision) {
	judgeScope(&ks.global, &r.Global, false, c, r, d)
	if ms != nil {
		judgeScope(&ms.scope, &r.ModelLimits, true, c, r, d)
	}
	if r.TokenCap > 0 && !admits(r.TokenCap, ks.tokens.used, r.Tokens) {
		d.deny(KindTokenCap, false, -1)
	}
	if r.BudgetMicros > 0 && !admits(r.BudgetMicros, ks.cost.used, r.CostMicros) {
		d.deny(KindBudget, false, -1)
	}
	if r.Credits && !admits(r.CreditMicros, ks.credit, r.CostMicros) {
		d.deny(KindCredits, false, -1)
	}
}

func judgeScope(s *scope, l *Limits, model bool, c *clock, r *Request, d *Decision) {
	if l.RPM > 0 && !admits(l.RPM, s.roll.reqSum, 1) {
		d.deny(KindRPM, model, rollWait(&s.roll, &s.roll.req, l.RPM, 1, c.now))
	}
	if l.TPM > 0 && !admits(l.TPM, s.roll.tokSum, r.Tokens) {
		d.deny(KindTPM, model, rollWait(&s.roll, &s.roll.tok, l.TPM, r.Tokens, c.now))
	}
	if l.RPD > 0 && !admits(l.RPD, s.day.req, 1) {
		d.deny(KindRPD, model, dayWait(l.RPD, 1, c))
	}
	if l.TPD > 0 && !admits(l.TPD, s.day.tok, r.Tokens) {
		d.deny(KindTPD, model, dayWait(l.TPD, r.Tokens, c))
	}
}

// report lists in d every report-mode limit of r that would deny.
func report(ks *keyState, ms *modelScope, r *Request, d *Decision) {
	p := &r.Report
	if !p.any() {
		return
	}
	addReported(d, false, &p.Global, &ks.global, r.Tokens)
	if ms != nil {
		addReported(d, true, &p.ModelLimits, &ms.scope, r.Tokens)
	}
	if p.TokenCap > 0 && !admits(p.TokenCap, ks.tokens.used, r.Tokens) {
		d.reported(KindTokenCap, false)
	}
	if p.BudgetMicros > 0 && !admits(p.BudgetMicros, ks.cost.used, r.CostMicros) {
		d.reported(KindBudget, false)
	}
}

// addReported lists each window of l that does not admit.
func addReported(d *Decision, model bool, l *Limits, s *scope, tokens int64) {
	if l.RPM > 0 && !admits(l.RPM, s.roll.reqSum, 1) {
		d.reported(KindRPM, model)
	}
	if l.TPM > 0 && !admits(l.TPM, s.roll.tokSum, tokens) {
		d.reported(KindTPM, model)
	}
	if l.RPD > 0 && !admits(l.RPD, s.day.req, 1) {
		d.reported(KindRPD, model)
	}
	if l.TPD > 0 && !admits(l.TPD, s.day.tok, tokens) {
		d.reported(KindTPD, model)
	}
}

func (d *Decision) reported(k Kind, model bool) {
	if d.NR < len(d.Reported) {
		d.Reported[d.NR] = Reported{Level: d.level, Kind: k, Model: model}
		d.NR++
	}
}

// deny refuses the request for limit k. The refusal that lasts longest
// tells the caller when to retry; -1 (never within the period) outranks
// every wait; ties keep the first.
func (d *Decision) deny(k Kind, model bool, wait time.Duration) {
	if d.Allowed || (d.RetryAfter >= 0 && (wait < 0 || wait > d.RetryAfter)) {
		d.DeniedBy, d.DeniedLevel, d.DeniedModel, d.RetryAfter = k, d.level, model, wait
	}
	d.Allowed = false
}

// charge counts an admitted request in every window, and opens its
// reservation.
func (t *Table) charge(ks *keyState, ms *modelScope, c *clock, r *Request) {
	i := c.sec % Buckets
	add := func(s *scope) {
		s.roll.req[i]++
		s.roll.reqSum++
		s.roll.tok[i] += r.Tokens
		s.roll.tokSum += r.Tokens
		s.roll.last = c.sec
		s.day.req++
		s.day.tok += r.Tokens
	}
	add(&ks.global)
	if ms != nil {
		add(&ms.scope)
	}
	// Charged even without a cap or budget, so that one added later
	// counts the period so far.
	ks.tokens.used += r.Tokens
	ks.cost.used += r.CostMicros
	if r.Credits {
		ks.credit += r.CostMicros
	}
	if r.ReservationID == "" {
		return
	}
	if ks.res == nil {
		ks.res = make(map[string]reservation)
	}
	ks.res[r.ReservationID] = reservation{
		model: r.Model, inModel: ms != nil, sec: c.sec, day: c.day,
		tokenPID: ks.tokens.id, costPID: ks.cost.id,
		tokens: r.Tokens, cost: r.CostMicros, credits: r.Credits,
		expires: c.now + int64(t.cfg.ReservationTimeout),
	}
}

// rollWait is how long until est more units fit in a rolling window with
// limit, or -1 if est alone exceeds it.
func rollWait(r *rolling, b *[Buckets]int64, limit, est int64, now int64) time.Duration {
	est = max(est, 1)
	if est > limit {
		return -1
	}
	var used int64
	if b == &r.req {
		used = r.reqSum
	} else {
		used = r.tokSum
	}
	return r.waitFor(b, used+est-limit, now)
}

func dayWait(limit, est int64, c *clock) time.Duration {
	if max(est, 1) > limit {
		return -1
	}
	return c.dayReset
}

func (d *Decision) reset(allowed bool) {
	d.Allowed = allowed
	d.DeniedBy = KindNone
	d.DeniedLevel = LevelNone
	d.DeniedModel = false
	d.NR = 0
	d.RetryAfter = 0
	d.N = 0
	d.Requests, d.Tokens = -1, -1
}

func (t *Table) quotas(ks *keyState, ms *modelScope, c *clock, r *Request, d *Decision) {
	add := func(k Kind, model bool, limit, used int64, reset time.Duration) {
		if d.N == len(d.Quotas) {
			return
		}
		q := &d.Quotas[d.N]
		q.Level, q.Kind, q.Model, q.Limit, q.Remaining, q.ResetAfter = d.level, k, model, limit, max(limit-used, 0), reset
		switch k {
		case KindRPM, KindRPD:
			if d.Requests < 0 || q.Remaining < d.Quotas[d.Requests].Remaining {
				d.Requests = d.N
			}
		case KindTPM, KindTPD, KindTokenCap:
			if d.Tokens < 0 || q.Remaining < d.Quotas[d.Tokens].Remaining {
				d.Tokens = d.N
			}
		}
		d.N++
	}
	scopeQuotas := func(s *scope, l *Limits, model bool) {
		rr := s.roll.resetAfter(c.now)
		if l.RPM > 0 {
			add(KindRPM, model, l.RPM, s.roll.reqSum, rr)
		}
		if l.RPD > 0 {
			add(KindRPD, model, l.RPD, s.day.req, c.dayReset)
		}
		if l.TPM > 0 {
			add(KindTPM, model, l.TPM, s.roll.tokSum, rr)
		}
		if l.TPD > 0 {
			add(KindTPD, model, l.TPD, s.day.tok, c.dayReset)
		}
	}
	scopeQuotas(&ks.global, &r.Global, false)
	if ms != nil {
		scopeQuotas(&ms.scope, &r.ModelLimits, true)
	}
	if r.TokenCap > 0 {
		add(KindTokenCap, false, r.TokenCap, ks.tokens.used, c.reset(ks.tokens.id))
	}
	if r.BudgetMicros > 0 {
		add(KindBudget, false, r.BudgetMicros, ks.cost.used, c.reset(ks.cost.id))
	}
	if r.Credits {
		add(KindCredits, false, r.CreditMicros, ks.credit, 0)
	}
}

func periodReset(id PeriodID, now int64) time.Duration {
	end := periodEnd(id)
	if end == 0 {
		return 0
	}
	return time.Duration(end - now)
}

// Settle replaces a reservation's estimate with the actual usage, in the
// same buckets, day and periods it was charged to (where still current).
// It reports false for an unknown reservation and changes nothing then.
func (t *Table) Settle(key, id string, tokens, costMicros int64) bool {
	return t.finish(key, id, false, tokens, costMicros)
}

// Release frees a reservation: its request, tokens and cost no longer
// count. It reports false for an unknown reservation.
func (t *Table) Release(key, id string) bool {
	return t.finish(key, id, true, 0, 0)
}

// finish settles a reservation to (tokens, cost), or releases it.
func (t *Table) finish(key, id string, release bool, tokens, cost int64) bool {
	ok, _ := t.Finish(key, id, release, tokens, cost)
	return ok
}

// Finish settles a reservation to (tokens, cost), or releases it. It
// reports whether the reservation was known and, for a key handed over,
// the replica that holds it now (where the settlement belongs).
func (t *Table) Finish(key, id string, release bool, tokens, cost int64) (known bool, movedTo string) {
	ks := t.lookup(key, false)
	if ks == nil || id == "" {
		return false, ""
	}
	ks.mu.Lock()
	defer ks.mu.Unlock()
	if ks.moved != nil && !ks.dead {
		return false, ks.moved.owner
	}
	res, ok := ks.res[id]
	if !ok || ks.dead {
		return false, ""
	}
	delete(ks.res, id)
	t.changed(key, ks)
	dr, dt, dc := int64(0), tokens-res.tokens, cost-res.cost
	if release {
		dr, dt, dc = -1, -res.tokens, -res.cost
	}
	adjust := func(s *scope) {
		if s.roll.inWindow(res.sec) {
			i := res.sec % Buckets
			s.roll.req[i] += dr
			s.roll.reqSum += dr
			s.roll.tok[i] += dt
			s.roll.tokSum += dt
		}
		if s.day.day == res.day {
			s.day.req += dr
			s.day.tok += dt
		}
	}
	adjust(&ks.global)
	if res.inModel {
		if ms := ks.model(res.model); ms != nil {
			adjust(&ms.scope)
		}
	}
	if ks.tokens.id == res.tokenPID {
		ks.tokens.used += dt
	}
	if ks.cost.id == res.costPID {
		ks.cost.used += dc
	}
	if res.credits {
		ks.credit += dc
	}
	return true, ""
}

// Seed sets a key's day and period totals from the ledger before its
// first decision. Only parts not seeded yet are set: the key's own totals
// (Model "") and each model's. day is the UTC day and tokens/cost the
// periods the totals were taken for.
func (t *Table) Seed(key string, day int64, tokens, cost PeriodID, totals []Totals) {
	ks := t.lockLive(key)
	defer ks.mu.Unlock()
	if ks.moved != nil {
		// Taken back without its state (its holder did not answer): the
		// ledger's totals start it again.
		ks.clear()
	}
	for i := range totals {
		tt := &totals[i]
		if tt.Model == "" {
			if ks.seeded {
				continue
			}
			ks.seeded = true
			ks.global.day = dayCounter{day: day, req: tt.RequestsToday, tok: tt.TokensToday}
			ks.tokens = periodCounter{id: tokens, used: tt.PeriodTokens}
			ks.cost = periodCounter{id: cost, used: tt.PeriodCostMicros}
			ks.credit = tt.CreditSpentMicros
			continue
		}
		ms := ks.model(tt.Model)
		if ms == nil {
			ms = &modelScope{name: tt.Model}
			ks.models = append(ks.models, ms)
		}
		if !ms.seeded {
			ms.seeded = true
			ms.day = dayCounter{day: day, req: tt.RequestsToday, tok: tt.TokensToday}
		}
	}
	t.changed(key, ks)
}

// Sweep forgets expired reservations (they stay counted at their
// estimate) and drops keys idle for longer than Retain with nothing
// outstanding. An unseeded table keeps a key while its day or period
// totals still matter, since nothing could restore them.
func (t *Table) Sweep(now time.Time) {
	c := newClock(now)
	for i := range t.shards {
		sh := &t.shards[i]
		sh.mu.Lock()
		for k, ks := range sh.keys {
			ks.mu.Lock()
			for id, res := range ks.res {
				if res.expires <= c.now {
					delete(ks.res, id)
				}
			}
			// A fence is kept while requests routed by stale rings may
			// still arrive: one rolling window.
			fenceGone := ks.moved != nil && c.now-ks.lastTouch >= int64(Span)
			if fenceGone || len(ks.res) == 0 && c.now-ks.lastTouch >= int64(t.cfg.Retain) && (t.cfg.Seeded || ks.spent(&c)) {
				ks.dead = true
				delete(sh.keys, k)
			}
			ks.mu.Unlock()
		}
		sh.mu.Unlock()
	}
}

// spent reports whether none of the key's day or period totals is current.
func (ks *keyState) spent(c *clock) bool {
	current := func(day dayCounter) bool { return day.day == c.day && (day.req != 0 || day.tok != 0) }
	if ks.dayLimited {
		if current(ks.global.day) {
			return false
		}
		for _, m := range ks.models {
			if current(m.day) {
				return false
			}
		}
	}
	alive := func(limited bool, p periodCounter) bool {
		if !limited || p.used == 0 {
			return false
		}
		end := periodEnd(p.id)
		return end == 0 || end > c.now
	}
	return !alive(ks.capLimited, ks.tokens) && !alive(ks.budgetLimited, ks.cost)
}

// Retain drops every key for which keep returns false, e.g. keys this
// replica no longer owns, so that owning them again starts from a seed.
func (t *Table) Retain(keep func(key string) bool) {
	for i := range t.shards {
		sh := &t.shards[i]
		sh.mu.Lock()
		for k, ks := range sh.keys {
			if !keep(k) {
				ks.mu.Lock()
				ks.dead = true
				ks.mu.Unlock()
				delete(sh.keys, k)
			}
		}
		sh.mu.Unlock()
	}
}

// Len returns the number of keys held.
func (t *Table) Len() int {
	n := 0
	for i := range t.shards {
		sh := &t.shards[i]
		sh.mu.RLock()
		n += len(sh.keys)
		sh.mu.RUnlock()
	}
	return n
}
