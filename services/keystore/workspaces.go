package keystore

import (
	"context"
	"errors"
	"fmt"
	"slices"
	"strconv"
	"strings"

	clientv3 "go.etcd.io/etcd/client/v3"
	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/types/known/timestamppb"

	keystorev1 "github.com/keygate/keygate/gen/keygate/keystore/v1"
)

func (s *Server) createWorkspace(ctx context.Context, p *principal, req *keystorev1.CreateWorkspaceRequest) (*keystorev1.Workspace, error) {
	if err := p.requireRoot(); err != nil {
		return nil, err
	}
	in := req.GetWorkspace()
	if err := validID("workspace.id", in.GetId()); err != nil {
		return nil, err
	}
	name := in.GetName()
	if name == "" {
		name = in.GetId()
	}
	if err := validName("workspace.name", name); err != nil {
		return nil, err
	}
	if in.GetMaxKeys() < 0 {
		return nil, invalid("workspace.max_keys", "must not be negative (0 means the default, %d)", s.maxKeys)
	}
	kind := in.GetKind()
	switch kind {
	case keystorev1.WorkspaceKind_WORKSPACE_KIND_UNSPECIFIED:
		kind = keystorev1.WorkspaceKind_WORKSPACE_KIND_TEAM
	case keystorev1.WorkspaceKind_WORKSPACE_KIND_TEAM, keystorev1.WorkspaceKind_WORKSPACE_KIND_PERSONAL:
	default:
		return nil, invalid("workspace.kind", "must be WORKSPACE_KIND_PERSONAL or WORKSPACE_KIND_TEAM")
	}
	if req.GetOwner() != "" {
		if err := validMember("owner", req.GetOwner()); err != nil {
			return nil, err
		}
	}
	if in.GetCreditsGrantedUsd() != "" {
		return nil, invalid("workspace.credits_granted_usd", "output only: add credits with AddCreditEntry")
	}
	if err := s.validateWorkspaceSettings(ctx, "workspace.", in, governanceFields); err != nil {
		return nil, err
	}
	now := timestamppb.New(s.clock.Now())
	w := &keystorev1.Workspace{
		Id: in.GetId(), Name: name, Kind: kind, MaxKeys: in.GetMaxKeys(), CreateTime: now, UpdateTime: now,
		Limits: normPolicy(in.GetLimits()), ReportLimits: normPolicy(in.GetReportLimits()),
		LimitOverride: normOverride(in.GetLimitOverride()), LimitEditors: in.GetLimitEditors(),
		RequestLogCap: in.GetRequestLogCap(), AlertThresholds: in.GetAlertThresholds(),
	}
	if w.MaxKeys == 0 {
		w.MaxKeys = int32(s.maxKeys)
	}
	val, err := marshal(w)
	if err != nil {
		return nil, err
	}
	audit, err := s.auditOps(p, w.Id, "", "workspace.create", nil, w)
	if err != nil {
		return nil, err
	}
	ops := append([]clientv3.Op{
		clientv3.OpPut(workspaceKey(w.Id), val),
		clientv3.OpPut(countKey(w.Id), "0"),
		levelMarkerOp(w.Id, ""),
	}, audit...)
	ops = append(ops, overrideIndexOps(workspaceObject(w.Id), nil, w.GetLimitOverride())...)
	if o := req.GetOwner(); o != "" {
		m := &keystorev1.Member{Workspace: w.Id, Member: o, Role: keystorev1.Role_ROLE_OWNER, CreateTime: now}
		mv, err := marshal(m)
		if err != nil {
			return nil, err
		}
		ops = append(ops, clientv3.OpPut(memberKey(w.Id, o), mv), levelMarkerOp(w.Id, o))
	}
	resp, err := s.etcd.Txn(ctx).If(
		clientv3.Compare(clientv3.CreateRevision(workspaceKey(w.Id)), "=", 0),
	).Then(ops...).Commit()
	if err != nil {
		return nil, fmt.Errorf("create workspace: %w", err)
	}
	if !resp.Succeeded {
		return nil, fmt.Errorf("workspace %q: %w", w.Id, ErrAlreadyExists)
	}
	w.Etag = strconv.FormatInt(resp.Header.Revision, 10)
	s.changes.Add(ctx, 1)
	return w, nil
}

func (s *Server) readWorkspace(ctx context.Context, p *principal, ws string) (*keystorev1.Workspace, int64, error) {
	if err := p.inWorkspace(ws); err != nil {
		return nil, 0, err
	}
	return s.getWorkspace(ctx, ws)
}

