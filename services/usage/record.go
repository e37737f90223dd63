package usage

import (
	"context"
	"errors"
	"math"
	"strings"
	"time"

	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/types/known/timestamppb"

	usagev1 "github.com/keygate/keygate/gen/keygate/usage/v1"
	"github.com/keygate/keygate/pkg/money"
)

const (
	// maxBatch bounds one RecordUsage call.
	maxBatch = 5000
	// maxIDLen bounds request ids, keys, workspaces, models and owners.
	maxIDLen = 256
	// maxTokens bounds one record's token counts, far above any model.
	maxTokens = 1 << 40
	// maxFutureSkew is how far ahead of this replica's clock a record's
	// time may be (other hosts' clocks drift).
	maxFutureSkew = 5 * time.Minute
)

// record validates, prices and stores a batch; it answers only once every
// record is durable or a known duplicate. Any invalid record refuses the
// whole batch before anything is written.
func (s *Server) record(ctx context.Context, req *usagev1.RecordUsageRequest) (outcome, error) {
	recs := req.GetRecords()
	if err := s.validateBatch(req); err != nil {
		s.com.m.records.Add(ctx, int64(len(recs)), s.com.m.rejected)
		return outcome{}, err
	}
	now := s.clk.Now()
	models := map[string]price{}
	for i, r := range recs {
		if err := s.validate(r, now); err != nil {
			s.com.m.records.Add(ctx, int64(len(recs)), s.com.m.rejected)
			return outcome{}, invalidf("record %d (request id %q): %v", i, r.GetRequestId(), err)
		}
		if r.GetInputPricePerMillionUsd() == "" {
			models[r.GetModel()] = price{} // not priced by the edge: the book's
		}
	}
	if len(recs) == 0 {
		return outcome{}, nil
	}
	if err := s.prices.lookup(ctx, models); err != nil {
		var inv *InvalidError
		if errors.As(err, &inv) {
			s.com.m.records.Add(ctx, int64(len(recs)), s.com.m.rejected)
		}
		return outcome{}, err
	}
	entries := make([]*entry, len(recs))
	for i, r := range recs {
		p, err := recordPrice(r, models)
		if err != nil {
			s.com.m.records.Add(ctx, int64(len(recs)), s.com.m.rejected)
			return outcome{}, invalidf("record %d (request id %q): %v", i, r.GetRequestId(), err)
		}
		e, err := newEntry(r, p, now)
		if err != nil {
			return outcome{}, err
		}
		e.producer, e.seq = req.GetProducer(), req.GetFirstSequence()+uint64(i)
		entries[i] = e
	}
	return s.com.submit(ctx, entries)
}

// maxProducerLen bounds a producer id: it is stored in every aggregate the
// producer writes to.
const maxProducerLen = 64

func (s *Server) validateBatch(req *usagev1.RecordUsageRequest) error {
	n := len(req.GetRecords())
	switch p := req.GetProducer(); {
	case n > maxBatch:
		return invalidf("batch of %d records is over the limit of %d: split it", n, maxBatch)
	case p == "":
		return invalidf("producer is required: the sender's id, which numbers its records")
	case len(p) > maxProducerLen:
		return invalidf("producer is longer than %d bytes", maxProducerLen)
	case strings.Contains(p, "/"):
		return invalidf("producer must not contain '/'")
	case req.GetFirstSequence() == 0:
		return invalidf("first_sequence must be at least 1")
	case n > 0 && req.GetFirstSequence()-1 > math.MaxUint64-uint64(n):
		return invalidf("first_sequence %d leaves no room for %d records", req.GetFirstSequence(), n)
	}
	return nil
}

