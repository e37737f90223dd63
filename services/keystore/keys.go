package keystore

import (
	"context"
	"errors"
	"fmt"
	"maps"
	"slices"
	"strconv"
	"strings"

	"go.etcd.io/etcd/api/v3/mvccpb"
	clientv3 "go.etcd.io/etcd/client/v3"
	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/reflect/protoreflect"
	"google.golang.org/protobuf/types/known/timestamppb"

	keystorev1 "github.com/keygate/keygate/gen/keygate/keystore/v1"
	typev1 "github.com/keygate/keygate/gen/keygate/type/v1"
	"github.com/keygate/keygate/pkg/keyformat"
)

// ErrKeyCap means the workspace holds its maximum number of keys.
var ErrKeyCap = fmt.Errorf("%w: the workspace holds its maximum number of keys; delete a key or raise max_keys", ErrPrecondition)

func (s *Server) createKey(ctx context.Context, p *principal, req *keystorev1.CreateKeyRequest) (*keystorev1.CreateKeyResponse, error) {
	kind, owner, err := s.checkCreate(ctx, p, req)
	if err != nil {
		return nil, err
	}
	fkind := keyformat.Standard
	if kind == keystorev1.KeyKind_KEY_KIND_ADMIN {
		fkind = keyformat.Admin
	}
	id := keyformat.NewID()
	text, fk := keyformat.New(fkind, id)
	now := s.clock.Now()
	k := &keystorev1.Key{
		Id: id, Workspace: req.GetWorkspace(), Name: req.GetName(), Kind: kind, Owner: owner, Creator: p.subject,
		CreateTime: timestamppb.New(now), UpdateTime: timestamppb.New(now), ExpireTime: req.GetExpireTime(), Enabled: !req.GetDisabled(),
		PartialKey: keyformat.Partial(text), AllowedModels: req.GetAllowedModels(), Labels: req.GetLabels(),
		GlobalLimits: req.GetGlobalLimits(), ModelLimits: req.GetModelLimits(),
		TokenCap: normCap(req.GetTokenCap()), Budget: normBudget(req.GetBudget()),
		ReportLimits: normPolicy(req.GetReportLimits()), LimitOverride: normOverride(req.GetLimitOverride()),
	}
	k.State = keyState(k, now)
	if err := s.insertKey(ctx, p, &storedKey{key: k, hash: fk.Hash()}); err != nil {
		return nil, err
	}
	return &keystorev1.CreateKeyResponse{Key: k, Secret: text}, nil
}

// checkCreate validates a create request and the caller's right to make
// it; it returns the key's kind and owner.
func (s *Server) checkCreate(ctx context.Context, p *principal, req *keystorev1.CreateKeyRequest) (keystorev1.KeyKind, string, error) {
	ws := req.GetWorkspace()
	if err := p.inWorkspace(ws); err != nil {
		return 0, "", err
	}
	if err := validName("name", req.GetName()); err != nil {
		return 0, "", err
	}
	kind := req.GetKind()
	switch kind {
	case keystorev1.KeyKind_KEY_KIND_UNSPECIFIED:
		kind = keystorev1.KeyKind_KEY_KIND_STANDARD
	case keystorev1.KeyKind_KEY_KIND_STANDARD, keystorev1.KeyKind_KEY_KIND_ADMIN:
	default:
		return 0, "", invalid("kind", "must be KEY_KIND_STANDARD or KEY_KIND_ADMIN")
	}
	owner := req.GetOwner()
	if owner == "" {
		owner = p.subject
	}
	if kind == keystorev1.KeyKind_KEY_KIND_ADMIN && !p.manager() {
		return 0, "", fmt.Errorf("%w: only owners and admins create admin keys", ErrPermissionDenied)
	}
	if owner != p.subject && !p.manager() {
		return 0, "", fmt.Errorf("%w: members create keys for themselves only", ErrPermissionDenied)
	}
	ks := keySettings{
		expire: req.GetExpireTime(), allowedModels: req.GetAllowedModels(), labels: req.GetLabels(),
		global: req.GetGlobalLimits(), modelLimits: req.GetModelLimits(), tokenCap: req.GetTokenCap(), budget: req.GetBudget(),
	}
	if err := s.validateKeySettings(ctx, ks, nil); err != nil {
		return 0, "", err
	}
	if err := s.validatePolicy(ctx, "report_limits", req.GetReportLimits()); err != nil {
		return 0, "", err
	}
	if err := s.validateOverride(ctx, "limit_override", req.GetLimitOverride()); err != nil {
		return 0, "", err
	}
	if err := s.checkOwner(ctx, p, ws, owner, kind); err != nil {
		return 0, "", err
	}
	if setsLimits(req) {
		if err := s.checkLimitEditors(ctx, p, ws); err != nil {
			return 0, "", err
		}
	}
	return kind, owner, nil
}

