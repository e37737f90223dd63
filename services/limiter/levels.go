package limiter

import (
	"errors"
	"fmt"
	"maps"
	"sync"
	"sync/atomic"

	limiterv1 "github.com/keygate/keygate/gen/keygate/limiter/v1"
	typev1 "github.com/keygate/keygate/gen/keygate/type/v1"
	"github.com/keygate/keygate/internal/limitkey"
	"github.com/keygate/keygate/pkg/money"
	"github.com/keygate/keygate/services/limiter/internal/window"
)

// Levels. An item that names a workspace is decided against up to three
// entities at once (internal/limitkey names them): the key, the member
// owning it, and the workspace. Items are routed by workspace, so the
// replica deciding an item holds all three.

// itemReqs is one item converted once: its entities' requests, the key's
// first.
type itemReqs struct {
	r [window.MaxLevels]window.Request
	n int
}

func (ir *itemReqs) all() []window.Request { return ir.r[:ir.n] }

// entityKey names the entity of an item's key.
func entityKey(it interface {
	GetKey() string
	GetWorkspace() string
},
) string {
	return limitkey.Key(it.GetWorkspace(), it.GetKey())
}

// names interns entity names: building "<workspace>/k/<key>" for every
// item would allocate up to three strings per decision, while the set of
// names in use is small and stable. Reads take no lock: a map that is
// never written again, swapped for a bigger copy after enough misses.
type names struct {
	read   atomic.Pointer[map[string]string]
	mu     sync.Mutex
	dirty  map[string]string // read's names and the new ones
	misses int
}

// maxNames bounds the interned names; past it the set starts again.
const maxNames = 1 << 16

// get returns the name a + sep + b, interned.
func (n *names) get(a, sep, b string) string {
	var buf [160]byte
	k := append(append(append(buf[:0], a...), sep...), b...)
	if m := n.read.Load(); m != nil {
		if name, ok := (*m)[string(k)]; ok { // no allocation: looked up by the bytes
			return name
		}
	}
	n.mu.Lock()
	defer n.mu.Unlock()
	if n.dirty == nil || len(n.dirty) >= maxNames {
		n.dirty, n.misses = make(map[string]string), 0
		n.read.Store(nil)
	}
	name, ok := n.dirty[string(k)]
	if !ok {
		name = string(k)
		n.dirty[name] = name
	}
	if n.misses++; n.misses >= 64 || n.misses > len(n.dirty)/4 {
		m := maps.Clone(n.dirty)
		n.read.Store(&m)
		n.misses = 0
	}
	return name
}

// entity names the entity of an item's key (level key) or of one of its
// levels, as internal/limitkey does.
func (n *names) entity(lv typev1.LimitLevel, it *limiterv1.CheckItem) string {
	ws := it.GetWorkspace()
	switch {
	case ws == "":
		return it.GetKey()
	case lv == typev1.LimitLevel_LIMIT_LEVEL_MEMBER:
		return n.get(ws, "/m/", it.GetMember())
	case lv == typev1.LimitLevel_LIMIT_LEVEL_WORKSPACE:
		return n.get(ws, "/w", "")
	}
	return n.get(ws, "/k/", it.GetKey())
}

