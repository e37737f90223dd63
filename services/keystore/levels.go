package keystore

import (
	"context"
	"errors"
	"fmt"
	"slices"
	"strings"
	"unicode"
	"unicode/utf8"

	clientv3 "go.etcd.io/etcd/client/v3"
	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/reflect/protoreflect"
	"google.golang.org/protobuf/types/known/timestamppb"

	keystorev1 "github.com/keygate/keygate/gen/keygate/keystore/v1"
	typev1 "github.com/keygate/keygate/gen/keygate/type/v1"
)

// The limits of a level (key, member, workspace) are validated here, as a
// key's own limits are (validateKeySettings: one owner of the rule).

const (
	maxOverrideReason  = 256
	maxAlertThresholds = 10
	maxAlertPercent    = 1000
)

// validatePolicy checks a level's limits; nil is no limits.
func (s *Server) validatePolicy(ctx context.Context, field string, p *typev1.Policy) error {
	if p == nil {
		return nil
	}
	err := s.validateKeySettings(ctx, keySettings{
		global: p.GetGlobalLimits(), modelLimits: p.GetModelLimits(), tokenCap: p.GetTokenCap(), budget: p.GetBudget(),
	}, map[string]bool{"global_limits": true, "model_limits": true, "token_cap": true, "budget": true})
	var fe *FieldError
	if errors.As(err, &fe) {
		fe.Field = field + "." + fe.Field
	}
	return err
}

// validateOverride checks a timed override; nil clears it. One that is set
// needs limits to apply and an expiry in the future.
func (s *Server) validateOverride(ctx context.Context, field string, o *typev1.Override) error {
	if o == nil {
		return nil
	}
	if policyEmpty(o.GetPolicy()) {
		return invalid(field+".policy", "an override needs limits to apply (or clear the override)")
	}
	if o.GetExpireTime() == nil {
		return invalid(field+".expire_time", "an override needs an expiry")
	}
	if err := validExpiry(field+".expire_time", o.GetExpireTime(), s.clock.Now()); err != nil {
		return err
	}
	if r := o.GetReason(); utf8.RuneCountInString(r) > maxOverrideReason || !utf8.ValidString(r) || strings.ContainsFunc(r, unicode.IsControl) {
		return invalid(field+".reason", "must be at most %d printable characters", maxOverrideReason)
	}
	return s.validatePolicy(ctx, field+".policy", o.GetPolicy())
}

func policyEmpty(p *typev1.Policy) bool {
	l := p.GetGlobalLimits()
	return l.GetRpm() == 0 && l.GetRpd() == 0 && l.GetTpm() == 0 && l.GetTpd() == 0 &&
		len(p.GetModelLimits()) == 0 && p.GetTokenCap() == nil && p.GetBudget() == nil
}

// validThresholds: percentages 1-1000, ascending, each once.
func validThresholds(field string, ts []int32) error {
	if len(ts) > maxAlertThresholds {
		return invalid(field, "at most %d thresholds", maxAlertThresholds)
	}
	for i, t := range ts {
		if t < 1 || t > maxAlertPercent {
			return invalid(fmt.Sprintf("%s[%d]", field, i), "must be a percentage from 1 to %d", maxAlertPercent)
		}
		if i > 0 && t <= ts[i-1] {
			return invalid(field, "must be in ascending order, each once")
		}
	}
	return nil
}

func validLimitEditors(field string, e keystorev1.LimitEditors) error {
	if _, ok := keystorev1.LimitEditors_name[int32(e)]; !ok {
		return invalid(field, "must be LIMIT_EDITORS_KEY_OWNERS or LIMIT_EDITORS_ADMINS")
	}
	return nil
}

// normPolicy stores unspecified reset periods as "never", as for keys.
func normPolicy(p *typev1.Policy) *typev1.Policy {
	if p == nil {
		return nil
	}
	p = proto.Clone(p).(*typev1.Policy)
	p.TokenCap, p.Budget = normCap(p.GetTokenCap()), normBudget(p.GetBudget())
	return p
}

func normOverride(o *typev1.Override) *typev1.Override {
	if o == nil {
		return nil
	}
	o = proto.Clone(o).(*typev1.Override)
	o.Policy = normPolicy(o.GetPolicy())
	return o
}

// levelFields are the mask paths that set a member's or a workspace's
// limits; a path may reach into them ("limits.global_limits.rpm").
var levelFields = []string{"limits", "report_limits", "limit_override"}

// maskPaths reads update mask paths in snake_case or lowerCamelCase and
// checks that each names (or reaches into) one of allowed; "etag" is
// dropped (the precondition, see updateEtag).
func maskPaths(raw []string, allowed []string) ([]string, error) {
	var out []string
	for _, r := range raw {
		p := snakeCase(r)
		if p == "etag" {
			continue
		}
		top, _, _ := strings.Cut(p, ".")
		if !slices.Contains(allowed, top) {
			return nil, invalid("update_mask", "cannot update %q; updatable: %v", r, allowed)
		}
		out = append(out, p)
	}
	if len(out) == 0 {
		return nil, invalid("update_mask", "name at least one field to update: %v", allowed)
	}
	return out, nil
}