// setsLimits reports whether a create request sets any limit that
// limit_editors governs.
func setsLimits(req *keystorev1.CreateKeyRequest) bool {
	return req.GetGlobalLimits() != nil || len(req.GetModelLimits()) > 0 || req.GetTokenCap() != nil ||
		req.GetBudget() != nil || req.GetReportLimits() != nil || req.GetLimitOverride() != nil
}

// checkOwner checks that a key's owner is a member of the workspace and,
// for an admin key, that it would not act with a role above the caller's.
func (s *Server) checkOwner(ctx context.Context, p *principal, ws, owner string, kind keystorev1.KeyKind) error {
	admin := kind == keystorev1.KeyKind_KEY_KIND_ADMIN
	if admin && owner == rootSubject {
		return invalid("owner", "an admin key acts for a member: name one")
	}
	if owner == rootSubject && p.root {
		return nil
	}
	// A key belongs to a member; admin keys act with its role.
	ownerRole, err := s.memberRole(ctx, ws, owner)
	if errors.Is(err, ErrNotFound) {
		if _, _, werr := s.getWorkspace(ctx, ws); werr != nil {
			return werr
		}
		return invalid("owner", "%q is not a member of workspace %q", owner, ws)
	} else if err != nil {
		return err
	}
	// An admin key acts with its owner's role: nobody mints one for a
	// member who outranks them.
	if admin && !p.root && roleRank(ownerRole) > roleRank(p.role) {
		return fmt.Errorf("%w: an admin key for %q would act with a role above yours", ErrPermissionDenied, owner)
	}
	return nil
}

// insertKey writes a new key, its indexes and its audit event, and counts
// it against the workspace's cap. The cap holds under concurrency: the
// counter is compared and swapped in the same transaction that writes the
// key.
func (s *Server) insertKey(ctx context.Context, p *principal, sk *storedKey) error {
	k := sk.key
	ws, id := k.GetWorkspace(), k.GetId()
	val, err := encodeKey(sk)
	if err != nil {
		return err
	}
	audit, err := s.auditOps(p, ws, id, "key.create", nil, k)
	if err != nil {
		return err
	}
	for {
		w, countRev, err := s.getWorkspace(ctx, ws)
		if err != nil {
			return err
		}
		if w.GetKeyCount() >= w.GetMaxKeys() {
			return fmt.Errorf("workspace %q (max_keys=%d): %w", ws, w.GetMaxKeys(), ErrKeyCap)
		}
		wsRev, _ := strconv.ParseInt(w.GetEtag(), 10, 64)
		ops := append([]clientv3.Op{
			clientv3.OpPut(countKey(ws), strconv.Itoa(int(w.GetKeyCount())+1)),
			clientv3.OpPut(keyKey(ws, id), val),
			clientv3.OpPut(idKey(id), ws+"/"+k.GetOwner()),
			clientv3.OpPut(nameKey(ws, k.Name), id),
		}, audit...)
		ops = append(ops, overrideIndexOps(keyObject(ws, id), nil, k.GetLimitOverride())...)
		resp, err := s.etcd.Txn(ctx).If(
			clientv3.Compare(clientv3.ModRevision(countKey(ws)), "=", countRev),
			clientv3.Compare(clientv3.ModRevision(workspaceKey(ws)), "=", wsRev),
			clientv3.Compare(clientv3.CreateRevision(nameKey(ws, k.Name)), "=", 0),
			clientv3.Compare(clientv3.CreateRevision(idKey(id)), "=", 0),
		).Then(ops...).Else(
			clientv3.OpGet(nameKey(ws, k.Name), clientv3.WithCountOnly()),
		).Commit()
		if err != nil {
			return fmt.Errorf("create key: %w", err)
		}
		if resp.Succeeded {
			k.Etag = strconv.FormatInt(resp.Header.Revision, 10)
			s.changes.Add(ctx, 1)
			return nil
		}
		if resp.Responses[0].GetResponseRange().Count > 0 {
			return fmt.Errorf("key named %q in workspace %q: %w", k.Name, ws, ErrAlreadyExists)
		}
	}
}

