package keystore

import (
	"context"
	"encoding/base64"
	"encoding/hex"
	"fmt"
	"strconv"
	"time"

	"go.etcd.io/etcd/api/v3/mvccpb"
	clientv3 "go.etcd.io/etcd/client/v3"
	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/types/known/timestamppb"

	keystorev1 "github.com/keygate/keygate/gen/keygate/keystore/v1"
	"github.com/keygate/keygate/pkg/keyformat"
)

// etcd layout. Keys live under their workspace so that a list is one range
// read; id/ maps a key id to its workspace for VerifyKey.
const (
	prefix        = "/keygate/keystore/"
	workspacesDir = prefix + "ws/"
	countsDir     = prefix + "count/"
	membersDir    = prefix + "member/"
	keysDir       = prefix + "key/"
	idsDir        = prefix + "id/"
	namesDir      = prefix + "name/"
	auditDir      = prefix + "audit/"
	auditByKeyDir = prefix + "auditkey/"
	providersDir  = prefix + "provider/"
	modelsDir     = prefix + "model/"
	// usedDir holds each key's last-used time apart from the key record, so
	// that recording use changes neither the key's etag nor the key change
	// stream, which watches keysDir only.
	usedDir = prefix + "used/"
	// levelDir holds one marker per workspace and member, rewritten in the
	// same transaction as any change to that workspace's or member's
	// limits, credits or settings; the key change stream watches it too
	// and tells caches to reload the levels (TYPE_WORKSPACE_UPDATED,
	// TYPE_MEMBER_UPDATED).
	levelDir = prefix + "level/"
	// overridesDir indexes every stored timed override by its expiry
	// (overrides/<unix nanos, zero-padded>/<object>), so the janitor that
	// clears expired ones reads only those due.
	overridesDir = prefix + "overrides/"
	// legacyDir maps the SHA-256 of an imported key's secret to
	// <workspace>/<key id>: how VerifyKey finds a key whose secret carries
	// no key id.
	legacyDir      = prefix + "imported/"
	recordVersion  = 1
	hashLen        = len(keyformat.Hash{})
	keyRecordFixed = 1 + 2*hashLen
)

func workspaceKey(ws string) string  { return workspacesDir + ws }
func countKey(ws string) string      { return countsDir + ws }
func memberKey(ws, m string) string  { return membersDir + ws + "/" + m }
func membersPrefix(ws string) string { return membersDir + ws + "/" }
func keyKey(ws, id string) string    { return keysDir + ws + "/" + id }
func keysPrefix(ws string) string    { return keysDir + ws + "/" }
func usedKey(ws, id string) string   { return usedDir + ws + "/" + id }
func usedPrefix(ws string) string    { return usedDir + ws + "/" }
func idKey(id string) string         { return idsDir + id }
func nameKey(ws, name string) string { return namesDir + ws + "/" + name }

// levelMarkerOp marks a change to the workspace ws (member "") or to one
// of its members; every writer of a workspace or member object adds it to
// its transaction.
func levelMarkerOp(ws, member string) clientv3.Op {
	k := levelDir + ws + "/w"
	if member != "" {
		k = levelDir + ws + "/m/" + member
	}
	return clientv3.OpPut(k, "")
}
func providerKey(id string) string      { return providersDir + id }
func modelKey(id string) string         { return modelsDir + id }
func legacyKey(h keyformat.Hash) string { return legacyDir + hex.EncodeToString(h[:]) }
func auditPrefix(ws, key string) string {
	if key != "" {
		return auditByKeyDir + ws + "/" + key + "/"
	}
	return auditDir + ws + "/"
}

// storedKey is a key record as kept in etcd: the public Key plus the hashes
// of its current and (during a rotation grace) previous secret.
type storedKey struct {
	key      *keystorev1.Key
	hash     keyformat.Hash
	prevHash keyformat.Hash
	rev      int64
}