func (s *Server) listWorkspaces(ctx context.Context, p *principal, req *keystorev1.ListWorkspacesRequest) (*keystorev1.ListWorkspacesResponse, error) {
	if p.roleIn != nil && p.workspace == "" {
		return s.memberWorkspaces(ctx, p.subject)
	}
	if !p.root {
		w, _, err := s.getWorkspace(ctx, p.workspace)
		if err != nil {
			return nil, err
		}
		return &keystorev1.ListWorkspacesResponse{Workspaces: []*keystorev1.Workspace{w}}, nil
	}
	size, after, err := listPage(req.GetPageSize(), req.GetPageToken(), idPattern.MatchString)
	if err != nil {
		return nil, err
	}
	from := workspacesDir
	if after != "" {
		from = workspacesDir + after + "\x00"
	}
	resp, err := s.etcd.Get(ctx, from, clientv3.WithRange(clientv3.GetPrefixRangeEnd(workspacesDir)),
		clientv3.WithLimit(int64(size)), clientv3.WithKeysOnly())
	if err != nil {
		return nil, fmt.Errorf("list workspaces: %w", err)
	}
	out := &keystorev1.ListWorkspacesResponse{}
	for _, kv := range resp.Kvs {
		w, _, err := s.getWorkspace(ctx, strings.TrimPrefix(string(kv.Key), workspacesDir))
		if err != nil {
			return nil, err
		}
		out.Workspaces = append(out.Workspaces, w)
	}
	if resp.More && len(out.Workspaces) > 0 {
		out.NextPageToken = pageToken(out.Workspaces[len(out.Workspaces)-1].GetId())
	}
	return out, nil
}

// memberWorkspaces lists the workspaces subject is a member of: what an
// SSO user, who belongs to no one workspace, may open (the console asks
// at sign-in). It reads every membership, once per sign-in.
func (s *Server) memberWorkspaces(ctx context.Context, subject string) (*keystorev1.ListWorkspacesResponse, error) {
	resp, err := s.etcd.Get(ctx, membersDir, clientv3.WithPrefix(), clientv3.WithKeysOnly())
	if err != nil {
		return nil, fmt.Errorf("list memberships: %w", err)
	}
	out := &keystorev1.ListWorkspacesResponse{}
	for _, kv := range resp.Kvs {
		// member/<workspace>/<member>: workspace ids hold no '/'.
		ws, member, ok := strings.Cut(strings.TrimPrefix(string(kv.Key), membersDir), "/")
		if !ok || member != subject {
			continue
		}
		w, _, err := s.getWorkspace(ctx, ws)
		if errors.Is(err, ErrNotFound) {
			continue
		}
		if err != nil {
			return nil, err
		}
		out.Workspaces = append(out.Workspaces, w)
	}
	return out, nil
}

// governanceFields are a workspace's settings owners and admins change;
// name and max_keys are the owners'.
var governanceFields = []string{"limits", "report_limits", "limit_override", "limit_editors", "request_log_cap", "alert_thresholds"}

var workspaceFields = append([]string{"name", "max_keys"}, governanceFields...)

// validateWorkspaceSettings checks the governance fields of w that tops
// names.
func (s *Server) validateWorkspaceSettings(ctx context.Context, prefix string, w *keystorev1.Workspace, tops []string) error {
	has := func(f string) bool { return slices.Contains(tops, f) }
	ls := levelSettings{limits: w.GetLimits(), report: w.GetReportLimits(), override: w.GetLimitOverride()}
	set := map[string]bool{}
	for _, f := range levelFields {
		set[f] = has(f)
	}
	if err := s.validateLevel(ctx, prefix, ls, set); err != nil {
		return err
	}
	if has("limit_editors") {
		if err := validLimitEditors(prefix+"limit_editors", w.GetLimitEditors()); err != nil {
			return err
		}
	}
	if has("request_log_cap") && w.GetRequestLogCap() < 0 {
		return invalid(prefix+"request_log_cap", "must not be negative (0 means the global cap)")
	}
	if has("alert_thresholds") {
		return validThresholds(prefix+"alert_thresholds", w.GetAlertThresholds())
	}
	return nil
}

