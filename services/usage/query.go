package usage

import (
	"context"
	"fmt"
	"maps"
	"slices"
	"time"

	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/types/known/timestamppb"

	keystorev1 "github.com/keygate/keygate/gen/keygate/keystore/v1"
	usagev1 "github.com/keygate/keygate/gen/keygate/usage/v1"
	"github.com/keygate/keygate/pkg/money"
	"github.com/keygate/keygate/services/usage/internal/reqlog"
)

// maxSeriesDays bounds a series or listing range.
const maxSeriesDays = 366

func earliest(ts ...time.Time) time.Time {
	return slices.MinFunc(ts, func(a, b time.Time) int { return a.Compare(b) })
}

// dayLimits returns the daily limits that apply to model ("" = the key's
// global ones); a model without its own limits falls back to the global.
func dayLimits(k *keystorev1.Key, model string) (rpd, tpd int64) {
	l := k.GetGlobalLimits()
	if model != "" {
		for _, ml := range k.GetModelLimits() {
			if ml.GetModel() == model {
				l = ml.GetLimits()
			}
		}
	}
	return l.GetRpd(), l.GetTpd()
}

// usage answers GetUsage for a key the caller may read.
func (s *Server) usage(ctx context.Context, k *keystorev1.Key, model string) (*usagev1.GetUsageResponse, error) {
	now := s.clk.Now()
	today := dayStart(now)
	tokStart, _ := periodBounds(k.GetTokenCap().GetResetPeriod(), now)
	budStart, budEnd := periodBounds(k.GetBudget().GetResetPeriod(), now)
	all, err := s.st.keyRows(ctx, []string{k.GetId()}, earliest(today, tokStart, budStart))
	if err != nil {
		return nil, err
	}
	rows := all[k.GetId()]
	day := sumRows(dayRows(rows, today), model, today)
	rpd, tpd := dayLimits(k, model)
	resp := &usagev1.GetUsageResponse{
		Key:                   k.GetId(),
		Day:                   today.Format(dayLayout),
		RequestsToday:         day.Requests,
		RequestLimitToday:     rpd,
		PromptTokensToday:     day.Prompt,
		CompletionTokensToday: day.Completion,
		TokensToday:           day.tokens(),
		TokenLimitToday:       tpd,
		SpendTodayUsd:         day.Cost.String(),
		PeriodTokens:          sumRows(rows, model, tokStart).tokens(),
		TokenCap:              k.GetTokenCap().GetTokens(),
		TokenPeriodStart:      timestamppb.New(tokStart),
		SpendUsd:              sumRows(rows, model, budStart).Cost.String(),
		BudgetPeriodStart:     timestamppb.New(budStart),
	}
	if b := k.GetBudget().GetAmountUsd(); b != "" {
		resp.BudgetUsd = b
		if n, err := money.Parse(b); err == nil {
			resp.BudgetUsd = n.String()
		}
	}
	if !budEnd.IsZero() {
		resp.BudgetPeriodEnd = timestamppb.New(budEnd)
	}
	// A row for every model used in any shown window or with its own
	// limits, so that a console shows configured models at zero.
	names := map[string]bool{}
	for _, r := range rows {
		names[r.model] = true
	}
	for _, ml := range k.GetModelLimits() {
		names[ml.GetModel()] = true
	}
	for _, m := range slices.Sorted(maps.Keys(names)) {
		if model != "" && m != model {
			continue
		}
		mt := sumRows(dayRows(rows, today), m, today)
		mrpd, mtpd := dayLimits(k, m)
		resp.Models = append(resp.Models, &usagev1.ModelUsage{
			Model:             m,
			RequestsToday:     mt.Requests,
			RequestLimitToday: mrpd,
			TokensToday:       mt.tokens(),
			TokenLimitToday:   mtpd,
			SpendTodayUsd:     mt.Cost.String(),
			PeriodTokens:      sumRows(rows, m, tokStart).tokens(),
			PeriodSpendUsd:    sumRows(rows, m, budStart).Cost.String(),
		})
	}
	return resp, nil
}