// normCap and normBudget store an unspecified reset period as "never".
func normCap(c *typev1.TokenCap) *typev1.TokenCap {
	if c == nil || c.GetResetPeriod() != typev1.ResetPeriod_RESET_PERIOD_UNSPECIFIED {
		return c
	}
	c = proto.Clone(c).(*typev1.TokenCap)
	c.ResetPeriod = typev1.ResetPeriod_RESET_PERIOD_NEVER
	return c
}

func normBudget(b *typev1.Budget) *typev1.Budget {
	if b == nil || b.GetResetPeriod() != typev1.ResetPeriod_RESET_PERIOD_UNSPECIFIED {
		return b
	}
	b = proto.Clone(b).(*typev1.Budget)
	b.ResetPeriod = typev1.ResetPeriod_RESET_PERIOD_NEVER
	return b
}

// readKey reads a key that p may manage.
func (s *Server) readKey(ctx context.Context, p *principal, ws, id string) (*storedKey, error) {
	if err := p.inWorkspace(ws); err != nil {
		return nil, err
	}
	sk, err := s.getKey(ctx, ws, id)
	if err != nil {
		return nil, err
	}
	if err := p.canManageKey(sk.key); err != nil {
		return nil, err
	}
	return sk, nil
}

func (s *Server) listKeys(ctx context.Context, p *principal, req *keystorev1.ListKeysRequest) (*keystorev1.ListKeysResponse, error) {
	ws := req.GetWorkspace()
	if err := p.inWorkspace(ws); err != nil {
		return nil, err
	}
	size, after, err := listPage(req.GetPageSize(), req.GetPageToken(), keyformat.ValidID)
	if err != nil {
		return nil, err
	}
	owner := req.GetOwner()
	if !p.manager() {
		// Members see their own keys only.
		if owner != "" && owner != p.subject {
			return &keystorev1.ListKeysResponse{}, nil
		}
		owner = p.subject
	}
	w, _, err := s.getWorkspace(ctx, ws)
	if err != nil {
		return nil, err
	}
	pfx := keysPrefix(ws)
	end := clientv3.GetPrefixRangeEnd(pfx)
	from := pfx
	if after != "" {
		from = pfx + after + "\x00"
	}
	depth := bucketDepth(int(w.GetKeyCount()), size)
	now := s.clock.Now()
	out := &keystorev1.ListKeysResponse{}
	// Read in pages of the requested size, bucket by bucket; filters may
	// need several reads.
	for {
		stop := bucketEnd(pfx, from, depth, end)
		resp, err := s.etcd.Get(ctx, from, clientv3.WithRange(stop), clientv3.WithLimit(int64(size)))
		if err != nil {
			return nil, fmt.Errorf("list keys: %w", err)
		}
		for i, kv := range resp.Kvs {
			sk, err := decodeKey(kv, now)
			if err != nil {
				return nil, err
			}
			k := sk.key
			if (req.GetState() != 0 && k.GetState() != req.GetState()) ||
				(req.GetKind() != 0 && k.GetKind() != req.GetKind()) ||
				(owner != "" && k.GetOwner() != owner) ||
				(req.GetLegacy() && !k.GetLegacy()) {
				continue
			}
			out.Keys = append(out.Keys, k)
			if len(out.Keys) == size {
				if i < len(resp.Kvs)-1 || resp.More || stop != end {
					out.NextPageToken = pageToken(k.GetId())
				}
				return out, s.fillLastUsed(ctx, ws, out.Keys)
			}
		}
		switch {
		case resp.More:
			from = string(resp.Kvs[len(resp.Kvs)-1].Key) + "\x00"
		case stop == end:
			return out, s.fillLastUsed(ctx, ws, out.Keys)
		default:
			from = stop
		}
	}
}

// A range read with a limit still walks etcd's in-memory index to the end
// of the range to count it, so a page of a large workspace is read within
// buckets of key ids sharing their first depth characters: about
// count/36^depth keys each, at least a few pages' worth.
func bucketDepth(count, size int) int {
	d := 0
	for n := count / 36; d < 3 && n >= 4*size; n /= 36 {
		d++
	}
	return d
}

// bucketEnd is the end of the id bucket holding from, capped at end.
func bucketEnd(pfx, from string, depth int, end string) string {
	if depth == 0 {
		return end
	}
	b := []byte(from[len(pfx):])
	for len(b) < depth {
		b = append(b, base36[0])
	}
	b = b[:depth]
	for i := depth - 1; i >= 0; i-- {
		j := strings.IndexByte(base36, b[i])
		if j < 0 {
			return end
		}
		if j < len(base36)-1 {
			b[i] = base36[j+1]
			return pfx + string(b[:i+1])
		}
	}
	return end
}

