package keystore

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"fmt"
	"strconv"
	"strings"
	"time"
	"unicode"
	"unicode/utf8"

	clientv3 "go.etcd.io/etcd/client/v3"
	"google.golang.org/protobuf/types/known/timestamppb"

	keystorev1 "github.com/keygate/keygate/gen/keygate/keystore/v1"
	"github.com/keygate/keygate/pkg/keyformat"
)

// Legacy keys come from a system keygate replaces (ImportKeys): only the
// SHA-256 of each secret is known, and clients keep sending the secret in
// that system's format. VerifyKey finds them by that hash under legacyDir.

const (
	// legacyUnknown: the count of imported keys is not known (Run is not
	// following it), so every unprefixed secret is looked up.
	legacyUnknown = -1
	maxImport     = 100
	// importChunk keys are written per transaction: each takes six puts
	// (key, id, name, hash, two audit entries) of etcd's 128 per
	// transaction, beside the count.
	importChunk      = 20
	maxPartialLegacy = 4
)

// verifyLegacy verifies a secret without keygate's prefix against the
// imported keys; with none imported it reads nothing.
func (s *Server) verifyLegacy(ctx context.Context, secret string) (*verifiedKey, keyformat.Hash, error) {
	var h keyformat.Hash
	// What could not be an imported secret is refused without a read, by
	// the same rule the edge applies before asking.
	if !keyformat.PlausibleLegacy(secret) || s.legacyKeys.Load() == 0 {
		return nil, h, ErrInvalidKey
	}
	h = sha256.Sum256([]byte(secret))
	resp, err := s.etcd.Get(ctx, legacyKey(h))
	if err != nil {
		return nil, h, fmt.Errorf("verify: %w", err)
	}
	if len(resp.Kvs) == 0 {
		return nil, h, ErrInvalidKey
	}
	// imported/<sha256> holds <workspace>/<key id>/<owner>.
	ws, rest, _ := strings.Cut(string(resp.Kvs[0].Value), "/")
	id, owner, _ := strings.Cut(rest, "/")
	vk, err := s.loadVerified(ctx, ws, id, owner, true)
	if err != nil {
		return nil, h, err
	}
	if !vk.key.GetLegacy() {
		return nil, h, ErrInvalidKey
	}
	return vk, h, s.checkSecret(vk, h)
}

// followLegacyCount keeps s.legacyKeys equal to the number of imported
// keys in etcd until ctx ends; while it cannot, the count is unknown.
func (s *Server) followLegacyCount(ctx context.Context) {
	for {
		err := s.watchLegacyCount(ctx)
		s.legacyKeys.Store(legacyUnknown)
		if ctx.Err() != nil {
			return
		}
		s.log.WarnContext(ctx, "following the count of imported keys failed; looking every legacy secret up until it recovers", "err", err)
		select {
		case <-ctx.Done():
			return
		case <-time.After(time.Second):
		}
	}
}

func (s *Server) watchLegacyCount(ctx context.Context) error {
	count := func() (int64, error) {
		resp, err := s.etcd.Get(ctx, legacyDir, clientv3.WithPrefix(), clientv3.WithCountOnly())
		if err != nil {
			return 0, fmt.Errorf("count imported keys: %w", err)
		}
		s.legacyKeys.Store(resp.Count)
		return resp.Header.Revision, nil
	}
	rev, err := count()
	if err != nil {
		return err
	}
	wctx, cancel := context.WithCancel(clientv3.WithRequireLeader(ctx))
	defer cancel()
	for wr := range s.etcd.Watch(wctx, legacyDir, clientv3.WithPrefix(), clientv3.WithRev(rev+1)) {
		if err := wr.Err(); err != nil {
			return err
		}
		if _, err := count(); err != nil {
			return err
		}
	}
	return ctx.Err()
}

// importKeys stores keys of another system by their secrets' hashes.
// Every key is validated before anything is written; a hash already
// imported into the workspace answers with that key, so a call that
// failed part-way is completed by sending it again.
func (s *Server) importKeys(ctx context.Context, p *principal, req *keystorev1.ImportKeysRequest) (*keystorev1.ImportKeysResponse, error) {
	ws := req.GetWorkspace()
	if err := p.inWorkspace(ws); err != nil {
		return nil, err
	}
	if !p.manager() {
		return nil, fmt.Errorf("%w: owners and admins import keys", ErrPermissionDenied)
	}
	in := req.GetKeys()
	if len(in) == 0 || len(in) > maxImport {
		return nil, invalid("keys", "send 1 to %d keys, got %d", maxImport, len(in))
	}
	sks, err := s.checkImport(ctx, p, ws, in)
	if err != nil {
		return nil, err
	}
	out, fresh, err := s.existingImports(ctx, ws, sks)
	if err != nil {
		return nil, err
	}
	if err := s.checkImportNames(ctx, ws, fresh); err != nil {
		return nil, err
	}
	for len(fresh) > 0 {
		n := min(importChunk, len(fresh))
		if err := s.insertImported(ctx, p, ws, fresh[:n]); err != nil {
			return nil, err
		}
		fresh = fresh[n:]
	}
	s.legacyKeys.CompareAndSwap(0, int64(len(sks)))
	keys := make([]*keystorev1.Key, len(sks))
	for i, sk := range sks {
		keys[i] = sk.key
		if e, ok := out[sk.hash]; ok {
			keys[i] = e
		}
	}
	return &keystorev1.ImportKeysResponse{Keys: keys}, nil
}