func (s *Server) updateWorkspace(ctx context.Context, p *principal, req *keystorev1.UpdateWorkspaceRequest) (*keystorev1.Workspace, error) {
	ws := req.GetWorkspace()
	if err := p.inWorkspace(ws); err != nil {
		return nil, err
	}
	raw := req.GetUpdateMask().GetPaths()
	for _, r := range raw {
		if snakeCase(r) == "credits_granted_usd" {
			return nil, invalid("update_mask", "credits_granted_usd is output only: add credits with AddCreditEntry")
		}
	}
	paths, err := maskPaths(raw, workspaceFields)
	if err != nil {
		return nil, err
	}
	tops := touched(paths)
	if (tops["name"] || tops["max_keys"]) && !p.root && p.role != keystorev1.Role_ROLE_OWNER {
		return nil, fmt.Errorf("%w: only owners change a workspace's name or max_keys", ErrPermissionDenied)
	}
	if !p.manager() {
		return nil, fmt.Errorf("%w: owners and admins change a workspace's limits and settings", ErrPermissionDenied)
	}
	patch := orEmpty(req.GetPatch())
	if tops["name"] {
		if err := validName("patch.name", patch.GetName()); err != nil {
			return nil, err
		}
	}
	if tops["max_keys"] && patch.GetMaxKeys() < 1 {
		return nil, invalid("patch.max_keys", "must be at least 1")
	}
	etag, err := updateEtag(req.GetEtag(), patch.GetEtag())
	if err != nil {
		return nil, err
	}
	for {
		w, _, err := s.getWorkspace(ctx, ws)
		if err != nil {
			return nil, err
		}
		if etag != "" && etag != w.GetEtag() {
			return nil, fmt.Errorf("workspace %q: %w", ws, ErrConflict)
		}
		next, err := s.patchWorkspace(ctx, w, patch, paths)
		if err != nil {
			return nil, err
		}
		ok, err := s.writeWorkspace(ctx, p, w, next)
		if err != nil || ok {
			return next, err
		}
		if etag != "" {
			return nil, fmt.Errorf("workspace %q: %w", ws, ErrConflict)
		}
	}
}

// patchWorkspace applies paths of patch to a copy of w and validates the
// fields changed.
func (s *Server) patchWorkspace(ctx context.Context, w, patch *keystorev1.Workspace, paths []string) (*keystorev1.Workspace, error) {
	next := proto.Clone(w).(*keystorev1.Workspace)
	if err := applyPaths(next, patch, paths); err != nil {
		return nil, err
	}
	next.KeyCount, next.Etag, next.CreditsGrantedUsd = w.GetKeyCount(), w.GetEtag(), w.GetCreditsGrantedUsd()
	next.Limits, next.ReportLimits = normPolicy(next.GetLimits()), normPolicy(next.GetReportLimits())
	next.LimitOverride = normOverride(next.GetLimitOverride())
	var tops []string
	for t := range touched(paths) {
		tops = append(tops, t)
	}
	if err := s.validateWorkspaceSettings(ctx, "patch.", next, tops); err != nil {
		return nil, err
	}
	next.UpdateTime = timestamppb.New(s.clock.Now())
	return next, nil
}

// writeWorkspace stores next over old, with its audit event, level marker
// and override index, if old is still current; false when it is not.
func (s *Server) writeWorkspace(ctx context.Context, p *principal, old, next *keystorev1.Workspace) (bool, error) {
	ws := old.GetId()
	rev, _ := strconv.ParseInt(old.GetEtag(), 10, 64)
	store := proto.Clone(next).(*keystorev1.Workspace)
	store.KeyCount, store.Etag = 0, ""
	val, err := marshal(store)
	if err != nil {
		return false, err
	}
	after := proto.Clone(next).(*keystorev1.Workspace)
	after.Etag = ""
	audit, err := s.auditOps(p, ws, "", "workspace.update", old, after)
	if err != nil {
		return false, err
	}
	ops := append([]clientv3.Op{clientv3.OpPut(workspaceKey(ws), val), levelMarkerOp(ws, "")}, audit...)
	ops = append(ops, overrideIndexOps(workspaceObject(ws), old.GetLimitOverride(), next.GetLimitOverride())...)
	resp, err := s.etcd.Txn(ctx).If(
		clientv3.Compare(clientv3.ModRevision(workspaceKey(ws)), "=", rev),
	).Then(ops...).Commit()
	if err != nil {
		return false, fmt.Errorf("update workspace: %w", err)
	}
	if resp.Succeeded {
		next.Etag = strconv.FormatInt(resp.Header.Revision, 10)
		s.changes.Add(ctx, 1)
	}
	return resp.Succeeded, nil
}

// canManageMembers: owners manage members; admins may add and remove plain
// members only.
func canManageMembers(p *principal, role keystorev1.Role) error {
	switch {
	case p.root || p.role == keystorev1.Role_ROLE_OWNER:
		return nil
	case p.role == keystorev1.Role_ROLE_ADMIN && role == keystorev1.Role_ROLE_MEMBER:
		return nil
	}
	return fmt.Errorf("%w: owners manage members; admins manage plain members only", ErrPermissionDenied)
}