const base36 = "0123456789abcdefghijklmnopqrstuvwxyz"

// updatableKeyFields are the mask paths UpdateKey accepts.
var updatableKeyFields = []string{"name", "enabled", "expire_time", "allowed_models", "labels",
	"global_limits", "model_limits", "token_cap", "budget", "report_limits", "limit_override"}

// nestableKeyFields may be named with a sub-field ("global_limits.rpm"),
// which changes only that sub-field: what grpc-gateway sends for a PATCH
// body without an explicit update mask.
var nestableKeyFields = []string{"global_limits", "token_cap", "budget", "report_limits", "limit_override"}

// deepKeyFields take a path of any depth ("report_limits.global_limits.rpm").
var deepKeyFields = []string{"report_limits", "limit_override"}

// parseKeyMask reads update mask paths, in snake_case or the lowerCamelCase
// REST users write, into whole fields and sub-fields per field.
func parseKeyMask(paths []string) (whole map[string]bool, sub map[string][]string, err error) {
	whole, sub = map[string]bool{}, map[string][]string{}
	for _, raw := range paths {
		f := snakeCase(raw)
		top, rest, nested := strings.Cut(f, ".")
		switch {
		case f == "etag":
			// The precondition (see updateEtag), not a field to change: a
			// PATCH body carrying it arrives with it in the inferred mask.
		case !slices.Contains(updatableKeyFields, top):
			return nil, nil, invalid("update_mask", "cannot update %q; updatable: %v", raw, updatableKeyFields)
		case !nested:
			whole[top] = true
		case !slices.Contains(nestableKeyFields, top) || (strings.Contains(rest, ".") && !slices.Contains(deepKeyFields, top)):
			return nil, nil, invalid("update_mask", "cannot update %q: only %v take a sub-field", raw, nestableKeyFields)
		default:
			sub[top] = append(sub[top], rest)
		}
	}
	if len(whole) == 0 && len(sub) == 0 {
		return nil, nil, invalid("update_mask", "name at least one field to update")
	}
	return whole, sub, nil
}

// snakeCase turns "globalLimits.rpm" into "global_limits.rpm".
func snakeCase(s string) string {
	var b strings.Builder
	for i := 0; i < len(s); i++ {
		c := s[i]
		if c >= 'A' && c <= 'Z' {
			b.WriteByte('_')
			c += 'a' - 'A'
		}
		b.WriteByte(c)
	}
	return b.String()
}

// mergeSubfields copies the named sub-fields of src over a copy of dst.
func mergeSubfields[M proto.Message](dst, src M, fields []string, top string) (M, error) {
	out := proto.Clone(dst).(M)
	om, sm := out.ProtoReflect(), src.ProtoReflect()
	for _, f := range fields {
		fd := om.Descriptor().Fields().ByName(protoreflect.Name(f))
		if fd == nil {
			return out, invalid("update_mask", "%s has no field %q", top, f)
		}
		om.Set(fd, sm.Get(fd))
	}
	return out, nil
}

func (s *Server) updateKey(ctx context.Context, p *principal, req *keystorev1.UpdateKeyRequest) (*keystorev1.Key, error) {
	mask, sub, err := parseKeyMask(req.GetUpdateMask().GetPaths())
	if err != nil {
		return nil, err
	}
	patch := req.GetPatch()
	if err := s.validateKeyPatch(ctx, patch, mask); err != nil {
		return nil, err
	}
	etag, err := updateEtag(req.GetEtag(), patch.GetEtag())
	if err != nil {
		return nil, err
	}
	limited := false
	for _, f := range keyLimitFields {
		limited = limited || mask[f] || len(sub[f]) > 0
	}
	if limited {
		if err := s.checkLimitEditors(ctx, p, req.GetWorkspace()); err != nil {
			return nil, err
		}
	}
	return s.modifyKey(ctx, p, req.GetWorkspace(), req.GetKey(), etag, "key.update", func(k *keystorev1.Key) error {
		applyKeyMask(k, patch, mask)
		return s.mergeKeySubfields(ctx, k, patch, mask, sub)
	}, nil)
}