// toRequests validates an item and converts it into its entities'
// requests.
func toRequests(it *limiterv1.CheckItem, ir *itemReqs, n *names) error {
	switch {
	case it.GetKey() == "":
		return errors.New("key is required")
	case it.GetEstimatedTokens() < 0:
		return errors.New("estimated_tokens must not be negative")
	case it.GetEstimatedCostMicros() < 0:
		return errors.New("estimated_cost_micros must not be negative")
	case len(it.GetLevels()) > 0 && it.GetWorkspace() == "":
		return errors.New("levels need the workspace")
	case len(it.GetLevels()) > window.MaxLevels-1:
		return errors.New("at most a member and a workspace level")
	}
	ir.n = 1
	r := &ir.r[0]
	if err := request(it, n.entity(typev1.LimitLevel_LIMIT_LEVEL_KEY, it), window.LevelKey, it.GetPolicy(), it.GetReport(), r); err != nil {
		return err
	}
	r.Alerts = it.GetAlertThresholds()
	workspace := false
	for _, lv := range it.GetLevels() {
		level := lv.GetLevel()
		switch {
		case level != typev1.LimitLevel_LIMIT_LEVEL_MEMBER && level != typev1.LimitLevel_LIMIT_LEVEL_WORKSPACE:
			return fmt.Errorf("level %v: want member or workspace", level)
		case level == typev1.LimitLevel_LIMIT_LEVEL_MEMBER && it.GetMember() == "":
			return errors.New("a member level needs the member")
		case ir.n > 1 && ir.r[1].Level == window.Level(level):
			return fmt.Errorf("level %v given twice", level)
		}
		r := &ir.r[ir.n]
		ir.n++
		if err := request(it, n.entity(level, it), window.Level(level), lv.GetPolicy(), lv.GetReport(), r); err != nil {
			return fmt.Errorf("level %v: %w", level, err)
		}
		r.Alerts = it.GetAlertThresholds()
		workspace = workspace || level == typev1.LimitLevel_LIMIT_LEVEL_WORKSPACE
	}
	if it.GetCredits() == nil {
		return nil
	}
	if it.GetWorkspace() == "" {
		return errors.New("credits need the workspace")
	}
	if !workspace {
		r := &ir.r[ir.n]
		ir.n++
		if err := request(it, n.entity(typev1.LimitLevel_LIMIT_LEVEL_WORKSPACE, it), window.LevelWorkspace, nil, nil, r); err != nil {
			return err
		}
		r.Alerts = it.GetAlertThresholds()
	}
	for i := range ir.n {
		if ir.r[i].Level == window.LevelWorkspace {
			ir.r[i].Credits, ir.r[i].CreditMicros = true, it.GetCredits().GetGrantedMicros()
		}
	}
	return nil
}

// request fills r with one entity's part of an item, without allocating.
func request(it *limiterv1.CheckItem, entity string, level window.Level, p, report *typev1.Policy, r *window.Request) error {
	*r = window.Request{
		Key: entity, Level: level, Model: it.GetModel(), ReservationID: it.GetReservationId(),
		Tokens: it.GetEstimatedTokens(), CostMicros: it.GetEstimatedCostMicros(),
		TokenCap: p.GetTokenCap().GetTokens(), TokenPeriod: window.Period(p.GetTokenCap().GetResetPeriod()),
		BudgetPeriod: window.Period(p.GetBudget().GetResetPeriod()),
	}
	var err error
	if r.Global, r.ModelLimits, r.BudgetMicros, err = policyLimits(p, r.Model); err != nil {
		return err
	}
	if r.TokenCap < 0 {
		return errors.New("token cap must not be negative")
	}
	if report == nil {
		return nil
	}
	rp := &r.Report
	if rp.Global, rp.ModelLimits, rp.BudgetMicros, err = policyLimits(report, r.Model); err != nil {
		return fmt.Errorf("report: %w", err)
	}
	if rp.TokenCap = report.GetTokenCap().GetTokens(); rp.TokenCap < 0 {
		return errors.New("report: token cap must not be negative")
	}
	// A report-mode cap or budget counts in the enforced one's period, or
	// its own when none is enforced.
	if r.TokenCap == 0 && rp.TokenCap > 0 {
		r.TokenPeriod = window.Period(report.GetTokenCap().GetResetPeriod())
	}
	if r.BudgetMicros == 0 && rp.BudgetMicros > 0 {
		r.BudgetPeriod = window.Period(report.GetBudget().GetResetPeriod())
	}
	return nil
}

// policyLimits reads a policy's global limits, model's limits and budget.
func policyLimits(p *typev1.Policy, model string) (g, m window.Limits, budget int64, err error) {
	if g, err = limits(p.GetGlobalLimits()); err != nil {
		return g, m, 0, err
	}
	for _, ml := range p.GetModelLimits() {
		if ml.GetModel() == model {
			if m, err = limits(ml.GetLimits()); err != nil {
				return g, m, 0, err
			}
			break
		}
	}
	if amt := p.GetBudget().GetAmountUsd(); amt != "" {
		n, err := money.Parse(amt)
		if err != nil {
			return g, m, 0, fmt.Errorf("budget amount_usd: %w", err)
		}
		budget = n.Micros()
	}
	return g, m, budget, nil
}

func limits(l *typev1.Limits) (window.Limits, error) {
	w := window.Limits{RPM: l.GetRpm(), RPD: l.GetRpd(), TPM: l.GetTpm(), TPD: l.GetTpd()}
	if w.RPM < 0 || w.RPD < 0 || w.TPM < 0 || w.TPD < 0 {
		return w, errors.New("limits must not be negative")
	}
	return w, nil
}