// series is one point per day of [start, end] for a key (and model).
func (s *Server) series(ctx context.Context, key, model, startS, endS string) ([]*usagev1.UsagePoint, error) {
	start, end, err := dateRange(startS, endS, s.clk.Now(), maxSeriesDays)
	if err != nil {
		return nil, err
	}
	all, err := s.st.keyRows(ctx, []string{key}, start)
	if err != nil {
		return nil, err
	}
	byDay := map[time.Time]tally{}
	for _, r := range all[key] {
		if !r.month && (model == "" || r.model == model) {
			t := byDay[r.start]
			t.add(r.t)
			byDay[r.start] = t
		}
	}
	var out []*usagev1.UsagePoint
	for d := start; !d.After(end); d = d.AddDate(0, 0, 1) {
		t := byDay[d]
		out = append(out, &usagev1.UsagePoint{
			Day: d.Format(dayLayout), Requests: t.Requests, PromptTokens: t.Prompt,
			CompletionTokens: t.Completion, SpendUsd: t.Cost.String(),
		})
	}
	return out, nil
}

// listUsage totals a workspace over [start, end], grouped. Days already
// rolled up into months count when the range covers the whole month.
// listUsage totals the workspace; with only set, just the keys that member
// owns.
func (s *Server) listUsage(ctx context.Context, ws string, by usagev1.GroupBy, startS, endS, only string) ([]*usagev1.UsageRow, error) {
	if by == usagev1.GroupBy_GROUP_BY_UNSPECIFIED {
		by = usagev1.GroupBy_GROUP_BY_KEY
	}
	if _, ok := usagev1.GroupBy_name[int32(by)]; !ok {
		return nil, invalidf("unknown group_by %d", by)
	}
	start, end, err := dateRange(startS, endS, s.clk.Now(), maxSeriesDays)
	if err != nil {
		return nil, err
	}
	owners, err := s.st.workspaceKeys(ctx, ws)
	if err != nil {
		return nil, err
	}
	if only != "" {
		maps.DeleteFunc(owners, func(_, owner string) bool { return owner != only })
	}
	keys := slices.Sorted(maps.Keys(owners))
	all, err := s.st.keyRows(ctx, keys, start)
	if err != nil {
		return nil, err
	}
	groups := map[string]tally{}
	for _, k := range keys {
		for _, r := range all[k] {
			last := r.start
			if r.month {
				last = r.start.AddDate(0, 1, -1)
			}
			if r.start.Before(start) || last.After(end) {
				continue
			}
			g := k
			switch by {
			case usagev1.GroupBy_GROUP_BY_MODEL:
				g = r.model
			case usagev1.GroupBy_GROUP_BY_OWNER:
				g = owners[k]
			}
			t := groups[g]
			t.add(r.t)
			groups[g] = t
		}
	}
	out := make([]*usagev1.UsageRow, 0, len(groups))
	for _, g := range slices.Sorted(maps.Keys(groups)) {
		t := groups[g]
		out = append(out, &usagev1.UsageRow{Group: g, Requests: t.Requests, PromptTokens: t.Prompt, CompletionTokens: t.Completion, SpendUsd: t.Cost.String()})
	}
	return out, nil
}

const (
	defaultPageSize = 50
	maxPageSize     = 500
)