// validateKeyPatch checks the fields of patch that mask names.
func (s *Server) validateKeyPatch(ctx context.Context, patch *keystorev1.Key, mask map[string]bool) error {
	if mask["name"] {
		if err := validName("patch.name", patch.GetName()); err != nil {
			return err
		}
	}
	ks := keySettings{
		expire: patch.GetExpireTime(), allowedModels: patch.GetAllowedModels(), labels: patch.GetLabels(),
		global: patch.GetGlobalLimits(), modelLimits: patch.GetModelLimits(), tokenCap: patch.GetTokenCap(), budget: patch.GetBudget(),
	}
	if err := s.validatePatchSettings(ctx, ks, mask); err != nil {
		return err
	}
	if mask["report_limits"] {
		if err := s.validatePolicy(ctx, "patch.report_limits", patch.GetReportLimits()); err != nil {
			return err
		}
	}
	if mask["limit_override"] {
		return s.validateOverride(ctx, "patch.limit_override", patch.GetLimitOverride())
	}
	return nil
}

// validatePatchSettings validates ks as the patch's fields: an error
// names the field under "patch.".
func (s *Server) validatePatchSettings(ctx context.Context, ks keySettings, mask map[string]bool) error {
	err := s.validateKeySettings(ctx, ks, mask)
	var fe *FieldError
	if errors.As(err, &fe) {
		fe.Field = "patch." + fe.Field
	}
	return err
}

// applyKeyMask sets the fields mask names from patch.
func applyKeyMask(k, patch *keystorev1.Key, mask map[string]bool) {
	for f := range mask {
		switch f {
		case "name":
			k.Name = patch.GetName()
		case "enabled":
			k.Enabled = patch.GetEnabled()
		case "expire_time":
			k.ExpireTime = patch.GetExpireTime()
		case "allowed_models":
			k.AllowedModels = patch.GetAllowedModels()
		case "labels":
			k.Labels = maps.Clone(patch.GetLabels())
		case "global_limits":
			k.GlobalLimits = patch.GetGlobalLimits()
		case "model_limits":
			k.ModelLimits = patch.GetModelLimits()
		case "token_cap":
			k.TokenCap = normCap(patch.GetTokenCap())
		case "budget":
			k.Budget = normBudget(patch.GetBudget())
		case "report_limits":
			k.ReportLimits = normPolicy(patch.GetReportLimits())
		case "limit_override":
			k.LimitOverride = normOverride(patch.GetLimitOverride())
		}
	}
}

// mergeKeySubfields merges sub-field updates into the key's current
// value, then validates each merged value as a whole.
func (s *Server) mergeKeySubfields(ctx context.Context, k, patch *keystorev1.Key, mask map[string]bool, sub map[string][]string) error {
	merged := keySettings{}
	subMask := map[string]bool{}
	for top, fields := range sub {
		if mask[top] {
			continue // the whole field was named too
		}
		var err error
		switch top {
		case "global_limits":
			merged.global, err = mergeSubfields(orEmpty(k.GetGlobalLimits()), orEmpty(patch.GetGlobalLimits()), fields, top)
			k.GlobalLimits = merged.global
		case "token_cap":
			merged.tokenCap, err = mergeSubfields(orEmpty(k.GetTokenCap()), orEmpty(patch.GetTokenCap()), fields, top)
			k.TokenCap = normCap(merged.tokenCap)
		case "budget":
			merged.budget, err = mergeSubfields(orEmpty(k.GetBudget()), orEmpty(patch.GetBudget()), fields, top)
			k.Budget = normBudget(merged.budget)
		case "report_limits", "limit_override":
			if err := s.mergeLevelPaths(ctx, k, patch, top, fields); err != nil {
				return err
			}
			continue
		}
		if err != nil {
			return err
		}
		subMask[top] = true
	}
	if len(subMask) > 0 {
		return s.validatePatchSettings(ctx, merged, subMask)
	}
	return nil
}

// mergeLevelPaths applies sub-field paths of report_limits or
// limit_override to k and validates the merged field.
func (s *Server) mergeLevelPaths(ctx context.Context, k, patch *keystorev1.Key, top string, fields []string) error {
	paths := make([]string, len(fields))
	for i, f := range fields {
		paths[i] = top + "." + f
	}
	if err := applyPaths(k, orEmpty(patch), paths); err != nil {
		return err
	}
	if top == "report_limits" {
		k.ReportLimits = normPolicy(k.GetReportLimits())
		return s.validatePolicy(ctx, "patch.report_limits", k.GetReportLimits())
	}
	k.LimitOverride = normOverride(k.GetLimitOverride())
	return s.validateOverride(ctx, "patch.limit_override", k.GetLimitOverride())
}

