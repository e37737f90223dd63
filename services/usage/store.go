package usage

import (
	"context"
	"encoding/binary"
	"errors"
	"fmt"
	"slices"
	"strconv"
	"strings"
	"time"

	"go.etcd.io/etcd/api/v3/mvccpb"
	clientv3 "go.etcd.io/etcd/client/v3"

	"github.com/keygate/keygate/pkg/money"
)

// Prefix is where the ledger lives in etcd.
const Prefix = "/keygate/usage/"

// etcd's limits are 128 ops per Txn and 1.5 MiB per request; stay well
// inside them.
const (
	maxTxnOps   = 128
	maxTxnBytes = 1 << 20
)

// store reads and writes the ledger's etcd keys. It keeps no state.
type store struct {
	cli *clientv3.Client
}

func idKey(rid string) string { return Prefix + "id/" + rid }

func logPrefix(ws string) string { return Prefix + "log/" + ws + "/" }

// logKey orders a workspace's log by record time, so that retention deletes
// a key range and listing reads newest first.
func logKey(ws string, t time.Time, rid string) string {
	return logPrefix(ws) + logTime(t) + "/" + rid
}

func logTime(t time.Time) string {
	s := strconv.FormatInt(t.UnixNano(), 10)
	return strings.Repeat("0", 19-len(s)) + s
}

// parseLogKey splits a log key into workspace, time (19 digits) and
// request id.
func parseLogKey(k string) (ws, at, rid string, ok bool) {
	rest, ok := strings.CutPrefix(k, Prefix+"log/")
	if !ok {
		return "", "", "", false
	}
	parts := strings.SplitN(rest, "/", 3)
	if len(parts) != 3 {
		return "", "", "", false
	}
	return parts[0], parts[1], parts[2], true
}

// watermarkKey holds the log time (19 digits) of the newest log entry ever
// evicted; a record at or before it could have lost its marker and is
// refused.
const watermarkKey = Prefix + "evicted"

// watermark reads the watermark in nanoseconds (0 = nothing evicted yet)
// and its mod revision (0 = absent).
func (s *store) watermark(ctx context.Context) (int64, int64, error) {
	resp, err := s.cli.Get(ctx, watermarkKey)
	if err != nil {
		return 0, 0, fmt.Errorf("%w: etcd read: %w", ErrUnavailable, err)
	}
	if len(resp.Kvs) == 0 {
		return 0, 0, nil
	}
	kv := resp.Kvs[0]
	wm, err := strconv.ParseInt(string(kv.Value), 10, 64)
	if err != nil {
		return 0, 0, fmt.Errorf("watermark %q: %w", kv.Value, err)
	}
	return wm, kv.ModRevision, nil
}

// raiseWatermark raises the watermark to at (a 19-digit log time) unless it
// is higher already, and returns it in nanoseconds.
func (s *store) raiseWatermark(ctx context.Context, at string) (int64, error) {
	want, err := strconv.ParseInt(at, 10, 64)
	if err != nil {
		return 0, fmt.Errorf("log time %q: %w", at, err)
	}
	for range maxConflicts {
		cur, rev, err := s.watermark(ctx)
		if err != nil {
			return 0, err
		}
		if cur >= want {
			return cur, nil
		}
		resp, err := s.cli.Txn(ctx).If(clientv3.Compare(clientv3.ModRevision(watermarkKey), "=", rev)).
			Then(clientv3.OpPut(watermarkKey, at)).Commit()
		if err != nil {
			return 0, fmt.Errorf("%w: etcd txn: %w", ErrUnavailable, err)
		}
		if resp.Succeeded {
			return want, nil
		}
	}
	return 0, fmt.Errorf("%w: raising the eviction watermark kept conflicting", ErrUnavailable)
}

func aggPrefix(key string) string { return Prefix + "agg/" + key + "/" }

func dayKey(key string, day time.Time, model string) string {
	return aggPrefix(key) + "d/" + day.Format(dayLayout) + "/" + model
}

func monthKey(key string, month time.Time, model string) string {
	return aggPrefix(key) + "m/" + month.Format(monthLayout) + "/" + model
}

func wkPrefix(ws string) string { return Prefix + "wk/" + ws + "/" }

func wkKey(ws, key string) string { return wkPrefix(ws) + key }

// row is one parsed aggregate.
type row struct {
	key   string
	month bool      // month rollup rather than day
	start time.Time // the day or month start
	model string
	t     tally
}

// parseAgg reads an aggregate key; the value may be nil (keys-only scans).
func parseAgg(k string, v []byte) (row, error) {
	rest, ok := strings.CutPrefix(k, Prefix+"agg/")
	if !ok {
		return row{}, fmt.Errorf("not an aggregate key: %q", k)
	}
	parts := strings.SplitN(rest, "/", 4)
	if len(parts) != 4 {
		return row{}, fmt.Errorf("malformed aggregate key %q", k)
	}
	r := row{key: parts[0], model: parts[3]}
	var err error
	switch parts[1] {
	case "d":
		r.start, err = time.Parse(dayLayout, parts[2])
	case "m":
		r.month = true
		r.start, err = time.Parse(monthLayout, parts[2])
	default:
		err = fmt.Errorf("unknown aggregate kind %q", parts[1])
	}
	if err != nil {
		return row{}, fmt.Errorf("aggregate key %q: %w", k, err)
	}
	if v != nil {
		if r.t, err = decodeTally(v); err != nil {
			return row{}, fmt.Errorf("aggregate %q: %w", k, err)
		}
	}
	return r, nil
}