// encodeKey lays out version | hash | prevHash | Key protobuf. Derived
// fields (state, etag) are not stored.
func encodeKey(sk *storedKey) (string, error) {
	k := proto.Clone(sk.key).(*keystorev1.Key)
	k.State = keystorev1.KeyState_KEY_STATE_UNSPECIFIED
	k.Etag = ""
	k.LastUsedTime = nil // kept under usedDir
	b, err := proto.Marshal(k)
	if err != nil {
		return "", fmt.Errorf("encode key: %w", err)
	}
	out := make([]byte, 0, keyRecordFixed+len(b))
	out = append(out, recordVersion)
	out = append(out, sk.hash[:]...)
	out = append(out, sk.prevHash[:]...)
	out = append(out, b...)
	return string(out), nil
}

func decodeKey(kv *mvccpb.KeyValue, now time.Time) (*storedKey, error) {
	v := kv.Value
	if len(v) < keyRecordFixed || v[0] != recordVersion {
		return nil, fmt.Errorf("decode key %q: bad record", kv.Key)
	}
	sk := &storedKey{key: &keystorev1.Key{}, rev: kv.ModRevision}
	copy(sk.hash[:], v[1:1+hashLen])
	copy(sk.prevHash[:], v[1+hashLen:keyRecordFixed])
	if err := proto.Unmarshal(v[keyRecordFixed:], sk.key); err != nil {
		return nil, fmt.Errorf("decode key %q: %w", kv.Key, err)
	}
	sk.key.Etag = strconv.FormatInt(kv.ModRevision, 10)
	sk.key.State = keyState(sk.key, now)
	return sk, nil
}

// keyState derives the state: expired wins over disabled.
func keyState(k *keystorev1.Key, now time.Time) keystorev1.KeyState {
	switch {
	case k.GetExpireTime() != nil && !k.GetExpireTime().AsTime().After(now):
		return keystorev1.KeyState_KEY_STATE_EXPIRED
	case !k.GetEnabled():
		return keystorev1.KeyState_KEY_STATE_DISABLED
	default:
		return keystorev1.KeyState_KEY_STATE_ACTIVE
	}
}

func marshal(m proto.Message) (string, error) {
	b, err := proto.Marshal(m)
	if err != nil {
		return "", fmt.Errorf("encode: %w", err)
	}
	return string(b), nil
}

func unmarshal(kv *mvccpb.KeyValue, m proto.Message) error {
	if err := proto.Unmarshal(kv.Value, m); err != nil {
		return fmt.Errorf("decode %q: %w", kv.Key, err)
	}
	return nil
}

// getKey reads a key of a workspace with its last-used time, in one
// round trip.
func (s *Server) getKey(ctx context.Context, ws, id string) (*storedKey, error) {
	if !keyformat.ValidID(id) {
		return nil, fmt.Errorf("key %q: %w", id, ErrNotFound)
	}
	resp, err := s.etcd.Txn(ctx).Then(
		clientv3.OpGet(keyKey(ws, id)),
		clientv3.OpGet(usedKey(ws, id)),
	).Commit()
	if err != nil {
		return nil, fmt.Errorf("get key: %w", err)
	}
	kvs := resp.Responses[0].GetResponseRange().Kvs
	if len(kvs) == 0 {
		return nil, fmt.Errorf("key %q: %w", id, ErrNotFound)
	}
	sk, err := decodeKey(kvs[0], s.clock.Now())
	if err != nil {
		return nil, err
	}
	if used := resp.Responses[1].GetResponseRange().Kvs; len(used) > 0 {
		if sk.key.LastUsedTime, err = decodeUsed(used[0]); err != nil {
			return nil, err
		}
	}
	return sk, nil
}

// getWorkspace reads a workspace with its key count.
func (s *Server) getWorkspace(ctx context.Context, ws string) (*keystorev1.Workspace, int64, error) {
	resp, err := s.etcd.Txn(ctx).Then(
		clientv3.OpGet(workspaceKey(ws)),
		clientv3.OpGet(countKey(ws)),
	).Commit()
	if err != nil {
		return nil, 0, fmt.Errorf("get workspace: %w", err)
	}
	return decodeWorkspace(ws, resp.Responses[0].GetResponseRange().Kvs, resp.Responses[1].GetResponseRange().Kvs)
}