// updateEtag is the etag an update must match: the request's, or the one
// in the patch, as a resource read, changed and sent back carries it (and
// as a REST PATCH body, which is the patch, does). Two different ones are
// refused rather than one silently ignored.
func updateEtag(req, patch string) (string, error) {
	switch {
	case patch == "" || patch == req:
		return req, nil
	case req == "":
		return patch, nil
	}
	return "", invalid("patch.etag", "differs from etag: send the etag once")
}

// orEmpty returns m, or a new empty message of its type when m is nil.
func orEmpty[M proto.Message](m M) M {
	if m.ProtoReflect().IsValid() {
		return m
	}
	return m.ProtoReflect().New().Interface().(M)
}

// modifyKey applies change to a key in a compare-and-swap loop. With an
// etag, a key changed since the caller read it is a conflict; without one
// the change is retried on the fresh value. rekey, if set, may replace the
// stored hashes (rotation).
func (s *Server) modifyKey(ctx context.Context, p *principal, ws, id, etag, action string,
	change func(*keystorev1.Key) error, rekey func(*storedKey)) (*keystorev1.Key, error) {
	for {
		sk, err := s.readKey(ctx, p, ws, id)
		if err != nil {
			return nil, err
		}
		if etag != "" && etag != sk.key.GetEtag() {
			return nil, fmt.Errorf("key %q: %w", id, ErrConflict)
		}
		old := sk.key
		next := proto.Clone(old).(*keystorev1.Key)
		if err := change(next); err != nil {
			return nil, err
		}
		now := s.clock.Now()
		next.UpdateTime = timestamppb.New(now)
		next.State = keyState(next, now)
		nsk := &storedKey{key: next, hash: sk.hash, prevHash: sk.prevHash}
		if rekey != nil {
			rekey(nsk)
		}
		val, err := encodeKey(nsk)
		if err != nil {
			return nil, err
		}
		// The audit shows the key after the change; its etag is the
		// revision of this very write, unknown until it commits.
		after := proto.Clone(next).(*keystorev1.Key)
		after.Etag = ""
		audit, err := s.auditOps(p, ws, id, action, old, after)
		if err != nil {
			return nil, err
		}
		cmps := []clientv3.Cmp{clientv3.Compare(clientv3.ModRevision(keyKey(ws, id)), "=", sk.rev)}
		ops := append([]clientv3.Op{clientv3.OpPut(keyKey(ws, id), val)}, audit...)
		ops = append(ops, overrideIndexOps(keyObject(ws, id), old.GetLimitOverride(), next.GetLimitOverride())...)
		renamed := next.GetName() != old.GetName()
		if renamed {
			cmps = append(cmps, clientv3.Compare(clientv3.CreateRevision(nameKey(ws, next.GetName())), "=", 0))
			ops = append(ops, clientv3.OpDelete(nameKey(ws, old.GetName())), clientv3.OpPut(nameKey(ws, next.GetName()), id))
		}
		resp, err := s.etcd.Txn(ctx).If(cmps...).Then(ops...).Else(
			clientv3.OpGet(nameKey(ws, next.GetName()), clientv3.WithCountOnly()),
		).Commit()
		if err != nil {
			return nil, fmt.Errorf("update key: %w", err)
		}
		if resp.Succeeded {
			next.Etag = strconv.FormatInt(resp.Header.Revision, 10)
			s.changes.Add(ctx, 1)
			return next, nil
		}
		if renamed && resp.Responses[0].GetResponseRange().Count > 0 {
			return nil, fmt.Errorf("key named %q in workspace %q: %w", next.GetName(), ws, ErrAlreadyExists)
		}
		if etag != "" {
			return nil, fmt.Errorf("key %q: %w", id, ErrConflict)
		}
	}
}

