package keystore

import (
	"context"
	"errors"
	"fmt"
	"strconv"
	"strings"
	"time"

	clientv3 "go.etcd.io/etcd/client/v3"
	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/types/known/timestamppb"

	keystorev1 "github.com/keygate/keygate/gen/keygate/keystore/v1"
	typev1 "github.com/keygate/keygate/gen/keygate/type/v1"
	"github.com/keygate/keygate/internal/clock"
)

// A timed override reverts by itself wherever a Check item is built
// (limitpolicy.Effective applies it only while in force). The janitor here
// only tidies up: it clears expired overrides from the stored objects and
// audits each revert once. Every stored override is indexed by its expiry
// (overridesDir), written in the transaction that writes the override, so
// a pass reads only the entries due.

const (
	// overrideSweepInterval is how often Run looks for expired overrides.
	overrideSweepInterval = 5 * time.Second
	// overrideSweepBatch bounds the index entries one pass reads.
	overrideSweepBatch = 100
	expiryDigits       = 20
	// Objects in the index: w/<ws>, m/<ws>/<member>, k/<ws>/<key>.
	objWorkspace = "w/"
	objMember    = "m/"
	objKey       = "k/"
	auditExpired = "limit_override.expired"
)

// janitor is who the audit log names for a revert.
var janitor = &principal{subject: "keystore", credential: "override_expiry"}

func workspaceObject(ws string) string { return objWorkspace + ws }
func memberObject(ws, m string) string { return objMember + ws + "/" + m }
func keyObject(ws, id string) string   { return objKey + ws + "/" + id }
func overrideIndexKey(t time.Time, obj string) string {
	v := strconv.FormatInt(t.UnixNano(), 10)
	return overridesDir + strings.Repeat("0", expiryDigits-len(v)) + v + "/" + obj
}

// overrideExpiry is when o ends; zero when there is none.
func overrideExpiry(o *typev1.Override) time.Time {
	if o == nil || o.GetExpireTime() == nil {
		return time.Time{}
	}
	return o.GetExpireTime().AsTime()
}

// overrideIndexOps moves obj's index entry from old's expiry to next's.
func overrideIndexOps(obj string, old, next *typev1.Override) []clientv3.Op {
	ot, nt := overrideExpiry(old), overrideExpiry(next)
	if ot.Equal(nt) {
		return nil
	}
	var ops []clientv3.Op
	if !ot.IsZero() {
		ops = append(ops, clientv3.OpDelete(overrideIndexKey(ot, obj)))
	}
	if !nt.IsZero() {
		ops = append(ops, clientv3.OpPut(overrideIndexKey(nt, obj), ""))
	}
	return ops
}

// Run does the keystore's background work until ctx ends: it keeps the
// count of imported keys fresh and clears expired overrides. Every replica
// may run it: the janitor's writes are compare-and-swap, so concurrent
// passes revert and audit each override once.
func (s *Server) Run(ctx context.Context) error {
	done := make(chan struct{})
	go func() {
		defer close(done)
		s.followLegacyCount(ctx)
	}()
	s.sweepOverrides(ctx)
	clock.Every(ctx, overrideSweepInterval, func() { s.sweepOverrides(ctx) })
	<-done
	return nil
}

func (s *Server) sweepOverrides(ctx context.Context) {
	sctx, cancel := context.WithTimeout(ctx, s.storageTimeout)
	defer cancel()
	if _, err := s.ExpireOverrides(sctx); err != nil && ctx.Err() == nil {
		s.log.WarnContext(ctx, "clearing expired limit overrides failed; retrying next pass", "err", err)
	}
}

// ExpireOverrides clears the overrides expired by the keystore's clock from
// their objects, auditing each revert, and returns how many it reverted.
// Run calls it periodically.
func (s *Server) ExpireOverrides(ctx context.Context) (int, error) {
	now := s.clock.Now()
	end := overrideIndexKey(now.Add(time.Nanosecond), "")
	n := 0
	for {
		// Every entry read is reverted or dropped, so the next read starts
		// past it.
		resp, err := s.etcd.Get(ctx, overridesDir, clientv3.WithRange(end), clientv3.WithLimit(overrideSweepBatch))
		if err != nil {
			return n, fmt.Errorf("expired overrides: %w", err)
		}
		for _, kv := range resp.Kvs {
			reverted, err := s.expireEntry(ctx, kv.Key, kv.ModRevision)
			if err != nil {
				return n, err
			}
			if reverted {
				n++
			}
		}
		if !resp.More {
			return n, nil
		}
	}
}

// expireEntry handles one index entry.
func (s *Server) expireEntry(ctx context.Context, key []byte, rev int64) (bool, error) {
	rest := strings.TrimPrefix(string(key), overridesDir)
	digits, obj, ok := strings.Cut(rest, "/")
	nanos, err := strconv.ParseInt(digits, 10, 64)
	if !ok || err != nil {
		s.log.WarnContext(ctx, "dropping a malformed override index entry", "entry", rest)
		if _, err := s.etcd.Delete(ctx, string(key)); err != nil {
			return false, fmt.Errorf("expired overrides: %w", err)
		}
		return false, nil
	}
	return s.expireOverride(ctx, obj, time.Unix(0, nanos), string(key), rev)
}

// storedObject is one object that may hold an override, as read for the
// janitor: the override, and how to write the object without it.
type storedObject struct {
	ws, member, key string
	override        *typev1.Override
	rev             int64
	// clear returns the writes of the object without its override and
	// the audit's before and after.
	clear func(now time.Time) (clientv3.Op, proto.Message, proto.Message, error)
}