// checkImport validates every imported key and returns them as keys to
// store.
func (s *Server) checkImport(ctx context.Context, p *principal, ws string, in []*keystorev1.ImportedKey) ([]*storedKey, error) {
	names, hashes := map[string]bool{}, map[keyformat.Hash]bool{}
	owners := map[string]bool{}
	now := s.clock.Now()
	out := make([]*storedKey, 0, len(in))
	for i, ik := range in {
		f := "keys[" + strconv.Itoa(i) + "]"
		if err := validName(f+".name", ik.GetName()); err != nil {
			return nil, err
		}
		if names[ik.GetName()] {
			return nil, invalid(f+".name", "named twice in this import")
		}
		names[ik.GetName()] = true
		h, err := parseSHA256(f+".secret_sha256", ik.GetSecretSha256())
		if err != nil {
			return nil, err
		}
		if hashes[h] {
			return nil, invalid(f+".secret_sha256", "the same secret is imported twice")
		}
		hashes[h] = true
		pk := ik.GetPartialKey()
		if !utf8.ValidString(pk) || strings.ContainsFunc(pk, unicode.IsControl) || len(pk) > keyformat.MaxLegacyLen {
			return nil, invalid(f+".partial_key", "must be printable text")
		}
		if r := []rune(pk); len(r) > maxPartialLegacy {
			// Shown as "…" and the last characters: no more of the secret
			// is kept, whatever was sent ("sk-...stuv" keeps "stuv").
			pk = string(r[len(r)-maxPartialLegacy:])
		}
		if pk != "" {
			pk = "…" + pk
		}
		ks := keySettings{expire: ik.GetExpireTime(), allowedModels: ik.GetAllowedModels(), labels: ik.GetLabels(),
			global: ik.GetGlobalLimits(), modelLimits: ik.GetModelLimits(), tokenCap: ik.GetTokenCap(), budget: ik.GetBudget()}
		if err := prefixField(f+".", s.validateKeySettings(ctx, ks, nil)); err != nil {
			return nil, err
		}
		owner := ik.GetOwner()
		if owner == "" {
			owner = p.subject
		}
		if !owners[owner] {
			if err := prefixField(f+".", s.checkOwner(ctx, p, ws, owner, keystorev1.KeyKind_KEY_KIND_STANDARD)); err != nil {
				return nil, err
			}
			owners[owner] = true
		}
		k := &keystorev1.Key{
			Id: keyformat.NewID(), Workspace: ws, Name: ik.GetName(), Kind: keystorev1.KeyKind_KEY_KIND_STANDARD,
			Owner: owner, Creator: p.subject, CreateTime: timestamppb.New(now), UpdateTime: timestamppb.New(now),
			ExpireTime: ik.GetExpireTime(), Enabled: true, PartialKey: pk, AllowedModels: ik.GetAllowedModels(),
			Labels: ik.GetLabels(), GlobalLimits: ik.GetGlobalLimits(), ModelLimits: ik.GetModelLimits(),
			TokenCap: normCap(ik.GetTokenCap()), Budget: normBudget(ik.GetBudget()), Legacy: true,
		}
		k.State = keyState(k, now)
		out = append(out, &storedKey{key: k, hash: h})
	}
	return out, nil
}

// parseSHA256 reads a lower-case hex SHA-256. Anything else is refused
// without echoing it: it may be a plaintext secret sent by mistake.
func parseSHA256(field, v string) (keyformat.Hash, error) {
	var h keyformat.Hash
	b, err := hex.DecodeString(v)
	if err != nil || len(b) != len(h) || strings.ToLower(v) != v {
		return h, invalid(field, "must be the SHA-256 of the secret as 64 lower-case hex digits, never the secret itself")
	}
	copy(h[:], b)
	return h, nil
}

// prefixField puts prefix before a FieldError's field.
func prefixField(prefix string, err error) error {
	if fe, ok := err.(*FieldError); ok {
		return &FieldError{Field: prefix + fe.Field, Reason: fe.Reason}
	}
	return err
}