// applyPaths copies the fields paths name from src into dst, messages of
// one type. A path into nested messages changes only the field it names:
// what grpc-gateway infers from a PATCH body.
func applyPaths(dst, src proto.Message, paths []string) error {
	src = proto.Clone(src)
	for _, p := range paths {
		dm, sm := dst.ProtoReflect(), src.ProtoReflect()
		names := strings.Split(p, ".")
		for i, n := range names {
			fd := dm.Descriptor().Fields().ByName(protoreflect.Name(n))
			if fd == nil {
				return invalid("update_mask", "%q has no field %q", p, n)
			}
			if i == len(names)-1 {
				if sm.Has(fd) {
					dm.Set(fd, sm.Get(fd))
				} else {
					dm.Clear(fd)
				}
				break
			}
			if fd.Message() == nil || fd.IsList() || fd.IsMap() {
				return invalid("update_mask", "%q: %q has no sub-fields to update", p, n)
			}
			dm, sm = dm.Mutable(fd).Message(), sm.Get(fd).Message()
		}
	}
	return nil
}

// touched reports the top-level fields paths name.
func touched(paths []string) map[string]bool {
	out := map[string]bool{}
	for _, p := range paths {
		top, _, _ := strings.Cut(p, ".")
		out[top] = true
	}
	return out
}

// levelSettings are a member's or workspace's limits fields.
type levelSettings struct {
	limits, report *typev1.Policy
	override       *typev1.Override
}

// validateLevel checks the fields of ls that tops names, under prefix.
func (s *Server) validateLevel(ctx context.Context, prefix string, ls levelSettings, tops map[string]bool) error {
	if tops["limits"] {
		if err := s.validatePolicy(ctx, prefix+"limits", ls.limits); err != nil {
			return err
		}
	}
	if tops["report_limits"] {
		if err := s.validatePolicy(ctx, prefix+"report_limits", ls.report); err != nil {
			return err
		}
	}
	if tops["limit_override"] {
		return s.validateOverride(ctx, prefix+"limit_override", ls.override)
	}
	return nil
}

// updateMember sets a member's limits: owners and admins only.
func (s *Server) updateMember(ctx context.Context, p *principal, req *keystorev1.UpdateMemberRequest) (*keystorev1.Member, error) {
	ws, name := req.GetWorkspace(), req.GetMember()
	if err := p.inWorkspace(ws); err != nil {
		return nil, err
	}
	if !p.manager() {
		return nil, fmt.Errorf("%w: owners and admins set a member's limits", ErrPermissionDenied)
	}
	paths, err := maskPaths(req.GetUpdateMask().GetPaths(), levelFields)
	if err != nil {
		return nil, err
	}
	for {
		resp, err := s.etcd.Get(ctx, memberKey(ws, name))
		if err != nil {
			return nil, fmt.Errorf("update member: %w", err)
		}
		if len(resp.Kvs) == 0 {
			return nil, fmt.Errorf("member %q: %w", name, ErrNotFound)
		}
		old := &keystorev1.Member{}
		if err := unmarshal(resp.Kvs[0], old); err != nil {
			return nil, err
		}
		next := proto.Clone(old).(*keystorev1.Member)
		if err := applyPaths(next, orEmpty(req.GetPatch()), paths); err != nil {
			return nil, err
		}
		next.Limits, next.ReportLimits, next.LimitOverride = normPolicy(next.GetLimits()), normPolicy(next.GetReportLimits()), normOverride(next.GetLimitOverride())
		ls := levelSettings{limits: next.GetLimits(), report: next.GetReportLimits(), override: next.GetLimitOverride()}
		if err := s.validateLevel(ctx, "patch.", ls, touched(paths)); err != nil {
			return nil, err
		}
		next.UpdateTime = timestamppb.New(s.clock.Now())
		ok, err := s.writeMember(ctx, p, "member.update", old, next, resp.Kvs[0].ModRevision)
		if err != nil {
			return nil, err
		}
		if ok {
			return next, nil
		}
	}
}

// writeMember stores next over old (at mod revision rev) with its audit
// event, level marker and override index; false when the member changed
// meanwhile.
func (s *Server) writeMember(ctx context.Context, p *principal, action string, old, next *keystorev1.Member, rev int64) (bool, error) {
	ws := next.GetWorkspace()
	val, err := marshal(next)
	if err != nil {
		return false, err
	}
	audit, err := s.auditOps(p, ws, "", action, old, next)
	if err != nil {
		return false, err
	}
	ops := append([]clientv3.Op{clientv3.OpPut(memberKey(ws, next.GetMember()), val), levelMarkerOp(ws, next.GetMember())}, audit...)
	ops = append(ops, overrideIndexOps(memberObject(ws, next.GetMember()), old.GetLimitOverride(), next.GetLimitOverride())...)
	tx, err := s.etcd.Txn(ctx).If(
		clientv3.Compare(clientv3.ModRevision(memberKey(ws, next.GetMember())), "=", rev),
	).Then(ops...).Commit()
	if err != nil {
		return false, fmt.Errorf("write member: %w", err)
	}
	if tx.Succeeded {
		s.changes.Add(ctx, 1)
	}
	return tx.Succeeded, nil
}

// checkLimitEditors enforces the workspace's limit_editors policy on a
// change to a standard key's limits by a plain member.
func (s *Server) checkLimitEditors(ctx context.Context, p *principal, ws string) error {
	// Resolves an ID token's role in ws first.
	if err := p.inWorkspace(ws); err != nil {
		return err
	}
	if p.manager() {
		return nil
	}
	w, _, err := s.getWorkspace(ctx, ws)
	if err != nil {
		return err
	}
	if w.GetLimitEditors() == keystorev1.LimitEditors_LIMIT_EDITORS_ADMINS {
		return fmt.Errorf("%w: workspace %q sets limit_editors to LIMIT_EDITORS_ADMINS: only owners and admins change a key's limits, budget, report limits or override", ErrPermissionDenied, ws)
	}
	return nil
}

// keyLimitFields are a key's fields that limit_editors governs.
var keyLimitFields = []string{"global_limits", "model_limits", "token_cap", "budget", "report_limits", "limit_override"}