func (s *Server) deleteKey(ctx context.Context, p *principal, req *keystorev1.DeleteKeyRequest) error {
	ws, id := req.GetWorkspace(), req.GetKey()
	for {
		sk, err := s.readKey(ctx, p, ws, id)
		if err != nil {
			return err
		}
		if req.GetEtag() != "" && req.GetEtag() != sk.key.GetEtag() {
			return fmt.Errorf("key %q: %w", id, ErrConflict)
		}
		w, countRev, err := s.getWorkspace(ctx, ws)
		if err != nil {
			return err
		}
		audit, err := s.auditOps(p, ws, id, "key.delete", sk.key, nil)
		if err != nil {
			return err
		}
		ops := append([]clientv3.Op{
			clientv3.OpDelete(keyKey(ws, id)),
			clientv3.OpDelete(usedKey(ws, id)),
			clientv3.OpDelete(reportedKey(ws, id, ""), clientv3.WithPrefix()),
			clientv3.OpDelete(idKey(id)),
			clientv3.OpDelete(nameKey(ws, sk.key.GetName())),
			clientv3.OpPut(countKey(ws), strconv.Itoa(max(int(w.GetKeyCount())-1, 0))),
		}, audit...)
		ops = append(ops, overrideIndexOps(keyObject(ws, id), sk.key.GetLimitOverride(), nil)...)
		if sk.key.GetLegacy() {
			ops = append(ops, clientv3.OpDelete(legacyKey(sk.hash)))
		}
		resp, err := s.etcd.Txn(ctx).If(
			clientv3.Compare(clientv3.ModRevision(keyKey(ws, id)), "=", sk.rev),
			clientv3.Compare(clientv3.ModRevision(countKey(ws)), "=", countRev),
		).Then(ops...).Commit()
		if err != nil {
			return fmt.Errorf("delete key: %w", err)
		}
		if resp.Succeeded {
			s.changes.Add(ctx, 1)
			return nil
		}
	}
}

func (s *Server) rotateKey(ctx context.Context, p *principal, req *keystorev1.RotateKeyRequest) (*keystorev1.RotateKeyResponse, error) {
	grace := req.GetGraceExpireTime()
	if err := validExpiry("grace_expire_time", grace, s.clock.Now()); err != nil {
		return nil, err
	}
	var text string
	var hash keyformat.Hash
	k, err := s.modifyKey(ctx, p, req.GetWorkspace(), req.GetKey(), "", "key.rotate", func(k *keystorev1.Key) error {
		if k.GetLegacy() {
			// Its secret is another system's: replace it with a new key
			// (CreateKey), then delete it.
			return fmt.Errorf("%w: an imported (legacy) key cannot be rotated; create a keygate key to replace it, then delete this one", ErrPrecondition)
		}
		kind := keyformat.Standard
		if k.GetKind() == keystorev1.KeyKind_KEY_KIND_ADMIN {
			kind = keyformat.Admin
		}
		var fk keyformat.Key
		text, fk = keyformat.New(kind, k.GetId())
		hash = fk.Hash()
		k.PartialKey = keyformat.Partial(text)
		k.PreviousSecretExpireTime = grace
		return nil
	}, func(sk *storedKey) {
		sk.prevHash = keyformat.Hash{}
		if grace != nil {
			sk.prevHash = sk.hash
		}
		sk.hash = hash
	})
	if err != nil {
		return nil, err
	}
	return &keystorev1.RotateKeyResponse{Key: k, Secret: text}, nil
}

func (s *Server) expireKey(ctx context.Context, p *principal, req *keystorev1.ExpireKeyRequest) (*keystorev1.Key, error) {
	return s.modifyKey(ctx, p, req.GetWorkspace(), req.GetKey(), "", "key.expire", func(k *keystorev1.Key) error {
		// An already expired key keeps the instant it ended.
		if now := s.clock.Now(); keyState(k, now) != keystorev1.KeyState_KEY_STATE_EXPIRED {
			k.ExpireTime = timestamppb.New(now)
		}
		return nil
	}, nil)
}

// verifiedKey is a verified key with its levels: the workspace and the
// owning member (nil when the owner is not a member).
type verifiedKey struct {
	*storedKey
	ws     *keystorev1.Workspace
	member *keystorev1.Member
}

// verify checks a parsed key against the store. Every failure is
// ErrInvalidKey, so callers cannot tell unknown from disabled or expired.
func (s *Server) verify(ctx context.Context, k keyformat.Key) (*verifiedKey, error) {
	resp, err := s.etcd.Get(ctx, idKey(k.ID))
	if err != nil {
		return nil, fmt.Errorf("verify: %w", err)
	}
	if len(resp.Kvs) == 0 {
		return nil, ErrInvalidKey
	}
	// id/<id> holds <workspace>/<owner> (<workspace> alone before owners
	// were indexed).
	ws, owner, known := strings.Cut(string(resp.Kvs[0].Value), "/")
	vk, err := s.loadVerified(ctx, ws, k.ID, owner, known)
	if err != nil {
		return nil, err
	}
	if wantAdmin := k.Kind == keyformat.Admin; wantAdmin != (vk.key.GetKind() == keystorev1.KeyKind_KEY_KIND_ADMIN) {
		return nil, ErrInvalidKey
	}
	return vk, s.checkSecret(vk, k.Hash())
}