// existingImports looks every hash up: one already imported into ws is
// answered with its key; into another workspace, it is refused.
func (s *Server) existingImports(ctx context.Context, ws string, sks []*storedKey) (map[keyformat.Hash]*keystorev1.Key, []*storedKey, error) {
	ops := make([]clientv3.Op, len(sks))
	for i, sk := range sks {
		ops[i] = clientv3.OpGet(legacyKey(sk.hash))
	}
	resp, err := s.etcd.Txn(ctx).Then(ops...).Commit()
	if err != nil {
		return nil, nil, fmt.Errorf("import keys: %w", err)
	}
	have := map[keyformat.Hash]*keystorev1.Key{}
	var fresh []*storedKey
	for i, sk := range sks {
		kvs := resp.Responses[i].GetResponseRange().Kvs
		if len(kvs) == 0 {
			fresh = append(fresh, sk)
			continue
		}
		ows, rest, _ := strings.Cut(string(kvs[0].Value), "/")
		id, _, _ := strings.Cut(rest, "/")
		if ows != ws {
			return nil, nil, fmt.Errorf("keys[%d]: this secret is already imported into another workspace: %w", i, ErrAlreadyExists)
		}
		e, err := s.getKey(ctx, ws, id)
		if err != nil {
			return nil, nil, err
		}
		have[sk.hash] = e.key
	}
	return have, fresh, nil
}

// checkImportNames refuses names taken in the workspace before anything is
// written (the writes check again).
func (s *Server) checkImportNames(ctx context.Context, ws string, sks []*storedKey) error {
	if len(sks) == 0 {
		return nil
	}
	ops := make([]clientv3.Op, len(sks))
	for i, sk := range sks {
		ops[i] = clientv3.OpGet(nameKey(ws, sk.key.GetName()), clientv3.WithCountOnly())
	}
	resp, err := s.etcd.Txn(ctx).Then(ops...).Commit()
	if err != nil {
		return fmt.Errorf("import keys: %w", err)
	}
	for i, r := range resp.Responses {
		if r.GetResponseRange().Count > 0 {
			return fmt.Errorf("key named %q in workspace %q: %w", sks[i].key.GetName(), ws, ErrAlreadyExists)
		}
	}
	return nil
}

// insertImported writes up to importChunk new keys in one transaction,
// counted against the workspace's cap as insertKey does.
func (s *Server) insertImported(ctx context.Context, p *principal, ws string, sks []*storedKey) error {
	var puts []clientv3.Op
	var cmps []clientv3.Cmp
	var elses []clientv3.Op
	for _, sk := range sks {
		k := sk.key
		val, err := encodeKey(sk)
		if err != nil {
			return err
		}
		audit, err := s.auditOps(p, ws, k.GetId(), "key.import", nil, k)
		if err != nil {
			return err
		}
		puts = append(puts, clientv3.OpPut(keyKey(ws, k.GetId()), val),
			clientv3.OpPut(idKey(k.GetId()), ws+"/"+k.GetOwner()),
			clientv3.OpPut(nameKey(ws, k.GetName()), k.GetId()),
			clientv3.OpPut(legacyKey(sk.hash), ws+"/"+k.GetId()+"/"+k.GetOwner()))
		puts = append(puts, audit...)
		cmps = append(cmps, clientv3.Compare(clientv3.CreateRevision(nameKey(ws, k.GetName())), "=", 0),
			clientv3.Compare(clientv3.CreateRevision(legacyKey(sk.hash)), "=", 0),
			clientv3.Compare(clientv3.CreateRevision(idKey(k.GetId())), "=", 0))
		elses = append(elses, clientv3.OpGet(nameKey(ws, k.GetName()), clientv3.WithCountOnly()),
			clientv3.OpGet(legacyKey(sk.hash), clientv3.WithCountOnly()))
	}
	for {
		w, countRev, err := s.getWorkspace(ctx, ws)
		if err != nil {
			return err
		}
		if int(w.GetKeyCount())+len(sks) > int(w.GetMaxKeys()) {
			return fmt.Errorf("workspace %q (max_keys=%d, %d keys) cannot take %d more: %w", ws, w.GetMaxKeys(), w.GetKeyCount(), len(sks), ErrKeyCap)
		}
		wsRev, _ := strconv.ParseInt(w.GetEtag(), 10, 64)
		resp, err := s.etcd.Txn(ctx).If(append([]clientv3.Cmp{
			clientv3.Compare(clientv3.ModRevision(countKey(ws)), "=", countRev),
			clientv3.Compare(clientv3.ModRevision(workspaceKey(ws)), "=", wsRev),
		}, cmps...)...).Then(append([]clientv3.Op{
			clientv3.OpPut(countKey(ws), strconv.Itoa(int(w.GetKeyCount())+len(sks))),
		}, puts...)...).Else(elses...).Commit()
		if err != nil {
			return fmt.Errorf("import keys: %w", err)
		}
		if resp.Succeeded {
			for _, sk := range sks {
				sk.key.Etag = strconv.FormatInt(resp.Header.Revision, 10)
			}
			s.changes.Add(ctx, int64(len(sks)))
			return nil
		}
		for i, r := range resp.Responses {
			if r.GetResponseRange().Count > 0 {
				what := "a key named " + strconv.Quote(sks[i/2].key.GetName())
				if i%2 == 1 {
					what = "the secret of " + strconv.Quote(sks[i/2].key.GetName())
				}
				return fmt.Errorf("%s exists already (send the import again to complete it): %w", what, ErrAlreadyExists)
			}
		}
	}
}
