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
	now := timestamppb.New(s.clock.Now())
	w := &keystorev1.Workspace{
		Id: in.GetId(), Name: name, Kind: kind, MaxKeys: in.GetMaxKeys(), CreateTime: now, UpdateTime: now,
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
	}, audit...)
	if o := req.GetOwner(); o != "" {
		m := &keystorev1.Member{Workspace: w.Id, Member: o, Role: keystorev1.Role_ROLE_OWNER, CreateTime: now}
		mv, err := marshal(m)
		if err != nil {
			return nil, err
		}
		ops = append(ops, clientv3.OpPut(memberKey(w.Id, o), mv))
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
	size, err := pageSize(req.GetPageSize())
	if err != nil {
		return nil, err
	}
	after, err := parsePageToken(req.GetPageToken(), idPattern.MatchString)
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

func (s *Server) updateWorkspace(ctx context.Context, p *principal, req *keystorev1.UpdateWorkspaceRequest) (*keystorev1.Workspace, error) {
	ws := req.GetWorkspace()
	if err := p.inWorkspace(ws); err != nil {
		return nil, err
	}
	if !p.root && p.role != keystorev1.Role_ROLE_OWNER {
		return nil, fmt.Errorf("%w: only owners update a workspace", ErrPermissionDenied)
	}
	paths := req.GetUpdateMask().GetPaths()
	if len(paths) == 0 {
		return nil, invalid("update_mask", "name at least one field to update: name, max_keys")
	}
	patch := req.GetPatch()
	etag, err := updateEtag(req.GetEtag(), patch.GetEtag())
	if err != nil {
		return nil, err
	}
	changes := 0
	for _, f := range paths {
		switch f {
		case "etag":
			// The precondition, not a field to change (see updateEtag).
			continue
		case "name":
			if err := validName("patch.name", patch.GetName()); err != nil {
				return nil, err
			}
		case "max_keys":
			if patch.GetMaxKeys() < 1 {
				return nil, invalid("patch.max_keys", "must be at least 1")
			}
		default:
			return nil, invalid("update_mask", "cannot update %q; updatable: name, max_keys", f)
		}
		changes++
	}
	if changes == 0 {
		return nil, invalid("update_mask", "name at least one field to update: name, max_keys")
	}
	for {
		w, _, err := s.getWorkspace(ctx, ws)
		if err != nil {
			return nil, err
		}
		if etag != "" && etag != w.GetEtag() {
			return nil, fmt.Errorf("workspace %q: %w", ws, ErrConflict)
		}
		rev, _ := strconv.ParseInt(w.GetEtag(), 10, 64)
		old := w
		next := proto.Clone(w).(*keystorev1.Workspace)
		if slices.Contains(paths, "name") {
			next.Name = patch.GetName()
		}
		if slices.Contains(paths, "max_keys") {
			next.MaxKeys = patch.GetMaxKeys()
		}
		next.UpdateTime = timestamppb.New(s.clock.Now())
		store := proto.Clone(next).(*keystorev1.Workspace)
		store.KeyCount, store.Etag = 0, ""
		val, err := marshal(store)
		if err != nil {
			return nil, err
		}
		audit, err := s.auditOps(p, ws, "", "workspace.update", old, next)
		if err != nil {
			return nil, err
		}
		resp, err := s.etcd.Txn(ctx).If(
			clientv3.Compare(clientv3.ModRevision(workspaceKey(ws)), "=", rev),
		).Then(append([]clientv3.Op{clientv3.OpPut(workspaceKey(ws), val)}, audit...)...).Commit()
		if err != nil {
			return nil, fmt.Errorf("update workspace: %w", err)
		}
		if resp.Succeeded {
			next.Etag = strconv.FormatInt(resp.Header.Revision, 10)
			s.changes.Add(ctx, 1)
			return next, nil
		}
		if etag != "" {
			return nil, fmt.Errorf("workspace %q: %w", ws, ErrConflict)
		}
	}
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
	m := &keystorev1.Member{Workspace: ws, Member: req.GetMember(), Role: req.GetRole(), CreateTime: timestamppb.New(s.clock.Now())}
	if old != nil {
		m.CreateTime = old.GetCreateTime()
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
	).Then(append([]clientv3.Op{clientv3.OpPut(memberKey(ws, m.Member), val)}, audit...)...).Commit()
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
	).Then(append([]clientv3.Op{clientv3.OpDelete(memberKey(ws, old.Member))}, audit...)...).Commit()
	if err != nil {
		return fmt.Errorf("remove member: %w", err)
	}
	if !tx.Succeeded {
		return fmt.Errorf("member %q: %w", old.Member, ErrConflict)
	}
	s.changes.Add(ctx, 1)
	return nil
}