// checkSecret accepts an active key whose secret hashes to h, or to the
// previous secret's hash while its rotation grace lasts.
func (s *Server) checkSecret(vk *verifiedKey, h keyformat.Hash) error {
	if vk.key.GetState() != keystorev1.KeyState_KEY_STATE_ACTIVE {
		return ErrInvalidKey
	}
	if keyformat.Equal(h, vk.hash) {
		return nil
	}
	if ge := vk.key.GetPreviousSecretExpireTime(); ge != nil && ge.AsTime().After(s.clock.Now()) &&
		vk.prevHash != (keyformat.Hash{}) && keyformat.Equal(h, vk.prevHash) {
		return nil
	}
	return ErrInvalidKey
}

// loadVerified reads a key with its last use, workspace and owning member
// in one transaction (the member in a second read only when the owner was
// not indexed with the id).
func (s *Server) loadVerified(ctx context.Context, ws, id, owner string, ownerKnown bool) (*verifiedKey, error) {
	if !keyformat.ValidID(id) {
		return nil, ErrInvalidKey
	}
	ops := []clientv3.Op{
		clientv3.OpGet(keyKey(ws, id)), clientv3.OpGet(usedKey(ws, id)),
		clientv3.OpGet(workspaceKey(ws)), clientv3.OpGet(countKey(ws)),
	}
	if ownerKnown {
		ops = append(ops, clientv3.OpGet(memberKey(ws, owner)))
	}
	resp, err := s.etcd.Txn(ctx).Then(ops...).Commit()
	if err != nil {
		return nil, fmt.Errorf("verify: %w", err)
	}
	rr := func(i int) []*mvccpb.KeyValue { return resp.Responses[i].GetResponseRange().Kvs }
	if len(rr(0)) == 0 {
		return nil, ErrInvalidKey
	}
	sk, err := decodeKey(rr(0)[0], s.clock.Now())
	if err != nil {
		return nil, err
	}
	if used := rr(1); len(used) > 0 {
		if sk.key.LastUsedTime, err = decodeUsed(used[0]); err != nil {
			return nil, err
		}
	}
	vk := &verifiedKey{storedKey: sk}
	if vk.ws, _, err = decodeWorkspace(ws, rr(2), rr(3)); errors.Is(err, ErrNotFound) {
		return nil, ErrInvalidKey
	} else if err != nil {
		return nil, err
	}
	mkv := []*mvccpb.KeyValue(nil)
	if ownerKnown {
		mkv = rr(4)
	} else {
		mresp, err := s.etcd.Get(ctx, memberKey(ws, sk.key.GetOwner()))
		if err != nil {
			return nil, fmt.Errorf("verify: %w", err)
		}
		mkv = mresp.Kvs
	}
	if len(mkv) > 0 {
		vk.member = &keystorev1.Member{}
		if err := unmarshal(mkv[0], vk.member); err != nil {
			return nil, err
		}
	}
	return vk, nil
}

func (s *Server) verifyKey(ctx context.Context, secret string) (*keystorev1.VerifyKeyResponse, error) {
	var vk *verifiedKey
	var h keyformat.Hash
	if !keyformat.Prefixed(secret) {
		var err error
		if vk, h, err = s.verifyLegacy(ctx, secret); err != nil {
			return nil, err
		}
	} else {
		// Malformed text is rejected before any lookup.
		k, err := keyformat.Parse(secret)
		if err != nil {
			return nil, ErrInvalidKey
		}
		if vk, err = s.verify(ctx, k); err != nil {
			return nil, err
		}
		h = k.Hash()
	}
	out := &keystorev1.VerifyKeyResponse{Key: vk.key, Workspace: vk.ws, Member: vk.member}
	if !keyformat.Equal(h, vk.hash) {
		out.SecretExpireTime = vk.key.GetPreviousSecretExpireTime()
	}
	return out, nil
}

func (s *Server) getKeyOp(ctx context.Context, p *principal, req *keystorev1.GetKeyRequest) (*keystorev1.Key, error) {
	sk, err := s.readKey(ctx, p, req.GetWorkspace(), req.GetKey())
	if err != nil {
		return nil, err
	}
	return sk.key, nil
}