// expireOverride reverts obj's override if it is the one that expired at
// exp, in a transaction on the object's revision; an index entry whose
// object no longer holds that override is only deleted.
func (s *Server) expireOverride(ctx context.Context, obj string, exp time.Time, idx string, idxRev int64) (bool, error) {
	for {
		o, err := s.readObject(ctx, obj)
		if err != nil {
			return false, err
		}
		dropIndex := clientv3.Compare(clientv3.ModRevision(idx), "=", idxRev)
		if o == nil || !overrideExpiry(o.override).Equal(exp) {
			// Stale: the object or its override is gone or changed.
			_, err := s.etcd.Txn(ctx).If(dropIndex).Then(clientv3.OpDelete(idx)).Commit()
			if err != nil {
				return false, fmt.Errorf("expired overrides: %w", err)
			}
			return false, nil
		}
		now := s.clock.Now()
		put, before, after, err := o.clear(now)
		if err != nil {
			return false, err
		}
		audit, err := s.auditOps(janitor, o.ws, o.key, auditExpired, before, after)
		if err != nil {
			return false, err
		}
		ops := append([]clientv3.Op{put, clientv3.OpDelete(idx)}, audit...)
		if o.key == "" {
			ops = append(ops, levelMarkerOp(o.ws, o.member))
		}
		objKeyName := string(put.KeyBytes())
		tx, err := s.etcd.Txn(ctx).If(
			clientv3.Compare(clientv3.ModRevision(objKeyName), "=", o.rev),
		).Then(ops...).Commit()
		if err != nil {
			return false, fmt.Errorf("expired overrides: %w", err)
		}
		if tx.Succeeded {
			s.changes.Add(ctx, 1)
			return true, nil
		}
		// Changed meanwhile (another janitor, or a caller): look again.
	}
}

// readObject reads an indexed object; nil when it no longer exists.
func (s *Server) readObject(ctx context.Context, obj string) (*storedObject, error) {
	switch {
	case strings.HasPrefix(obj, objWorkspace):
		return s.readWorkspaceObject(ctx, strings.TrimPrefix(obj, objWorkspace))
	case strings.HasPrefix(obj, objMember):
		ws, m, _ := strings.Cut(strings.TrimPrefix(obj, objMember), "/")
		return s.readMemberObject(ctx, ws, m)
	case strings.HasPrefix(obj, objKey):
		ws, id, _ := strings.Cut(strings.TrimPrefix(obj, objKey), "/")
		return s.readKeyObject(ctx, ws, id)
	}
	return nil, nil
}

func (s *Server) readWorkspaceObject(ctx context.Context, ws string) (*storedObject, error) {
	resp, err := s.etcd.Get(ctx, workspaceKey(ws))
	if err != nil || len(resp.Kvs) == 0 {
		return nil, wrapErr("read workspace", err)
	}
	w := &keystorev1.Workspace{}
	if err := unmarshal(resp.Kvs[0], w); err != nil {
		return nil, err
	}
	return &storedObject{ws: ws, override: w.GetLimitOverride(), rev: resp.Kvs[0].ModRevision,
		clear: func(now time.Time) (clientv3.Op, proto.Message, proto.Message, error) {
			next := proto.Clone(w).(*keystorev1.Workspace)
			next.LimitOverride, next.UpdateTime = nil, timestamppb.New(now)
			val, err := marshal(next)
			return clientv3.OpPut(workspaceKey(ws), val), w, next, err
		}}, nil
}

func (s *Server) readMemberObject(ctx context.Context, ws, member string) (*storedObject, error) {
	resp, err := s.etcd.Get(ctx, memberKey(ws, member))
	if err != nil || len(resp.Kvs) == 0 {
		return nil, wrapErr("read member", err)
	}
	m := &keystorev1.Member{}
	if err := unmarshal(resp.Kvs[0], m); err != nil {
		return nil, err
	}
	return &storedObject{ws: ws, member: member, override: m.GetLimitOverride(), rev: resp.Kvs[0].ModRevision,
		clear: func(now time.Time) (clientv3.Op, proto.Message, proto.Message, error) {
			next := proto.Clone(m).(*keystorev1.Member)
			next.LimitOverride, next.UpdateTime = nil, timestamppb.New(now)
			val, err := marshal(next)
			return clientv3.OpPut(memberKey(ws, member), val), m, next, err
		}}, nil
}

func (s *Server) readKeyObject(ctx context.Context, ws, id string) (*storedObject, error) {
	sk, err := s.getKey(ctx, ws, id)
	if errors.Is(err, ErrNotFound) {
		return nil, nil
	}
	if err != nil {
		return nil, err
	}
	return &storedObject{ws: ws, key: id, override: sk.key.GetLimitOverride(), rev: sk.rev,
		clear: func(now time.Time) (clientv3.Op, proto.Message, proto.Message, error) {
			next := proto.Clone(sk.key).(*keystorev1.Key)
			next.LimitOverride, next.UpdateTime = nil, timestamppb.New(now)
			next.Etag = ""
			val, err := encodeKey(&storedKey{key: next, hash: sk.hash, prevHash: sk.prevHash})
			return clientv3.OpPut(keyKey(ws, id), val), sk.key, next, err
		}}, nil
}

// wrapErr wraps a storage error; nil stays nil (nothing found).
func wrapErr(what string, err error) error {
	if err == nil {
		return nil
	}
	return fmt.Errorf("%s: %w", what, err)
}