// listRequests reads the workspace's log newest first, filtered. A
// selective filter may answer a short page with a token to go on.
func (s *Server) listRequests(ctx context.Context, req *usagev1.ListRequestsRequest) (*usagev1.ListRequestsResponse, error) {
	ws := req.GetWorkspace()
	size := int(req.GetPageSize())
	switch {
	case size < 0:
		return nil, invalidf("page_size must not be negative")
	case size == 0:
		size = defaultPageSize
	case size > maxPageSize:
		size = maxPageSize
	}
	if _, ok := usagev1.RequestStatus_name[int32(req.GetStatus())]; !ok {
		return nil, invalidf("unknown status %d", req.GetStatus())
	}
	q := reqlog.Query{
		Workspace: ws, Key: req.GetKey(), Owner: req.GetOwner(), Model: req.GetModel(),
		Status: int32(req.GetStatus()), Limit: size,
	}
	if tok := req.GetPageToken(); tok != "" {
		c, err := reqlog.DecodeCursor(ws, tok)
		if err != nil {
			return nil, invalidf("page_token is not one this listing returned")
		}
		q.Before = c
	}
	page, err := s.rlog.List(ctx, q)
	if err != nil {
		return nil, fmt.Errorf("%w: request log: %w", ErrUnavailable, err)
	}
	resp := &usagev1.ListRequestsResponse{Requests: make([]*usagev1.UsageRecord, 0, len(page.Entries))}
	for _, e := range page.Entries {
		rec := &usagev1.UsageRecord{}
		if err := proto.Unmarshal(e.Record, rec); err != nil {
			s.log.Warn("usage: unreadable log entry", "err", err)
			continue
		}
		resp.Requests = append(resp.Requests, rec)
	}
	if page.Next != nil {
		resp.NextPageToken = reqlog.EncodeCursor(ws, *page.Next)
	}
	return resp, nil
}

// maxTotalsQueries bounds one GetTotals call.
const maxTotalsQueries = 1000

// totals answers GetTotals: per key, member or workspace, its total and
// each asked model, read from that level's own aggregates (levels.go).
func (s *Server) totals(ctx context.Context, req *usagev1.GetTotalsRequest) ([]*usagev1.Totals, error) {
	qs := req.GetQueries()
	if len(qs) > maxTotalsQueries {
		return nil, invalidf("%d queries is over the limit of %d: split them", len(qs), maxTotalsQueries)
	}
	day := dayStart(s.clk.Now())
	if req.GetDay() != "" {
		d, err := parseDay("day", req.GetDay())
		if err != nil {
			return nil, err
		}
		day = d
	}
	epoch := time.Unix(0, 0).UTC()
	start := func(ts *timestamppb.Timestamp) time.Time {
		if ts == nil {
			return epoch
		}
		return ts.AsTime()
	}
	since := day
	targets := make([]totalsTarget, len(qs))
	ids := make([]string, 0, len(qs))
	var credits []string
	for i, q := range qs {
		t, err := targetOf(q.GetLevel(), q.GetWorkspace(), q.GetKey(), q.GetMember(), q.GetCredits())
		if err != nil {
			return nil, invalidf("query %d: %v", i, err)
		}
		targets[i] = t
		since = earliest(since, start(q.GetTokenPeriodStart()), start(q.GetBudgetPeriodStart()))
		ids = append(ids, t.id)
		if t.credit != "" {
			credits = append(credits, t.credit)
		}
	}
	rows, err := s.st.keyRows(ctx, slices.Compact(slices.Sorted(slices.Values(ids))), since)
	if err != nil {
		return nil, err
	}
	// The credit spend is all time: its day aggregates since the epoch,
	// and its months.
	spent, err := s.st.keyRows(ctx, slices.Compact(slices.Sorted(slices.Values(credits))), epoch)
	if err != nil {
		return nil, err
	}
	var out []*usagev1.Totals
	for i, q := range qs {
		kr := rows[targets[i].id]
		today := dayRows(kr, day)
		for _, m := range append([]string{""}, q.GetModels()...) {
			d := sumRows(today, m, day)
			t := &usagev1.Totals{
				Key: q.GetKey(), Model: m,
				Level: q.GetLevel(), Workspace: q.GetWorkspace(), Member: q.GetMember(),
				RequestsToday:    d.Requests,
				TokensToday:      d.tokens(),
				PeriodTokens:     sumRows(kr, m, start(q.GetTokenPeriodStart())).tokens(),
				PeriodCostMicros: sumRows(kr, m, start(q.GetBudgetPeriodStart())).Cost.Micros(),
			}
			if c := targets[i].credit; c != "" && m == "" {
				t.CreditSpentMicros = sumRows(spent[c], "", epoch).Cost.Micros()
			}
			out = append(out, t)
		}
	}
	return out, nil
}
