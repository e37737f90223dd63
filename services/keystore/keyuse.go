package keystore

import (
	"context"
	"fmt"
	"slices"
	"strconv"
	"strings"
	"time"

	"go.etcd.io/etcd/api/v3/mvccpb"
	clientv3 "go.etcd.io/etcd/client/v3"
	"google.golang.org/protobuf/types/known/timestamppb"

	keystorev1 "github.com/keygate/keygate/gen/keygate/keystore/v1"
	"github.com/keygate/keygate/pkg/keyformat"
)

const (
	// maxKeyUses bounds one RecordKeyUse call; the edge sends at most this
	// many per call.
	maxKeyUses = 1000
	// useTxnOps keeps a transaction of useOps within etcd's default limit
	// of 128 operations, which nested transactions share: each useOp nests
	// two levels of two compares.
	useTxnOps = 128 - 2*2
	// usedDigits is the width of a stored last-used time: zero-padded Unix
	// nanoseconds, so that etcd's byte-wise value compare orders times.
	usedDigits = 20
)

// keyUse is one validated use: the latest time per key of a request.
type keyUse struct {
	ws, id string
	t      time.Time
}

// recordKeyUse moves each key's last-used time forward. Keys that do not
// exist (deleted, or a wrong workspace) are skipped; an older time than the
// stored one changes nothing, so batches may arrive late or twice.
func (s *Server) recordKeyUse(ctx context.Context, p *principal, req *keystorev1.RecordKeyUseRequest) error {
	if err := p.requireRoot(); err != nil {
		return err
	}
	uses, err := s.validUses(req.GetUses())
	if err != nil {
		return err
	}
	for batch := range slices.Chunk(uses, useTxnOps) {
		ops := make([]clientv3.Op, 0, len(batch))
		for _, u := range batch {
			ops = append(ops, useOp(u))
		}
		if _, err := s.etcd.Txn(ctx).Then(ops...).Commit(); err != nil {
			return fmt.Errorf("record key use: %w", err)
		}
	}
	for _, u := range req.GetUses() {
		if err := s.auditReported(ctx, p, u); err != nil {
			return err
		}
	}
	return nil
}

// useOp writes u's time if the key exists and the stored time is older or
// missing. etcd fails a value compare on a missing key, hence the nested
// transaction for the first use.
func useOp(u keyUse) clientv3.Op {
	k, used, v := keyKey(u.ws, u.id), usedKey(u.ws, u.id), encodeUsed(u.t)
	exists := clientv3.Compare(clientv3.CreateRevision(k), ">", 0)
	put := []clientv3.Op{clientv3.OpPut(used, v)}
	first := clientv3.OpTxn([]clientv3.Cmp{exists, clientv3.Compare(clientv3.CreateRevision(used), "=", 0)}, put, nil)
	return clientv3.OpTxn([]clientv3.Cmp{exists, clientv3.Compare(clientv3.Value(used), "<", v)}, put, []clientv3.Op{first})
}

// validUses checks every use before anything is written and keeps the
// latest time per key. A time after the keystore's clock is recorded as
// now: a fast clock elsewhere must not pin a key's last use in the future,
// where no later use could move it.
func (s *Server) validUses(in []*keystorev1.KeyUse) ([]keyUse, error) {
	if len(in) > maxKeyUses {
		return nil, invalid("uses", "at most %d per call, got %d; split the batch", maxKeyUses, len(in))
	}
	now := s.clock.Now()
	latest := make(map[[2]string]int, len(in))
	out := make([]keyUse, 0, len(in))
	for i, u := range in {
		field := "uses[" + strconv.Itoa(i) + "]"
		if err := validID(field+".workspace", u.GetWorkspace()); err != nil {
			return nil, err
		}
		if !keyformat.ValidID(u.GetKey()) {
			return nil, invalid(field+".key", "must be a key id")
		}
		if err := validReported(field+".reported", u.GetReported()); err != nil {
			return nil, err
		}
		ts := u.GetTime()
		if ts == nil {
			return nil, invalid(field+".time", "must be set")
		}
		if err := ts.CheckValid(); err != nil {
			return nil, invalid(field+".time", "not a valid timestamp")
		}
		t := ts.AsTime()
		if t.Before(time.Unix(0, 0)) {
			return nil, invalid(field+".time", "must not be before 1970")
		}
		if t.After(now) {
			t = now
		}
		k := [2]string{u.GetWorkspace(), u.GetKey()}
		if j, ok := latest[k]; ok {
			if t.After(out[j].t) {
				out[j].t = t
			}
			continue
		}
		latest[k] = len(out)
		out = append(out, keyUse{ws: k[0], id: k[1], t: t})
	}
	return out, nil
}

func encodeUsed(t time.Time) string { return ordered(t.UnixNano()) }

// ordered renders a non-negative n zero-padded, so that etcd's byte-wise
// value compare orders the numbers.
func ordered(n int64) string {
	v := strconv.FormatInt(n, 10)
	return strings.Repeat("0", usedDigits-len(v)) + v
}

func decodeUsed(kv *mvccpb.KeyValue) (*timestamppb.Timestamp, error) {
	n, err := strconv.ParseInt(string(kv.Value), 10, 64)
	if err != nil || len(kv.Value) != usedDigits {
		return nil, fmt.Errorf("decode %q: bad last-used time", kv.Key)
	}
	return timestamppb.New(time.Unix(0, n).UTC()), nil
}

// fillLastUsed sets the last-used time of a page of keys of ws, sorted by
// id, with one range read over the page's ids.
func (s *Server) fillLastUsed(ctx context.Context, ws string, keys []*keystorev1.Key) error {
	if len(keys) == 0 {
		return nil
	}
	resp, err := s.etcd.Get(ctx, usedKey(ws, keys[0].GetId()),
		clientv3.WithRange(usedKey(ws, keys[len(keys)-1].GetId())+"\x00"))
	if err != nil {
		return fmt.Errorf("list keys: last used: %w", err)
	}
	pfx := usedPrefix(ws)
	i := 0
	for _, kv := range resp.Kvs {
		id := strings.TrimPrefix(string(kv.Key), pfx)
		for i < len(keys) && keys[i].GetId() < id {
			i++
		}
		if i == len(keys) {
			break
		}
		if keys[i].GetId() != id {
			continue // a key the page filtered out
		}
		if keys[i].LastUsedTime, err = decodeUsed(kv); err != nil {
			return err
		}
	}
	return nil
}