func (s *Server) validate(r *usagev1.UsageRecord, now time.Time) error {
	for _, f := range []struct{ name, v string }{
		{"request_id", r.GetRequestId()}, {"key", r.GetKey()}, {"workspace", r.GetWorkspace()}, {"model", r.GetModel()},
	} {
		if f.v == "" {
			return invalidf("%s is required", f.name)
		}
		if len(f.v) > maxIDLen {
			return invalidf("%s is longer than %d bytes", f.name, maxIDLen)
		}
	}
	if len(r.GetOwner()) > maxIDLen {
		return invalidf("owner is longer than %d bytes", maxIDLen)
	}
	if strings.Contains(r.GetKey(), "/") || strings.Contains(r.GetWorkspace(), "/") {
		return invalidf("key and workspace ids must not contain '/'")
	}
	if isLevelID(r.GetKey()) {
		return invalidf("key ids must not start with %q", levelMark)
	}
	if r.GetRequestLogCap() < 0 {
		return invalidf("request_log_cap must not be negative")
	}
	if r.GetPromptTokens() < 0 || r.GetCompletionTokens() < 0 {
		return invalidf("token counts must not be negative")
	}
	if r.GetPromptTokens() > maxTokens || r.GetCompletionTokens() > maxTokens {
		return invalidf("token counts over %d", int64(maxTokens))
	}
	if cw, cr := r.GetCacheWriteTokens(), r.GetCacheReadTokens(); cw < 0 || cr < 0 || cw > r.GetPromptTokens()-cr {
		return invalidf("cache tokens must be non-negative and part of the prompt tokens")
	}
	if _, ok := usagev1.RequestStatus_name[int32(r.GetStatus())]; !ok {
		return invalidf("unknown status %d", r.GetStatus())
	}
	if l := r.GetLatency(); l != nil && (l.CheckValid() != nil || l.AsDuration() < 0) {
		return invalidf("latency must be a valid non-negative duration")
	}
	t := now
	if ts := r.GetTime(); ts != nil {
		if err := ts.CheckValid(); err != nil {
			return invalidf("time: %v", err)
		}
		t = ts.AsTime()
		if t.After(now.Add(maxFutureSkew)) {
			return invalidf("time %s is in the future", t.Format(time.RFC3339))
		}
		// A record that old could fall into a day already rolled up into
		// its month, where no marks are kept to recognise a retry.
		if t.Before(now.Add(-s.retention)) {
			return invalidf("time %s is older than the ledger's retention (%s)", t.Format(time.RFC3339), s.retention)
		}
	}
	return nil
}

// recordPrice is the price a record is charged at: the one the edge
// charged the key's budget at, when it says so, else the price book's.
func recordPrice(r *usagev1.UsageRecord, book map[string]price) (price, error) {
	if r.GetInputPricePerMillionUsd() == "" {
		return book[r.GetModel()], nil
	}
	p, err := money.ParsePrices(r.GetInputPricePerMillionUsd(), r.GetOutputPricePerMillionUsd(),
		r.GetCacheWritePricePerMillionUsd(), r.GetCacheReadPricePerMillionUsd())
	if err != nil {
		return price{}, err
	}
	return price{p}, nil
}

// dayKeys are the day aggregates of ids for one day and model.
func dayKeys(ids []string, day time.Time, model string) []string {
	out := make([]string, len(ids))
	for i, id := range ids {
		out[i] = dayKey(id, day, model)
	}
	return out
}

// newEntry prices a valid record: the stored copy keeps the prices it was
// charged at and its exact cost.
func newEntry(r *usagev1.UsageRecord, p price, now time.Time) (*entry, error) {
	rec := proto.CloneOf(r)
	t := now
	if rec.GetTime() != nil {
		t = rec.GetTime().AsTime()
	} else {
		rec.Time = timestamppb.New(t)
	}
	cw, cr := rec.GetCacheWriteTokens(), rec.GetCacheReadTokens()
	cost := p.Cost(rec.GetPromptTokens()-cw-cr, rec.GetCompletionTokens(), cw, cr)
	rec.InputPricePerMillionUsd = p.Input.String()
	rec.OutputPricePerMillionUsd = p.Output.String()
	if cw > 0 || cr > 0 {
		rec.CacheWritePricePerMillionUsd = p.CacheWrite.String()
		rec.CacheReadPricePerMillionUsd = p.CacheRead.String()
	}
	rec.CostUsd = cost.String()
	val, err := proto.Marshal(rec)
	if err != nil {
		return nil, err
	}
	return &entry{
		ws: rec.GetWorkspace(), key: rec.GetKey(), owner: rec.GetOwner(),
		model: rec.GetModel(), status: int32(rec.GetStatus()), at: t,
		aggKeys: dayKeys(aggIDs(rec.GetWorkspace(), rec.GetKey(), rec.GetOwner(), rec.GetCredits()), dayStart(t), rec.GetModel()),
		logCap:  rec.GetRequestLogCap(),
		val:     val,
		delta:   tally{Requests: 1, Prompt: rec.GetPromptTokens(), Completion: rec.GetCompletionTokens(), Cost: cost},
	}, nil
}