func (s *Server) setMember(ctx context.Context, p *principal, req *keystorev1.SetMemberRequest) (*keystorev1.Member, error) {
	ws := req.GetWorkspace()
	if err := p.inWorkspace(ws); err != nil {
		return nil, err
	}
	if err := validMember("member", req.GetMember()); err != nil {
		return nil, err
	}
	if err := validRole("role", req.GetRole()); err != nil {
		return nil, err
	}
	if err := canManageMembers(p, req.GetRole()); err != nil {
		return nil, err
	}
	resp, err := s.etcd.Txn(ctx).Then(clientv3.OpGet(workspaceKey(ws)), clientv3.OpGet(memberKey(ws, req.GetMember()))).Commit()
	if err != nil {
		return nil, fmt.Errorf("set member: %w", err)
	}
	if len(resp.Responses[0].GetResponseRange().Kvs) == 0 {
		return nil, fmt.Errorf("workspace %q: %w", ws, ErrNotFound)
	}
	var old *keystorev1.Member
	oldRev := int64(0)
	if kvs := resp.Responses[1].GetResponseRange().Kvs; len(kvs) > 0 {
		old = &keystorev1.Member{}
		if err := unmarshal(kvs[0], old); err != nil {
			return nil, err
		}
		if err := canManageMembers(p, old.GetRole()); err != nil {
			return nil, err
		}
		oldRev = kvs[0].ModRevision
	}
	now := timestamppb.New(s.clock.Now())
	m := &keystorev1.Member{Workspace: ws, Member: req.GetMember(), Role: req.GetRole(), CreateTime: now}
	if old != nil {
		// A new role keeps the member's limits.
		m = proto.Clone(old).(*keystorev1.Member)
		m.Role, m.UpdateTime = req.GetRole(), now
	}
	val, err := marshal(m)
	if err != nil {
		return nil, err
	}
	audit, err := s.auditOps(p, ws, "", "member.set", old, m)
	if err != nil {
		return nil, err
	}
	tx, err := s.etcd.Txn(ctx).If(
		clientv3.Compare(clientv3.ModRevision(memberKey(ws, m.Member)), "=", oldRev),
	).Then(append([]clientv3.Op{clientv3.OpPut(memberKey(ws, m.Member), val), levelMarkerOp(ws, m.Member)}, audit...)...).Commit()
	if err != nil {
		return nil, fmt.Errorf("set member: %w", err)
	}
	if !tx.Succeeded {
		return nil, fmt.Errorf("member %q: %w", m.Member, ErrConflict)
	}
	s.changes.Add(ctx, 1)
	return m, nil
}

func (s *Server) listMembers(ctx context.Context, p *principal, ws string) ([]*keystorev1.Member, error) {
	if _, _, err := s.readWorkspace(ctx, p, ws); err != nil {
		return nil, err
	}
	resp, err := s.etcd.Get(ctx, membersPrefix(ws), clientv3.WithPrefix())
	if err != nil {
		return nil, fmt.Errorf("list members: %w", err)
	}
	out := make([]*keystorev1.Member, 0, len(resp.Kvs))
	for _, kv := range resp.Kvs {
		m := &keystorev1.Member{}
		if err := unmarshal(kv, m); err != nil {
			return nil, err
		}
		out = append(out, m)
	}
	return out, nil
}

func (s *Server) removeMember(ctx context.Context, p *principal, req *keystorev1.RemoveMemberRequest) error {
	ws := req.GetWorkspace()
	if err := p.inWorkspace(ws); err != nil {
		return err
	}
	resp, err := s.etcd.Get(ctx, memberKey(ws, req.GetMember()))
	if err != nil {
		return fmt.Errorf("remove member: %w", err)
	}
	if len(resp.Kvs) == 0 {
		return fmt.Errorf("member %q: %w", req.GetMember(), ErrNotFound)
	}
	old := &keystorev1.Member{}
	if err := unmarshal(resp.Kvs[0], old); err != nil {
		return err
	}
	if err := canManageMembers(p, old.GetRole()); err != nil {
		return err
	}
	audit, err := s.auditOps(p, ws, "", "member.remove", old, nil)
	if err != nil {
		return err
	}
	tx, err := s.etcd.Txn(ctx).If(
		clientv3.Compare(clientv3.ModRevision(memberKey(ws, old.Member)), "=", resp.Kvs[0].ModRevision),
	).Then(append([]clientv3.Op{clientv3.OpDelete(memberKey(ws, old.Member)), levelMarkerOp(ws, old.Member)}, audit...)...).Commit()
	if err != nil {
		return fmt.Errorf("remove member: %w", err)
	}
	if !tx.Succeeded {
		return fmt.Errorf("member %q: %w", old.Member, ErrConflict)
	}
	s.changes.Add(ctx, 1)
	return nil
}