// decodeWorkspace reads the results of a get of a workspace and of its key
// count; it returns the count's revision.
func decodeWorkspace(ws string, wkv, ckv []*mvccpb.KeyValue) (*keystorev1.Workspace, int64, error) {
	if len(wkv) == 0 {
		return nil, 0, fmt.Errorf("workspace %q: %w", ws, ErrNotFound)
	}
	w := &keystorev1.Workspace{}
	if err := unmarshal(wkv[0], w); err != nil {
		return nil, 0, err
	}
	w.Etag = strconv.FormatInt(wkv[0].ModRevision, 10)
	var countRev int64
	if len(ckv) > 0 {
		n, err := strconv.Atoi(string(ckv[0].Value))
		if err != nil {
			return nil, 0, fmt.Errorf("workspace %q: bad key count: %w", ws, err)
		}
		w.KeyCount = int32(n)
		countRev = ckv[0].ModRevision
	}
	return w, countRev, nil
}

func (s *Server) memberRole(ctx context.Context, ws, member string) (keystorev1.Role, error) {
	resp, err := s.etcd.Get(ctx, memberKey(ws, member))
	if err != nil {
		return 0, fmt.Errorf("get member: %w", err)
	}
	if len(resp.Kvs) == 0 {
		return 0, fmt.Errorf("member %q: %w", member, ErrNotFound)
	}
	m := &keystorev1.Member{}
	if err := unmarshal(resp.Kvs[0], m); err != nil {
		return 0, err
	}
	return m.GetRole(), nil
}

// auditOps returns the puts that append one audit event, listed per
// workspace and, for key events, per key.
func (s *Server) auditOps(p *principal, ws, key, action string, oldV, newV proto.Message) ([]clientv3.Op, error) {
	now := s.clock.Now()
	ev := &keystorev1.AuditEvent{
		Id:         s.auditID(now),
		Workspace:  ws,
		Key:        key,
		Actor:      p.subject,
		Credential: p.credential,
		Action:     action,
		Time:       timestamppb.New(now),
		OldValue:   auditJSON(oldV),
		NewValue:   auditJSON(newV),
	}
	v, err := marshal(ev)
	if err != nil {
		return nil, err
	}
	ops := []clientv3.Op{clientv3.OpPut(auditPrefix(ws, "")+ev.Id, v)}
	if key != "" {
		ops = append(ops, clientv3.OpPut(auditPrefix(ws, key)+ev.Id, v))
	}
	return ops, nil
}

// auditID sorts newest first in ascending key order, so a page is a plain
// limited range read: inverted time, then an inverted per-process sequence
// for events within the same instant, then this replica's random suffix,
// so that two replicas writing in the same nanosecond never collide.
func (s *Server) auditID(now time.Time) string {
	t := ^uint64(now.UnixNano())
	seq := ^s.auditSeq.Add(1)
	return fmt.Sprintf("%016x%08x%08x", t, seq, s.auditReplica)
}

// pageToken encodes the last item of a page; the next page starts after it.
func pageToken(last string) string { return base64.RawURLEncoding.EncodeToString([]byte(last)) }

func parsePageToken(tok string, valid func(string) bool) (string, error) {
	if tok == "" {
		return "", nil
	}
	b, err := base64.RawURLEncoding.DecodeString(tok)
	if err != nil || !valid(string(b)) {
		return "", invalid("page_token", "not a token from a previous page")
	}
	return string(b), nil
}

// listPage reads a listing's page size and token: the size (default 50,
// at most 1000) and the last item of the previous page, checked by valid.
func listPage(n int32, token string, valid func(string) bool) (int, string, error) {
	size, err := pageSize(n)
	if err != nil {
		return 0, "", err
	}
	after, err := parsePageToken(token, valid)
	return size, after, err
}

func pageSize(n int32) (int, error) {
	switch {
	case n < 0:
		return 0, invalid("page_size", "must not be negative")
	case n == 0:
		return 50, nil
	case n > 1000:
		return 1000, nil
	}
	return int(n), nil
}