// encodeTally is four varints: about 10 bytes for a busy key-day.
func encodeTally(t tally) []byte {
	b := make([]byte, 0, 4*binary.MaxVarintLen64)
	b = binary.AppendVarint(b, t.Requests)
	b = binary.AppendVarint(b, t.Prompt)
	b = binary.AppendVarint(b, t.Completion)
	return binary.AppendVarint(b, int64(t.Cost))
}

func decodeTally(b []byte) (tally, error) {
	var v [4]int64
	for i := range v {
		x, n := binary.Varint(b)
		if n <= 0 {
			return tally{}, errors.New("corrupt tally")
		}
		v[i], b = x, b[n:]
	}
	return tally{Requests: v[0], Prompt: v[1], Completion: v[2], Cost: money.Nanos(v[3])}, nil
}

// span is a key range [from, to) to read; to == "" reads the one key.
type span struct{ from, to string }

func prefixSpan(p string) span { return span{p, clientv3.GetPrefixRangeEnd(p)} }

// readSpans reads many ranges in as few read-only Txns as the op limit
// allows; a read-only Txn is a linearizable read, not a raft write.
func (s *store) readSpans(ctx context.Context, spans []span) ([][]*mvccpb.KeyValue, error) {
	out := make([][]*mvccpb.KeyValue, 0, len(spans))
	for chunk := range slices.Chunk(spans, maxTxnOps) {
		ops := make([]clientv3.Op, len(chunk))
		for i, sp := range chunk {
			if sp.to == "" {
				ops[i] = clientv3.OpGet(sp.from)
			} else {
				ops[i] = clientv3.OpGet(sp.from, clientv3.WithRange(sp.to))
			}
		}
		resp, err := s.cli.Txn(ctx).Then(ops...).Commit()
		if err != nil {
			return nil, fmt.Errorf("%w: etcd read: %w", ErrUnavailable, err)
		}
		for _, r := range resp.Responses {
			out = append(out, r.GetResponseRange().Kvs)
		}
	}
	return out, nil
}

// keyRows reads the month aggregates and the day aggregates from since on,
// for each key.
func (s *store) keyRows(ctx context.Context, keys []string, since time.Time) (map[string][]row, error) {
	spans := make([]span, 0, 2*len(keys))
	for _, k := range keys {
		p := aggPrefix(k)
		spans = append(spans, prefixSpan(p+"m/"), span{p + "d/" + dayStart(since).Format(dayLayout), clientv3.GetPrefixRangeEnd(p + "d/")})
	}
	res, err := s.readSpans(ctx, spans)
	if err != nil {
		return nil, err
	}
	out := make(map[string][]row, len(keys))
	for i, kvs := range res {
		k := keys[i/2]
		for _, kv := range kvs {
			r, err := parseAgg(string(kv.Key), kv.Value)
			if err != nil {
				return nil, err
			}
			out[k] = append(out[k], r)
		}
	}
	return out, nil
}

// sumRows totals rows of one model ("" = every model) from since to now: day
// rows from since's day, month rows that start at or after since. A month
// already rolled up counts only if the period covers it whole; rollups keep
// the current and previous month as days, so every reset period is exact.
func sumRows(rows []row, model string, since time.Time) tally {
	var t tally
	since = dayStart(since)
	for _, r := range rows {
		if (model == "" || r.model == model) && !r.start.Before(since) {
			t.add(r.t)
		}
	}
	return t
}

// dayRows filters the day aggregates of one day.
func dayRows(rows []row, day time.Time) []row {
	var out []row
	for _, r := range rows {
		if !r.month && r.start.Equal(day) {
			out = append(out, r)
		}
	}
	return out
}

// workspaceKeys returns key id -> owner for every key with usage in ws.
func (s *store) workspaceKeys(ctx context.Context, ws string) (map[string]string, error) {
	p := wkPrefix(ws)
	out := map[string]string{}
	from := p
	for {
		resp, err := s.cli.Get(ctx, from, clientv3.WithRange(clientv3.GetPrefixRangeEnd(p)), clientv3.WithLimit(1000))
		if err != nil {
			return nil, fmt.Errorf("%w: etcd read: %w", ErrUnavailable, err)
		}
		for _, kv := range resp.Kvs {
			out[strings.TrimPrefix(string(kv.Key), p)] = string(kv.Value)
		}
		if !resp.More || len(resp.Kvs) == 0 {
			return out, nil
		}
		from = string(resp.Kvs[len(resp.Kvs)-1].Key) + "\x00"
	}
}

// logPage reads up to limit log entries of ws older than before (a log key;
// "" = newest), newest first.
func (s *store) logPage(ctx context.Context, ws, before string, limit int64) ([]*mvccpb.KeyValue, bool, error) {
	p := logPrefix(ws)
	end := clientv3.GetPrefixRangeEnd(p)
	if before != "" {
		end = before
	}
	resp, err := s.cli.Get(ctx, p, clientv3.WithRange(end), clientv3.WithSort(clientv3.SortByKey, clientv3.SortDescend), clientv3.WithLimit(limit))
	if err != nil {
		return nil, false, fmt.Errorf("%w: etcd read: %w", ErrUnavailable, err)
	}
	return resp.Kvs, resp.More, nil
}
